"""Strict DICOM series reader: header scan, geometry validation, pixel decoding.

Two steps:

* :func:`scan_dicom` reads the header of each file (never its pixel data), rejects the files that are not
  usable single-channel DICOM images and groups the rest by SeriesInstanceUID into :class:`SeriesInfo`.
* :func:`read_series` validates the geometry of one series (every classic file and every frame of an enhanced
  multi-frame object is one "frame"), and only then decodes the pixels, applies the modality rescale and
  returns a float32 :class:`~pipeline.io.volume.Volume` whose affine follows the nibabel RAS convention. The
  volume is not reoriented; callers apply :func:`~pipeline.io.volume.to_canonical`.

Array axes: ``i`` = DICOM column index, ``j`` = DICOM row index, ``k`` = slice, sorted along the slice normal
``cross(row_cosine, column_cosine)``. With ImageOrientationPatient = [row cosine, column cosine] and
PixelSpacing = [row spacing, column spacing]::

    world_LPS = IPP_0 + i * PixelSpacing[1] * row_cosine + j * PixelSpacing[0] * column_cosine + k * step

and ``affine = LPS_TO_RAS @ that``.

Every rejection is an :class:`~pipeline.errors.InputDataError` (or its :class:`~pipeline.errors.GeometryError`
subclass) whose ``code`` is one of :data:`REJECTION_CODES`. Reasons are our own words: they never echo a DICOM
header value (names, ids, dates, institutions…); an exception from a library contributes at most its type name
and a sanitised message (quoted text, long digit runs and paths removed).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import threading
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.config import GeometryConfig
from pipeline.errors import GeometryError, InputDataError
from pipeline.io.volume import LPS_TO_RAS, SafeMeta, Volume, read_limit, read_limit_set

logger = logging.getLogger(__name__)

#: Every ``code`` this module puts on an InputDataError / GeometryError.
REJECTION_CODES: dict[str, str] = {
    # file level (scan_dicom puts these in ScanResult.rejected; read_series may raise them too)
    "io_error": "the file could not be opened or read",
    "not_dicom": "not a DICOM file, or a file whose DICOM structure cannot be parsed (garbage, empty, "
    "deeply nested or malformed elements)",
    "not_image": "DICOM object without image pixel attributes (SR, RT structure/plan, waveform, DICOMDIR, …)",
    "not_grayscale": "colour, palette or multi-sample image; only single-channel images are read",
    "unsupported": "an image object this reader does not turn into a volume (SEG, RT dose, mosaic, classic "
    "multi-frame without per-frame geometry)",
    "bad_header": "a required attribute is missing or malformed (UIDs, matrix size, rescale, frame count)",
    "pixel_decode": "pixel data missing, truncated, corrupt or not decodable",
    "too_large": "the declared image needs more memory to read than the read limit (preprocess.max_read_mib)",
    "non_finite": "decoded values (float pixel data, or after the rescale) hold NaN or Inf",
    # series level (read_series)
    "missing_geometry": "ImagePositionPatient, ImageOrientationPatient or PixelSpacing missing or invalid",
    "inconsistent_grid": "slices differ in rows, columns or pixel spacing",
    "orientation": "slices differ in orientation, or the orientation is not a pair of orthonormal cosines",
    "multi_stack": "a multi-frame object holds several stacks, temporal positions, echoes or b-values",
    "not_a_volume": "two or more slices at the same position (repeats, echoes, several acquisitions)",
    "slice_count": "fewer slices than geometry.min_slices",
    "slice_increment": "slice positions are not evenly spaced (gap, missing slice) or not on one line",
    "gantry_tilt": "slices are stacked at an angle to their normal larger than geometry.max_tilt_deg",
}

# Slices closer than this along the normal are "at the same place" (DS rounding is ~1e-4 mm).
_DUPLICATE_MM = 1e-2
# Direction cosines must be unit length and orthogonal within this (DS strings carry limited precision).
_COSINE_TOL = 1e-2
# Relative tolerance for "same PixelSpacing" between slices.
_SPACING_RTOL = 1e-4
# Smallest voxel volume accepted (mm³), as pipeline.io.nifti.check_affine.
_MIN_VOXEL_MM3 = 1e-9

_GRAYSCALE = {"MONOCHROME1", "MONOCHROME2"}
_SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"
_RT_DOSE_SOP = "1.2.840.10008.5.1.4.1.1.481.2"
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")

# Header-only scan: only these top-level tags are parsed (others are skipped by seeking).
_SCAN_TAGS = [
    "SOPClassUID",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "FrameOfReferenceUID",
    "SeriesDescription",
    "ImageType",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
]


# --------------------------------------------------------------------------------------------------
# public records


@dataclass(frozen=True)
class SeriesInfo:
    """One series found by :func:`scan_dicom`.

    Fields marked *internal* may identify a patient or a study: they must never be written to outputs or logs
    (they are left out of ``repr`` for that reason).
    """

    series_uid: str = field(repr=False)  # internal
    study_uid: str = field(repr=False)  # internal
    patient_key: str = field(repr=False)  # internal: PatientID, else StudyInstanceUID (for a keyed pseudonym)
    frame_of_reference: str = field(repr=False)  # internal
    description: str = field(repr=False)  # internal: SeriesDescription (mask series are recognised by regex)
    modality: str  # e.g. "MR", "CT"
    files: tuple[Path, ...] = field(repr=False)  # absolute paths, sorted
    rows: int
    columns: int
    number_of_frames: int  # > 1: enhanced (or other) multi-frame object

    @property
    def n_files(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class ScanResult:
    series: list[SeriesInfo]
    #: files that were not usable DICOM images (``file`` is the path relative to the scan root); codes
    #: io_error, not_dicom, not_image, not_grayscale, unsupported, bad_header
    rejected: list[InputDataError]


# --------------------------------------------------------------------------------------------------
# helpers: safe messages, quiet reading


class _Reject(Exception):
    """Internal: a problem with a code and a PHI-free reason; turned into InputDataError/GeometryError."""

    def __init__(self, code: str, reason: str, geometry: bool = False) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.geometry = geometry


_QUOTED_RE = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`")
_DIGITS_RE = re.compile(r"\d{5,}")
_PATHISH_RE = re.compile(r"(?:[A-Za-z]:)?[\\/][^\s,;:)]*")


def _safe_exc(exc: BaseException) -> str:
    """Exception type name plus a sanitised, short message (quoted text, long numbers and paths removed)."""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    msg = _QUOTED_RE.sub("<…>", msg)
    msg = _PATHISH_RE.sub("<path>", msg)
    msg = _DIGITS_RE.sub("<n>", msg)
    msg = "".join(ch for ch in msg if ch.isprintable())
    if len(msg) > 120:
        msg = msg[:117] + "..."
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


_reading = threading.local()


class _DropWhileReading(logging.Filter):
    """Drops pydicom's log records emitted by this thread while we read: they may quote header values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_reading, "depth", 0) > 0:
            _reading.dropped = getattr(_reading, "dropped", 0) + 1
            return False
        return True


_PYDICOM_LOGGER = logging.getLogger("pydicom")
if not any(isinstance(f, _DropWhileReading) for f in _PYDICOM_LOGGER.filters):
    _PYDICOM_LOGGER.addFilter(_DropWhileReading())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom while touching DICOM values: its warnings and log records may quote header values.

    Warnings are suppressed with ``warnings.catch_warnings`` (process-wide while active; the reader is meant
    for one thread per process, as the preprocess workers are processes); pydicom log records are dropped for
    this thread only.
    """
    _reading.depth = getattr(_reading, "depth", 0) + 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _reading.depth -= 1


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (symlinks are not resolved: DVC may link data files into its cache)."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        return path.name


def _series_label(files: Sequence[Path], root: Path) -> str:
    """Where a series lives, relative to root: its folder (or its only file)."""
    if len(files) == 1:
        return _rel(files[0], root)
    parents = {f.parent for f in files}
    if len(parents) == 1:
        return _rel(next(iter(parents)), root)
    try:
        return _rel(Path(os.path.commonpath([str(p) for p in parents])), root)
    except ValueError:
        return _rel(files[0], root)


def _is_uid(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))


def _text(ds: Dataset, keyword: str) -> str:
    """A header string, or "" when absent, empty or undecodable."""
    try:
        value = ds.get(keyword)
    except Exception:  # undecodable charset, malformed value
        return ""
    if value is None:
        return ""
    return str(value).strip()


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """A header integer (US/IS…); missing → ``default`` or bad_header; malformed → bad_header."""
    try:
        value = ds.get(keyword)
    except Exception as exc:
        raise _Reject("bad_header", f"{keyword} cannot be parsed ({type(exc).__name__})") from None
    if value is None or value == "":
        if default is None:
            raise _Reject("bad_header", f"{keyword} is missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Reject("bad_header", f"{keyword} is not an integer") from None


def _floats(ds: Dataset | None, keyword: str, n: int, code: str = "missing_geometry") -> np.ndarray | None:
    """``n`` finite floats from a header element; None when absent/empty; malformed → ``code``."""
    if ds is None:
        return None
    geo = code == "missing_geometry"
    try:
        value = ds.get(keyword)
    except Exception as exc:
        raise _Reject(code, f"{keyword} cannot be parsed ({type(exc).__name__})", geometry=geo) from None
    if value is None or value == "":
        return None
    values = [value] if n == 1 and not isinstance(value, (list, tuple, MultiValue)) else value
    try:
        arr = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise _Reject(code, f"{keyword} is not numeric", geometry=geo) from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise _Reject(code, f"{keyword} must hold {n} finite numbers", geometry=geo)
    return arr


def _float(ds: Dataset | None, keyword: str) -> float | None:
    arr = _floats(ds, keyword, 1, code="bad_header")
    return None if arr is None else float(arr[0])


# --------------------------------------------------------------------------------------------------
# reading one file


class _CappedFile(io.BufferedReader):
    """A read-only file whose ``read(n)`` never asks for more than the bytes left in it.

    pydicom reads a value with ``read(declared length)`` and CPython allocates the requested size before
    reading, so one length field of 0xFFFFFFF0 in a 100 kB file would claim 4 GiB: whether that fails
    would depend on the host's memory, not on the file.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(os.fspath(path), "rb"))
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            # pydicom reads the rest of a file at once for one reason: to inflate a deflated dataset, which
            # it then does in one unbounded zlib call
            rest = super().read()
            _check_inflated_size(rest)
            return rest
        if size > 0:
            size = min(size, self._size - self.tell())
            if size <= 0:
                return b""
        return super().read(size)


def _check_inflated_size(data: bytes) -> None:
    """Refuse deflated bytes that inflate beyond the read limit (a 1 MB file can hold gigabytes of zeros),
    or that are corrupt: pydicom would inflate everything up to the damage before failing. Inflates in
    1 MiB steps and keeps nothing."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    limit = read_limit()
    total = 0
    pending = data
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
            if total > limit:
                raise _Reject("too_large", f"deflated dataset inflates to more than {limit >> 20} MiB")
    except zlib.error as exc:
        raise _Reject("not_dicom", f"deflated dataset is corrupt ({_safe_exc(exc)})") from None


def _dcmread(path: Path, *, header_only: bool, specific_tags: list[str] | None = None) -> Dataset:
    """Read one file (header only or complete). Non-DICOM → _Reject("not_dicom"); I/O failure → "io_error".

    Files without the DICM prefix are retried with ``force=True``; such a dataset is accepted only when it
    holds a well-formed SOPClassUID: under force, pydicom turns arbitrary bytes into a near-empty dataset.
    """
    try:
        if path.stat().st_size == 0:
            raise _Reject("not_dicom", "empty file")
    except OSError as exc:
        raise _Reject("io_error", f"cannot access file ({type(exc).__name__})") from None
    kwargs: dict[str, Any] = {"stop_before_pixels": header_only}
    if specific_tags:
        kwargs["specific_tags"] = specific_tags
    forced = False
    try:
        with _CappedFile(path) as fh:
            ds = pydicom.dcmread(fh, **kwargs)
    except _Reject:
        raise
    except InvalidDicomError:
        forced = True
        try:
            with _CappedFile(path) as fh:
                ds = pydicom.dcmread(fh, force=True, **kwargs)
        except _Reject:
            raise
        except OSError as exc:
            raise _Reject("io_error", f"cannot read file ({type(exc).__name__})") from None
        except Exception as exc:
            raise _Reject("not_dicom", f"not a DICOM file ({_safe_exc(exc)})") from None
    except OSError as exc:
        raise _Reject("io_error", f"cannot read file ({type(exc).__name__})") from None
    except Exception as exc:  # struct.error, EOFError, RecursionError, MemoryError, ValueError…
        raise _Reject("not_dicom", f"DICOM structure cannot be parsed ({_safe_exc(exc)})") from None
    if forced:
        try:
            sop = ds.get("SOPClassUID")
        except Exception:
            sop = None
        if not _is_uid(str(sop) if sop is not None else None):
            raise _Reject(
                "not_dicom", "no DICOM prefix and the content does not parse as a DICOM image dataset"
            )
    return ds


def _pixel_bytes_held(ds: Dataset) -> int:
    total = 0
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        try:
            value = ds.get(keyword)
        except Exception:  # a malformed element: the decoder reports it
            continue
        if isinstance(value, (bytes, bytearray)):
            total += len(value)
    return total


def _bytes_allocated(ds: Dataset) -> int:
    """Bytes per stored sample, for a memory estimate only: a malformed BitsAllocated counts as 8 bytes
    (the decoder rejects it later with its own reason)."""
    try:
        bits = int(ds.get("BitsAllocated") or 16)
    except Exception:
        return 8
    return min(8, max(1, (bits + 7) // 8))


def _check_image_header(ds: Dataset) -> tuple[int, int, int]:
    """File-level checks shared by scan and read. Returns (rows, columns, number_of_frames)."""
    sop = _text(ds, "SOPClassUID")
    if "Rows" not in ds or "Columns" not in ds:
        meta = getattr(ds, "file_meta", None)
        if _is_uid(sop) or (meta is not None and len(meta) > 0):
            raise _Reject("not_image", "DICOM object without image pixel attributes (no Rows/Columns)")
        # DICM prefix followed by bytes that parse into arbitrary elements: junk, not an identifiable object
        raise _Reject(
            "not_dicom", "no file meta, SOP class or image attributes: not a recognisable DICOM object"
        )
    if sop == _SEG_SOP:
        raise _Reject("unsupported", "DICOM Segmentation object (SEG); only image series are read")
    if sop == _RT_DOSE_SOP:
        raise _Reject("unsupported", "RT Dose object; only image series are read")
    spp = _int(ds, "SamplesPerPixel", default=1)
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if spp != 1 or (photometric and photometric not in _GRAYSCALE):
        kind = photometric.split("_")[0] if photometric.isascii() and len(photometric) <= 16 else "?"
        raise _Reject(
            "not_grayscale",
            f"{spp} samples per pixel, photometric {kind}: only single-channel grayscale images are read",
        )
    rows = _int(ds, "Rows")
    cols = _int(ds, "Columns")
    frames = _int(ds, "NumberOfFrames", default=1)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise _Reject("bad_header", "Rows, Columns and NumberOfFrames must be positive")
    need, limit = rows * cols * frames * (4 + _bytes_allocated(ds)), read_limit()
    if need > limit:
        raise _Reject(
            "too_large",
            f"{frames} frame(s) of {rows} x {cols} pixels need {need / 2**20:.0f} MiB to read, over the "
            f"{limit >> 20} MiB limit",
        )
    image_type = ds.get("ImageType") if "ImageType" in ds else None
    if image_type is not None and "MOSAIC" in [str(v).upper() for v in image_type]:
        raise _Reject("unsupported", "Siemens mosaic image (needs demosaicing); not read as a volume")
    return rows, cols, frames


# --------------------------------------------------------------------------------------------------
# scan


@dataclass(frozen=True)
class _Header:
    """What the scan keeps of one file's header (internal: the attributes may identify a patient)."""

    path: Path
    series_uid: str
    dims: tuple[int, int, int]
    attrs: dict[str, str] = field(repr=False)


_SERIES_ATTRS = ("StudyInstanceUID", "PatientID", "FrameOfReferenceUID", "SeriesDescription", "Modality")
# A pool pays for itself only on big roots: each spawned worker imports pydicom and numpy (~1 s), and one
# file's header takes ~0.5 ms. Files go to workers in chunks, so results come back in path order.
_PARALLEL_MIN_FILES = 2000
_SCAN_CHUNK = 500


def _scan_file(path: Path, root: Path) -> _Header | InputDataError:
    rel = _rel(path, root)
    try:
        with _quiet():
            ds = _dcmread(path, header_only=True, specific_tags=_SCAN_TAGS)
            dims = _check_image_header(ds)
            series_uid = _text(ds, "SeriesInstanceUID")
            # Only a grouping key: some de-identifiers write hashes instead of dotted UIDs, which is fine.
            if not series_uid or len(series_uid) > 128 or not series_uid.isprintable():
                raise _Reject("bad_header", "SeriesInstanceUID missing or malformed: cannot group the file")
            attrs = {k: _text(ds, k) for k in _SERIES_ATTRS}
    except _Reject as rej:
        logger.info("rejected %s [%s]: %s", rel, rej.code, rej.reason)
        return InputDataError(rel, rej.reason, rej.code)
    except Exception as exc:  # belt and braces: never die on one file
        reason = f"unexpected error while reading the header ({_safe_exc(exc)})"
        logger.info("rejected %s [bad_header]: %s", rel, reason)
        return InputDataError(rel, reason, "bad_header")
    return _Header(path, series_uid, dims, attrs)


def _scan_chunk(paths: list[Path], root: Path, limit: int) -> list[_Header | InputDataError]:
    with read_limit_set(limit):  # a spawned worker starts with the default limit
        return [_scan_file(p, root) for p in paths]


def scan_dicom(files: Iterable[Path], root: Path, workers: int = 1) -> ScanResult:
    """Header-only read of each file (pixel data is never read), grouped by SeriesInstanceUID.

    Files that are not DICOM, not images, not single-channel or otherwise unusable on their own are returned
    in ``rejected`` (``file`` relative to ``root``) instead of raising. Series are sorted by their first file;
    files within a series by path. With ``workers`` > 1 and a few thousand files or more, headers are read in
    a process pool; the result does not depend on ``workers``.
    """
    paths = sorted({Path(os.path.abspath(f)) for f in files})
    if workers > 1 and len(paths) >= _PARALLEL_MIN_FILES:
        chunks = [paths[i : i + _SCAN_CHUNK] for i in range(0, len(paths), _SCAN_CHUNK)]
        n = len(chunks)
        with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=get_context("spawn")) as pool:
            parts = pool.map(_scan_chunk, chunks, [root] * n, [read_limit()] * n)
            results = [r for part in parts for r in part]
    else:
        results = [_scan_file(p, root) for p in paths]

    groups: dict[str, list[_Header]] = {}
    rejected: list[InputDataError] = []
    for r in results:
        if isinstance(r, InputDataError):
            rejected.append(r)
        else:
            groups.setdefault(r.series_uid, []).append(r)

    series: list[SeriesInfo] = []
    for uid, members in groups.items():
        first = members[0].attrs  # series attributes come from the first file (by path)
        study = first["StudyInstanceUID"]
        series.append(
            SeriesInfo(
                series_uid=uid,
                study_uid=study,
                patient_key=first["PatientID"] or study,
                frame_of_reference=first["FrameOfReferenceUID"],
                description=first["SeriesDescription"],
                modality=_safe_modality(first["Modality"]),
                files=tuple(h.path for h in members),
                rows=members[0].dims[0],
                columns=members[0].dims[1],
                number_of_frames=max(h.dims[2] for h in members),
            )
        )
    series.sort(key=lambda s: s.files[0])
    logger.info(
        "scanned %d files: %d series, %d rejected",
        sum(s.n_files for s in series) + len(rejected),
        len(series),
        len(rejected),
    )
    return ScanResult(series=series, rejected=rejected)


def _safe_modality(value: str) -> str:
    """Modality is a short code string (CS); anything else is not passed on."""
    value = value.upper()
    return value if re.fullmatch(r"[A-Z0-9_ ]{1,16}", value) else "OT"


# --------------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class _SliceGeometry:
    """Geometry of one 2D frame: a classic single-frame file, or one frame of a multi-frame object."""

    position: np.ndarray  # ImagePositionPatient, LPS mm, shape (3,)
    orientation: np.ndarray  # ImageOrientationPatient [row cosine, column cosine], shape (6,)
    pixel_spacing: (
        np.ndarray
    )  # [row spacing (between rows), column spacing (between columns)], mm, shape (2,)
    rows: int
    columns: int
    slice_step: float | None = None  # SpacingBetweenSlices or SliceThickness: used only for a single slice


@dataclass(frozen=True)
class _StackPlan:
    """Result of :func:`_plan_stack`: slice order (indices into the input) and the voxel → RAS affine."""

    order: np.ndarray  # shape (K,)
    affine: np.ndarray  # 4×4, voxel (i=column, j=row, k=slice) → RAS mm


def _plan_stack(slices: Sequence[_SliceGeometry], geometry: GeometryConfig) -> _StackPlan:
    """Validate that the slices form one regular 3D grid and return their order and the RAS affine.

    Raises ``_Reject`` (geometry) with codes: inconsistent_grid, orientation, not_a_volume, slice_count,
    slice_increment, gantry_tilt, missing_geometry.
    """
    n = len(slices)
    if n == 0:
        raise _Reject("slice_count", "no slices", geometry=True)
    ref = slices[0]
    iops = np.stack([s.orientation for s in slices])
    dev = float(np.max(np.abs(iops - iops[0]))) if n > 1 else 0.0
    if dev > geometry.orientation_atol:
        raise _Reject(
            "orientation",
            f"slices have different orientations (direction cosines differ by up to {dev:.4g})",
            geometry=True,
        )
    row_cos, col_cos = iops[0, :3], iops[0, 3:]
    if (
        abs(np.linalg.norm(row_cos) - 1) > _COSINE_TOL
        or abs(np.linalg.norm(col_cos) - 1) > _COSINE_TOL
        or abs(float(row_cos @ col_cos)) > _COSINE_TOL
    ):
        raise _Reject("orientation", "orientation is not a pair of orthogonal unit vectors", geometry=True)
    for s in slices[1:]:
        if (s.rows, s.columns) != (ref.rows, ref.columns):
            raise _Reject("inconsistent_grid", "slices differ in matrix size (rows × columns)", geometry=True)
        if not np.allclose(s.pixel_spacing, ref.pixel_spacing, rtol=_SPACING_RTOL, atol=1e-6):
            raise _Reject("inconsistent_grid", "slices differ in pixel spacing", geometry=True)
    if np.any(ref.pixel_spacing <= 0):
        raise _Reject("missing_geometry", "pixel spacing must be positive", geometry=True)

    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)

    positions = np.stack([s.position for s in slices])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    depth = depth[order]
    positions = positions[order]
    steps = np.diff(depth)
    if n > 1 and float(np.min(steps)) < _DUPLICATE_MM:
        n_dup = int(np.sum(steps < _DUPLICATE_MM))
        raise _Reject(
            "not_a_volume",
            f"{n_dup} slice(s) share a position with another slice ({n} slices): repeated acquisitions, "
            "echoes or time points, not one volume",
            geometry=True,
        )
    if n < geometry.min_slices:
        raise _Reject(
            "slice_count", f"{n} slice(s), fewer than the {geometry.min_slices} required", geometry=True
        )

    if n == 1:
        step_len = ref.slice_step
        if step_len is None or not math.isfinite(step_len) or step_len <= 0:
            raise _Reject(
                "missing_geometry",
                "single slice without SpacingBetweenSlices or SliceThickness: slice step unknown",
                geometry=True,
            )
        step_vec = normal * step_len
    else:
        mean_step = float(depth[-1] - depth[0]) / (n - 1)
        worst = float(np.max(np.abs(steps - mean_step)))
        if worst > geometry.spacing_rtol * mean_step:
            raise _Reject(
                "slice_increment",
                f"uneven slice spacing: steps from {float(steps.min()):.4g} to {float(steps.max()):.4g} mm "
                f"(mean {mean_step:.4g} mm, tolerance {geometry.spacing_rtol:.3g} of the mean)",
                geometry=True,
            )
        step_vec = (positions[-1] - positions[0]) / (n - 1)
        along = abs(float(step_vec @ normal))
        across = float(np.linalg.norm(step_vec - (step_vec @ normal) * normal))
        tilt = math.degrees(math.atan2(across, along))
        if tilt > geometry.max_tilt_deg:
            raise _Reject(
                "gantry_tilt",
                f"slices are stacked {tilt:.3g}° off their normal (limit {geometry.max_tilt_deg:.3g}°): "
                "gantry tilt or sheared stack",
                geometry=True,
            )
        expected = positions[0] + np.arange(n)[:, None] * step_vec
        off = float(np.max(np.linalg.norm(positions - expected, axis=1)))
        if off > geometry.spacing_rtol * float(np.linalg.norm(step_vec)):
            raise _Reject(
                "slice_increment",
                f"slice positions do not lie on one straight, evenly spaced line (off by up to {off:.4g} mm)",
                geometry=True,
            )

    first = slices[int(order[0])]
    lps = np.eye(4)
    lps[:3, 0] = first.orientation[:3] * first.pixel_spacing[1]
    lps[:3, 1] = first.orientation[3:] * first.pixel_spacing[0]
    lps[:3, 2] = step_vec
    lps[:3, 3] = first.position
    # Finite header numbers can still give a useless grid: 1e-320 mm spacing, or positions so large that the
    # step computed from them overflows.
    if not np.all(np.isfinite(lps)) or abs(float(np.linalg.det(lps[:3, :3]))) < _MIN_VOXEL_MM3:
        raise _Reject(
            "missing_geometry",
            "pixel spacing, slice step or positions give no finite, non-degenerate voxel grid",
            geometry=True,
        )
    return _StackPlan(order=order, affine=LPS_TO_RAS @ lps)


# --------------------------------------------------------------------------------------------------
# frames of a file


@dataclass(frozen=True)
class _Frame:
    file_index: int
    frame_index: int  # index into the file's frames (0 for a single-frame file)
    geometry: _SliceGeometry
    slope: float
    intercept: float


def _rescale(item: Dataset | None, fallback: tuple[float, float]) -> tuple[float, float]:
    if item is None:
        return fallback
    slope = _float(item, "RescaleSlope")
    intercept = _float(item, "RescaleIntercept")
    slope = fallback[0] if slope is None else slope
    intercept = fallback[1] if intercept is None else intercept
    if slope == 0:
        raise _Reject("bad_header", "RescaleSlope is zero")
    return slope, intercept


def _step_hint(item: Dataset | None) -> float | None:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _float(item, keyword)
        if value is not None and value != 0:
            return abs(value)
    return None


def _classic_frames(ds: Dataset, file_index: int, rows: int, cols: int) -> list[_Frame]:
    ipp = _floats(ds, "ImagePositionPatient", 3)
    iop = _floats(ds, "ImageOrientationPatient", 6)
    ps = _floats(ds, "PixelSpacing", 2)
    missing = [
        k
        for k, v in (("ImagePositionPatient", ipp), ("ImageOrientationPatient", iop), ("PixelSpacing", ps))
        if v is None
    ]
    if missing:
        raise _Reject("missing_geometry", f"{', '.join(missing)} missing", geometry=True)
    assert ipp is not None and iop is not None and ps is not None
    geom = _SliceGeometry(ipp, iop, ps, rows, cols, _step_hint(ds))
    slope, intercept = _rescale(ds, (1.0, 0.0))
    return [_Frame(file_index, 0, geom, slope, intercept)]


def _first_item(group: Dataset | None, keyword: str) -> Dataset | None:
    if group is None:
        return None
    seq = group.get(keyword)
    if not seq:
        return None
    return seq[0]


def _enhanced_frames(ds: Dataset, file_index: int, rows: int, cols: int, n_frames: int) -> list[_Frame]:
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != n_frames:
        raise _Reject(
            "bad_header",
            f"per-frame functional groups describe {len(per_frame)} frames, NumberOfFrames says {n_frames}",
        )
    top_rescale = _rescale(ds, (1.0, 0.0))
    frames: list[_Frame] = []
    stack_ids: set[str] = set()
    temporal: set[int] = set()
    echoes: set[float] = set()
    bvalues: set[float] = set()
    for idx, fg in enumerate(per_frame):

        def pick(keyword: str, fg: Dataset = fg) -> Dataset | None:
            return _first_item(fg, keyword) or _first_item(shared, keyword)

        pos_item = pick("PlanePositionSequence")
        ori_item = pick("PlaneOrientationSequence")
        meas_item = pick("PixelMeasuresSequence")
        ipp = _floats(pos_item, "ImagePositionPatient", 3)
        iop = _floats(ori_item, "ImageOrientationPatient", 6)
        ps = _floats(meas_item, "PixelSpacing", 2)
        if ipp is None or iop is None or ps is None:
            raise _Reject(
                "missing_geometry",
                f"frame {idx + 1}: plane position, plane orientation or pixel measures missing",
                geometry=True,
            )
        content = pick("FrameContentSequence")
        if content is not None:
            if "StackID" in content:
                stack_ids.add(_text(content, "StackID"))
            if content.get("TemporalPositionIndex") is not None:
                temporal.add(_int(content, "TemporalPositionIndex"))
        echo = _float(pick("MREchoSequence"), "EffectiveEchoTime")
        if echo is not None:
            echoes.add(round(echo, 4))
        bval = _float(pick("MRDiffusionSequence"), "DiffusionBValue")
        if bval is not None:
            bvalues.add(round(bval, 3))
        slope, intercept = _rescale(pick("PixelValueTransformationSequence"), top_rescale)
        geom = _SliceGeometry(ipp, iop, ps, rows, cols, _step_hint(meas_item))
        frames.append(_Frame(file_index, idx, geom, slope, intercept))
    for what, values in (
        ("stacks", stack_ids),
        ("temporal positions", temporal),
        ("echo times", echoes),
        ("b-values", bvalues),
    ):
        if len(values) > 1:
            raise _Reject(
                "multi_stack",
                f"multi-frame object holds {len(values)} {what}; one 3D stack per series is required",
                geometry=True,
            )
    return frames


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Files without file meta (read under force) get the transfer syntax their native encoding implies."""
    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = FileMetaDataset()
        ds.file_meta = meta
    if "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    elem = ds.get("PixelData") if "PixelData" in ds else None
    if elem is None or implicit is None or little is None:
        return
    if getattr(ds["PixelData"], "is_undefined_length", False):
        raise _Reject("pixel_decode", "encapsulated (compressed) pixel data without a transfer syntax")
    if implicit:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _decode(ds: Dataset, n_frames: int, rows: int, cols: int) -> np.ndarray:
    """Decoded stored values, shape (frames, rows, cols); any failure → pixel_decode."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _Reject("pixel_decode", "no pixel data element (missing or truncated)")
    try:
        _ensure_transfer_syntax(ds)
        arr = ds.pixel_array
    except _Reject:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # truncated, corrupt codestream, missing plugin… and the PanicException
        # (a BaseException) that Rust decoders such as pylibjpeg-rle raise on a corrupt codestream
        raise _Reject("pixel_decode", f"pixel data cannot be decoded ({_safe_exc(exc)})") from None
    arr = np.asarray(arr)
    if arr.shape == (rows, cols):
        arr = arr[None]
    if arr.shape != (n_frames, rows, cols):
        raise _Reject(
            "pixel_decode",
            f"decoded pixels have shape {arr.shape}, expected {(n_frames, rows, cols)}",
        )
    return arr


# --------------------------------------------------------------------------------------------------
# read


def read_series(info: SeriesInfo, root: Path, geometry: GeometryConfig) -> Volume:
    """Validate the geometry of one series, then decode it into a float32 RAS Volume (not yet canonical).

    The volume has shape (columns, rows, slices) = (i, j, k) and holds ``stored * RescaleSlope +
    RescaleIntercept`` (per file, or per frame for enhanced objects). Raises GeometryError (geometry codes) or
    InputDataError (file codes); the ``file`` of a geometry error is the series folder relative to ``root``.
    """
    label = _series_label(info.files, root) if info.files else "<empty series>"
    if not info.files:
        raise GeometryError(label, "series without files", "slice_count")
    datasets: list[Dataset] = []
    frames: list[_Frame] = []
    frame_counts: list[int] = []
    dims: tuple[int, int] | None = None
    current = label
    try:
        with _quiet():
            for file_index, path in enumerate(info.files):
                current = _rel(path, root)
                ds = _dcmread(path, header_only=False)
                if len(ds) == 0:
                    # pydicom gives up silently on some files whose last element runs past the end of the file
                    raise _Reject(
                        "pixel_decode", "file cannot be parsed past its header (truncated or corrupt)"
                    )
                rows, cols, n_frames = _check_image_header(ds)
                if dims is None:
                    dims = (rows, cols)
                if "PerFrameFunctionalGroupsSequence" in ds:
                    file_frames = _enhanced_frames(ds, file_index, rows, cols, n_frames)
                elif n_frames > 1:
                    raise _Reject(
                        "unsupported",
                        f"multi-frame object ({n_frames} frames) without per-frame functional groups: "
                        "frame positions cannot be established",
                    )
                else:
                    file_frames = _classic_frames(ds, file_index, rows, cols)
                if "ModalityLUTSequence" in ds and any(f.slope != 1 or f.intercept != 0 for f in file_frames):
                    raise _Reject("bad_header", "both a modality LUT and a rescale are present")
                datasets.append(ds)
                frames.extend(file_frames)
                frame_counts.append(n_frames)
            current = label
            try:
                plan = _plan_stack([f.geometry for f in frames], geometry)
            except _Reject as rej:
                if rej.code == "not_a_volume":
                    rej = _Reject(rej.code, rej.reason + _what_differs(datasets), geometry=True)
                raise rej from None

            assert dims is not None
            rows, cols = dims
            ordered = [frames[int(i)] for i in plan.order]
            held = sum(_pixel_bytes_held(ds) for ds in datasets)
            need = held + 4 * len(ordered) * rows * cols
            if need > (limit := read_limit()):
                raise _Reject(
                    "too_large",
                    f"{len(ordered)} slices of {rows} x {cols} pixels need {need / 2**20:.0f} MiB to read, "
                    f"over the {limit >> 20} MiB limit",
                )
            stack = np.empty((len(ordered), rows, cols), dtype=np.float32)
            slot_of: dict[tuple[int, int], int] = {
                (f.file_index, f.frame_index): k for k, f in enumerate(ordered)
            }
            frames_of: dict[int, list[_Frame]] = {}
            for f in frames:
                frames_of.setdefault(f.file_index, []).append(f)
            for file_index, ds in enumerate(datasets):
                current = _rel(info.files[file_index], root)
                pixels = _decode(ds, frame_counts[file_index], rows, cols)
                if "ModalityLUTSequence" in ds:
                    pixels = _apply_modality_lut(pixels, ds)
                for frame in frames_of[file_index]:
                    stack[slot_of[(file_index, frame.frame_index)]] = _apply_rescale(
                        pixels[frame.frame_index], frame.slope, frame.intercept
                    )
                ds.pop("PixelData", None)  # release the raw bytes early
                datasets[file_index] = Dataset()
            current = label
            if not np.all(np.isfinite(stack)):
                raise _Reject(
                    "non_finite", "decoded values hold NaN or Inf (float pixel data or rescale overflow)"
                )
    except _Reject as rej:
        err_cls = GeometryError if rej.geometry else InputDataError
        logger.info("rejected series %s [%s]: %s", current, rej.code, rej.reason)
        raise err_cls(current, rej.reason, rej.code) from None
    except Exception as exc:  # never let a library error escape with header values in it
        reason = f"unexpected error while reading the series ({_safe_exc(exc)})"
        logger.info("rejected series %s [bad_header]: %s", current, reason)
        raise InputDataError(current, reason, "bad_header") from None

    # (K, rows, cols) C-order → (cols, rows, K) = (i, j, k): a Fortran-contiguous view, as NIfTI stores it.
    array = stack.transpose(2, 1, 0)
    meta = SafeMeta(modality=info.modality, source_kind="dicom", n_files=len(info.files))
    logger.debug("read series %s: shape %s", label, array.shape)
    return Volume(array=array, affine=plan.affine, meta=meta)


# Attributes that tell apart stacks sharing one SeriesInstanceUID (named in reasons, never their values).
_STACK_KEYS = (
    "ImageType",
    "EchoNumbers",
    "EchoTime",
    "AcquisitionNumber",
    "TemporalPositionIdentifier",
    "TriggerTime",
    "DiffusionBValue",
)


def _what_differs(datasets: Sequence[Dataset]) -> str:
    """ " (files differ in: A, B)" naming the attributes whose values differ between files, or ""."""
    differing = []
    for keyword in _STACK_KEYS:
        values = set()
        for ds in datasets:
            try:
                value = ds.get(keyword)
            except Exception:
                value = None
            values.add(str(value) if value is not None else None)
        if len(values) > 1:
            differing.append(keyword)
    return f" (files differ in: {', '.join(differing)})" if differing else ""


def _apply_rescale(pixels: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    if slope == 1.0 and intercept == 0.0:
        return pixels.astype(np.float32, copy=False)
    # float64 arithmetic, one rounding to float32 at the end
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def _apply_modality_lut(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    try:
        return np.asarray(apply_modality_lut(pixels, ds))
    except Exception as exc:
        raise _Reject("bad_header", f"modality LUT cannot be applied ({_safe_exc(exc)})") from None
