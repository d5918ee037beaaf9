"""Differentiable augmentation of the discriminator's inputs (DiffAugment, Zhao et al. 2020) with an
adaptive probability (ADA, Karras et al. 2020), for single-channel images in [0, 1].

The same kind of augmentation is applied to real and generated batches, each op to each sample with
probability ``p``; every op is differentiable in the image, so the generator is trained through it. Ops:

* ``translation``: integer shift of up to 1/8 of the size per spatial axis, zeros shifted in.
* ``cutout``: a square (cube) of half the size per axis at a random centre set to 0 (background).
* ``brightness``: add U(-0.25, 0.25) (DiffAugment's ±0.5 on [-1, 1] scaled to the [0, 1] range).
* ``contrast``: scale around the sample's mean by U(0.5, 1.5).

No colour or saturation ops (one channel) and no clamping (it would cut gradients; D sees both sides alike).
With conditioning maps (mask2image) the geometric ops move and cut the maps exactly like the image, so D still
sees aligned pairs; intensity ops touch the image only. Works for 2D (B, C, H, W) and 3D (B, C, D, H, W).

Random numbers are drawn on the CPU (from ``generator``, or the global RNG), so a seeded run augments the
same way on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError

OPS: tuple[str, ...] = ("translation", "cutout", "brightness", "contrast")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
BRIGHTNESS_RANGE = 0.25
CONTRAST_RANGE = (0.5, 1.5)
P_MAX = 0.8  # ADA caps p: above about 0.8 augmentations start to leak into the generated images

__all__ = ["OPS", "P_MAX", "AdaptiveP", "diff_augment"]


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device).cpu()


def _randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(low, high, shape, generator=generator, device=device).cpu()


def _shift_axis(x: torch.Tensor, axis: int, shift: torch.Tensor) -> torch.Tensor:
    """out[b, …, i, …] = x[b, …, i - shift[b], …] along ``axis``, zero where that leaves the image."""
    size = x.shape[axis]
    pad = [0, 0] * (x.ndim - 2)
    pad[2 * (x.ndim - 1 - axis)] = 1  # F.pad lists the last axis first
    pad[2 * (x.ndim - 1 - axis) + 1] = 1
    padded = F.pad(x, pad)
    view = [1] * x.ndim
    view[axis] = size
    per_sample = shift.to(x.device).view(-1, *[1] * (x.ndim - 1))
    index = (
        (torch.arange(size, device=x.device).view(view) - per_sample + 1).clamp(0, size + 1).expand(x.shape)
    )
    return torch.gather(padded, axis, index)


def _cutout_keep(x: torch.Tensor, applied: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A (B, 1, *S) float mask: 0 inside each applied sample's cutout box, 1 elsewhere."""
    batch, spatial = x.shape[0], x.shape[2:]
    inside = applied.to(x.device).view(batch, *[1] * (x.ndim - 1))
    for axis, size in enumerate(spatial, start=2):
        length = int(size * CUTOUT_RATIO + 0.5)
        centre = _randint(0, size + (1 - length % 2), (batch,), generator).to(x.device)
        lo = (centre - length // 2).view(batch, *[1] * (x.ndim - 1))
        view = [1] * x.ndim
        view[axis] = size
        coord = torch.arange(size, device=x.device).view(view)
        inside = inside & (coord >= lo) & (coord < lo + length)
    return (~inside).to(x.dtype)


@overload
def diff_augment(
    x: torch.Tensor, ops: Sequence[str], p: float, generator: torch.Generator | None = None, cond: None = None
) -> torch.Tensor: ...


@overload
def diff_augment(
    x: torch.Tensor,
    ops: Sequence[str],
    p: float,
    generator: torch.Generator | None = None,
    *,
    cond: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def diff_augment(
    x: torch.Tensor,
    ops: Sequence[str],
    p: float,
    generator: torch.Generator | None = None,
    cond: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Augment ``x`` (B, C, *S) with ``ops`` in the given order, each op to each sample with probability
    ``p``. Returns x' (same shape), or (x', cond') when conditioning maps ``cond`` (B, Cc, *S) are given:
    they get the same translation and cutout as x, no intensity op. p ≤ 0 or no ops returns the inputs as
    they are. Unknown op names raise ConfigError."""
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ConfigError(f"train_cgan.diffaugment: unknown op(s) {unknown}; choose from {', '.join(OPS)}")
    if cond is not None and (cond.shape[0] != x.shape[0] or cond.shape[2:] != x.shape[2:]):
        raise ValueError(f"cond {tuple(cond.shape)} must match x {tuple(x.shape)} in batch and spatial size")
    if p <= 0 or not ops or x.shape[0] == 0:
        return x if cond is None else (x, cond)
    batch = x.shape[0]
    bshape = (batch, *[1] * (x.ndim - 1))
    for op in ops:
        applied = _rand((batch,), generator) < p
        if op == "translation":
            for axis, size in enumerate(x.shape[2:], start=2):
                r = int(size * TRANSLATION_RATIO + 0.5)
                shift = _randint(-r, r + 1, (batch,), generator) * applied
                x = _shift_axis(x, axis, shift)
                if cond is not None:
                    cond = _shift_axis(cond, axis, shift)
        elif op == "cutout":
            keep = _cutout_keep(x, applied, generator)
            x = x * keep
            if cond is not None:
                cond = cond * keep.to(cond.dtype)
        elif op == "brightness":
            delta = (_rand((batch,), generator) * 2 - 1) * BRIGHTNESS_RANGE * applied
            x = x + delta.to(device=x.device, dtype=x.dtype).view(bshape)
        else:  # contrast
            lo, hi = CONTRAST_RANGE
            factor = torch.where(applied, lo + _rand((batch,), generator) * (hi - lo), torch.ones(batch))
            mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
            x = (x - mean) * factor.to(device=x.device, dtype=x.dtype).view(bshape) + mean
    return x if cond is None else (x, cond)


class AdaptiveP:
    """ADA's augmentation probability controller (Karras et al. 2020).

    ``update(r)`` takes an overfitting signal r_t in [-1, 1] (the caller's choice; train_cgan passes
    ``d_rank_sign``, E[sign(D(real) - D(fake))], rather than the paper's E[sign(D(real))], which a PatchGAN's
    shared logit offset breaks) and moves p by ``speed`` towards keeping r_t at
    ``target``: up when D is over-confident on reals (r_t > target), down when below, unchanged when equal;
    p stays within [0, P_MAX]. ``target`` 0 means a fixed p (update does nothing). The step is per call: the
    caller chooses the interval (every step, every N steps, or per epoch) and sizes ``speed`` to it."""

    def __init__(self, p_init: float, target: float, speed: float) -> None:
        if not 0.0 <= p_init <= 1.0:
            raise ConfigError(f"train_cgan.ada_p_init must be in [0, 1], got {p_init}")
        if not 0.0 <= target <= 1.0:
            raise ConfigError(f"train_cgan.ada_target must be in [0, 1], got {target}")
        if speed < 0:
            raise ConfigError(f"train_cgan.ada_speed must be >= 0, got {speed}")
        self.p, self.target, self.speed = float(p_init), float(target), float(speed)
        self.last_r: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.target > 0

    def update(self, real_sign_mean: float) -> float:
        """Adjust p from the latest r_t; returns the new p."""
        r = float(real_sign_mean)
        self.last_r = r
        if not self.adaptive or r == self.target:
            return self.p
        step = self.speed if r > self.target else -self.speed
        self.p = min(max(self.p + step, 0.0), P_MAX)
        return self.p

    def state_dict(self) -> dict[str, Any]:
        """Plain floats (safe for ``torch.load(weights_only=True)``); target and speed come from config."""
        return {"p": float(self.p)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
