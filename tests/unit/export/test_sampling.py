"""load_generator: the head mask comes from the weights file's own metadata; a damaged file names itself."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import load_params, parse_section
from pipeline.errors import InputDataError, PipelineStateError
from pipeline.export.sampling import generate, load_generator
from pipeline.models.gan import build_mask2image_generator
from pipeline.training.checkpoint import save_weights
from pipeline.training.gan import COND_CHANNELS
from tests.conftest import REPO_ROOT

SIZE = [16, 16]
CPU = torch.device("cpu")


def _config() -> dict[str, Any]:
    params = copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))
    params["train_cgan"]["variants"]["mask2image"].update({"g_channels": [4, 8], "d_channels": [4, 8]})
    return parse_section(params, "train_cgan").model_dump()


def _write(path: Path, silhouette: int | None, **meta_overrides: Any) -> Path:
    cfg = _config()
    v = parse_section({"train_cgan": cfg}, "train_cgan").variants["mask2image"]
    torch.manual_seed(0)
    g = build_mask2image_generator(v, COND_CHANNELS, silhouette_channel=silhouette)
    meta: dict[str, Any] = {"config": cfg, "variant": "mask2image", "size": SIZE, "stage": "train_cgan"}
    if silhouette is not None or "keep_key" in meta_overrides:
        meta["silhouette_channel"] = silhouette
    meta_overrides.pop("keep_key", None)
    meta.update(meta_overrides)
    save_weights(path, {"generator_ema": g}, meta)
    return path


def _masks() -> tuple[np.ndarray, np.ndarray]:
    head = np.zeros(SIZE, np.float32)
    head[3:13, 4:12] = 1.0
    return head, np.zeros(SIZE, np.float32)


@pytest.mark.parametrize("silhouette", [0, None])
def test_the_head_mask_follows_the_file(tmp_path: Path, silhouette: int | None) -> None:
    gen = load_generator(_write(tmp_path / "model.pt", silhouette, keep_key=True), CPU)
    assert gen.net.silhouette_channel == silhouette
    head, lesion = _masks()
    out = generate(gen, 3, head=head, lesion=lesion)
    outside = out[head == 0]
    if silhouette is None:
        assert (outside > 0).all()  # a sigmoid output: never exactly 0 unless masked
    else:
        assert (outside == 0).all() and (out[head == 1] > 0).all()


def test_a_file_without_the_key_loads_unmasked(tmp_path: Path) -> None:
    # Weights written before the head-masked output: they must load as they were trained.
    gen = load_generator(_write(tmp_path / "model.pt", None), CPU)
    assert gen.net.silhouette_channel is None


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"silhouette_channel": 5}, "silhouette channel 5"),
        ({"variant": "nope"}, "KeyError"),
        ({"size": [16]}, "is not (H, W)"),
        ({"config": {"variants": 3}}, "ValidationError"),
    ],
)
def test_damaged_metadata_names_the_file(tmp_path: Path, overrides: dict[str, Any], words: str) -> None:
    path = _write(tmp_path / "model.pt", 0, **overrides)
    with pytest.raises(InputDataError) as info:
        load_generator(path, CPU)
    assert info.value.file == str(path) and info.value.code == "bad_meta"
    assert "metadata does not describe a usable network" in str(info.value) and words in str(info.value)


def test_weights_that_do_not_fit_the_described_network_name_the_file(tmp_path: Path) -> None:
    # The metadata says [4, 8] channels, the stored weights come from a wider network.
    cfg = _config()
    wide = dict(cfg["variants"]["mask2image"], g_channels=[8, 16])
    v = parse_section({"train_cgan": dict(cfg, variants={"mask2image": wide})}, "train_cgan").variants[
        "mask2image"
    ]
    path = tmp_path / "model.pt"
    meta = {
        "config": cfg,
        "variant": "mask2image",
        "size": SIZE,
        "stage": "train_cgan",
        "silhouette_channel": 0,
    }
    save_weights(
        path, {"generator_ema": build_mask2image_generator(v, COND_CHANNELS, silhouette_channel=0)}, meta
    )
    with pytest.raises(InputDataError) as info:
        load_generator(path, CPU)
    assert (
        info.value.file == str(path) and info.value.code == "bad_meta" and "RuntimeError" in str(info.value)
    )


def test_a_3d_generator_is_refused_as_not_yet_supported(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.pt", 0, size=[8, 16, 16])
    with pytest.raises(PipelineStateError, match="2D samples only"):
        load_generator(path, CPU)


def test_a_file_from_another_stage_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.pt", 0, stage="train_ae")
    with pytest.raises(InputDataError) as info:
        load_generator(path, CPU)
    assert info.value.code == "not_cgan"
