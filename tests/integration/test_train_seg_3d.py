"""train_seg with spatial_dims 3 as a stage, on the tiny phantom: patch training, sliding-window validation
and whole-volume evaluation give complete, sane outputs (no fixed score asserted), and the same params give
bit-identical weights twice on CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import parse_section
from pipeline.preprocess.run import run_preprocess
from pipeline.training.checkpoint import load_weights
from pipeline.training.seg import SegTask
from tests.helpers import lineage_stub, tiny_params

pytestmark = pytest.mark.slow

SEG_3D = {"spatial_dims": 3, "patch_size": [32, 32, 8], "channels": [8, 16, 32], "strides": [2, 2]}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder holding params.yaml (train_seg in 3D) and data/preprocess for the tiny phantom."""
    root = tmp_path_factory.mktemp("train3d")
    params = tiny_params(root / "raw")
    params["train_seg"].update(SEG_3D)
    params["train_seg"]["train"]["epochs"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run_preprocess(
        parse_section(params, "preprocess"), root / "raw", root / "data" / "preprocess", 1, lineage_stub()
    )
    return root


def _train_seg(root: Path, out: str) -> int:
    from stages.train_seg import main

    cwd = os.getcwd()
    os.chdir(root)
    try:
        return main(
            [
                "--params",
                "params.yaml",
                "--out",
                f"models/{out}",
                "--metrics",
                f"metrics/{out}.json",
                "--live",
                f"dvclive/{out}",
            ]
        )
    finally:
        os.chdir(cwd)


def _in_unit(value: object) -> bool:
    return value is None or (isinstance(value, float) and 0.0 <= value <= 1.0)


def test_train_seg_3d_outputs_and_determinism(project: Path) -> None:
    assert _train_seg(project, "first") == 0
    seg = json.loads((project / "metrics" / "first.json").read_text())
    for key in (
        "best_epoch",
        "best_val_dice_slices",
        "epochs_run",
        "resumed_from_epoch",
        "images_per_second",
        "data_wait_fraction",
        "device",
        "precision",
    ):
        assert key in seg, key
    assert seg["epochs_run"] == 2 and seg["device"] == "cpu" and seg["precision"] == "fp32"
    assert seg["spatial_dims"] == 3 and seg["patch_size"] == [32, 32, 8]
    assert seg["train_patches_per_epoch"] >= seg["samples_per_case"] >= 1
    assert seg["images_per_second"] > 0 and 0.0 <= seg["data_wait_fraction"] <= 1.0
    assert _in_unit(seg["best_val_dice_slices"])
    for split in ("val", "test"):
        report = seg[split]
        assert report["n_cases"] >= 1 and _in_unit(report["dice_mean"]), split
        assert report["hd95_unit"] == "mm" and len(report["cases"]) == report["n_cases"]
        assert all(_in_unit(c["dice"]) for c in report["cases"].values())

    out = project / "models" / "first"
    for name in ("last.pt", "best.pt", "model.pt", "lineage.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "lineage.json").read_text())["run_key"]
    states, meta = load_weights(out / "model.pt")
    assert meta["stage"] == "train_seg" and meta["config"]["spatial_dims"] == 3
    cfg = parse_section(yaml.safe_load((project / "params.yaml").read_text()), "train_seg")
    net = SegTask(cfg).net
    net.load_state_dict(states["net"])  # strict: the weights are the 3D U-Net's
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, 32, 32, 8)).shape == (1, 2, 32, 32, 8)

    assert _train_seg(project, "second") == 0
    again = load_weights(project / "models" / "second" / "model.pt")[0]["net"]
    first = states["net"]
    assert set(first) == set(again)
    assert all(torch.equal(first[k], again[k]) for k in first), "same params must give the same weights"


def test_train_cgan_mask2image_in_3d(project: Path) -> None:
    """spatial_dims 3: mask2image trains on volume patches as a stage; label2image refuses clearly."""
    from stages.train_cgan import main

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_cgan"].update({"spatial_dims": 3, "patch_size": [32, 32, 8], "n_preview": 2})
    params["train_cgan"]["train"].update({"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 3})
    params["train_cgan"]["variants"]["mask2image"].update({"g_channels": [8, 16], "d_channels": [8, 16]})
    (project / "params_cgan3d.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(project)
    try:
        args = [
            "--params",
            "params_cgan3d.yaml",
            "--out",
            "models/cgan3d",
            "--metrics",
            "metrics/cgan3d.json",
        ]
        assert main([*args, "--variant", "mask2image", "--live", "dvclive/cgan3d"]) == 0
        assert main([*args, "--variant", "label2image", "--live", "dvclive/cgan3d_l2i"]) == 2
    finally:
        os.chdir(cwd)
    metrics = json.loads((project / "metrics" / "cgan3d.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["best_val_swd"] > 0
    states, _ = load_weights(project / "models" / "cgan3d" / "model.pt")
    conv = next(v for k, v in states["generator_ema"].items() if k.endswith("weight") and v.ndim == 5)
    assert conv.ndim == 5  # 3D convolutions
    assert (project / "dvclive" / "cgan3d" / "plots" / "images" / "samples.png").is_file()
