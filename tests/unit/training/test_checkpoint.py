"""Checkpoint and weights files: safe types only, atomic, RNG round trip, clear errors."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import load_params, parse_section
from pipeline.errors import InputDataError, PipelineStateError
from pipeline.evaluate.privacy import _load_discriminator
from pipeline.metrics.features import AeFeatures, load_segmenter
from pipeline.training.checkpoint import (
    TrainingState,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    rebuilding_from,
    restore_rng_state,
    save_checkpoint,
    save_weights,
)
from tests.conftest import REPO_ROOT


def _state() -> TrainingState:
    net = nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    return TrainingState(
        run_key="abc", task="t", epoch=2, global_step=30,
        modules={"net": net.state_dict()}, optimizers={"opt": opt.state_dict()},
        schedulers={"cos": sched.state_dict()}, extra={"p": 0.5, "ema": {"w": torch.zeros(2)}},
        best_metric=0.9, best_epoch=1, monitor="dice", history=[{"epoch": 0.0, "val/dice": 0.9}],
        rng=capture_rng_state(), config={"epochs": 4},
    )  # fmt: skip


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    state = _state()
    save_checkpoint(tmp_path / "last.pt", state)
    back = load_checkpoint(tmp_path / "last.pt")
    assert (back.run_key, back.epoch, back.global_step, back.best_epoch) == ("abc", 2, 30, 1)
    assert back.history == state.history and back.extra["p"] == 0.5
    assert torch.equal(back.modules["net"]["weight"], state.modules["net"]["weight"])
    assert back.optimizers["opt"]["state"][0]["exp_avg"].shape == (2, 3)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary behind


def test_rng_state_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = (random.random(), float(np.random.randn()), float(torch.rand(())))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(state)
    assert (random.random(), float(np.random.randn()), float(torch.rand(()))) == expected


def test_unreadable_checkpoints_raise_input_data_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last.pt", _state())
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:100])
    with pytest.raises(InputDataError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(InputDataError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(InputDataError):
        load_checkpoint(tmp_path / "other.pt")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"format": "medsynth-checkpoint", "module": nn.Linear(2, 2)}, tmp_path / "evil.pt")
    with pytest.raises(InputDataError):
        load_checkpoint(tmp_path / "evil.pt")


def test_weights_files(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    save_weights(tmp_path / "w.pt", {"net": net}, {"spatial_dims": 2, "channels": (8, 16)})
    states, meta = load_weights(tmp_path / "w.pt")
    assert meta == {"channels": [8, 16], "spatial_dims": 2}
    fresh = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    fresh.load_state_dict(states["net"])
    assert torch.equal(fresh[0].weight, net[0].weight)
    with pytest.raises(PipelineStateError):
        save_weights(tmp_path / "bad.pt", {"net": net}, {"x": object()})
    save_checkpoint(tmp_path / "best.pt", _state())
    states, meta = load_weights(tmp_path / "best.pt")  # a training checkpoint works too
    assert set(states) == {"net"} and meta["epoch"] == 2 and meta["run_key"] == "abc"


def test_rebuilding_from_names_the_file_for_every_metadata_failure(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    for error in (KeyError("config"), ValueError("1 validation error"), RuntimeError("size mismatch\nmore")):
        with pytest.raises(InputDataError) as info, rebuilding_from(path):
            raise error
        assert info.value.file == str(path) and info.value.code == "bad_meta"
        assert type(error).__name__ in info.value.reason and "\n" not in info.value.reason
    with pytest.raises(PipelineStateError), rebuilding_from(path):  # not a metadata problem: passes through
        raise PipelineStateError("no case left")


def test_every_loader_refuses_damaged_metadata_naming_the_file(tmp_path: Path) -> None:
    # The autoencoder, U-Net and discriminator loaders share the generator's handling (rebuilding_from).
    cases = [
        ("train_ae", "net", lambda p: AeFeatures(p, torch.device("cpu"))),
        ("train_seg", "net", lambda p: load_segmenter(p, torch.device("cpu"))),
        ("train_cgan", "discriminator", lambda p: _load_discriminator(p, torch.device("cpu"))),
    ]
    for stage, module, load in cases:
        path = tmp_path / f"{stage}.pt"
        save_weights(path, {module: nn.Linear(2, 2)}, {"stage": stage, "config": {"channels": "wide"}})
        with pytest.raises(InputDataError) as info:
            load(path)
        assert info.value.file == str(path) and info.value.code == "bad_meta", stage


def test_a_3d_unet_is_refused_by_the_2d_feature_loader_as_such(tmp_path: Path) -> None:
    params = copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))
    params["train_seg"]["spatial_dims"] = 3
    cfg = parse_section(params, "train_seg").model_dump()
    path = tmp_path / "seg.pt"
    save_weights(path, {"net": nn.Linear(2, 2)}, {"stage": "train_seg", "config": cfg})
    with pytest.raises(InputDataError) as info:
        load_segmenter(path, torch.device("cpu"))
    assert info.value.code == "not_2d"  # passes through rebuilding_from, not relabelled bad_meta
