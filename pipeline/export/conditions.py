"""What a synthetic sample is conditioned on, chosen from the sample's own seed.

Every random choice for sample ``i`` comes from ``sample_seed(export.seed, variant, i)``: which training mask
conditions it, whether that mask is deformed, how, and whether a lesion is added. So a sample can be rebuilt
alone from its manifest row (the seed and the training slices), whatever the batch size, device or the
number of other samples.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from monai.transforms import Rand2DElastic
from scipy import ndimage

from pipeline.config import ExportConfig, ExportMasksConfig
from pipeline.errors import PipelineStateError
from pipeline.preprocess.store import SliceSet
from pipeline.training.gan import head_mask

__all__ = ["Condition", "choose_condition", "condition_maps", "place_lesion", "sample_seed"]

#: Conditioning sources recorded in the manifest.
TRAINING_MASK = "training_mask"  # a training slice's head and lesion masks, as they are
DEFORMED_MASK = "deformed_mask"  # the same masks after a seeded affine + elastic deformation (+ new lesion)
LABEL = "label"  # label2image: a class label, no mask


def sample_seed(base: int, variant: str, index: int) -> int:
    """A 63-bit seed for sample ``index`` of ``variant``: sha256 of the three, so seeds of different
    variants and indices are unrelated and none depends on how many samples are drawn."""
    digest = hashlib.sha256(f"{base}:{variant}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class Condition:
    """What one sample is generated from. ``row`` indexes the train split's slice store (None for labels)."""

    source: str  # TRAINING_MASK | DEFORMED_MASK | LABEL
    label: int  # 1 abnormal (lesion present), 0 normal
    row: int | None = None
    case_id: str = ""  # pseudonymous case id of the training slice
    slice_index: int | None = None


def choose_condition(
    cfg: ExportConfig, kind: str, seed: int, store: SliceSet, candidates: np.ndarray
) -> Condition:
    """Pick sample ``seed``'s condition: a label for label2image; for mask2image one of ``candidates``
    (rows of ``store``), deformed with probability ``masks.new_fraction``."""
    rng = np.random.default_rng(seed)
    if kind == "label2image":
        return Condition(LABEL, int(rng.random() < cfg.abnormal_fraction))
    if candidates.size == 0:
        raise PipelineStateError(
            f"export: no training slice has at least {cfg.min_foreground} foreground and a known mask "
            "to condition on; lower export.min_foreground"
        )
    row = int(candidates[int(rng.integers(candidates.size))])
    deformed = bool(rng.random() < cfg.masks.new_fraction)
    meta = store.rows[row]
    return Condition(
        DEFORMED_MASK if deformed else TRAINING_MASK,
        int(store.label[row] == 1),
        row,
        str(meta["case_id"]),
        int(str(meta["slice"])),
    )


def place_lesion(head: np.ndarray, rng: np.random.Generator, radius: tuple[float, float]) -> np.ndarray:
    """A random ellipse (H, W) bool with semi-axes in ``radius`` pixels, at any angle, centred inside the head
    eroded by the larger semi-axis (so it lies within the head); empty when the head is too small for it."""
    a, b = rng.uniform(radius[0], radius[1], size=2)
    angle = rng.uniform(0.0, np.pi)
    inner = ndimage.binary_erosion(head, iterations=max(1, int(np.ceil(max(a, b)))))
    points = np.argwhere(inner)
    if points.size == 0:
        return np.zeros_like(head, dtype=bool)
    ci, cj = points[int(rng.integers(len(points)))]
    ii, jj = np.mgrid[: head.shape[0], : head.shape[1]]
    di, dj = ii - ci, jj - cj
    u = di * np.cos(angle) + dj * np.sin(angle)
    v = -di * np.sin(angle) + dj * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _deform(maps: np.ndarray, cfg: ExportMasksConfig, seed: int) -> np.ndarray:
    """Seeded affine + elastic deformation of binary maps (C, H, W), nearest neighbour (MONAI)."""
    rot = float(np.deg2rad(cfg.rotate_deg))
    warp = Rand2DElastic(
        spacing=(cfg.elastic_spacing, cfg.elastic_spacing),
        magnitude_range=(cfg.elastic_magnitude[0], cfg.elastic_magnitude[1]),
        prob=1.0,
        rotate_range=(rot,),
        scale_range=(cfg.scale, cfg.scale),
        mode="nearest",
        padding_mode="zeros",
    )
    warp.set_random_state(seed=seed % (2**32))
    out = np.asarray(warp(maps.astype(np.float32)))
    return out > 0.5


def condition_maps(
    cond: Condition, cfg: ExportMasksConfig, seed: int, store: SliceSet
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(head, lesion, lesion_added): masks (H, W) bool for a mask2image condition, rebuilt from the store and
    the seed, and whether a new lesion was placed."""
    if cond.row is None:
        raise ValueError("condition_maps: a label condition has no masks")
    image = np.asarray(store.image[cond.row], dtype=np.float32)
    head = head_mask(image)
    lesion = np.asarray(store.mask[cond.row]) > 0
    if cond.source == TRAINING_MASK:
        return head, lesion, False
    # A second generator, so the deformation does not consume the draws that chose the condition.
    rng = np.random.default_rng([seed, 1])
    head, lesion = _deform(np.stack([head, lesion]), cfg, int(rng.integers(2**32)))
    lesion &= head
    added = bool(rng.random() < cfg.lesion_probability)
    if added:
        lesion |= place_lesion(head, rng, (cfg.lesion_radius[0], cfg.lesion_radius[1]))
    return head, lesion, added
