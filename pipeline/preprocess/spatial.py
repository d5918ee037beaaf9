"""Resampling and in-plane crop/pad of canonical volumes."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing

from pipeline.io.volume import Volume


def resample(vol: Volume, target_spacing: list[float], is_mask: bool) -> Volume:
    """Resample to ``target_spacing`` mm along the volume's own axes (an oblique volume stays oblique).

    Images use trilinear interpolation, masks nearest neighbour (never anything else: interpolated labels
    would invent classes). The origin (voxel 0 centre) is kept.
    """
    if np.allclose(vol.spacing, target_spacing, rtol=1e-6, atol=1e-6):
        return vol
    spacing = Spacing(
        pixdim=tuple(target_spacing),
        diagonal=False,
        mode="nearest" if is_mask else "bilinear",
        padding_mode="border",
        dtype=torch.float32,
    )
    tensor = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(vol.array, dtype=np.float32))[None],
        affine=torch.from_numpy(vol.affine),
    )
    out = spacing(tensor)
    array = out.array[0] if hasattr(out, "array") else out.numpy()[0]
    array = np.asarray(array, dtype=np.float32)
    affine = np.asarray(out.affine, dtype=np.float64)
    return vol.with_array(array, affine)


def crop_or_pad_window(centre: float, size: int) -> int:
    """Start index of a window of ``size`` centred on ``centre`` (may be negative: padding)."""
    return int(np.floor(centre - size / 2.0 + 0.5))


def crop_pad_inplane(vol: Volume, starts: tuple[int, int], size: tuple[int, int]) -> Volume:
    """Take the in-plane window [start, start+size) on axes i and j (zeros outside the volume) and shift the
    affine so every voxel keeps its world position."""
    array = vol.array
    out = np.zeros((size[0], size[1], array.shape[2]), dtype=array.dtype)
    src_lo = [max(0, s) for s in starts]
    src_hi = [min(array.shape[a], starts[a] + size[a]) for a in range(2)]
    if src_hi[0] > src_lo[0] and src_hi[1] > src_lo[1]:
        dst_lo = [src_lo[a] - starts[a] for a in range(2)]
        out[
            dst_lo[0] : dst_lo[0] + src_hi[0] - src_lo[0],
            dst_lo[1] : dst_lo[1] + src_hi[1] - src_lo[1],
        ] = array[src_lo[0] : src_hi[0], src_lo[1] : src_hi[1]]
    shift = np.eye(4)
    shift[:3, 3] = [starts[0], starts[1], 0]
    return vol.with_array(out, vol.affine @ shift)


def is_oblique(affine: np.ndarray, atol: float = 1e-4) -> bool:
    """True when the voxel axes are not aligned with the world axes."""
    cosines = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.any((np.abs(cosines) > atol) & (np.abs(np.abs(cosines) - 1) > atol)))
