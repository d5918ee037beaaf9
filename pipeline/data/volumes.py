"""Datasets over the preprocess volumes (``data/preprocess/volumes/``), for 3D segmentation.

``manifest.csv`` names each accepted case's canonical image and mask (uncompressed NIfTI members of the
volume shards, see :mod:`pipeline.io.shards`, (X, Y, K) float32
in [0, 1] and uint8 on the same grid). Only cases with a known mask (``has_mask``) are used: a case without
one would teach "no lesion" where the truth is unknown (the 2D path's ``labelled`` selection does the same).
The volumes are small after preprocessing, so a split is read once and kept in memory.

Training items are random patches (:class:`VolumeDataset`); validation and evaluation use whole volumes
(:class:`WholeVolumeDataset`, with sliding-window inference in the caller). Patch randomness is drawn per
item from ``(seed, epoch, index)`` exactly as :class:`pipeline.data.slices.SliceDataset` does, so an item
does not depend on the number of loader workers, the batch size or whether training was resumed.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandSpatialCropd,
    SpatialPadd,
)
from monai.transforms.utils import map_binary_to_indices
from torch.utils.data import Dataset

from pipeline.config import AugmentConfig
from pipeline.data.slices import sample_seed
from pipeline.errors import InputDataError, PipelineStateError
from pipeline.io.shards import read_nifti as read_nifti_member

log = logging.getLogger(__name__)

KEYS = ("image", "mask")
_FG, _BG = "fg_indices", "bg_indices"


@dataclass(frozen=True)
class CaseVolume:
    """One case on the canonical grid: ``image`` (X, Y, K) float32 in [0, 1], ``mask`` (X, Y, K) uint8 in
    {0, 1} (lesion)."""

    case_id: str
    image: np.ndarray
    mask: np.ndarray


def _read(data_dir: Path, ref: str) -> np.ndarray:
    array, _ = read_nifti_member(data_dir, ref)
    if array.ndim != 3:
        raise InputDataError(ref, f"expected a 3D volume, got shape {array.shape}", "not_3d")
    return array


def load_split_volumes(data_dir: Path, split: str) -> list[CaseVolume]:
    """The labelled cases (``has_mask``) of ``split``, in manifest order, read into memory."""
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.csv"
    if not manifest.is_file():
        raise PipelineStateError(f"{manifest}: not found (run the preprocess stage first)")
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cases: list[CaseVolume] = []
    for row in rows:
        if row.get("split") != split or str(row.get("has_mask", "")).strip().lower() not in ("true", "1"):
            continue
        cid = row["case_id"]
        image = _read(data_dir, row["image"])
        mask = _read(data_dir, row["mask"])
        if image.shape != mask.shape:
            raise InputDataError(
                row["mask"], f"mask shape {mask.shape} differs from image shape {image.shape}", "mask_grid"
            )
        cases.append(
            CaseVolume(
                case_id=cid,
                image=np.ascontiguousarray(image, dtype=np.float32),
                mask=(mask > 0).astype(np.uint8),
            )
        )
    log.debug("read %d labelled volume(s) of split %r from %s", len(cases), split, data_dir)
    return cases


def derive_samples_per_case(shapes: Sequence[Sequence[int]], patch_size: Sequence[int]) -> int:
    """Patches per case and epoch: enough for the patches of an epoch to hold as many voxels as the mean
    (padded) volume, ``ceil(mean voxels / patch voxels)``, at least 1. One epoch then sees about as many
    voxels as one pass over the volumes (as a 2D epoch does over the slices), whatever the patch size."""
    patch = [int(p) for p in patch_size]
    if not shapes:
        return 1
    voxels = [math.prod(max(int(s), p) for s, p in zip(shape, patch, strict=True)) for shape in shapes]
    return max(1, math.ceil(float(np.mean(voxels)) / math.prod(patch)))


def _augment(cfg: AugmentConfig | None) -> list[object]:
    """Flips (left-right, axis 0: the head is near-symmetric there, as in 2D) and the image's intensity
    scaling and noise. Rotation/scaling (``rotate_deg``, ``scale``) are not applied to 3D patches: a 3D
    affine resample per patch costs more than the training step on CPU."""
    if cfg is None:
        return []
    return [
        RandFlipd(keys=KEYS, prob=cfg.flip_prob, spatial_axis=0),
        RandScaleIntensityd(
            keys=("image",), factors=cfg.intensity_scale, prob=1.0 if cfg.intensity_scale else 0.0
        ),
        RandGaussianNoised(keys=("image",), std=cfg.noise_std, prob=1.0 if cfg.noise_std else 0.0),
    ]


def _plain(value: object) -> torch.Tensor:
    """A MONAI output (MetaTensor or array) as a plain float32 tensor that owns its memory."""
    return torch.as_tensor(value).as_subclass(torch.Tensor).float().clone()


class VolumeDataset(Dataset):
    """Random 3D patches of the labelled cases of one split.

    Items: ``image`` (1, *patch_size) float32, ``mask`` (1, *patch_size) float32 in {0, 1} (lesion), ``case``
    int64 (position of the case in :attr:`cases`). Item ``i`` is one random patch of case ``i % n_cases``;
    the dataset has ``samples_per_case * n_cases`` items (``samples_per_case`` derived by
    :func:`derive_samples_per_case` unless given).

    Each volume is padded once to at least ``patch_size`` (MONAI ``SpatialPadd``, zeros). A patch is then
    cropped with MONAI ``RandCropByPosNegLabeld``: centred on a lesion voxel with probability
    ``pos_fraction``, else on a lesion-free voxel of the head (image > 0). A case without lesion voxels, or
    ``pos_fraction == 0``, gets a uniform random crop (``RandSpatialCropd``). Then the augmentation of
    :func:`_augment` (none when ``augment`` is None). Randomness per item from ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        data_dir: Path,
        split: str,
        patch_size: Sequence[int],
        augment: AugmentConfig | None,
        seed: int = 0,
        pos_fraction: float = 0.5,
        samples_per_case: int | None = None,
    ) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise PipelineStateError(f"patch_size must hold 3 positive sizes, got {list(patch_size)}")
        if not 0.0 <= pos_fraction <= 1.0:
            raise PipelineStateError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
        self.cases = load_split_volumes(data_dir, split)
        if not self.cases:
            raise PipelineStateError(f"{data_dir}: split {split!r} has no case with a mask to train on")
        pad = SpatialPadd(keys=KEYS, spatial_size=self.patch_size, mode="constant")
        self.images: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.indices: list[tuple[np.ndarray, np.ndarray] | None] = []
        for case in self.cases:
            padded = pad({"image": case.image[None], "mask": case.mask[None].astype(np.float32)})
            image, mask = _plain(padded["image"]), _plain(padded["mask"])
            self.images.append(image)
            self.masks.append(mask)
            fg, bg = map_binary_to_indices(mask.numpy(), image.numpy(), 0.0)
            fg, bg = np.asarray(fg), np.asarray(bg)
            # Lesion-centred crops need lesion voxels; lesion-free centres need some head without lesion.
            use_pos_neg = pos_fraction > 0 and fg.size > 0 and bg.size > 0
            self.indices.append((fg, bg) if use_pos_neg else None)
        aug = _augment(augment)
        self.pos_neg = Compose(
            [
                RandCropByPosNegLabeld(
                    keys=KEYS,
                    label_key="mask",
                    spatial_size=self.patch_size,
                    pos=pos_fraction,
                    neg=1.0 - pos_fraction,
                    num_samples=1,
                    fg_indices_key=_FG,
                    bg_indices_key=_BG,
                ),
                *aug,
            ]
        )
        self.uniform = Compose(
            [RandSpatialCropd(keys=KEYS, roi_size=self.patch_size, random_size=False), *aug]
        )
        shapes = [tuple(int(s) for s in c.image.shape) for c in self.cases]
        self.samples_per_case = (
            int(samples_per_case)
            if samples_per_case is not None
            else derive_samples_per_case(shapes, self.patch_size)
        )
        if self.samples_per_case < 1:
            raise PipelineStateError(f"samples_per_case must be >= 1, got {samples_per_case}")
        self.seed = seed
        self.epoch = 0
        log.info(
            "split %r: %d case(s), %d patch(es) %s per case and epoch (%d with lesion-centred crops)",
            split,
            len(self.cases),
            self.samples_per_case,
            "x".join(str(p) for p in self.patch_size),
            sum(ix is not None for ix in self.indices),
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_case * len(self.cases)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c = int(i) % len(self.cases)
        item: dict[str, object] = {"image": self.images[c], "mask": self.masks[c]}
        indices = self.indices[c]
        if indices is not None:
            item[_FG], item[_BG] = indices
            chain = self.pos_neg
        else:
            chain = self.uniform
        chain.set_random_state(seed=sample_seed(self.seed, self.epoch, int(i)))
        out = chain(item)
        if isinstance(out, list):  # RandCropByPosNegLabeld returns one dict per sample
            out = out[0]
        return {
            "image": _plain(out["image"]),
            "mask": _plain(out["mask"]),
            "case": torch.tensor(c, dtype=torch.int64),
        }


class WholeVolumeDataset(Dataset):
    """The labelled cases of one split as whole volumes, unpadded and unaugmented. Items: ``image``
    (1, X, Y, K) float32, ``mask`` (1, X, Y, K) float32 in {0, 1}, ``case`` int64. Volumes may differ in
    shape, so load them with batch size 1."""

    def __init__(self, data_dir: Path, split: str) -> None:
        self.cases = load_split_volumes(data_dir, split)
        if not self.cases:
            raise PipelineStateError(f"{data_dir}: split {split!r} has no case with a mask")

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        case = self.cases[i]
        return {
            "image": torch.from_numpy(case.image.copy())[None],
            "mask": torch.from_numpy(case.mask.astype(np.float32))[None],
            "case": torch.tensor(i, dtype=torch.int64),
        }
