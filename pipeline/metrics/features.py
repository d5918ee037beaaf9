"""Feature spaces that need no downloaded weights: the project's own trained autoencoder's bottleneck.

ImageNet Inception features (FID's usual space) must be downloaded and were trained on RGB photographs; the
reconstruction autoencoder was trained here, on the same kind of slices, offline. Its bottleneck code
(``bottleneck_channels`` maps at 1/8 resolution, no skips) holds what the decoder needs to redraw a slice,
which is what "these two slices look alike" should mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.config import TrainAeConfig
from pipeline.errors import InputDataError
from pipeline.models.networks import build_autoencoder
from pipeline.training.checkpoint import load_weights

__all__ = ["AeFeatures", "cosine_matrix", "pixel_correlation_matrix"]


class AeFeatures:
    """``__call__(images (N, H, W) float32) → (N, D) float64``: flattened autoencoder bottleneck codes."""

    def __init__(self, model_file: Path, device: torch.device, batch_size: int = 64) -> None:
        modules, meta = load_weights(model_file)
        if meta.get("stage") != "train_ae" or "net" not in modules:
            raise InputDataError(str(model_file), "not a train_ae weights file", "not_ae")
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
