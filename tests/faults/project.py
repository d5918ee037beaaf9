"""A throwaway copy of the project with tiny params, as its own git repository, for `dvc` to run in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO_ROOT
from tests.helpers import PROJECT_FILES, tiny_params


def tool_env() -> dict[str, str]:
    """The environment `dvc` and the stages run in: this interpreter's tools first on PATH, one BLAS thread
    per process (CPU results can depend on the thread count, and the reference and the reruns must
    match bit for bit)."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def fault_params(epochs: int = 3) -> dict[str, Any]:
    """`tests.helpers.tiny_params` plus the shrinking `tests/integration/test_dvc_repro.py` applies to export
    and evaluate, so every stage of the pipeline runs in seconds; ``epochs`` per training stage (a few, so
    that there is a run between checkpoints to cut)."""
    with tempfile.TemporaryDirectory() as scratch:  # tiny_params writes a phantom to pick its split seed
        params = tiny_params(Path(scratch) / "raw")
    for section in ("train_seg", "train_ae", "train_cgan"):
        params[section]["train"]["epochs"] = epochs
    params["export"]["memorisation"]["max_flagged_fraction"] = 1.0
    params["evaluate"]["utility"].update({"seeds": [0], "steps_per_epoch": 2, "epochs": 2})
    params["common"]["device"] = "cpu"
    params["common"]["deterministic"] = True
    return params


def make_project(dest: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy the project's code and pipeline into ``dest`` with ``params`` (default :func:`fault_params`)
    and commit it in a fresh git repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in PROJECT_FILES:
        src, target = REPO_ROOT / rel, dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    params = fault_params() if params is None else params
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "init")
    return dest
