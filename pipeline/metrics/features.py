"""Feature spaces that need no downloaded weights: the project's own trained networks.

ImageNet Inception features (FID's usual space) must be downloaded and were trained on RGB photographs; the
networks here were trained on the same kind of slices, offline:
  - the reconstruction autoencoder's bottleneck code (``bottleneck_channels`` maps at 1/8 resolution, no
    skips) holds what the decoder needs to redraw a slice: "these two slices look alike";
  - the segmentation U-Net's deepest encoder level, averaged over space (one value per channel, as
    Inception's pool3 layer for FID): what the lesion finder attends to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.config import TrainAeConfig, TrainSegConfig
from pipeline.errors import InputDataError
from pipeline.models.networks import build_autoencoder, build_unet
from pipeline.training.checkpoint import load_weights, rebuilding_from

__all__ = [
    "AeFeatures",
    "SegFeatures",
    "cosine_matrix",
    "load_segmenter",
    "pixel_correlation_matrix",
    "unet_bottom",
]


class AeFeatures:
    """``__call__(images (N, H, W) float32) → (N, D) float64``: flattened autoencoder bottleneck codes."""

    def __init__(self, model_file: Path, device: torch.device, batch_size: int = 64) -> None:
        modules, meta = load_weights(model_file)
        if meta.get("stage") != "train_ae" or "net" not in modules:
            raise InputDataError(str(model_file), "not a train_ae weights file", "not_ae")
        with rebuilding_from(model_file):
            net = build_autoencoder(TrainAeConfig.model_validate(meta["config"]))
            net.load_state_dict(modules["net"])
        self.net: nn.Module = net.eval().requires_grad_(False).to(device)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size], np.float32))
            x = x[:, None].to(self.device)
            code = self.net.intermediate(self.net.encode(x))  # type: ignore[operator]
            out.append(code.flatten(1).double().cpu().numpy())
        if not out:
            return np.zeros((0, 0), np.float64)
        return np.concatenate(out)


def unet_bottom(net: nn.Module) -> nn.Module:
    """The deepest level of a MONAI ``UNet``: its blocks nest as Sequential(down, SkipConnection(inner), up)
    down to a SkipConnection whose submodule is a single block."""
    level = getattr(net, "model", None)
    while isinstance(level, nn.Sequential) and len(level) == 3:
        inner = getattr(level[1], "submodule", None)
        if inner is None:
            break
        if not isinstance(inner, nn.Sequential):
            return inner
        level = inner
    raise ValueError(f"not a MONAI UNet: no nested SkipConnection levels in {type(net).__name__}")


def load_segmenter(model_file: Path, device: torch.device) -> nn.Module:
    """The 2D U-Net of a ``train_seg`` weights file, in eval mode on ``device``."""
    modules, meta = load_weights(model_file)
    if meta.get("stage") != "train_seg" or "net" not in modules:
        raise InputDataError(str(model_file), "not a train_seg weights file", "not_seg")
    with rebuilding_from(model_file):  # an InputDataError raised inside passes through unchanged
        cfg = TrainSegConfig.model_validate(meta["config"])
        if cfg.spatial_dims != 2:
            raise InputDataError(str(model_file), "a 3D U-Net cannot embed or segment 2D slices", "not_2d")
        net = build_unet(cfg)
        net.load_state_dict(modules["net"])
    return net.eval().requires_grad_(False).to(device)


class SegFeatures:
    """``__call__(images (N, H, W) float32) → (N, C) float64``: the segmentation U-Net's deepest encoder
    features, averaged over space (C = the last of ``train_seg.channels``)."""

    def __init__(self, model_file: Path, device: torch.device, batch_size: int = 64) -> None:
        self.net = load_segmenter(model_file, device)
        self.bottom = unet_bottom(self.net)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        captured: list[torch.Tensor] = []
        hook = self.bottom.register_forward_hook(lambda _m, _i, out: captured.append(out.mean(dim=(2, 3))))
        try:
            for start in range(0, len(images), self.batch_size):
                x = torch.from_numpy(
                    np.ascontiguousarray(images[start : start + self.batch_size], np.float32)
                )
                self.net(x[:, None].to(self.device))
        finally:
            hook.remove()
        if not captured:
            return np.zeros((0, 0), np.float64)
        return torch.cat(captured).double().cpu().numpy()


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Na, Nb) cosine similarity of the rows of ``a`` and ``b`` (flattened); 0 for an all-zero row."""
    return _unit_rows(a) @ _unit_rows(b).T


def pixel_correlation_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Na, Nb) Pearson correlation between images of ``a`` and ``b`` (flattened); 0 where either image is
    constant (a blank slice copies nothing)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return cosine_matrix(a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True))
