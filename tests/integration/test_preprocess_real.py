"""The preprocess stage on real public scans (../shared/data)."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.preprocess.run import run_preprocess
from pipeline.preprocess.store import load_slices
from tests.conftest import shared_path
from tests.helpers import all_text_of, lineage_stub, nifti_member, preprocess_config

pytestmark = pytest.mark.shared


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tcia_oblique_gapped_series_give_images_and_masks_on_one_grid(tmp_path: Path) -> None:
    root = shared_path("tcia_pgbm001")
    # Keep the 6.5 mm slice step so slice k of the output is slice k of the source (the labels can be
    # compared one to one); resample in-plane only.
    cfg = preprocess_config(target_spacing=[1.5, 1.5, 6.5], slice_size=[160, 160], min_lesion_voxels=1)
    out = tmp_path / "pre"
    plan = run_preprocess(cfg, root, out, 1, lineage_stub())
    rows = _manifest(out)
    # two exams × (T1post, FLAIRreg), each paired with its exam's MaskTumor series
    assert len(rows) == 4 and plan["n_rejected"] == 0
    assert all(r["has_mask"] == "True" and r["oblique"] == "True" for r in rows)
    assert len({r["patient_id"] for r in rows}) == 1, "one patient → one pseudonym → one split"
    for r in rows:
        img = nifti_member(out, r["image"])
        msk = nifti_member(out, r["mask"])
        assert img.shape == msk.shape
        np.testing.assert_allclose(img.affine, msk.affine, atol=1e-6)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), [1.5, 1.5, 6.5], rtol=1e-4)

    # tumour slices labelled abnormal: per exam, the same count as the reference labels derived from the mask
    expected: dict[int, int] = defaultdict(int)
    with open(root / "slice_labels_derived.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            n_slices = 25 if "1991" in row["image_series"] else 24
            expected[n_slices] += row["label"] == "abnormal"
    split = rows[0]["split"]
    store = load_slices(out / "slices" / split)
    per_case: dict[str, list[int]] = defaultdict(list)
    for row in store.rows:
        per_case[row["case_id"]].append(int(row["label"]))
    counts = sorted((len(v), sum(v)) for v in per_case.values())
    # Each exam's two image series carry the same mask. A slice whose whole tumour falls off the grid after
    # in-plane resampling could drop out, so allow at most one slice of difference.
    for n, abnormal in counts:
        assert abs(abnormal - expected[n] / 2) <= 1, (n, abnormal, expected[n] / 2)
    assert store.image.shape[1:] == (160, 160) and store.image.dtype == np.float32
    assert float(store.image.min()) >= 0.0 and float(store.image.max()) <= 1.0
    assert set(np.unique(store.label)) == {0, 1}


def test_pyradiomics_nrrd_pairs_with_multilabel_masks(tmp_path: Path) -> None:
    root = shared_path("pyradiomics_cases", "data")
    cfg = preprocess_config(target_spacing=[1.0, 1.0, 3.0], slice_size=[128, 128])
    out = tmp_path / "pre"
    plan = run_preprocess(cfg, root, out, 1, lineage_stub())
    rows = _manifest(out)
    assert len(rows) == 4, [r["case_id"] for r in rows]
    assert all(r["has_mask"] == "True" and r["source_kind"] == "itk" for r in rows)
    assert {1, 7, 8, 9} <= set(plan["label_values"]), "the prostate phantom's label values survive resampling"


def test_planted_patient_identifiers_leave_no_trace(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Plant identifiers in real DICOM headers, run the stage as a user would, grep outputs and logs."""
    exam = next(p for p in shared_path("tcia_pgbm001", "PGBM-001").iterdir() if p.name.startswith("11-19"))
    root = tmp_path / "raw"
    planted = {
        "PatientName": "Zyxwv^Qutsr",
        "PatientID": "MRN-99887766",
        "PatientBirthDate": "19450317",
        "AccessionNumber": "ACC5551234",
        "InstitutionName": "Hospital Qwertyuiop",
        "ReferringPhysicianName": "Drplanted^Mnbvc",
    }
    for i, series in enumerate(sorted(p for p in exam.iterdir() if "FLAIR" not in p.name)):
        dest = root / f"s{i}"
        dest.mkdir(parents=True)
        for f in sorted(series.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            for key, value in planted.items():
                setattr(ds, key, value)
            ds.save_as(dest / f.name)
    # and one file that will be rejected, so error paths are covered too
    broken = pydicom.dcmread(next((root / "s0").glob("*.dcm")))
    broken.ImageOrientationPatient = [1, 0, 0, 0, 0, 1]
    broken.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.99999"
    broken.save_as(root / "s0" / "zz_rejected.dcm")

    params = tmp_path / "params.yaml"
    from tests.conftest import REPO_ROOT

    text = (REPO_ROOT / "params.yaml").read_text().replace("data_root: data/raw/demo", f"data_root: {root}")
    params.write_text(text)
    from stages.preprocess import main

    out = tmp_path / "out"
    assert main(["--params", str(params), "--out", str(out), "-v"]) == 0
    logs = capfd.readouterr()
    blob = all_text_of(out) + logs.out.encode() + logs.err.encode()
    for key, value in planted.items():
        for needle in {value, value.replace("^", " "), value.split("^")[0]}:
            assert needle.encode() not in blob, f"{key} leaked"
    assert b"PGBM-001" not in blob, "the original PatientID must not appear either"
    rows = _manifest(out)
    assert len(rows) == 1 and rows[0]["case_id"].startswith("c")
    record = json.loads((out / "lineage.json").read_text())
    assert record["inputs"]["files"], "input hashes recorded"
    shutil.rmtree(root)
