"""The export stage end to end on a tiny phantom whose DICOM headers carry planted identifiers: files and
manifest complete, byte-identical across runs, regenerable, valid DICOM with the right geometry, nothing
identifying in any output or log, and the memorisation gate drops a planted copy of a training slice."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml

from pipeline.config import parse_section
from pipeline.errors import PipelineStateError
from pipeline.export.run import export
from pipeline.export.samples import Sample
from pipeline.preprocess.store import load_slices
from tests.helpers import all_text_of, run_stage, tiny_params

pytestmark = pytest.mark.slow

PLANTED = {
    "PatientName": "Zyxwv^Qutsr",
    "PatientID": "MRN-99887766",
    "PatientBirthDate": "19450317",
    "AccessionNumber": "ACC5551234",
    "InstitutionName": "Hospital Qwertyuiop",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """params.yaml, preprocessed tiny phantom (identifiers planted in its DICOM), trained AE, U-Net and
    cGANs."""
    root = tmp_path_factory.mktemp("export")
    params = tiny_params(root / "raw")
    params["export"]["memorisation"]["max_flagged_fraction"] = 1.0  # a 2-epoch GAN; the gate is tested below
    params["preprocess"]["data_root"] = str(root / "raw")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for f in sorted((root / "raw").rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        for key, value in PLANTED.items():
            setattr(ds, key, value)
        ds.save_as(f)
    # the stage, not the library call, so its lineage records the raw files and their root
    for stage in ("preprocess", "train_ae", "train_seg"):
        assert run_stage(stage, root) == 0
    for variant in ("mask2image", "label2image"):
        assert run_stage("train_cgan", root, "--variant", variant) == 0
    return root


def _export(root: Path, variant: str, out: str) -> int:
    return run_stage("export", root, "--variant", variant, "--out", out, "--metrics", f"{out}.json")


@pytest.fixture(scope="module")
def exported(project: Path) -> Path:
    for variant in ("mask2image", "label2image"):
        assert _export(project, variant, f"data/export/{variant}") == 0
    return project / "data" / "export"


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_export_writes_a_complete_dataset(exported: Path) -> None:
    import hashlib

    from monai.data import load_decathlon_datalist

    m2i = exported / "mask2image"
    rows = _rows(m2i)
    metrics = json.loads((m2i.parent / "mask2image.json").read_text())
    assert metrics["n_requested"] == 10 and len(rows) == metrics["n_released"] >= 1
    for row in rows:
        for role in ("image_nifti", "mask_nifti", "image_dicom", "seg_dicom"):
            data = (m2i / row[role]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row[f"{role}_sha256"], (row["sample_id"], role)
        assert row["condition_source"] in {"training_mask", "deformed_mask"} and int(row["seed"]) > 0
        image = nib.load(m2i / row["image_nifti"])
        mask = nib.load(m2i / row["mask_nifti"])
        assert image.shape == mask.shape == (48, 48, 1) and np.allclose(image.affine, mask.affine)
        assert int(np.asarray(mask.dataobj).sum()) == int(row["lesion_pixels"])
        assert (int(row["lesion_pixels"]) > 0) == (row["label"] == "1")
    listed = load_decathlon_datalist(str(m2i / "dataset.json"), True, "training", str(m2i))
    assert len(listed) == len(rows) and all(Path(d["label"]).is_file() for d in listed)
    for name in ("dataset_card.md", "memorisation.csv", "lineage.json", "samples.png"):
        assert (m2i / name).is_file(), name
    assert "SYNTHETIC" in (m2i / "dataset_card.md").read_text()

    assert {r["mask_source"] for r in rows} == {"condition"}

    # label2image: the drawn label, and the train_seg U-Net's lesion mask as labelsTr + an AUTOMATIC SEG
    l2i = exported / "label2image"
    rows = _rows(l2i)
    metrics = json.loads((l2i.parent / "label2image.json").read_text())
    assert rows and all(r["condition_source"] == "label" and r["mask_source"] == "segmenter" for r in rows)
    for row in rows:
        for role in ("image_nifti", "mask_nifti", "image_dicom", "seg_dicom"):
            data = (l2i / row[role]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row[f"{role}_sha256"], (row["sample_id"], role)
        mask = np.asarray(nib.load(l2i / row["mask_nifti"]).dataobj)
        assert int(mask.sum()) == int(row["lesion_pixels"]) and row["lesion_added"] == ""
        seg = pydicom.dcmread(l2i / row["seg_dicom"])
        assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    listed = load_decathlon_datalist(str(l2i / "dataset.json"), True, "training", str(l2i))
    assert [d["class"] for d in listed] == [r["label"] for r in rows]
    agree = metrics["label_mask_agreement"]
    assert agree["n_abnormal"] + agree["n_normal"] == len(rows)
    for key in ("abnormal_with_lesion", "normal_without_lesion"):
        assert agree[key] is None or 0.0 <= agree[key] <= 1.0
    record = json.loads((l2i / "lineage.json").read_text())
    assert record["segmenter"]["file"] == "models/train_seg/model.pt"
    assert "predictions, not ground truth" in (l2i / "dataset_card.md").read_text()


def test_export_is_byte_identical_across_runs(project: Path, exported: Path) -> None:
    assert _export(project, "mask2image", "data/export_again") == 0
    first, second = exported / "mask2image", project / "data" / "export_again"
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    shutil.rmtree(second)


def test_regenerate_rebuilds_every_file_byte_for_byte(project: Path, exported: Path) -> None:
    from pipeline.cli import main

    for variant in ("mask2image", "label2image"):
        row = _rows(exported / variant)[-1]
        cwd = os.getcwd()
        os.chdir(project)
        try:
            assert main(["regenerate", f"data/export/{variant}/{row['image_dicom']}"]) == 0
        finally:
            os.chdir(cwd)


def test_regenerate_and_lineage_notice_a_changed_file(project: Path, exported: Path, tmp_path: Path) -> None:
    from pipeline.export.regenerate import regenerate
    from pipeline.lineage.chain import sample_chain

    copy = project / "data" / "export_tampered"
    shutil.copytree(exported / "mask2image", copy)
    row = _rows(copy)[0]
    target = copy / row["image_nifti"]
    data = target.read_bytes()
    target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    report = regenerate(target, project)
    assert not report["identical"]
    assert [f["identical"] for f in report["files"] if f["role"] == "image_nifti"] == [False]
    chain = sample_chain(target, project, dvc_status=False)
    assert not chain["ok"] and chain["checks"][0]["status"] == "CHANGED"
    assert [s["stage"] for s in chain["stages"]] == [
        "export@mask2image",
        "train_cgan@mask2image",
        "preprocess",
    ]
    good = sample_chain(exported / "mask2image" / row["image_nifti"], project, dvc_status=False)
    assert good["ok"] and good["raw_inputs"]["n_files"] > 0 and good["raw_inputs"]["match"] > 0
    shutil.rmtree(copy)


def test_lineage_of_a_label2image_mask_names_the_segmenter(project: Path, exported: Path) -> None:
    from pipeline.lineage.chain import sample_chain

    row = _rows(exported / "label2image")[0]
    chain = sample_chain(exported / "label2image" / row["seg_dicom"], project, dvc_status=False)
    assert chain["ok"] and chain["sample"]["mask_source"] == "segmenter"
    assert [s["stage"] for s in chain["stages"]] == [
        "export@label2image",
        "train_cgan@label2image",
        "train_seg",
        "preprocess",
    ]
    assert any(c["what"].startswith("segmenter") and c["status"] == "match" for c in chain["checks"])


def test_exported_dicom_opens_as_one_series_with_the_nifti_geometry(exported: Path) -> None:
    m2i = exported / "mask2image"
    row = _rows(m2i)[0]
    folder = m2i / "dicom" / row["sample_id"]
    image = pydicom.dcmread(folder / "image.dcm")
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder), image.SeriesInstanceUID)
    assert len(files) == 1
    reader.SetFileNames(files)
    dcm = reader.Execute()
    nii = sitk.ReadImage(str(m2i / row["image_nifti"]))
    assert dcm.GetSize() == nii.GetSize()
    assert np.allclose(dcm.GetOrigin(), nii.GetOrigin(), atol=1e-4)
    assert np.allclose(dcm.GetSpacing()[:2], nii.GetSpacing()[:2])
    assert np.allclose(
        np.reshape(dcm.GetDirection(), (3, 3))[:, :2], np.reshape(nii.GetDirection(), (3, 3))[:, :2]
    )
    assert np.abs(sitk.GetArrayFromImage(dcm) - sitk.GetArrayFromImage(nii)).max() < 1e-4
    seg = pydicom.dcmread(folder / "seg.dcm")
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == image.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert image.ConversionType == "SYN" and list(image.ImageType)[:2] == ["DERIVED", "SECONDARY"]


def test_dciodvfy_reports_no_errors(exported: Path) -> None:
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("CI") or os.environ.get("MEDSYNTH_REQUIRE_SHARED") == "1":
            pytest.fail("dciodvfy (Debian package dicom3tools) is required in CI")
        pytest.skip("dciodvfy not installed (apt install dicom3tools)")
    for variant in ("mask2image", "label2image"):
        row = _rows(exported / variant)[0]
        for name in ("image.dcm", "seg.dcm"):
            path = exported / variant / "dicom" / row["sample_id"] / name
            out = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
            errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
            assert not errors, (variant, name, errors)


def test_no_planted_identifier_reaches_the_export(exported: Path) -> None:
    blob = all_text_of(exported)
    for key, value in PLANTED.items():
        for needle in {value, value.replace("^", " "), value.split("^")[0]}:
            assert needle.encode() not in blob, f"{key} leaked into the export"
    assert b"DEMO^CASE" not in blob and b"DEMO-0" not in blob  # the phantom's own patient names and IDs


def _library_export(project: Path, out: Path, action: str) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["export"]["memorisation"]["action"] = action
    cfg = parse_section(params, "export")
    common = parse_section(params, "common")
    return export(
        cfg,
        common,
        "mask2image",
        project / "data" / "preprocess",
        project / "models" / "train_cgan" / "mask2image" / "model.pt",
        project / "models" / "train_ae" / "model.pt",
        out,
        "test",
        "0",
        None,
    )


def _plant_copy(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sample 3 an exact copy of a training slice (image and its lesion mask)."""
    import pipeline.export.run as run

    train = load_slices(project / "data" / "preprocess" / "slices" / "train")
    row = int(np.argmax([float(r["foreground_fraction"]) for r in train.rows]))
    real_build = run.build_sample

    def build(cfg, gen, index, *args, **kwargs) -> Sample:  # type: ignore[no-untyped-def]
        s = real_build(cfg, gen, index, *args, **kwargs)
        if index != 3:
            return s
        image = np.array(train.image[row], np.float32)
        lesion = np.asarray(train.mask[row]) > 0
        return Sample(s.sample_id, s.index, s.seed, s.condition, image, lesion, False)

    monkeypatch.setattr(run, "build_sample", build)


def test_memorisation_gate_drops_a_planted_training_copy(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plant_copy(project, monkeypatch)
    out = tmp_path / "gated"
    metrics = _library_export(project, out, "drop")
    with open(out / "memorisation.csv", newline="") as fh:
        mem = {r["sample_id"]: r for r in csv.DictReader(fh)}
    planted = mem["mask2image_0003"]
    assert (
        planted["flagged"] == "1" and planted["released"] == "0" and float(planted["nn_detail_corr"]) > 0.999
    )
    assert "mask2image_0003" not in {r["sample_id"] for r in _rows(out)}
    assert not list(out.rglob("mask2image_0003*")) and metrics["n_flagged"] >= 1


def test_memorisation_gate_can_fail_the_stage_and_write_nothing(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plant_copy(project, monkeypatch)
    out = tmp_path / "failed"
    with pytest.raises(PipelineStateError, match="mask2image_0003"):
        _library_export(project, out, "fail")
    assert not out.exists()


def test_lineage_reports_an_edited_raw_file(project: Path, exported: Path) -> None:
    from pipeline.cli import main

    sample = sorted((exported / "mask2image" / "imagesTr").iterdir())[0]
    raw = sorted((project / "raw").rglob("*.dcm"))[0]
    original = raw.read_bytes()
    cwd = os.getcwd()
    os.chdir(project)
    try:
        assert main(["lineage", str(sample.relative_to(project)), "--json"]) == 0
        raw.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        assert main(["lineage", str(sample.relative_to(project))]) == 1
    finally:
        raw.write_bytes(original)
        os.chdir(cwd)
    from pipeline.lineage.chain import sample_chain

    raw.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        chain = sample_chain(sample, project, dvc_status=False)
    finally:
        raw.write_bytes(original)
    assert not chain["ok"] and chain["raw_inputs"]["CHANGED"] == 1
    assert chain["raw_inputs"]["changed_or_missing"] == [raw.relative_to(project).as_posix()]


def test_export_without_a_trained_generator_is_a_clear_error(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert run_stage("export", project, "--variant", "mask2image", "--model", "models/nope/model.pt") == 3
    assert "models/nope/model.pt" in caplog.text and "train it first" in caplog.text
