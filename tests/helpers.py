"""Helpers shared by tests (not collected: the name does not start with test_)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from pipeline.config import PreprocessConfig, load_params, parse_section
from pipeline.data.demo import generate_demo
from pipeline.preprocess.discover import discover
from pipeline.preprocess.split import assign_split
from tests.conftest import REPO_ROOT

#: What a copy of the project needs for `dvc repro` to run in it (tests that build a throwaway project).
PROJECT_FILES = (
    "pipeline",
    "stages",
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
    "pyproject.toml",
)


def preprocess_config(**overrides: Any) -> PreprocessConfig:
    """The repository's `preprocess` section with top-level keys (or nested dicts) replaced."""
    params = copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))
    section = params["preprocess"]
    for key, value in overrides.items():
        if isinstance(value, dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return parse_section(params, "preprocess")


def run_stage(name: str, root: Path, *extra: str) -> int:
    """Run ``stages.<name>`` as a user would from the project folder ``root`` (with its params.yaml)."""
    module = __import__(f"stages.{name}", fromlist=["main"])
    cwd = os.getcwd()
    os.chdir(root)
    try:
        return module.main(["--params", "params.yaml", *extra])
    finally:
        os.chdir(cwd)


def repo_params() -> dict[str, Any]:
    """A fresh copy of the repository's params.yaml as a mapping."""
    return copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))


def lineage_stub() -> dict[str, Any]:
    return {"stage": "preprocess", "params": {}, "seeds": {}, "code": {"git_commit": None, "git_dirty": None}}


def all_text_of(folder: Path) -> bytes:
    """Every byte of every file under ``folder`` (for leak checks)."""
    return b"\n".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


#: A phantom and models small enough that every stage runs in seconds.
TINY = {
    "demo_data": {
        "n_cases": 8,
        "n_nifti": 2,
        "n_oblique": 1,
        "matrix": [48, 48, 10],
        "spacing": [4.0, 4.0, 8.0],
    },
    "preprocess": {"target_spacing": [4.0, 4.0, 8.0], "slice_size": [48, 48], "workers": 1},
    "train_seg": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "train_ae": {"channels": [8, 16], "strides": [2, 2], "bottleneck_channels": 4},
    "score_anomalies": {"foreground_erosion": 1, "n_overlays": 2, "batch_size": 16},
    "train_cgan": {"n_preview": 4, "swd_samples": 16},
    "export": {"n_samples": 10},
}
TINY_CGAN = {
    "mask2image": {"g_channels": [8, 16, 32, 64], "d_channels": [8, 16, 32]},
    "label2image": {"g_channels": [32, 16, 8], "d_channels": [8, 16, 32]},
}
TINY_LOOP = {"epochs": 2, "batch_size": 8, "checkpoint_every": 1, "precision": "fp32"}


def tiny_params(raw: Path) -> dict[str, Any]:
    """The repository's params shrunk to TINY, with the tiny phantom written to ``raw`` and a split seed
    chosen so that train, val and test each get at least two of its eight patients (the split is a hash)."""
    params = copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))
    for section, values in TINY.items():
        params[section].update(values)
    for section in ("train_seg", "train_ae", "train_cgan"):
        params[section]["train"].update(TINY_LOOP)
    for variant, values in TINY_CGAN.items():
        params["train_cgan"]["variants"][variant].update(values)
    generate_demo(raw, parse_section(params, "demo_data"))
    pre = parse_section(params, "preprocess")
    found = discover(
        raw,
        mask_series_pattern=pre.mask_series_pattern,
        mask_file_suffixes=pre.mask_file_suffixes,
        default_modality="MR",
        salt=pre.pseudonym_salt,
    )
    patients = sorted({c.patient_id for c in found.cases})
    seed = next(
        s
        for s in range(1000)
        if all(
            sum(assign_split(p, s, 0.5, 0.25) == k for p in patients) >= 2 for k in ("train", "val", "test")
        )
    )
    params["preprocess"]["split"] = {"seed": seed, "train": 0.5, "val": 0.25}
    return params


def nifti_member(root: Path, ref: str):
    """The nibabel image of a stage output's NIfTI, named as in its manifest (a shard member or a file)."""
    import nibabel as nib

    from pipeline.io.shards import read_member

    return nib.Nifti1Image.from_bytes(read_member(root, ref))
