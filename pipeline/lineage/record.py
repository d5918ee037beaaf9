"""`lineage.json`: what made an output folder (stage, params, seeds, inputs, code, packages, device)."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.io.atomic import atomic_write_text

LINEAGE_FILE = "lineage.json"
PACKAGES = (
    "medsynth",
    "torch",
    "monai",
    "numpy",
    "scipy",
    "nibabel",
    "pydicom",
    "SimpleITK",
    "highdicom",
    "dvc",
)


def code_version(repo_root: Path) -> dict[str, Any]:
    """Git commit of ``repo_root`` and whether its tracked files differ from it (None when not a repo)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo_root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {"git_commit": commit, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_lineage(
    stage: str,
    params: dict[str, Any],
    seeds: dict[str, int],
    inputs: dict[str, str],
    code: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a lineage record. ``inputs`` maps input names to sha256 taken before the run."""
    return {
        "stage": stage,
        "params": params,
        "seeds": seeds,
        "inputs": inputs,
        "code": code,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        **(extra or {}),
    }


def write_lineage(out_dir: Path, record: dict[str, Any]) -> Path:
    path = Path(out_dir) / LINEAGE_FILE
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
