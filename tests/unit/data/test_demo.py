"""The demo phantom: determinism, valid DICOM/NIfTI, consistent geometry, lesions where they belong."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from scipy import ndimage

from pipeline.config import DemoDataConfig
from pipeline.data import demo
from pipeline.errors import ConfigError
from pipeline.io.volume import LPS_TO_RAS

MASK_PATTERN = re.compile(r"(?i)mask|seg|label|lesion")
GEOMETRY_TAGS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "InstanceNumber",
    "FrameOfReferenceUID",
)


def small_cfg(**overrides: object) -> DemoDataConfig:
    values: dict[str, object] = {
        "seed": 11,
        "n_cases": 6,
        "n_nifti": 2,
        "n_oblique": 2,
        "lesion_fraction": 0.5,
        "matrix": [48, 48, 10],
        "spacing": [4.0, 4.0, 8.0],
    }
    values.update(overrides)
    return DemoDataConfig(**values)


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def dicom_volume(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real-world values (I=column, J=row, K=slice) sorted by position, and the voxel→RAS affine."""
    slices = read_series(folder)
    row, col = (np.array(slices[0].ImageOrientationPatient[i : i + 3], dtype=float) for i in (0, 3))
    normal = np.cross(row, col)
    slices.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal)))
    positions = np.array([ds.ImagePositionPatient for ds in slices], dtype=float)
    planes = []
    for ds in slices:
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        planes.append(ds.pixel_array.astype(np.float64).T * slope + intercept)
    dr, dc = (float(v) for v in slices[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * dc, col * dr
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    lps[:3, 3] = positions[0]
    return np.stack(planes, axis=-1), LPS_TO_RAS @ lps


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[demo.DemoCase]]:
    out = tmp_path_factory.mktemp("demo") / "raw" / "demo"
    return out, demo.generate_demo(out, small_cfg())


def test_same_seed_is_byte_identical_and_other_seed_differs(generated, tmp_path: Path) -> None:
    out, _ = generated
    again = tmp_path / "again"
    demo.generate_demo(again, small_cfg())
    assert file_hashes(again) == file_hashes(out)
    other = tmp_path / "other"
    demo.generate_demo(other, small_cfg(seed=12))
    first, second = file_hashes(out), file_hashes(other)
    assert first.keys() == second.keys()
    assert all(first[k] != second[k] for k in first)


def test_adding_cases_keeps_earlier_cases(generated, tmp_path: Path) -> None:
    out, _ = generated
    more = tmp_path / "more"
    demo.generate_demo(more, small_cfg(n_cases=7))
    before, after = file_hashes(out), file_hashes(more)
    before.pop("README.md")
    assert {k: after[k] for k in before} == before
    assert any(k.startswith("dicom/case006/") for k in after)


def test_layout_and_case_records(generated) -> None:
    out, cases = generated
    assert [c.name for c in cases] == [f"case{i:03d}" for i in range(6)]
    assert [c.format for c in cases] == ["nifti"] * 2 + ["dicom"] * 4
    assert [c.oblique for c in cases] == [False, False, True, True, False, False]
    assert sum(c.has_lesion for c in cases) == 3
    for c in cases:
        assert (out / c.image).exists() and (out / c.mask).exists()
        assert (c.n_lesion_voxels > 0) == c.has_lesion
    readme = (out / "README.md").read_text()
    assert "synthetic" in readme and "no patient data" in readme.replace("**", "") and "seed: 11" in readme
    assert not list(out.parent.glob(".demo.*")), "temporary folders left beside the output"


def test_dicom_files_are_valid_mr_images(generated) -> None:
    out, cases = generated
    all_sops: list[str] = []
    slopes = set()
    for case in (c for c in cases if c.format == "dicom"):
        series = {kind: read_series(out / "dicom" / case.name / kind) for kind in ("image", "mask")}
        for kind, slices in series.items():
            assert len(slices) == 10
            paths = sorted((out / "dicom" / case.name / kind).glob("*.dcm"))
            assert [p.name for p in paths] == [f"IM{n:04d}.dcm" for n in range(1, 11)]
            for path, ds in zip(paths, slices, strict=True):
                meta = ds.file_meta
                assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
                assert meta.MediaStorageSOPClassUID == ds.SOPClassUID == MRImageStorage
                assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
                assert ds.Modality == "MR" and ds.PhotometricInterpretation == "MONOCHROME2"
                assert (
                    ds.BitsAllocated == 16 and ds.BitsStored in (12, 16) and ds.PixelRepresentation in (0, 1)
                )
                assert ds.HighBit == ds.BitsStored - 1 and ds.SamplesPerPixel == 1
                assert (ds.Rows, ds.Columns) == (48, 48)
                assert (
                    ds.PatientName == f"DEMO^CASE{case.name[-3:]}"
                    and ds.PatientID == f"DEMO-{case.name[-3:]}"
                )
                assert ds.StudyDate == demo.STUDY_DATE and ds.PatientBirthDate == ""
                for tag in GEOMETRY_TAGS:
                    assert tag in ds, tag
                # pydicom round trip: writing what we read gives the same bytes back
                buffer = io.BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                assert buffer.getvalue() == path.read_bytes()
                slopes.add(float(ds.get("RescaleSlope", 1.0)))
            assert sorted(int(ds.InstanceNumber) for ds in slices) == list(range(1, 11))
            assert len({ds.SeriesInstanceUID for ds in slices}) == 1
            assert len({ds.StudyInstanceUID for ds in slices}) == 1
            assert len({ds.FrameOfReferenceUID for ds in slices}) == 1
            all_sops += [ds.SOPInstanceUID for ds in slices]
        image, mask = series["image"][0], series["mask"][0]
        assert image.StudyInstanceUID == mask.StudyInstanceUID
        assert image.FrameOfReferenceUID == mask.FrameOfReferenceUID
        assert image.SeriesInstanceUID != mask.SeriesInstanceUID
        assert not MASK_PATTERN.search(image.SeriesDescription)
        assert MASK_PATTERN.search(mask.SeriesDescription) and "lesion mask" in mask.SeriesDescription
    assert len(all_sops) == len(set(all_sops)), "SOPInstanceUIDs must be unique"
    assert slopes - {1.0}, "some case should store its signal with a non-unit RescaleSlope"


def test_mask_series_shares_the_image_geometry(generated) -> None:
    out, cases = generated
    for case in (c for c in cases if c.format == "dicom"):
        image, mask = (read_series(out / "dicom" / case.name / kind) for kind in ("image", "mask"))
        geometry = [
            {
                (tuple(ds.ImagePositionPatient), tuple(ds.ImageOrientationPatient), tuple(ds.PixelSpacing))
                for ds in s
            }
            for s in (image, mask)
        ]
        assert geometry[0] == geometry[1]
        values = np.unique(np.stack([ds.pixel_array for ds in mask]))
        assert set(values.tolist()) <= {0, 1}
        assert (values.max() == 1) == case.has_lesion


def test_file_order_is_not_always_spatial(generated) -> None:
    out, cases = generated
    orders = {}
    for case in (c for c in cases if c.format == "dicom"):
        slices = read_series(out / "dicom" / case.name / "image")
        row, col = (np.array(slices[0].ImageOrientationPatient[i : i + 3], dtype=float) for i in (0, 3))
        along = [
            float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), np.cross(row, col))) for ds in slices
        ]
        steps = np.sign(np.diff(along))
        orders[case.name] = (
            "ascending" if np.all(steps > 0) else "descending" if np.all(steps < 0) else "shuffled"
        )
    assert {"ascending", "descending", "shuffled"} <= set(orders.values())


def test_oblique_cases_have_tilted_slices(generated) -> None:
    out, cases = generated
    for case in (c for c in cases if c.format == "dicom"):
        iop = np.array(
            read_series(out / "dicom" / case.name / "image")[0].ImageOrientationPatient, dtype=float
        )
        normal = np.cross(iop[:3], iop[3:])
        tilt = math.degrees(math.acos(min(1.0, float(np.max(np.abs(normal))))))
        if case.oblique:
            assert 4.0 <= tilt <= 30.0, (case.name, tilt)
        else:
            assert tilt < 1e-6 and set(np.abs(iop).tolist()) <= {0.0, 1.0}


def test_dicom_geometry_is_the_sampled_geometry(generated) -> None:
    """The anatomy is sampled in world mm on exactly the grid the headers describe (oblique included)."""
    out, cases = generated
    cfg = small_cfg()
    for index, case in enumerate(cases):
        if case.format != "dicom":
            continue
        rendered = demo.render_case(cfg, index)
        _, affine = dicom_volume(out / "dicom" / case.name / "image")
        mask, _ = dicom_volume(out / "dicom" / case.name / "mask")
        np.testing.assert_allclose(affine, rendered.affine, atol=1e-3)
        np.testing.assert_array_equal(mask.astype(np.uint8), rendered.mask)


def test_oblique_and_axial_views_show_the_same_anatomy() -> None:
    cfg = small_cfg()
    plans = demo.plan_cases(cfg)
    oblique = next(p for p in plans if p.oblique)
    axial = dataclasses.replace(oblique, oblique=False)
    tilted = demo._render_plan(cfg, oblique, demo._dicom_grid(cfg, oblique))
    straight = demo._render_plan(cfg, axial, demo._dicom_grid(cfg, axial))
    # sample the axial brain mask (nearest voxel) at the oblique voxel centres
    idx = np.indices(tilted.brain.shape).reshape(3, -1)
    world = tilted.affine[:3, :3] @ idx + tilted.affine[:3, 3:4]
    vox = np.linalg.inv(straight.affine)[:3] @ np.vstack([world, np.ones(world.shape[1])])
    vox = np.rint(vox).astype(int)
    inside = np.all((vox >= 0) & (vox < np.array(straight.brain.shape)[:, None]), axis=0)
    same = straight.brain[tuple(vox[:, inside])] == tilted.brain.reshape(-1)[inside]
    assert same.mean() > 0.9


def test_nifti_pairs(generated) -> None:
    out, cases = generated
    codes = set()
    for case in (c for c in cases if c.format == "nifti"):
        image, mask = nib.load(out / case.image), nib.load(out / case.mask)
        assert image.shape == mask.shape == (48, 48, 10)
        np.testing.assert_array_equal(image.affine, mask.affine)
        assert image.get_data_dtype() in (np.int16, np.float32) and mask.get_data_dtype() == np.uint8
        for img in (image, mask):
            assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
            np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
        codes.add(nib.aff2axcodes(image.affine))
        values = np.asarray(mask.dataobj)
        assert set(np.unique(values).tolist()) <= {0, 1} and (values.max() == 1) == case.has_lesion
        data = image.get_fdata()
        assert data.min() >= 0.0 and 300.0 < np.percentile(data, 99) < 4000.0
    assert codes - {("R", "A", "S")}, "at least one NIfTI should not be stored in RAS order"


def test_lesions_in_about_lesion_fraction_of_cases_and_inside_the_brain(generated) -> None:
    out, cases = generated
    cfg = small_cfg()
    assert sum(c.has_lesion for c in cases) == math.floor(cfg.n_cases * cfg.lesion_fraction)
    for index, case in enumerate(cases):
        rendered = demo.render_case(cfg, index)
        assert int(rendered.mask.sum()) == case.n_lesion_voxels
        assert np.all(rendered.brain[rendered.mask > 0]), f"{case.name}: lesion voxels outside the brain"
        if case.format != "dicom" or not case.has_lesion:
            continue
        # from the files alone: lesion voxels lie well inside the head outline (scalp + skull + CSF ≥ 10 mm)
        image, _ = dicom_volume(out / "dicom" / case.name / "image")
        mask, _ = dicom_volume(out / "dicom" / case.name / "mask")
        for k in np.flatnonzero(mask.sum(axis=(0, 1))):
            head = ndimage.binary_fill_holes(image[:, :, k] > 0.2 * np.percentile(image, 99))
            depth = ndimage.distance_transform_edt(head, sampling=cfg.spacing[:2])
            assert depth[mask[:, :, k] > 0].min() >= 6.0, case.name


def test_readers_see_sensible_volumes(generated) -> None:
    out, cases = generated
    for case in (c for c in cases if c.format == "dicom"):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out / case.image)))
        image = reader.Execute()
        assert image.GetSize() == (48, 48, 10)
        np.testing.assert_allclose(image.GetSpacing(), (4.0, 4.0, 8.0), atol=1e-3)
        direction = np.array(image.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-5)
        array = sitk.GetArrayFromImage(image)
        assert array.min() >= 0.0 and 300.0 < np.percentile(array, 99) < 4000.0
        assert np.percentile(array, 10) < 100.0  # background is dark noise


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_dciodvfy_reports_no_errors(generated) -> None:
    out, cases = generated
    for case in (c for c in cases if c.format == "dicom"):
        for kind in ("image", "mask"):
            path = out / "dicom" / case.name / kind / "IM0001.dcm"
            result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
            errors = [
                line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
            ]
            assert not errors, (path, errors)


def test_replaces_output_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    cfg = small_cfg(n_cases=2, n_nifti=1, n_oblique=0)
    demo.generate_demo(out, cfg)
    assert not (out / "stale.txt").exists()
    good = file_hashes(out)

    calls = []
    real = demo._write_case

    def failing(root: Path, cfg: DemoDataConfig, plan: demo.CasePlan) -> demo.DemoCase:
        calls.append(plan.name)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(root, cfg, plan)

    monkeypatch.setattr(demo, "_write_case", failing)
    with pytest.raises(RuntimeError):
        demo.generate_demo(out, small_cfg(n_cases=2, n_nifti=1, n_oblique=0, seed=99))
    assert file_hashes(out) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_nifti": 4, "n_oblique": 3}, "exceeds n_cases"),
        ({"spacing": [1.0, 1.0, 8.0]}, "field of view"),
        ({"matrix": [48, 48, 2]}, "3 slices"),
        ({"spacing": [4.0, 0.0, 8.0]}, "positive"),
    ],
)
def test_bad_configs_are_config_errors(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        demo.generate_demo(tmp_path / "demo", small_cfg(**overrides))
    assert not (tmp_path / "demo").exists()


def test_stage_entry_point(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from stages import demo_data

    params = tmp_path / "params.yaml"
    params.write_text(
        "demo_data:\n  seed: 3\n  n_cases: 2\n  n_nifti: 1\n  n_oblique: 1\n  lesion_fraction: 0.5\n"
        "  matrix: [48, 48, 4]\n  spacing: [4.0, 4.0, 8.0]\n"
    )
    assert demo_data.main(["--params", str(params), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "README.md").exists()
    record = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert record["stage"] == "demo_data" and record["seeds"] == {"demo_data": 3}
    caplog.clear()
    params.write_text(params.read_text().replace("n_oblique: 1", "n_oblique: 5"))
    assert demo_data.main(["--params", str(params), "--out", str(tmp_path / "out2")]) == 2
    err = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(err) == 1 and "n_cases" in err[0] and "demo_data failed" in err[0]
    assert not (tmp_path / "out2").exists(), "a failed run writes nothing"
