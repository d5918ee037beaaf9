"""Load a trained conditional generator and draw one sample per seed.

A sample is generated alone (batch of one) from noise drawn on the CPU by its own ``torch.Generator(seed)``:
batched CPU convolutions may pick other kernels (and round differently) for other batch sizes, so a batch of
one is what makes "regenerate this one sample" byte-identical to the export. At 96² a sample costs a few
milliseconds, so nothing is lost that matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.config import CganVariantConfig, TrainCganConfig
from pipeline.errors import InputDataError, PipelineStateError
from pipeline.lineage.hashing import sha256_file
from pipeline.models.gan import build_label2image_generator, build_mask2image_generator
from pipeline.training.checkpoint import load_weights, rebuilding_from
from pipeline.training.gan import COND_CHANNELS, N_CLASSES, sample_noise

__all__ = ["LoadedGenerator", "generate", "load_generator"]


@dataclass(frozen=True)
class LoadedGenerator:
    net: nn.Module  # the EMA generator, eval mode, on ``device``
    variant: str
    v: CganVariantConfig
    size: tuple[int, int]
    sha256: str  # of model.pt
    run_key: str
    device: torch.device


def load_generator(model_file: Path, device: torch.device) -> LoadedGenerator:
    """The EMA generator of a ``train_cgan`` weights file (``models/train_cgan/<variant>/model.pt``)."""
    modules, meta = load_weights(model_file)
    if meta.get("stage") != "train_cgan" or "generator_ema" not in modules:
        raise InputDataError(str(model_file), "not a train_cgan weights file (no generator_ema)", "not_cgan")
    if len(meta.get("size", ())) == 3:
        raise PipelineStateError(
            f"{model_file}: a 3D generator (train_cgan.spatial_dims 3); export writes 2D samples only so far"
        )
    with rebuilding_from(model_file):
        if len(meta["size"]) != 2:
            raise ValueError(f"size {meta['size']!r} is not (H, W)")
        cfg = TrainCganConfig.model_validate(meta["config"])
        variant = str(meta["variant"])
        v = cfg.variants[variant]
        size = (int(meta["size"][0]), int(meta["size"][1]))
        if v.kind == "mask2image":
            silhouette = meta.get("silhouette_channel")
            net = build_mask2image_generator(v, COND_CHANNELS, silhouette_channel=silhouette)
        else:
            net = build_label2image_generator(v, N_CLASSES, size)
        net.load_state_dict(modules["generator_ema"])
    net.eval().requires_grad_(False)
    return LoadedGenerator(
        net.to(device), variant, v, size, sha256_file(model_file), str(meta.get("run_key", "")), device
    )


@torch.no_grad()
def generate(
    gen: LoadedGenerator,
    seed: int,
    *,
    head: np.ndarray | None = None,
    lesion: np.ndarray | None = None,
    label: int = 0,
) -> np.ndarray:
    """One sample (H, W) float32 in (0, 1): from (head, lesion) masks for mask2image, from ``label`` for
    label2image; the noise comes from ``torch.Generator().manual_seed(seed)`` on the CPU."""
    noise = sample_noise(gen.v, 1, gen.size, gen.device, torch.Generator().manual_seed(seed))
    if gen.v.kind == "mask2image":
        if head is None or lesion is None:
            raise ValueError("mask2image needs head and lesion masks")
        cond = torch.from_numpy(np.stack([head, lesion]).astype(np.float32))[None].to(gen.device)
        out = gen.net(cond, noise)
    else:
        out = gen.net(noise, torch.tensor([label], dtype=torch.int64, device=gen.device))
    return out[0, 0].float().cpu().numpy().astype(np.float32)
