"""Reader failures found by the fuzzing harness (tests/fuzz), each rebuilt here as a minimal file.

Each test names the failure it guards against: before the fix the reader raised a non-pipeline exception,
returned a wrong volume or asked for gigabytes because of one header field.
"""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from pipeline.config import GeometryConfig
from pipeline.errors import InputDataError
from pipeline.io.dicom import REJECTION_CODES, read_series, scan_dicom
from pipeline.io.nifti import read_nifti
from pipeline.io.volume import MAX_READ_BYTES, read_limit, read_limit_set
from tests.unit.io import dicom_factory as fac

GEOM_1 = GeometryConfig(min_slices=1, spacing_rtol=0.05, orientation_atol=0.001, max_tilt_deg=0.5)
GEOM = GeometryConfig(min_slices=3, spacing_rtol=0.05, orientation_atol=0.001, max_tilt_deg=0.5)
CANARY = "Zq7PHI-0042"


def _dataset(**kwargs):
    """A slice dataset with fresh UIDs at the origin; keyword arguments go to make_slice."""
    base = dict(
        position=(0.0, 0.0, 0.0),
        series_uid=generate_uid(),
        study_uid=generate_uid(),
        frame_uid=generate_uid(),
    )
    return fac.make_slice(**{**base, **kwargs})


def _slice(tmp_path: Path, name: str = "a.dcm", raw: dict[int, str] | None = None, **kwargs) -> Path:
    """One 6 x 5 MR slice (PHI fields carry the canary); keyword arguments go to make_slice, ``raw`` maps
    DS tags to text stored as is."""
    defaults = dict(
        pixels=fac.pattern(6, 5, 0),
        position=(0.0, 0.0, 0.0),
        series_uid=generate_uid(),
        study_uid=generate_uid(),
        frame_uid=generate_uid(),
        phi={"PatientName": CANARY, "PatientID": CANARY},
    )
    ds = _dataset(**{**defaults, **kwargs})
    for tag, text in (raw or {}).items():
        fac.set_raw(ds, tag, "DS", text)
    return fac.write_dataset(ds, tmp_path / name)


def _outcome(files: list[Path], root: Path, geometry: GeometryConfig = GEOM_1):
    """("read", Volume) or (code, InputDataError) for the single series or rejected file in ``files``."""
    scan = scan_dicom(files, root)
    if scan.rejected:
        return scan.rejected[0].code, scan.rejected[0]
    (info,) = scan.series
    try:
        return "read", read_series(info, root, geometry)
    except InputDataError as err:
        return err.code, err


def _peak_traced(fn):
    """(result, peak bytes traced by tracemalloc while ``fn`` ran): Python-level allocations, including the
    buffer CPython reserves for ``file.read(n)``."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _patch_length(path: Path, marker: bytes, value: int) -> None:
    """Set the 4-byte length that follows ``marker`` (tag + VR + reserved) in an explicit-VR file."""
    data = bytearray(path.read_bytes())
    at = data.index(marker) + len(marker)
    data[at : at + 4] = struct.pack("<I", value)
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------------
# DICOM


PIXEL_DATA_OW = b"\xe0\x7f\x10\x00OW\x00\x00"


def test_declared_length_past_end_of_file_does_not_allocate_it(tmp_path: Path) -> None:
    """Fuzz: a value length of 0xFFFFFFF0 made pydicom call ``read(0xFFFFFFF0)``, which CPython allocates
    before reading: MemoryError under a 1 GiB limit, a 4 GiB reservation without one. Reads are now capped
    at what the file holds; here the pixel data runs exactly to the end of the file, so it still reads."""
    path = _slice(tmp_path)
    _patch_length(path, PIXEL_DATA_OW, 0xFFFFFFF0)
    (code, vol), peak = _peak_traced(lambda: _outcome([path], tmp_path))
    assert code == "read", vol
    np.testing.assert_array_equal(vol.array[:, :, 0], fac.pattern(6, 5, 0).T)
    assert peak < 64 * 2**20


def test_declared_length_of_a_header_element_past_end_of_file(tmp_path: Path) -> None:
    """The same with an early element (a sequence declared 0xFFFFFFF0 long swallows the rest of the file):
    rejected, without a multi-gigabyte request."""
    path = _slice(tmp_path, phi={"PatientName": CANARY})
    data = bytearray(path.read_bytes())
    marker = b"\x08\x00\x16\x00UI"  # SOPClassUID: turn it into an OB element claiming 0xFFFFFFF0 bytes
    at = data.index(marker)
    data[at + 4 : at + 8] = b"OB\x00\x00"
    data[at + 8 : at + 8] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    (code, err), peak = _peak_traced(lambda: _outcome([path], tmp_path))
    assert code in REJECTION_CODES and code != "read", err
    assert CANARY not in str(err)
    assert peak < 64 * 2**20


def test_huge_declared_matrix_is_too_large_before_any_allocation(tmp_path: Path) -> None:
    """Rows = Columns = 65535 over a 60-byte pixel buffer: refused at the header scan (the volume would have
    been allocated, 16 GiB of float32, before decoding found the buffer short)."""
    path = _slice(tmp_path)
    data = bytearray(path.read_bytes())
    for tag in (b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x11\x00US\x02\x00"):  # Rows, Columns
        at = data.index(tag) + len(tag)
        data[at : at + 2] = struct.pack("<H", 65535)
    path.write_bytes(bytes(data))
    code, err = _outcome([path], tmp_path)
    assert code == "too_large", err
    assert err.file == "a.dcm"


@pytest.mark.parametrize(
    "kwargs",
    [
        # fuzz: SpacingBetweenSlices "1e-320" on a single slice gave a singular affine, returned as a Volume
        {"slice_thickness": None, "spacing_between_slices": 1e-320},
        {"pixel_spacing": (1e-320, 0.5)},
    ],
    ids=["slice-step-1e-320", "pixel-spacing-1e-320"],
)
def test_degenerate_single_slice_grid_is_rejected(tmp_path: Path, kwargs: dict) -> None:
    path = _slice(tmp_path, **kwargs)
    code, err = _outcome([path], tmp_path)
    assert code == "missing_geometry", err


def test_positions_whose_step_overflows_are_rejected(tmp_path: Path) -> None:
    """Finite positions ±1e308 apart along z: the slice step overflows to Inf. Before the fix the infinite
    affine reached Volume() outside the reader's error handling and a bare ValueError escaped."""
    uids = dict(series_uid=generate_uid(), study_uid=generate_uid(), frame_uid=generate_uid())
    files = [
        _slice(tmp_path, f"{k}.dcm", raw={0x00200032: f"0\\0\\{z}"}, instance=k + 1, **uids)
        for k, z in enumerate(("-1e308", "0", "1e308"))
    ]
    code, err = _outcome(files, tmp_path, GEOM)
    assert code == "missing_geometry", err


def test_rescale_overflow_to_inf_is_rejected(tmp_path: Path) -> None:
    """RescaleSlope 1e308: finite in the header, Inf in float32. A volume of Inf was returned as read."""
    path = _slice(tmp_path, rescale=(1e308, 0.0))
    code, err = _outcome([path], tmp_path)
    assert code == "non_finite", err


def _rle_frame(segments: list[bytes]) -> bytes:
    offsets, pos = [], 64
    for seg in segments:
        offsets.append(pos)
        pos += len(seg)
    header = struct.pack("<16I", len(segments), *offsets, *([0] * (15 - len(segments))))
    return header + b"".join(segments)


def test_rle_segment_longer_than_the_frame_is_pixel_decode(tmp_path: Path) -> None:
    """Fuzz: a corrupt RLE segment that decodes past the end of the frame makes pylibjpeg-rle panic; the
    PanicException derives from BaseException, not Exception, and escaped the reader."""
    ds = _dataset(pixels=fac.pattern(4, 4, 0))
    fac.rle_compress(ds)
    # two segments (high and low bytes of 16-bit samples), each replicating one byte 128 times: 8 x 16 pixels
    ds.PixelData = encapsulate([_rle_frame([bytes([0x81, 5]) * 8, bytes([0x81, 5]) * 8])])
    path = fac.write_dataset(ds, tmp_path / "rle.dcm")
    code, err = _outcome([path], tmp_path)
    assert code == "pixel_decode", err


@pytest.mark.parametrize("damaged", [False, True], ids=["bomb", "damaged-bomb"])
def test_deflate_bomb_is_refused_before_pydicom_inflates_it(tmp_path: Path, damaged: bool) -> None:
    """A 0.6 MB file in the deflated transfer syntax whose dataset inflates to 600 MiB (a private element of
    zeros): pydicom inflates a deflated dataset in one unbounded zlib call, at the header scan already.
    Damaged after 288 MiB (fuzz: a bit flip), pydicom inflated those 288 MiB before failing."""
    ds = _dataset(pixels=fac.pattern(6, 5, 0))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = fac.write_dataset(ds, tmp_path / "bomb.dcm")
    data = path.read_bytes()
    dataset_start = 144 + struct.unpack_from("<I", data, 140)[0]  # after (0002,0000) and the group
    dataset = zlib.decompress(data[dataset_start:], -zlib.MAX_WBITS)
    head = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = zeros.compress(b"\0" * (16 << 20)) + zeros.flush(zlib.Z_FULL_FLUSH)
    element = struct.pack("<HH2sHI", 0x0029, 0x1010, b"OB", 0, 600 << 20)
    stream = head.compress(dataset + element) + head.flush(zlib.Z_FULL_FLUSH)
    # damage: a stored-block header whose length and its complement disagree, after 288 MiB of zeros
    bad_block = b"\x00\x34\x12\x00\x00" if damaged else b""
    stream += (
        block * 18 + bad_block + block * 20 + zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    )
    path.write_bytes(data[:dataset_start] + stream)
    (code, err), peak = _peak_traced(lambda: _outcome([path], tmp_path))
    assert code == ("not_dicom" if damaged else "too_large"), err
    assert peak < 64 * 2**20


# --------------------------------------------------------------------------------------------------
# NIfTI


def _nifti(path: Path, array: np.ndarray, header: dict | None = None, cls=nib.Nifti1Image, **kw) -> Path:
    img = cls(array, np.diag([2.0, 2.0, 3.0, 1.0]), dtype=array.dtype)
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    for key, value in (header or {}).items():
        img.header[key] = value
    raw = img.to_bytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw)
    return path


def _nifti_error(path: Path) -> InputDataError:
    with pytest.raises(InputDataError) as exc_info:
        read_nifti(path, path.name, "MR")
    assert exc_info.value.file == path.name
    return exc_info.value


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("esize", [2**31 - 1, -(2**31), 4])
def test_extension_size_that_does_not_fit_is_rejected_without_reading_it(
    tmp_path: Path, suffix: str, esize: int
) -> None:
    """Fuzz: an extension whose esize is 2**31 - 1 made nibabel call ``read(2**31 - 9)`` (2 GiB reserved
    before reading; MemoryError under the fuzzing limit)."""
    src = _nifti(tmp_path / "src.nii", np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    data = bytearray(src.read_bytes())
    data[348:352] = b"\x01\0\0\0"
    data[352:352] = struct.pack("<ii", esize, 0) + b"\0" * 8
    data[108:112] = struct.pack("<f", 368.0)  # vox_offset after the 16-byte extension
    path = tmp_path / f"ext{suffix}"
    path.write_bytes(gzip.compress(bytes(data), mtime=0) if suffix == ".nii.gz" else bytes(data))
    err, peak = _peak_traced(lambda: _nifti_error(path))
    assert err.code == "unreadable", err
    assert peak < 64 * 2**20


def test_extension_sizes_are_checked_as_nibabel_reads_them(tmp_path: Path) -> None:
    """Two fuzz cases the first extension check missed: sizeof_hdr = 0 (nibabel still takes the header by its
    magic) with esize -2**31, whose int32 ``esize - 8`` wraps to 2**31 - 8; and vox_offset = 0, which makes
    nibabel read extensions up to the end of the file, so the voxel bytes after a valid extension are read
    as the next size field."""
    src = _nifti(tmp_path / "src.nii", np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    base = bytearray(src.read_bytes())
    base[348:352] = b"\x01\0\0\0"

    no_size = bytearray(base)
    no_size[0:4] = b"\0\0\0\0"
    no_size[352:352] = struct.pack("<ii", -(2**31), 0) + b"\0" * 8
    no_size[108:112] = struct.pack("<f", 368.0)

    data_as_size = bytearray(base)
    data_as_size[352:352] = struct.pack("<ii", 16, 4) + b"\0" * 8 + struct.pack("<i", 2**31 - 16)
    data_as_size[108:112] = struct.pack("<f", 0.0)

    for name, data in (("no_size.nii", no_size), ("data_as_size.nii", data_as_size)):
        path = tmp_path / name
        path.write_bytes(bytes(data))
        err, peak = _peak_traced(lambda path=path: _nifti_error(path))
        assert err.code == "unreadable", (name, err)
        assert peak < 64 * 2**20, name


def test_valid_extension_still_reads(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_sform(np.eye(4), code=1)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"medsynth comment"))
    path = tmp_path / "ext.nii"
    path.write_bytes(img.to_bytes())
    vol = read_nifti(path, path.name, "MR")
    np.testing.assert_array_equal(vol.array, np.arange(24).reshape(2, 3, 4))


def test_empty_axis_is_rejected(tmp_path: Path) -> None:
    """Fuzz: dim[2] = 0 gave a Volume of shape (256, 0, 4), returned as read."""
    path = _nifti(tmp_path / "empty.nii", np.zeros((4, 0, 3), dtype=np.int16))
    assert _nifti_error(path).code == "not_3d"


@pytest.mark.parametrize("dtype", ["complex64", "rgb"])
def test_complex_and_rgb_voxels_are_not_grayscale(tmp_path: Path, dtype: str) -> None:
    """Complex voxels were cast to their real part without a word (numpy's ComplexWarning only)."""
    if dtype == "rgb":
        array = np.zeros((2, 3, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    else:
        array = (np.ones((2, 3, 4)) + 1j).astype(dtype)
    assert _nifti_error(_nifti(tmp_path / "c.nii", array)).code == "not_grayscale"


def test_declared_size_is_checked_in_python_ints(tmp_path: Path) -> None:
    """NIfTI-2 dims 2**62 x 2**62 x 4: their int64 product wraps to 0 and passed the old size check."""
    path = _nifti(tmp_path / "big.nii", np.zeros((2, 2, 4), dtype=np.uint8), cls=nib.Nifti2Image)
    data = bytearray(path.read_bytes())
    data[16 + 8 : 16 + 24] = struct.pack("<qq", 2**62, 2**62)  # dim[1], dim[2]
    path.write_bytes(bytes(data))
    assert _nifti_error(path).code == "too_large"


def _zero_bomb(path: Path, shape: tuple[int, int, int], vox_offset: int, members: int) -> Path:
    """A uint8 NIfTI-1 .nii.gz whose header is followed by ``members`` gzip members of 16 MiB of zeros each
    (each member ~16 kB on disk)."""
    hdr = nib.Nifti1Header()
    hdr["magic"] = b"n+1"
    hdr["vox_offset"] = vox_offset
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape(shape)
    hdr.set_sform(np.eye(4), code=1)
    member = gzip.compress(b"\0" * (16 << 20), mtime=0)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4, mtime=0) + member * members)
    return path


def test_gzip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    """A 30 kB .nii.gz that inflates to 1 GiB of consistent zeros (a real 1024^3 uint8 image)."""
    path = _zero_bomb(tmp_path / "bomb.nii.gz", (1024, 1024, 1024), vox_offset=352, members=64)
    err, peak = _peak_traced(lambda: _nifti_error(path))
    assert err.code == "too_large"
    assert peak < 64 * 2**20


@pytest.mark.parametrize("cls", [nib.Nifti1Image, nib.Nifti2Image])
def test_data_offset_inside_the_header_is_rejected(tmp_path: Path, cls) -> None:
    """vox_offset = 0: nibabel then reads the voxels from byte 0, the header itself (a NIfTI-1 int16 volume
    started 348, 0, 0, ...), and that volume was returned as read."""
    path = _nifti(tmp_path / "v.nii", np.arange(24, dtype=np.int16).reshape(2, 3, 4), cls=cls)
    data = bytearray(path.read_bytes())
    if cls is nib.Nifti1Image:
        data[108:112] = struct.pack("<f", 0.0)
    else:
        data[168:176] = struct.pack("<q", 0)
    path.write_bytes(bytes(data))
    assert _nifti_error(path).code == "unreadable"


def test_far_data_offset_in_gzip_is_refused_before_inflating(tmp_path: Path) -> None:
    """Fuzz: vox_offset 2**30 in a 1 MB .nii.gz of zeros: reaching the data inflated 1 GiB (2.5 s; 25 s for
    a 10 MB file) before a voxel was read."""
    path = _zero_bomb(tmp_path / "far.nii.gz", (4, 4, 4), vox_offset=2**30, members=65)
    start = time.monotonic()
    assert _nifti_error(path).code == "unreadable"
    assert time.monotonic() - start < 0.5


_DTYPES = ["u1", "i1", "i2", "u2", "i4", "f4", "f8", ">i2", ">f4"]


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    dtype=st.sampled_from(_DTYPES),
    shape=st.tuples(*[st.integers(1, 9)] * 3),
    scaling=st.none()
    | st.tuples(st.sampled_from([0.5, 2.0, -3.25, 1e-3]), st.sampled_from([0.0, -1024.0, 7.5])),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_streamed_read_equals_nibabel(tmp_path: Path, dtype, shape, scaling, gz, seed) -> None:
    """The chunked reader (peak = float32 volume + one chunk) returns exactly nibabel's float32 voxels."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        array = rng.normal(scale=100, size=shape).astype(dt)
    else:
        info = np.iinfo(dt)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt)
    img = nib.Nifti1Image(array, np.diag([1.5, 1.0, 2.0, 1.0]), dtype=dt)
    img.header.set_sform(img.affine, code=1)
    if scaling is not None:
        img.header.set_slope_inter(*scaling)
    path = tmp_path / ("v.nii.gz" if gz else "v.nii")
    path.write_bytes(gzip.compress(img.to_bytes(), mtime=0) if gz else img.to_bytes())
    expected = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    vol = read_nifti(path, path.name, "MR")
    np.testing.assert_array_equal(vol.array, expected)


def test_read_limit_is_tunable_and_restored(tmp_path: Path) -> None:
    """preprocess.max_read_mib raises or lowers the limit for one block; the error names the limit."""
    path = _nifti(tmp_path / "v.nii", np.zeros((64, 64, 64), dtype=np.int16))  # 1.5 MiB to read
    assert read_nifti(path, path.name, "MR").shape == (64, 64, 64)
    with read_limit_set(1 << 20):
        assert read_limit() == 1 << 20
        err = _nifti_error(path)
    assert err.code == "too_large" and "1 MiB limit" in err.reason
    assert read_limit() == MAX_READ_BYTES
    (tmp_path / "d").mkdir()
    files = [_slice(tmp_path / "d", pixels=fac.pattern(300, 300, 0))]  # 300 x 300 x (2 + 4) bytes
    with read_limit_set(1 << 19):
        code, _ = _outcome(files, tmp_path / "d")
    assert code == "too_large"
    assert _outcome(files, tmp_path / "d")[0] == "read"
    with pytest.raises(ValueError), read_limit_set(0):
        pass
