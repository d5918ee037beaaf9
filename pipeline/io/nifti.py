"""NIfTI read/write through nibabel, with the checks nibabel leaves to the caller."""

from __future__ import annotations

import gzip
import io
import logging
import math
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.openers import ImageOpener
from nibabel.volumeutils import apply_read_scaling

from pipeline.errors import GeometryError, InputDataError
from pipeline.io.volume import SafeMeta, Volume, read_limit

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Voxels are read, scaled and checked in chunks of this many.
_SLAB_VOXELS = 1 << 22
# Header extensions (between the header and vox_offset) larger than this are refused: real ones (AFNI, CIFTI
# XML, DICOM headers) take kilobytes to a few megabytes.
_MAX_EXTENSION_BYTES = 64 << 20
_MAX_DATA_OFFSET = 544 + _MAX_EXTENSION_BYTES


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def check_affine(affine: np.ndarray, file: str) -> None:
    """Reject affines that do not describe a 3D grid (non-finite, singular, zero spacing)."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError(file, "affine is not a finite 4x4 matrix", "missing_geometry")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise GeometryError(file, "affine is singular (zero or collinear voxel axes)", "missing_geometry")


def check_read_size(file: str, shape: tuple[int, ...], raw_bytes_per_voxel: int) -> None:
    """Refuse, before any allocation, an image whose raw voxels plus float32 volume exceed the read limit.

    ``math.prod`` on Python ints: a product of declared dimensions must not wrap around as int64 would.
    """
    need, limit = math.prod(shape) * (raw_bytes_per_voxel + 4), read_limit()
    if need > limit:
        raise InputDataError(
            file,
            f"image of {shape} voxels needs {need / 2**20:.0f} MiB to read, over the "
            f"{limit >> 20} MiB limit (preprocess.max_read_mib)",
            "too_large",
        )


def _fixed_header(head: bytes) -> tuple[int, str, float] | None:
    """(size, byte order, vox_offset) of the fixed header as nibabel reads it: class by magic, byte order
    guessed from sizeof_hdr or dim[0]; None when nibabel would not take it for a single-file NIfTI."""
    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.template_dtype.itemsize
        if len(head) >= size and klass.may_contain_header(head[:size]):
            hdr = klass(head[:size], check=False)
            return size, hdr.endianness, float(hdr["vox_offset"])
    return None


def _check_extensions(path: Path, file: str) -> None:
    """Refuse header extensions whose declared sizes do not fit, before nibabel reads them.

    nibabel reads each extension with ``read(declared size)``, which allocates that size before looking at
    the file, so one size field of 2**31 - 1 in a small file claims 2 GiB. This walks the same chain of size
    fields (each must be at least 8, fit before vox_offset, and all together stay under
    ``_MAX_EXTENSION_BYTES``); where the walk cannot go on (a short or corrupt file) nibabel stops too.
    """
    try:
        with ImageOpener(str(path)) as fh:
            head = fh.read(548)
            found = _fixed_header(head)
            if found is None or len(head) < found[0] + 4 or head[found[0]] == 0:
                return
            size, order, vox_offset = found
            start = size + 4
            if math.isnan(vox_offset) or start <= vox_offset < start + 16:
                return  # nibabel reads no extension
            # a vox_offset before the extensions makes nibabel read extensions up to the end of the file
            region = vox_offset - start if vox_offset > start else math.inf
            fh.seek(start)
            pos = 0
            while region - pos >= 16:
                field = fh.read(8)
                if len(field) < 8:
                    return
                esize = struct.unpack(order + "i", field[:4])[0]
                if esize < 8 or esize > region - pos or pos + esize > _MAX_EXTENSION_BYTES:
                    raise InputDataError(
                        file,
                        "a header extension declares a size that does not fit before the voxel data",
                        "unreadable",
                    )
                fh.seek(esize - 8, 1)
                pos += esize
    except InputDataError:
        raise
    except Exception:  # not ours to diagnose: nibabel fails on the same bytes
        return


def read_nifti(path: Path, file: str, modality: str) -> Volume:
    """Read a 3D NIfTI volume (a trailing singleton 4th dimension is dropped). ``file`` is the name used
    in errors (relative to the data root)."""
    _check_extensions(path, file)
    try:
        img = nib.load(str(path))
        dtype = img.get_data_dtype()
    except Exception as err:  # nibabel raises many types on corrupt headers
        raise InputDataError(
            file, f"not a readable NIfTI file ({type(err).__name__})", "unreadable"
        ) from None
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputDataError(file, f"expected a 3D volume, got {len(img.shape)}D shape {img.shape}", "not_3d")
    if min(shape) < 1:
        raise InputDataError(file, f"volume shape {shape} has an empty axis", "not_3d")
    # complex and RGB(A) voxels would otherwise be cast to one real channel without a word
    if dtype.fields is not None:
        reason = f"{len(dtype.fields)}-channel (RGB/RGBA) voxels: only single-channel images are read"
        raise InputDataError(file, reason, "not_grayscale")
    if dtype.kind not in "iuf":
        raise InputDataError(
            file, "complex (or non-numeric) voxels: only real-valued images are read", "not_grayscale"
        )
    check_read_size(file, shape, dtype.itemsize)
    offset = getattr(img.dataobj, "offset", None)
    header_end = img.header.template_dtype.itemsize + 4
    if offset is not None and offset < header_end:
        # nibabel refuses 1..351 but reads vox_offset 0 from the start of the file: header bytes as voxels
        raise InputDataError(
            file, "voxel data declared to start inside the header (vox_offset)", "unreadable"
        )
    if offset is not None and offset > _MAX_DATA_OFFSET:
        # only extensions lie between header and data; inflating a .nii.gz up to a far offset takes seconds
        # per gigabyte before a single voxel is read
        raise InputDataError(
            file,
            f"voxel data declared to start {offset >> 20} MiB into the file, after the header",
            "unreadable",
        )
    if img.header.get("qform_code", 0) == 0 and img.header.get("sform_code", 0) == 0:
        # nibabel then falls back to a pixdim-only affine: orientation is unknown, so we do not guess.
        raise GeometryError(file, "neither qform nor sform is set: orientation unknown", "missing_geometry")
    affine = np.asarray(img.affine, dtype=np.float64)
    check_affine(affine, file)
    try:
        data, finite = _voxels(img.dataobj, shape)
    except Exception as err:
        raise InputDataError(
            file, f"voxel data cannot be read ({type(err).__name__})", "pixel_decode"
        ) from None
    if not finite:
        raise InputDataError(file, "voxel data contains NaN or Inf", "non_finite")
    return Volume(data, affine, SafeMeta(modality=modality, source_kind="nifti", n_files=1))


def _voxels(dataobj: object, shape: tuple[int, int, int]) -> tuple[np.ndarray, bool]:
    """float32 voxels, scaled as nibabel scales them (``np.asarray(img.dataobj, dtype=np.float32)``), and
    whether they are all finite.

    The file is streamed in chunks straight into the float32 volume: the peak is that volume plus one chunk,
    never a full raw copy, a float64 copy or a boolean mask of the whole volume. A file shorter than the
    declared data fails as nibabel's own read does.
    """
    if not isinstance(dataobj, ArrayProxy):
        data = np.asarray(dataobj, dtype=np.float32).reshape(shape)
        return data, bool(np.all(np.isfinite(data)))
    dtype = np.dtype(dataobj.dtype)
    slope, inter = np.asanyarray(dataobj.slope), np.asanyarray(dataobj.inter)
    if np.can_cast(slope, np.float32):
        slope = slope.astype(np.float32)
    if np.can_cast(inter, np.float32):
        inter = inter.astype(np.float32)
    order = "F" if dataobj.order == "F" else "C"
    out = np.empty(shape, dtype=np.float32, order=order)
    flat = out.reshape(-1, order=order)  # a view: out is contiguous in that order
    finite = True
    with ImageOpener(dataobj.file_like) as fh, np.errstate(over="ignore", invalid="ignore"):
        fh.seek(dataobj.offset)
        for start in range(0, flat.size, _SLAB_VOXELS):
            count = min(_SLAB_VOXELS, flat.size - start)
            buf = fh.read(count * dtype.itemsize)
            if len(buf) != count * dtype.itemsize:
                raise ValueError("file ends before the declared voxel data")
            scaled = apply_read_scaling(np.frombuffer(buf, dtype=dtype), slope, inter)
            part = flat[start : start + count]
            part[...] = scaled.astype(np.promote_types(scaled.dtype, np.float32), copy=False)
            finite = finite and bool(np.isfinite(part).all())
    return out, finite


def nifti_bytes(array: np.ndarray, affine: np.ndarray, compress: bool = False) -> bytes:
    """Serialise a NIfTI-1 image deterministically (qform and sform both set, code 1 = scanner; gzip mtime 0).

    Returned as bytes so callers can hash it and write it atomically.
    """
    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header["descrip"] = b"medsynth"
    raw = img.to_bytes()
    if not compress:
        return raw
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return buf.getvalue()
