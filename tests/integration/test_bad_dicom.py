"""Malformed and odd DICOM from the pydicom / nibabel / dicom2nifti test suites (../shared/data/bad_dicom).

Every file and series ends in a correct read or a rejection with a known code; nothing raises anything else.
Files read are compared with pydicom's own decoding: ``pixel_array * slope + intercept``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.config import GeometryConfig
from pipeline.errors import InputDataError
from pipeline.io.dicom import REJECTION_CODES, read_series, scan_dicom
from tests.conftest import SHARED_DATA, shared_path

pytestmark = pytest.mark.shared

GEOM = GeometryConfig(min_slices=3, spacing_rtol=0.05, orientation_atol=0.001, max_tilt_deg=0.5)
# single files are one slice: accepted only with min_slices=1
GEOM_1 = GeometryConfig(min_slices=1, spacing_rtol=0.05, orientation_atol=0.001, max_tilt_deg=0.5)

READ = "read"

# Expected outcome of every single file ("read" or the rejection code), with the reason where not obvious.
SINGLE_FILES: dict[str, str] = {
    "CT_small.dcm": READ,
    "MR_small.dcm": READ,
    "MR_small_bigendian.dcm": READ,  # retired Explicit VR Big Endian
    "MR_small_padded.dcm": READ,  # trailing padding after the pixel data
    "MR-SIEMENS-DICOM-WithOverlays.dcm": READ,  # overlay planes are ignored
    "693_J2KI.dcm": READ,  # J2K whose BitsStored disagrees with the codestream
    "J2K_pixelrep_mismatch.dcm": READ,  # J2K unsigned data with PixelRepresentation=1
    "bad_sequence.dcm": READ,  # JPEG Lossless; invalid implicit-VR sequence with VR UN; hashed UIDs
    "eCT_Supplemental.dcm": READ,  # Enhanced CT, 2 frames, rescale in the shared functional groups
    "parametric_map_float.dcm": READ,  # Float Pixel Data, one frame, functional groups
    "MR_truncated.dcm": "pixel_decode",  # pixel data shorter than Rows × Columns
    "emri_small_jpeg_2k_lossless_too_short.dcm": "pixel_decode",  # pixel data runs past the end of the file
    "no_meta.dcm": "not_dicom",  # no preamble/meta and misaligned: force-parsing gives junk
    "dicomdirtests__TINY_ALPHA__README": "not_dicom",
    "zipMR.gz": "not_dicom",  # gzip: we do not unpack archives
    "siemens_dwi_1000.dcm.gz": "not_dicom",
    "ExplVR_BigEndNoMeta.dcm": "not_image",  # RT treatment record without meta: parsed, but no image
    "ExplVR_LitEndNoMeta.dcm": "not_image",
    "rtstruct.dcm": "not_image",
    "rtplan_truncated.dcm": "not_image",
    "test-SR.dcm": "not_image",
    "reportsi_with_empty_number_tags.dcm": "not_image",
    "waveform_ecg.dcm": "not_image",
    "dicomdirtests__DICOMDIR": "not_image",
    "dicomdirtests__DICOMDIR-empty.dcm": "not_image",
    "empty_charset_LEI.dcm": "not_image",  # two elements, no image attributes
    "UN_sequence.dcm": "not_image",
    "priv_SQ.dcm": "not_image",
    "nested_priv_SQ.dcm": "not_image",
    "no_meta_group_length.dcm": "not_image",
    "meta_missing_tsyntax.dcm": "not_image",  # Pixel Data without Rows/Columns/Bits Allocated
    "SC_rgb_small_odd.dcm": "not_grayscale",
    "SC_rgb_small_odd_big_endian.dcm": "not_grayscale",
    "GDCMJ2K_TextGBR.dcm": "not_grayscale",  # YBR_RCT, 3 samples
    "OT-PAL-8-face.dcm": "not_grayscale",  # PALETTE COLOR
    "gdcm-US-ALOKA-16.dcm": "not_grayscale",  # PALETTE COLOR with segmented LUT
    "liver_1frame.dcm": "unsupported",  # DICOM SEG
    "liver_nonbyte_aligned.dcm": "unsupported",  # DICOM SEG, 1-bit frames
    "rtdose.dcm": "unsupported",  # RT Dose grid
    "badVR.dcm": "unsupported",  # an RT Dose too (with a malformed NumberOfFrames)
    "emri_small.dcm": "unsupported",  # Enhanced MR frames without per-frame functional groups: no positions
    "decimal_rescale.dcm": "bad_header",  # stripped file: no SOP class, no SeriesInstanceUID to group by
    # secondary captures / images without patient geometry: no volume can be placed in space
    "JPEG-lossy.dcm": "missing_geometry",
    "JPEG2000-embedded-sequence-delimiter.dcm": "missing_geometry",  # also undecodable, see below
    "image_dfl.dcm": "missing_geometry",  # deflated transfer syntax decodes, see below
    # single slice with no SliceThickness (absent or empty) nor SpacingBetweenSlices: slice step unknown
    "explicit_VR-UN.dcm": "missing_geometry",
    "slicethickness_empty_string.dcm": "missing_geometry",
}

SERIES: dict[str, list[str]] = {
    "failing__gantrytilting__001": ["gantry_tilt"],
    "failing__notavolume__001": ["not_a_volume"],
    "failing__slicecount__001": ["slice_count"],
    "failing__sliceincrement__001": ["slice_increment"],
    "failing__sliceincrement__002": ["slice_increment"],
    "failing__sliceorientation__001": ["orientation"],
    # z = -99.5, 103.0, 104.3, 105.5 mm
    "test_files__dicomdirtests__77654033__CT2": ["slice_increment"],
    # 3 SeriesInstanceUIDs: one single slice, two with three orientations each
    "test_files__dicomdirtests__98892003__MR2": ["orientation", "orientation", "slice_count"],
}


def _names(sub: str) -> list[str]:
    folder = SHARED_DATA / "bad_dicom" / sub
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _params(sub: str) -> list:
    return _names(sub) or [pytest.param("<absent>", id="shared-data-absent")]


def _outcomes(files: list[Path], root: Path, geometry: GeometryConfig) -> list[tuple[str, object]]:
    """(code, error) for each rejection and ("read", Volume) for each series read."""
    scan = scan_dicom(files, root)
    out: list[tuple[str, object]] = [(e.code, e) for e in scan.rejected]
    for info in scan.series:
        try:
            out.append((READ, read_series(info, root, geometry)))
        except InputDataError as err:
            out.append((err.code, err))
    return out


def _expected_values(path: Path) -> np.ndarray:
    """pydicom's decoding plus the modality rescale (per frame for enhanced objects), shape (frames, r, c)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "128 bytes of excess padding" for MR_small_padded
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    for f in range(arr.shape[0]):
        item = ds
        for groups in (per_frame[f] if per_frame else None, shared[0] if shared else None):
            if groups is not None and groups.get("PixelValueTransformationSequence"):
                item = groups.PixelValueTransformationSequence[0]
                break
        slope = float(item.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(item.get("RescaleIntercept", 0.0) or 0.0)
        arr[f] = arr[f] * slope + intercept
    return arr


@pytest.mark.parametrize("name", _params("single_files"))
def test_single_file(name: str) -> None:
    root = shared_path("bad_dicom")
    assert name in SINGLE_FILES, f"{name}: new file in bad_dicom, add its expected outcome"
    path = root / "single_files" / name
    outcomes = _outcomes([path], root, GEOM_1)
    assert len(outcomes) == 1
    code, result = outcomes[0]
    assert code == SINGLE_FILES[name], result
    if code == READ:
        expected = _expected_values(path)
        vol = result
        assert vol.array.dtype == np.float32
        assert vol.shape == (expected.shape[2], expected.shape[1], expected.shape[0])
        # our array is (i=column, j=row, k=slice); pydicom's is (frame, row, column)
        ours = vol.array.transpose(2, 1, 0)
        # order along k may differ from frame order for multi-frame files: compare as sets of slices
        if expected.shape[0] > 1:
            ours = ours[np.argsort([float(s.sum()) for s in ours])]
            expected = expected[np.argsort([float(s.sum()) for s in expected])]
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-4)
    else:
        assert code in REJECTION_CODES
        assert isinstance(result, InputDataError)
        assert result.file.startswith("single_files/")
        assert result.reason


def test_big_endian_equals_little_endian() -> None:
    root = shared_path("bad_dicom")
    vols = [
        _outcomes([root / "single_files" / n], root, GEOM_1)[0][1]
        for n in ("MR_small.dcm", "MR_small_bigendian.dcm")
    ]
    np.testing.assert_array_equal(vols[0].array, vols[1].array)
    np.testing.assert_allclose(vols[0].affine, vols[1].affine)


def _with_geometry(src: Path, dst: Path) -> Path:
    """Copy a geometry-less image to ``dst`` (tmp_path) with a made-up axial geometry, same encoding."""
    ds = pydicom.dcmread(src)
    ds.ImagePositionPatient = ["0", "0", "0"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["1", "1"]
    ds.SliceThickness = "1"
    ds.save_as(dst)
    return dst


def test_deflated_transfer_syntax_decodes(tmp_path: Path) -> None:
    """image_dfl.dcm has no patient geometry; given one, the deflated dataset reads as pydicom decodes it."""
    src = shared_path("bad_dicom", "single_files", "image_dfl.dcm")
    dst = _with_geometry(src, tmp_path / "image_dfl_geo.dcm")
    assert (
        pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    )
    ((code, vol),) = _outcomes([dst], tmp_path, GEOM_1)
    assert code == READ
    np.testing.assert_array_equal(vol.array[:, :, 0], _expected_values(src)[0].T)


def test_corrupt_jpeg2000_is_pixel_decode(tmp_path: Path) -> None:
    """The corrupt J2K codestream, once it has a geometry, is rejected at decoding."""
    src = shared_path("bad_dicom", "single_files", "JPEG2000-embedded-sequence-delimiter.dcm")
    dst = _with_geometry(src, tmp_path / "j2k_geo.dcm")
    ((code, err),) = _outcomes([dst], tmp_path, GEOM_1)
    assert code == "pixel_decode", err


def test_all_single_files_together() -> None:
    """One scan over the whole folder: nothing raises and every file is accounted for exactly once.

    Several files share a SeriesInstanceUID (MR_small and its variants): here they form series together.
    """
    root = shared_path("bad_dicom")
    files = sorted((root / "single_files").iterdir())
    scan = scan_dicom(files, root)
    in_series = [f"single_files/{f.name}" for s in scan.series for f in s.files]
    rejected = [e.file for e in scan.rejected]
    assert sorted(in_series + rejected) == sorted(f"single_files/{f.name}" for f in files)
    for err in scan.rejected:
        assert err.code == SINGLE_FILES[Path(err.file).name]
    for info in scan.series:
        try:
            read_series(info, root, GEOM_1)
        except InputDataError as err:
            assert err.code in REJECTION_CODES


@pytest.mark.parametrize("name", _params("series"))
def test_series_folder(name: str) -> None:
    root = shared_path("bad_dicom")
    assert name in SERIES, f"{name}: new series in bad_dicom, add its expected outcome"
    files = sorted((root / "series" / name).iterdir())
    outcomes = _outcomes(files, root, GEOM)
    assert sorted(code for code, _ in outcomes) == sorted(SERIES[name]), [str(r) for _, r in outcomes]


def test_mixed_folder_single_slice_series_reads_right() -> None:
    """With min_slices=1 the single-slice series of MR2 reads; the other two series stay rejected."""
    root = shared_path("bad_dicom")
    files = sorted((root / "series" / "test_files__dicomdirtests__98892003__MR2").iterdir())
    scan = scan_dicom(files, root)
    assert sorted(len(s.files) for s in scan.series) == [1, 3, 3]
    for info in scan.series:
        if len(info.files) == 1:
            vol = read_series(info, root, GEOM_1)
            np.testing.assert_array_equal(vol.array[:, :, 0], _expected_values(info.files[0])[0].T)
        else:
            with pytest.raises(InputDataError) as exc_info:
                read_series(info, root, GEOM_1)
            assert exc_info.value.code == "orientation"
