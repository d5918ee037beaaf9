"""`dvc repro` in a fresh copy of the project: runs demo_data → preprocess, a second run does nothing, and
changing one param re-runs exactly the stage that reads it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.helpers import PROJECT_FILES

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("project")
    for rel in PROJECT_FILES:
        src = REPO_ROOT / rel
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    # small demo so the test stays fast; the full-size run is CI's `dvc repro`
    params = (dest / "params.yaml").read_text()
    params = (
        params.replace("n_cases: 16", "n_cases: 6")
        .replace("n_nifti: 4", "n_nifti: 2")
        .replace("n_oblique: 4", "n_oblique: 1")
        # 6 cases leave the gate a handful of held-out slices; the gate itself is tested in test_export
        .replace("max_flagged_fraction: 0.5 ", "max_flagged_fraction: 1.0 ")
        # usefulness trains U-Nets per arm and seed; test_evaluate checks its numbers
        .replace("seeds: [0, 1, 2]", "seeds: [0]")
        .replace("steps_per_epoch: 10 ", "steps_per_epoch: 2 ")
    )
    (dest / "params.yaml").write_text(params)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        _run(cmd, dest)
    return dest


def test_repro_then_nothing_then_exactly_the_changed_stage(project: Path) -> None:
    dvc = [sys.executable, "-m", "dvc"]
    first = _run([*dvc, "repro"], project)
    for stage in (
        "demo_data",
        "preprocess",
        "train_seg",
        "train_ae",
        "score_anomalies",
        "train_cgan@mask2image",
        "train_cgan@label2image",
        "export@mask2image",
        "export@label2image",
        "evaluate@mask2image",
        "evaluate@label2image",
    ):
        assert f"Running stage '{stage}'" in first, first
    assert (project / "data" / "preprocess" / "manifest.csv").is_file()
    assert (project / "dvc.lock").is_file()

    second = _run([*dvc, "repro"], project)
    assert "Running stage" not in second, second

    dag = _run([*dvc, "dag", "--md"], project)
    assert "demo_data" in dag and "preprocess" in dag and "-->" in dag

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["score_anomalies"]["smooth_sigma"] = 2.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([*dvc, "repro"], project)
    ran = {
        s
        for s in ("demo_data", "preprocess", "train_seg", "train_ae", "score_anomalies")
        if f"Running stage '{s}'" in third
    }
    assert ran == {"score_anomalies"}, third
    metrics = _run([*dvc, "metrics", "show"], project)
    assert "model.test.pixel.auroc" in metrics and "baseline.test.pixel.auroc" in metrics
    assert "fidelity.autoencoder.frechet.floor" in metrics and "utility.gain.mean" in metrics
    status = _run([*dvc, "status"], project)
    assert "up to date" in status.lower(), status

    # lineage walks from a preprocess output back to the demo data
    trace = _run([sys.executable, "-m", "pipeline.cli", "lineage", "data/preprocess/manifest.csv"], project)
    assert "== preprocess" in trace and "== demo_data" in trace

    # and from an exported sample through the manifest, with every recorded hash checked and DVC's verdict
    sample = sorted((project / "data" / "export" / "mask2image" / "imagesTr").iterdir())[0]
    chain = _run([sys.executable, "-m", "pipeline.cli", "lineage", str(sample.relative_to(project))], project)
    assert "OK: every recorded hash matches" in chain and "export@mask2image: up to date" in chain, chain
