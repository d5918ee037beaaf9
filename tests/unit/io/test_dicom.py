"""Unit tests of the strict DICOM reader on tiny series written into tmp_path."""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from pipeline.config import GeometryConfig
from pipeline.errors import GeometryError, InputDataError
from pipeline.io.dicom import REJECTION_CODES, ScanResult, SeriesInfo, read_series, scan_dicom
from pipeline.io.volume import LPS_TO_RAS, to_canonical
from tests.unit.io import dicom_factory as fac

GEOM = GeometryConfig(min_slices=3, spacing_rtol=0.05, orientation_atol=0.001, max_tilt_deg=0.5)
GEOM_1 = GeometryConfig(min_slices=1, spacing_rtol=0.05, orientation_atol=0.001, max_tilt_deg=0.5)

ROWS, COLS = 6, 5
# PixelSpacing = [row spacing (between rows), column spacing (between columns)]: different on purpose
PS = (0.5, 0.8)
STEP = 2.5


def _scan(folder: Path) -> ScanResult:
    return scan_dicom(sorted(p for p in folder.rglob("*") if p.is_file()), folder)


def _only_series(folder: Path) -> SeriesInfo:
    scan = _scan(folder)
    assert scan.rejected == []
    assert len(scan.series) == 1
    return scan.series[0]


def _read(folder: Path, geometry: GeometryConfig = GEOM):
    return read_series(_only_series(folder), folder, geometry)


def _expect_code(folder: Path, code: str, geometry: GeometryConfig = GEOM) -> InputDataError:
    info = _only_series(folder)
    with pytest.raises(InputDataError) as exc_info:
        read_series(info, folder, geometry)
    assert exc_info.value.code == code, exc_info.value
    assert code in REJECTION_CODES
    return exc_info.value


def _axial_positions(n: int = 4, origin=(10.0, 20.0, 30.0)) -> list[tuple[float, float, float]]:
    return [(origin[0], origin[1], origin[2] + k * STEP) for k in range(n)]


# --------------------------------------------------------------------------------------------------
# geometry: affine and voxel placement


def test_axial_affine_and_voxels(tmp_path: Path) -> None:
    _, pixels = fac.write_series(tmp_path, _axial_positions(), pixel_spacing=PS)
    vol = _read(tmp_path)

    # Hand-computed: i (column) runs along +x (LPS) by 0.8 mm, j (row) along +y by 0.5 mm, k along +z by
    # 2.5 mm, origin (10, 20, 30) LPS; RAS flips the x and y rows.
    expected = np.array(
        [
            [-0.8, 0.0, 0.0, -10.0],
            [0.0, -0.5, 0.0, -20.0],
            [0.0, 0.0, 2.5, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(vol.affine, expected, atol=1e-9)
    assert vol.shape == (COLS, ROWS, 4)
    assert vol.array.dtype == np.float32
    for k, pix in enumerate(pixels):
        np.testing.assert_array_equal(vol.array[:, :, k], pix.T.astype(np.float32))
    assert vol.meta.source_kind == "dicom"
    assert vol.meta.modality == "MR"
    assert vol.meta.n_files == 4
    assert vol.axcodes == ("L", "P", "S")
    canon = to_canonical(vol)
    assert canon.axcodes == ("R", "A", "S")


def test_oblique_affine_is_exact(tmp_path: Path) -> None:
    iop = fac.oblique_orientation(25.0, 12.0, -7.0)
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    origin = np.array([-12.5, 40.25, 7.75])
    positions = [tuple(origin + k * 3.0 * normal) for k in range(5)]
    _, pixels = fac.write_series(tmp_path, positions, orientation=iop, pixel_spacing=PS)
    vol = _read(tmp_path)

    # world_LPS = IPP_0 + i * PS[1] * row + j * PS[0] * col + k * step (IOP/IPP written with 8/6 decimals)
    row_w = np.array([float(f"{v:.8f}") for v in row])
    col_w = np.array([float(f"{v:.8f}") for v in col])
    ipp = [np.array([float(f"{v:.6f}") for v in p]) for p in positions]
    lps = np.eye(4)
    lps[:3, 0] = row_w * PS[1]
    lps[:3, 1] = col_w * PS[0]
    lps[:3, 2] = (ipp[-1] - ipp[0]) / 4
    lps[:3, 3] = ipp[0]
    np.testing.assert_allclose(vol.affine, LPS_TO_RAS @ lps, atol=1e-9)
    # spot check: voxel (i=3, j=2, k=4) lies where DICOM puts row 2, column 3 of slice 4
    world_lps = ipp[4] + 3 * PS[1] * row_w + 2 * PS[0] * col_w
    np.testing.assert_allclose(vol.affine @ [3, 2, 4, 1], LPS_TO_RAS @ [*world_lps, 1], atol=1e-6)
    assert vol.array[3, 2, 4] == pixels[4][2, 3]
    # stays oblique after canonical reorientation (flips/permutations only), voxel sizes unchanged
    canon = to_canonical(vol)
    assert np.count_nonzero(np.abs(canon.affine[:3, :3]) > 1e-6) > 3
    np.testing.assert_allclose(sorted(canon.spacing), [0.5, 0.8, 3.0], atol=1e-6)


def test_reversed_file_order_gives_same_volume(tmp_path: Path) -> None:
    positions = _axial_positions()
    fac.write_series(tmp_path / "fwd", positions, pixel_spacing=PS)
    # same slices, files named in the opposite order of their positions
    _, pix_rev = fac.write_series(
        tmp_path / "rev",
        positions[::-1],
        pixel_spacing=PS,
        names=[f"IM{k:04d}.dcm" for k in range(4)],
    )
    fwd = _read(tmp_path / "fwd")
    rev = _read(tmp_path / "rev")
    np.testing.assert_allclose(rev.affine, fwd.affine, atol=1e-9)
    # in "rev", file k holds pattern k at position 3 - k: slice index 0 is the last file's pattern
    for k in range(4):
        np.testing.assert_array_equal(rev.array[:, :, k], pix_rev[3 - k].T)


def test_slices_descending_along_normal_are_sorted(tmp_path: Path) -> None:
    # coronal-like orientation whose normal cross(row, col) points to -y; positions listed in increasing y
    iop = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    positions = [(0.0, float(k) * 2.0, 0.0) for k in range(4)]
    fac.write_series(tmp_path, positions, orientation=iop, pixel_spacing=PS)
    vol = _read(tmp_path)
    normal = np.cross(iop[:3], iop[3:])
    # the k axis follows the slice normal, so k=0 is the slice with the largest y
    np.testing.assert_allclose(LPS_TO_RAS[:3, :3] @ vol.affine[:3, 2], 2.0 * normal, atol=1e-9)
    np.testing.assert_allclose(vol.affine[:3, 3], LPS_TO_RAS[:3, :3] @ [0.0, 6.0, 0.0], atol=1e-9)


# --------------------------------------------------------------------------------------------------
# geometry rejections


def test_gap_is_slice_increment(tmp_path: Path) -> None:
    fac.write_series(tmp_path, [(0, 0, 0), (0, 0, 2.5), (0, 0, 5.0), (0, 0, 10.0)])
    err = _expect_code(tmp_path, "slice_increment")
    assert isinstance(err, GeometryError)


def test_small_jitter_within_tolerance_is_accepted(tmp_path: Path) -> None:
    fac.write_series(tmp_path, [(0, 0, 0), (0, 0, 2.52), (0, 0, 4.98), (0, 0, 7.5)])
    assert _read(tmp_path).shape == (COLS, ROWS, 4)


def test_in_plane_wobble_is_slice_increment(tmp_path: Path) -> None:
    # first and last slice aligned with the normal, a middle slice shifted sideways by 1 mm
    fac.write_series(tmp_path, [(0, 0, 0), (1.0, 0, 2.5), (0, 0, 5.0), (0, 0, 7.5)])
    _expect_code(tmp_path, "slice_increment")


def test_gantry_tilt_is_rejected(tmp_path: Path) -> None:
    shift = STEP * math.tan(math.radians(5.0))
    fac.write_series(tmp_path, [(0, k * shift, k * STEP) for k in range(4)])
    err = _expect_code(tmp_path, "gantry_tilt")
    assert "5°" in err.reason


def test_tilt_below_limit_keeps_exact_step_vector(tmp_path: Path) -> None:
    shift = STEP * math.tan(math.radians(0.2))
    positions = [(0.0, k * shift, k * STEP) for k in range(4)]
    fac.write_series(tmp_path, positions)
    vol = _read(tmp_path)
    step_lps = np.array([float(f"{v:.6f}") for v in positions[-1]]) / 3  # first slice at the origin
    np.testing.assert_allclose(vol.affine[:3, 2], LPS_TO_RAS[:3, :3] @ step_lps, atol=1e-9)


def test_mixed_orientation(tmp_path: Path) -> None:
    iops = [fac.AXIAL] * 4
    iops[2] = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    fac.write_series(tmp_path, _axial_positions(), orientation=iops)
    _expect_code(tmp_path, "orientation")


def test_orientation_within_atol_is_accepted(tmp_path: Path) -> None:
    iops = [fac.AXIAL] * 4
    iops[1] = (1.0, 0.0005, 0.0, 0.0, 1.0, 0.0)
    fac.write_series(tmp_path, _axial_positions(), orientation=iops)
    assert _read(tmp_path).shape[2] == 4


def test_duplicate_positions_not_a_volume(tmp_path: Path) -> None:
    fac.write_series(tmp_path, [(0, 0, 0), (0, 0, 2.5), (0, 0, 2.5), (0, 0, 5.0)])
    _expect_code(tmp_path, "not_a_volume")


def test_too_few_slices(tmp_path: Path) -> None:
    fac.write_series(tmp_path, [(0, 0, 0), (0, 0, 2.5)])
    _expect_code(tmp_path, "slice_count")


def test_missing_position(tmp_path: Path) -> None:
    fac.write_series(tmp_path, [(0, 0, 0), (0, 0, 2.5), (0, 0, 5.0)])
    from pydicom import dcmread

    path = sorted(tmp_path.iterdir())[1]
    ds = dcmread(path)
    del ds.ImagePositionPatient
    ds.save_as(path)
    _expect_code(tmp_path, "missing_geometry")


def test_inconsistent_pixel_spacing(tmp_path: Path) -> None:
    fac.write_series(tmp_path, _axial_positions(3))
    from pydicom import dcmread

    path = sorted(tmp_path.iterdir())[0]
    ds = dcmread(path)
    ds.PixelSpacing = ["0.6", "0.8"]
    ds.save_as(path)
    _expect_code(tmp_path, "inconsistent_grid")


def test_inconsistent_matrix_size(tmp_path: Path) -> None:
    paths, _ = fac.write_series(tmp_path, _axial_positions(3))
    from pydicom import dcmread

    ds = dcmread(paths[0])
    fac._set_pixels(ds, np.zeros((ROWS + 1, COLS), np.int16))
    ds.save_as(paths[0])
    _expect_code(tmp_path, "inconsistent_grid")


def test_single_slice_needs_min_slices_1_and_a_step(tmp_path: Path) -> None:
    fac.write_series(tmp_path / "a", [(1.0, 2.0, 3.0)], spacing_between_slices=3.3, slice_thickness=2.0)
    _expect_code(tmp_path / "a", "slice_count", GEOM)
    vol = _read(tmp_path / "a", GEOM_1)
    assert vol.shape == (COLS, ROWS, 1)
    # SpacingBetweenSlices wins over SliceThickness; the k axis is the slice normal (+z LPS = +z RAS)
    np.testing.assert_allclose(vol.affine[:3, 2], [0.0, 0.0, 3.3], atol=1e-9)

    fac.write_series(tmp_path / "b", [(1.0, 2.0, 3.0)], slice_thickness=None)
    _expect_code(tmp_path / "b", "missing_geometry", GEOM_1)


# --------------------------------------------------------------------------------------------------
# pixel values


def test_rescale_applied_per_file(tmp_path: Path) -> None:
    paths, pixels = fac.write_series(tmp_path, _axial_positions(3), rescale=(2.5, -100.0))
    from pydicom import dcmread

    ds = dcmread(paths[1])
    ds.RescaleSlope = "0.5"
    ds.RescaleIntercept = "3"
    ds.save_as(paths[1])
    vol = _read(tmp_path)
    np.testing.assert_allclose(vol.array[:, :, 0], pixels[0].T * 2.5 - 100.0, rtol=1e-6)
    np.testing.assert_allclose(vol.array[:, :, 1], pixels[1].T * 0.5 + 3.0, rtol=1e-6)
    np.testing.assert_allclose(vol.array[:, :, 2], pixels[2].T * 2.5 - 100.0, rtol=1e-6)
    assert vol.array.dtype == np.float32


def test_rle_compressed_series(tmp_path: Path) -> None:
    paths, pixels = fac.write_series(tmp_path, _axial_positions(3))
    from pydicom import dcmread

    for p in paths:
        ds = dcmread(p)
        fac.rle_compress(ds)
        ds.save_as(p)
    vol = _read(tmp_path)
    for k, pix in enumerate(pixels):
        np.testing.assert_array_equal(vol.array[:, :, k], pix.T)


def test_file_without_preamble_and_meta_is_read(tmp_path: Path) -> None:
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = []
    for k, pos in enumerate(_axial_positions(3)):
        pix = fac.pattern(ROWS, COLS, k)
        ds = fac.make_slice(
            pixels=pix, position=pos, series_uid=series, study_uid=study, frame_uid=frame, instance=k + 1
        )
        fac.write_dataset(ds, tmp_path / f"raw{k}", file_format=False)
        pixels.append(pix)
    assert (tmp_path / "raw0").read_bytes()[128:132] != b"DICM"
    vol = _read(tmp_path)
    for k, pix in enumerate(pixels):
        np.testing.assert_array_equal(vol.array[:, :, k], pix.T)


def test_truncated_pixel_data_is_pixel_decode(tmp_path: Path) -> None:
    paths, _ = fac.write_series(tmp_path, _axial_positions(3))
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-20])
    err = _expect_code(tmp_path, "pixel_decode")
    assert err.file == paths[2].name


# --------------------------------------------------------------------------------------------------
# enhanced multi-frame


def test_enhanced_multiframe(tmp_path: Path) -> None:
    positions = [(5.0, -3.0, -10.0 + 2.0 * k) for k in range(4)][::-1]  # frames stored top to bottom
    rescale = [(1.0, 0.0), (2.0, 1.0), (1.5, -4.0), (1.0, 10.0)]
    ds, stack = fac.make_enhanced(positions=positions, pixel_spacing=PS, rescale=rescale)
    fac.write_dataset(ds, tmp_path / "enh.dcm")
    info = _only_series(tmp_path)
    assert info.number_of_frames == 4
    vol = read_series(info, tmp_path, GEOM)
    expected = np.array(
        [
            [-0.8, 0.0, 0.0, -5.0],
            [0.0, -0.5, 0.0, 3.0],
            [0.0, 0.0, 2.0, -10.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(vol.affine, expected, atol=1e-9)
    for k in range(4):
        frame = 3 - k  # frame 3 is the lowest
        slope, intercept = rescale[frame]
        np.testing.assert_allclose(vol.array[:, :, k], stack[frame].T * slope + intercept, rtol=1e-6)


def test_enhanced_with_two_temporal_positions_is_multi_stack(tmp_path: Path) -> None:
    positions = [(0.0, 0.0, 2.0 * k) for k in range(3)] * 2
    ds, _ = fac.make_enhanced(positions=positions, temporal=[1, 1, 1, 2, 2, 2])
    fac.write_dataset(ds, tmp_path / "enh.dcm")
    _expect_code(tmp_path, "multi_stack")


def test_enhanced_repeated_positions_is_not_a_volume(tmp_path: Path) -> None:
    ds, _ = fac.make_enhanced(positions=[(0.0, 0.0, 2.0 * k) for k in range(3)] * 2)
    fac.write_dataset(ds, tmp_path / "enh.dcm")
    _expect_code(tmp_path, "not_a_volume")


# --------------------------------------------------------------------------------------------------
# scan: grouping and file-level rejections


def test_scan_groups_series_and_rejects_junk(tmp_path: Path) -> None:
    fac.write_series(tmp_path / "mixed", _axial_positions(3), names=["a1", "b1", "c1"])
    fac.write_series(tmp_path / "mixed", _axial_positions(4), names=["a2", "b2", "c2", "d2"])
    rng = np.random.default_rng(0)
    (tmp_path / "mixed" / "garbage.bin").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "mixed" / "empty.dcm").write_bytes(b"")
    (tmp_path / "mixed" / "README").write_text("not a dicom file\n")
    (tmp_path / "mixed" / "dicm_junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(2000))

    scan = _scan(tmp_path)
    assert sorted(len(s.files) for s in scan.series) == [3, 4]
    for s in scan.series:
        assert all(p.is_absolute() for p in s.files)
        assert list(s.files) == sorted(s.files)
        assert (s.rows, s.columns, s.number_of_frames, s.modality) == (ROWS, COLS, 1, "MR")
        assert s.patient_key == "TEST-0001"
        assert s.description == "T1 test"
    codes = {e.file: e.code for e in scan.rejected}
    assert codes == {
        "mixed/garbage.bin": "not_dicom",
        "mixed/empty.dcm": "not_dicom",
        "mixed/README": "not_dicom",
        "mixed/dicm_junk.dcm": "not_dicom",
    }
    for s in scan.series:
        assert read_series(s, tmp_path, GEOM).shape[2] == len(s.files)


def test_scan_rejects_non_image_and_colour(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    sr = Dataset()
    sr.file_meta = fac._file_meta(fac.BASIC_TEXT_SR, generate_uid(), fac.ExplicitVRLittleEndian)
    sr.SOPClassUID = fac.BASIC_TEXT_SR
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    fac.write_dataset(sr, tmp_path / "report.dcm")

    rgb = fac.make_slice(
        pixels=np.zeros((4, 4), np.int16),
        position=(0, 0, 0),
        series_uid=generate_uid(),
        study_uid=generate_uid(),
        frame_uid=generate_uid(),
    )
    rgb.SamplesPerPixel = 3
    rgb.PhotometricInterpretation = "RGB"
    rgb.PlanarConfiguration = 0
    rgb.BitsAllocated = rgb.BitsStored = 8
    rgb.HighBit = 7
    rgb.PixelRepresentation = 0
    rgb.PixelData = bytes(4 * 4 * 3)
    fac.write_dataset(rgb, tmp_path / "rgb.dcm")

    scan = _scan(tmp_path)
    assert scan.series == []
    assert {e.file: e.code for e in scan.rejected} == {"report.dcm": "not_image", "rgb.dcm": "not_grayscale"}


def test_deeply_nested_sequence_does_not_crash(tmp_path: Path) -> None:
    paths, _ = fac.write_series(tmp_path, _axial_positions(3))
    data = paths[0].read_bytes()
    at = data.index(b"\xe0\x7f\x10\x00")  # Pixel Data tag (explicit VR LE)
    # explicit VR: (0008,1115) SQ, reserved, undefined length; items of undefined length, nested 5000 levels
    seq = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = (b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00") * 5000
    paths[0].write_bytes(data[:at] + (seq + item) * 5000 + closing + data[at:])
    scan = _scan(tmp_path)
    assert [e.file for e in scan.rejected] == [paths[0].name]
    assert scan.rejected[0].code == "not_dicom"
    assert "RecursionError" in scan.rejected[0].reason
    # the remaining two slices still form a series (rejected later only for being too few)
    assert len(scan.series) == 1 and len(scan.series[0].files) == 2


def test_read_series_never_raises_foreign_exceptions(tmp_path: Path) -> None:
    paths, _ = fac.write_series(tmp_path, _axial_positions(3))
    info = _only_series(tmp_path)
    paths[1].write_bytes(os.urandom(300))  # replaced after the scan
    with pytest.raises(InputDataError) as exc_info:
        read_series(info, tmp_path, GEOM)
    assert exc_info.value.code == "not_dicom"


# --------------------------------------------------------------------------------------------------
# no PHI in reasons, exceptions, logs or warnings

PHI = {
    "PatientName": "Smithson^Margarethe",
    "PatientID": "PID-7734219",
    "PatientBirthDate": "19450203",
    "AccessionNumber": "ACC-55501",
    "InstitutionName": "Saint Elsewhere Hospital",
    "StudyDate": "20190411",
}


def _assert_no_phi(*texts: str) -> None:
    for text in texts:
        for value in PHI.values():
            assert value not in text
            assert value.split("^")[0] not in text


def _write_phi_cases(tmp_path: Path) -> None:
    from pydicom import config, dcmread

    # geometry error (gap)
    fac.write_series(tmp_path / "gap", [(0, 0, 0), (0, 0, 2.5), (0, 0, 10.0)], phi=PHI)
    # pixel decoding error (truncated)
    paths, _ = fac.write_series(tmp_path / "trunc", _axial_positions(3), phi=PHI)
    paths[0].write_bytes(paths[0].read_bytes()[:-30])
    with config.disable_value_validation():
        # malformed numbers holding PHI: pydicom's own messages and warnings would quote them
        bad, _ = fac.write_series(tmp_path / "badnum", _axial_positions(3), phi=PHI)
        for p in bad:
            ds = dcmread(p)
            fac.set_raw(ds, 0x00280008, "IS", PHI["PatientID"])  # NumberOfFrames, not a number
            ds.save_as(p)
        slope, _ = fac.write_series(tmp_path / "badslope", _axial_positions(3), phi=PHI)
        for p in slope:
            ds = dcmread(p)
            fac.set_raw(ds, 0x00281053, "DS", PHI["AccessionNumber"])  # RescaleSlope
            ds.save_as(p)
        # malformed geometry values holding PHI
        geo, _ = fac.write_series(tmp_path / "badgeo", _axial_positions(3), phi=PHI)
        for p in geo:
            ds = dcmread(p)
            value = "\\".join([PHI["PatientBirthDate"], PHI["StudyDate"], "x" + PHI["PatientID"]])
            fac.set_raw(ds, 0x00200032, "DS", value)  # ImagePositionPatient
            ds.save_as(p)


def test_no_phi_in_errors_logs_or_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_phi_cases(tmp_path)
    caplog.set_level(logging.DEBUG)  # every logger, pydicom's included
    messages: list[str] = []
    codes: set[str] = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for folder in ("gap", "trunc", "badnum", "badslope", "badgeo"):
            scan = _scan(tmp_path / folder)
            for err in scan.rejected:
                messages += [str(err), err.reason, repr(err)]
                codes.add(err.code)
            for info in scan.series:
                messages.append(repr(info))
                with pytest.raises(InputDataError) as exc_info:
                    read_series(info, tmp_path / folder, GEOM)
                err = exc_info.value
                messages += [str(err), err.reason, err.file, repr(err)]
                codes.add(err.code)
                assert err.__cause__ is None and err.__suppress_context__
    assert codes == {"slice_increment", "pixel_decode", "bad_header", "missing_geometry"}
    assert caplog.records, "rejections are logged"
    _assert_no_phi(*messages, caplog.text, *[str(w.message) for w in caught])
