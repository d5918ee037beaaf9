"""Datasets over the preprocess slice store, with seeded MONAI augmentation.

Augmentation randomness is drawn per sample from (seed, epoch, index), so a sample's augmentation does not
depend on the number of loader workers, the batch size or whether training was resumed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
)
from torch.utils.data import Dataset

from pipeline.config import AugmentConfig
from pipeline.errors import PipelineStateError
from pipeline.preprocess.store import SliceSet, load_slices

Selection = Literal["labelled", "normal", "all"]


def select_rows(store: SliceSet, selection: Selection, min_foreground: float) -> np.ndarray:
    """Indices of the slices to use: ``labelled`` = known mask (label 0 or 1), ``normal`` = label 0 only."""
    labels = np.asarray(store.label)
    fg = np.array([float(r["foreground_fraction"]) for r in store.rows], dtype=np.float64)
    keep = fg >= min_foreground
    if selection == "labelled":
        keep &= labels >= 0
    elif selection == "normal":
        keep &= labels == 0
    return np.flatnonzero(keep)


def oversample_abnormal(rows: np.ndarray, labels: np.ndarray, fraction: float) -> np.ndarray:
    """Repeat abnormal rows so they make up about ``fraction`` of an epoch (nnU-Net forces a third of its
    patches onto foreground for the same reason: lesions cover a tiny share of pixels and slices)."""
    abnormal = rows[labels[rows] == 1]
    n_other = rows.size - abnormal.size
    if abnormal.size == 0 or n_other == 0:
        return rows
    repeats = max(1, round(fraction / (1.0 - fraction) * n_other / abnormal.size))
    return np.sort(np.concatenate([rows, *[abnormal] * (repeats - 1)]), kind="stable")


def build_augment(cfg: AugmentConfig, keys: tuple[str, ...]) -> Compose:
    """Spatial transforms on image and mask (nearest for the mask), intensity transforms on the image."""
    modes = tuple("nearest" if k == "mask" else "bilinear" for k in keys)
    rot = float(np.deg2rad(cfg.rotate_deg))
    return Compose(
        [
            RandFlipd(keys=keys, prob=cfg.flip_prob, spatial_axis=0),
            RandAffined(
                keys=keys,
                prob=cfg.affine_prob,
                rotate_range=(rot,),
                scale_range=(cfg.scale, cfg.scale),
                mode=modes,
                padding_mode="zeros",
            ),
            RandScaleIntensityd(
                keys=("image",), factors=cfg.intensity_scale, prob=1.0 if cfg.intensity_scale else 0.0
            ),
            RandGaussianNoised(keys=("image",), std=cfg.noise_std, prob=1.0 if cfg.noise_std else 0.0),
        ]
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class SliceDataset(Dataset):
    """2D slices of one split. Items: ``image`` (1,H,W) float32, ``mask`` (1,H,W) float32 in {0,1} (lesion),
    ``label`` int64 slice label, ``index`` int64 row in the split's store."""

    def __init__(
        self,
        folder: Path,
        selection: Selection,
        min_foreground: float = 0.0,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        abnormal_fraction: float = 0.0,
    ) -> None:
        self.store = load_slices(folder)
        self.rows = select_rows(self.store, selection, min_foreground)
        if self.rows.size == 0:
            raise PipelineStateError(
                f"{folder}: no slice matches selection {selection!r} (min foreground {min_foreground})"
            )
        if abnormal_fraction > 0:
            self.rows = oversample_abnormal(self.rows, np.asarray(self.store.label), abnormal_fraction)
        self.transform = build_augment(augment, ("image", "mask")) if augment is not None else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        item = {
            "image": torch.from_numpy(np.array(self.store.image[row], dtype=np.float32))[None],
            "mask": torch.from_numpy((np.asarray(self.store.mask[row]) > 0).astype(np.float32))[None],
        }
        if self.transform is not None:
            self.transform.set_random_state(
                seed=sample_seed(self.seed, self.epoch, i)
            )  # i, not row: repeats differ
            item = self.transform(item)
            item = {k: torch.as_tensor(v).as_subclass(torch.Tensor).float() for k, v in item.items()}
        item["label"] = torch.tensor(int(self.store.label[row]), dtype=torch.int64)
        item["index"] = torch.tensor(row, dtype=torch.int64)
        return item
