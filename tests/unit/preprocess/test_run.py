"""The preprocess stage on tiny NIfTI data made here: pairing, quarantine, outputs, determinism."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import PipelineStateError
from pipeline.io.nifti import nifti_bytes
from pipeline.lineage.hashing import sha256_file
from pipeline.preprocess.run import run_preprocess
from pipeline.preprocess.store import load_slices
from tests.helpers import lineage_stub, nifti_member, preprocess_config


def _blob_case(folder: Path, name: str, seed: int, lesion: bool, affine: np.ndarray | None = None) -> None:
    rng = np.random.default_rng(seed)
    shape = (40, 44, 8)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    head = ((ii - 20) / 16.0) ** 2 + ((jj - 22) / 18.0) ** 2 < 1
    image = np.where(head, 500.0, 0.0) + rng.normal(0, 10, shape)
    mask = np.zeros(shape, np.uint8)
    if lesion:
        blob = ((ii - 22) ** 2 + (jj - 20) ** 2 < 16) & (kk >= 3) & (kk <= 5)
        mask[blob] = 1
        image[blob] += 400
    aff = affine if affine is not None else np.diag([2.0, 2.0, 5.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.nii.gz").write_bytes(nifti_bytes(image.astype(np.float32), aff, compress=True))
    (folder / f"{name}_mask.nii.gz").write_bytes(nifti_bytes(mask, aff, compress=True))


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    for i in range(6):
        _blob_case(root / ("a" if i % 2 else "b"), f"case{i}", i, lesion=i < 3)
    # an LPS-ordered case: the same anatomy stored with flipped i and j
    _blob_case(root, "lps", 99, lesion=True, affine=np.diag([-2.0, -2.0, 5.0, 1.0]))
    # bad ones: a mask on another grid, an orphan mask, a NaN volume, a 2D image, junk bytes
    _blob_case(root, "badgrid", 5, lesion=True)
    (root / "badgrid_mask.nii.gz").write_bytes(
        nifti_bytes(np.zeros((10, 10, 8), np.uint8), np.eye(4), compress=True)
    )
    (root / "orphan_mask.nii.gz").write_bytes(nifti_bytes(np.zeros((4, 4, 4), np.uint8), np.eye(4)))
    nan = np.zeros((8, 8, 8), np.float32)
    nan[0, 0, 0] = np.nan
    (root / "nan.nii").write_bytes(nifti_bytes(nan, np.eye(4)))
    (root / "flat.nii").write_bytes(nifti_bytes(np.zeros((8, 8), np.float32), np.eye(4)))
    (root / "junk.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (root / "notes.txt").write_text("ignored")
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_stage_outputs_pairing_and_quarantine(tiny_root: Path, tmp_path: Path) -> None:
    cfg = preprocess_config(slice_size=[32, 32], max_rejected_fraction=0.6)
    out = tmp_path / "out"
    plan = run_preprocess(cfg, tiny_root, out, 1, lineage_stub())
    manifest = _read_csv(out / "manifest.csv")
    rejected = {(r["file"], r["code"]) for r in _read_csv(out / "rejected.csv")}
    assert len(manifest) == 7
    assert rejected == {
        ("badgrid_mask.nii.gz", "mask_grid"),
        ("orphan_mask.nii.gz", "orphan_mask"),
        ("nan.nii", "non_finite"),
        ("flat.nii", "not_3d"),
        ("junk.nii.gz", "unreadable"),
    }
    assert plan["n_cases"] == 7 and sum(plan["slices_per_split"].values()) == 7 * 8
    for row in manifest:
        img = nifti_member(out, row["image"])
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.shape == (32, 32, 8)
        assert not row["image"].endswith(".gz"), "volumes stay uncompressed so they memory-map"
        assert row["image"].startswith("volumes/volumes-0000.tar::")
    lps = [r for r in manifest if r["original_axcodes"] == "LPS"]
    assert len(lps) == 1 and lps[0]["n_abnormal_slices"] == "3"
    total_abnormal = 0
    for split in ("train", "val", "test"):
        store = load_slices(out / "slices" / split)
        assert store.image.shape[0] == store.mask.shape[0] == store.label.shape[0] == len(store.rows)
        # labels agree with the masks they were derived from
        for k, row in enumerate(store.rows):
            assert int(row["label"]) == int((store.mask[k] > 0).sum() >= cfg.min_lesion_voxels)
        total_abnormal += int((store.label == 1).sum())
    assert total_abnormal == 4 * 3
    record = json.loads((out / "lineage.json").read_text())
    # every file under the root, read by a case (hashed in its worker) or not (hashed once in the stage)
    every = {p.relative_to(tiny_root).as_posix(): p for p in tiny_root.rglob("*") if p.is_file()}
    assert record["inputs"]["files"] == {rel: sha256_file(p) for rel, p in sorted(every.items())}
    assert "case0.nii.gz" in {Path(k).name for k in record["inputs"]["files"]}


def test_same_params_same_bytes_with_any_worker_count(tiny_root: Path, tmp_path: Path) -> None:
    cfg = preprocess_config(slice_size=[32, 32], max_rejected_fraction=0.6)
    a, b = tmp_path / "a", tmp_path / "b"
    run_preprocess(cfg, tiny_root, a, 1, lineage_stub())
    run_preprocess(cfg, tiny_root, b, 2, lineage_stub())
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_stage_fails_clearly_when_too_much_is_rejected(tiny_root: Path, tmp_path: Path) -> None:
    cfg = preprocess_config(max_rejected_fraction=0.0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("last good output")
    with pytest.raises(PipelineStateError, match="max_rejected_fraction"):
        run_preprocess(cfg, tiny_root, out, 1, lineage_stub())
    assert (out / "previous.txt").read_text() == "last good output"


def test_no_case_at_all_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    (root / "README").write_text("nothing here")
    with pytest.raises(PipelineStateError, match="no usable case"):
        run_preprocess(preprocess_config(), root, tmp_path / "out", 1, lineage_stub())


def test_cases_csv_replaces_conventions(tiny_root: Path, tmp_path: Path) -> None:
    (tiny_root / "cases.csv").write_text(
        "case,image,mask,patient\nx1,a/case1.nii.gz,a/case1_mask.nii.gz,P1\nx2,b/case0.nii.gz,,P1\n"
    )
    cfg = preprocess_config(slice_size=[32, 32])
    out = tmp_path / "out"
    run_preprocess(cfg, tiny_root, out, 1, lineage_stub(), cases_csv=tiny_root / "cases.csv")
    manifest = _read_csv(out / "manifest.csv")
    assert len(manifest) == 2 and len({r["patient_id"] for r in manifest}) == 1
    assert sorted(r["has_mask"] for r in manifest) == ["False", "True"]
    split = manifest[0]["split"]
    labels = set(np.unique(load_slices(out / "slices" / split).label).tolist())
    assert -1 in labels, "a case without a mask is unknown, not normal"
