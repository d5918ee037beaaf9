"""The fault-injection checker catches half-written outputs, and a few SIGKILLs of a tiny
demo_data → preprocess → train_seg pipeline leave nothing broken (`python -m tests.faults` runs more)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom import examples

from tests.conftest import REPO_ROOT
from tests.faults.checks import (
    Output,
    check_file,
    files_of,
    inspect,
    is_temp,
    lockfile_problem,
    recorded_temps,
)
from tests.faults.driver import Planned, plan_kills, run_faults


def _good_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "json": folder / "metrics.json",
        "csv": folder / "manifest.csv",
        "tsv": folder / "loss.tsv",
        "pt": folder / "model.pt",
        "nii": folder / "image.nii",
        "niigz": folder / "image.nii.gz",
        "npy": folder / "image.npy",
        "png": folder / "overlay.png",
        "dcm": folder / "image.dcm",
    }
    files["json"].write_text(json.dumps({"dice": 0.5, "per_case": list(range(50))}, indent=2) + "\n")
    files["csv"].write_text("case,split,slices\n" + "".join(f"c{i},train,{i}\n" for i in range(30)))
    files["tsv"].write_text("timestamp\tstep\tloss\n" + "".join(f"{i}\t{i}\t0.5\n" for i in range(30)))
    torch.save({"net": {"w": torch.arange(4096, dtype=torch.float32)}}, files["pt"])
    image = nib.Nifti1Image(np.arange(16 * 16 * 4, dtype=np.float32).reshape(16, 16, 4), np.eye(4))
    nib.save(image, files["nii"])
    files["niigz"].write_bytes(gzip.compress(image.to_bytes(), mtime=0))
    np.save(files["npy"], np.ones((8, 32, 32), np.float32))
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(files["png"])
    examples.ct.save_as(files["dcm"], enforce_file_format=True)
    return files


@pytest.mark.parametrize("kind", ["json", "csv", "tsv", "pt", "nii", "niigz", "npy", "png", "dcm"])
def test_checker_reports_a_file_cut_in_half(tmp_path: Path, kind: str) -> None:
    path = _good_files(tmp_path)[kind]
    assert check_file(path) is None, "a complete file must pass"
    data = path.read_bytes()
    cut = len(data) // 2
    if data[cut - 1 : cut] == b"\n":  # a table cut between lines reads as a shorter complete table
        cut -= 2
    path.write_bytes(data[:cut])
    assert check_file(path) is not None, f"a half-written {path.name} must be reported"


def test_inspect_reports_damage_in_every_kind_of_output(tmp_path: Path) -> None:
    root = tmp_path / "project"
    whole = root / "data" / "preprocess"
    _good_files(whole)
    models = root / "models" / "train_seg"
    _good_files(models)
    metrics = root / "metrics" / "train_seg.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"dice": 0.5}\n')
    outputs = [
        Output("preprocess", "data/preprocess", cached=True, persist=False),
        Output("train_seg", "models/train_seg", cached=True, persist=True),
        Output("train_seg", "metrics/train_seg.json", cached=False, persist=False),
    ]
    complete = {"data/preprocess": files_of(whole)}
    clean = inspect(root, outputs, complete)
    assert not clean.violations and not clean.temps and clean.files_checked == 19

    # what a kill can leave: temporaries (fine), and what it must not: cut files, half a whole output
    (models / ".last.pt.tmp-abc123").write_bytes(b"PK\x03\x04")
    (root / "data" / ".preprocess.tmp-xyz").mkdir()
    assert not inspect(root, outputs, complete).violations
    assert len(inspect(root, outputs, complete).temps) == 2

    (whole / "image.npy").unlink()
    pt = models / "model.pt"
    pt.write_bytes(pt.read_bytes()[:1000])
    metrics.write_text('{"dice": 0.')
    found = inspect(root, outputs, complete).violations
    assert any("data/preprocess: not the complete output" in v for v in found), found
    assert any(v.startswith("models/train_seg/model.pt:") for v in found), found
    assert any(v.startswith("metrics/train_seg.json:") for v in found), found


def test_recorded_temporaries_are_reported(tmp_path: Path) -> None:
    md5 = "0123456789abcdef0123456789abcdef.dir"
    listing = tmp_path / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    listing.parent.mkdir(parents=True)
    listing.write_text(
        json.dumps([{"md5": "x", "relpath": "model.pt"}, {"md5": "y", "relpath": ".model.pt.tmp-q"}])
    )
    (tmp_path / "dvc.lock").write_text(
        f"schema: '2.0'\nstages:\n  train_seg:\n    outs:\n    - path: models/train_seg\n      md5: {md5}\n"
    )
    assert recorded_temps(tmp_path) == ["train_seg: models/train_seg/.model.pt.tmp-q"]
    assert is_temp("a/.last.pt.tmp-1x/b") and is_temp(".preprocess.old-42") and not is_temp("a/last.pt")


def test_the_plan_depends_on_the_seed_only() -> None:
    stages = ["demo_data", "preprocess", "train_seg", "export@mask2image"]
    plan = plan_kills(7, stages, ["train_seg"], 10)
    assert plan == plan_kills(7, stages, ["train_seg"], 10) != plan_kills(8, stages, ["train_seg"], 10)
    assert {p.stage for p in plan[:4]} == set(stages), "each round hits every stage once"
    assert all(p.trigger != "checkpoint" for p in plan if p.stage != "train_seg")


@pytest.mark.slow
def test_kills_leave_the_tiny_pipeline_whole_and_resumable(tmp_path: Path) -> None:
    plan = [
        Planned("train_seg", "checkpoint", 0.0),  # cut after epoch 1 of 3: must resume
        Planned("preprocess", "write", 1.0),  # the moment its temporary folder appears
        Planned("demo_data", "delay", 0.7, repeat=False),  # plain `dvc repro` restores it from the cache
        Planned("train_seg", "after-command", 0.05),  # while DVC hashes and caches the outputs
        Planned("preprocess", "lock", 0.0),  # as DVC rewrites dvc.lock: usually leaves it empty (DVC's doing)
    ]
    lines: list[str] = []
    summary = run_faults(tmp_path, len(plan), seed=0, targets=["train_seg"], plan=plan, log=lines.append)
    report = "\n".join(lines + summary.lines())
    assert not summary.violations, report
    assert all(r.rerun_ok for r in summary.results), report  # dvc.lock recovered where DVC broke it
    seg = summary.results[0]
    assert seg.killed and seg.resumed and "mid-training" in seg.resumed, report
    pre = summary.results[1]
    assert pre.killed and "preprocess" in pre.ran, report
    assert ".preprocess.tmp-" not in " ".join(pre.notes), "a rerun clears its killed run's temporary folder"


def test_temporaries_of_killed_runs_are_ignored_by_git_and_dvc(tmp_path: Path) -> None:
    """A kill can leave e.g. metrics/.train_seg.json.tmp-x (metrics are committed to git) or a half-filled
    data/export/.mask2image.tmp-x/ beside an output: neither may be committed nor hashed into an output."""
    shutil.copy2(REPO_ROOT / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    leftovers = [
        "metrics/.train_seg.json.tmp-k2j4",
        "data/export/.mask2image.tmp-x9/a.nii.gz",
        "data/.preprocess.old-42",
    ]
    ignored = subprocess.run(
        ["git", "check-ignore", *leftovers], cwd=tmp_path, capture_output=True, text=True
    )
    assert ignored.stdout.split() == leftovers
    dvcignore = (REPO_ROOT / ".dvcignore").read_text().split()
    assert ".*.tmp-*" in dvcignore and ".*.old-*" in dvcignore


def test_a_cut_lock_file_is_reported_even_where_it_still_parses(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    text = (
        "schema: '2.0'\nstages:\n  demo_data:\n    outs:\n    - path: data/raw/demo\n"
        "      md5: 5fc2fbc877baec850124409f9923333f.dir\n"
        "  preprocess:\n    outs:\n    - path: data/preprocess\n"
        "      md5: 7b702aa46e7b054e19e01ccacd32ad41.dir\n"
    )
    lock.write_text(text)
    assert lockfile_problem(tmp_path, ["demo_data", "preprocess"]) is None
    lock.write_text(text[: text.index("7b702aa") + 4])  # still YAML: a shorter hash
    assert lockfile_problem(tmp_path, ["demo_data", "preprocess"]) is not None
    lock.write_text(text[: text.index("  preprocess:")])  # cut between entries
    assert "preprocess" in str(lockfile_problem(tmp_path, ["demo_data", "preprocess"]))
    lock.write_text("")
    assert lockfile_problem(tmp_path) == "empty file"
