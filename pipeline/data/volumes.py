"""Datasets over the preprocess volumes (``data/preprocess/volumes/``), for 3D segmentation.

``manifest.csv`` names each accepted case's canonical image and mask (uncompressed NIfTI members of the
volume shards, see :mod:`pipeline.io.shards`, (X, Y, K) float32
in [0, 1] and uint8 on the same grid). Only cases with a known mask (``has_mask``) are used: a case without
one would teach "no lesion" where the truth is unknown (the 2D path's ``labelled`` selection does the same).
The volumes stay memory-mapped in the preprocess shards; a training item reads only its patch, and per case
the dataset keeps at most ``MAX_CENTRES`` candidate patch centres of each kind, so the resident memory of a
split does not grow with the size of its volumes (see :meth:`VolumeDataset.resident_bytes`).

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
from monai.transforms import Compose, RandFlipd, RandGaussianNoised, RandScaleIntensityd
from monai.transforms.utils import generate_pos_neg_label_crop_centers
from torch.utils.data import Dataset

from pipeline.config import AugmentConfig
from pipeline.data.slices import sample_seed
from pipeline.errors import InputDataError, PipelineStateError
from pipeline.io.shards import read_nifti as read_nifti_member

log = logging.getLogger(__name__)

KEYS = ("image", "mask")
#: Candidate patch centres kept per case and kind (lesion, lesion-free head): 64 KiB per case at most.
MAX_CENTRES = 4096


@dataclass(frozen=True)
class CaseVolume:
    """One case on the canonical grid: ``image`` (X, Y, K) float32 in [0, 1] and ``labels`` (X, Y, K) uint8
    (0 = background), both read-only memory maps into the preprocess shards: a split of any size costs no
    memory until a patch or a volume is read from it."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """The lesion mask, uint8 in {0, 1}, computed on each access (a copy of the whole volume)."""
        return (np.asarray(self.labels) > 0).astype(np.uint8)


def _read(data_dir: Path, ref: str) -> np.ndarray:
    array, _ = read_nifti_member(data_dir, ref)
    if array.ndim != 3:
        raise InputDataError(ref, f"expected a 3D volume, got shape {array.shape}", "not_3d")
    return array


def load_split_volumes(data_dir: Path, split: str) -> list[CaseVolume]:
    """The labelled cases (``has_mask``) of ``split``, in manifest order, memory-mapped (nothing is read
    here but the headers)."""
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
        if image.dtype != np.float32:  # not written by preprocess: read it as float32 once
            image = np.asarray(image, dtype=np.float32)
        cases.append(CaseVolume(case_id=cid, image=image, labels=mask))
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

    A volume smaller than ``patch_size`` is treated as zero-padded to it, evenly on both sides (as MONAI
    ``SpatialPad``). A patch is centred on a lesion voxel with probability ``pos_fraction``, else on a
    lesion-free voxel of the head (image > 0), by MONAI's ``generate_pos_neg_label_crop_centers`` (the logic
    of ``RandCropByPosNegLabeld``); a case without lesion voxels, or ``pos_fraction == 0``, gets a uniform
    random window. Then the augmentation of :func:`_augment` (none when ``augment`` is None).

    Memory: ``RandCropByPosNegLabeld`` wants the whole volume in memory and the flat index of every
    candidate voxel (8 bytes per head voxel). Here the candidates are sampled down, once, to at most
    ``MAX_CENTRES`` per kind and case (seeded), and the patch is sliced straight out of the memory-mapped
    volume, so only the patch is read. Randomness per item from ``(seed, epoch, index)``.
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
        self.pos_fraction = pos_fraction
        self.cases = load_split_volumes(data_dir, split)
        if not self.cases:
            raise PipelineStateError(f"{data_dir}: split {split!r} has no case with a mask to train on")
        self.padded: list[tuple[int, ...]] = []
        self.offsets: list[tuple[int, ...]] = []
        self.centres: list[tuple[np.ndarray, np.ndarray] | None] = []
        for n, case in enumerate(self.cases):
            shape = tuple(int(x) for x in case.image.shape)
            padded = tuple(max(x, p) for x, p in zip(shape, self.patch_size, strict=True))
            self.padded.append(padded)
            self.offsets.append(tuple((q - x) // 2 for q, x in zip(padded, shape, strict=True)))
            self.centres.append(self._candidates(n, seed) if pos_fraction > 0 else None)
        self.augment = Compose(_augment(augment))
        shapes = [tuple(int(x) for x in c.image.shape) for c in self.cases]
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
            "split %r: %d case(s), %d patch(es) %s per case and epoch (%d with lesion-centred crops); "
            "%.1f MiB resident",
            split,
            len(self.cases),
            self.samples_per_case,
            "x".join(str(p) for p in self.patch_size),
            sum(ix is not None for ix in self.centres),
            self.resident_bytes() / 2**20,
        )

    def _candidates(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Flat indices (in the padded volume) of up to MAX_CENTRES lesion and lesion-free head voxels of case
        ``n``; None when either kind is missing. The whole-volume masks here live for one case only."""
        case = self.cases[n]
        lesion = np.asarray(case.labels) > 0
        head = np.asarray(case.image) > 0
        rng = np.random.default_rng([seed, n])
        picked = []
        for voxels in (lesion, head & ~lesion):
            flat = np.flatnonzero(voxels)
            if flat.size > MAX_CENTRES:
                flat = np.sort(rng.choice(flat, MAX_CENTRES, replace=False))
            coords = np.unravel_index(flat, voxels.shape)
            shifted = tuple(c + o for c, o in zip(coords, self.offsets[n], strict=True))
            picked.append(np.ravel_multi_index(shifted, self.padded[n]).astype(np.int64))
        fg, bg = picked
        return (fg, bg) if fg.size and bg.size else None

    def resident_bytes(self) -> int:
        """Bytes the dataset itself holds (candidate centres); the volumes are memory-mapped."""
        return sum(fg.nbytes + bg.nbytes for fg, bg in (c for c in self.centres if c is not None))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_case * len(self.cases)

    def _window(self, c: int, rs: np.random.RandomState) -> list[int]:
        """Start of the patch in the padded volume of case ``c``."""
        candidates = self.centres[c]
        if candidates is None:
            limits = zip(self.padded[c], self.patch_size, strict=True)
            return [int(rs.randint(0, q - p + 1)) for q, p in limits]
        fg, bg = candidates
        (centre,) = generate_pos_neg_label_crop_centers(
            self.patch_size, 1, self.pos_fraction, self.padded[c], fg, bg, rs
        )
        return [int(x) - p // 2 for x, p in zip(centre, self.patch_size, strict=True)]

    def _crop(self, c: int, start: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The patch at ``start`` (padded coordinates): what lies inside the volume is sliced out of the
        memory map, the rest is the zero padding."""
        case = self.cases[c]
        src, dst = [], []
        for a, off, size, p in zip(start, self.offsets[c], case.image.shape, self.patch_size, strict=True):
            lo, hi = a - off, a - off + p
            src.append(slice(max(lo, 0), min(hi, size)))
            dst.append(slice(max(lo, 0) - lo, min(hi, size) - lo))
        image = np.zeros(self.patch_size, dtype=np.float32)
        labels = np.zeros(self.patch_size, dtype=np.uint8)
        image[tuple(dst)] = case.image[tuple(src)]
        labels[tuple(dst)] = case.labels[tuple(src)]
        return image, labels

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        c = int(i) % len(self.cases)
        item_seed = sample_seed(self.seed, self.epoch, int(i))
        image, labels = self._crop(c, self._window(c, np.random.RandomState(item_seed)))
        self.augment.set_random_state(seed=item_seed)
        out = self.augment({"image": image[None], "mask": (labels > 0).astype(np.float32)[None]})
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
            "image": torch.from_numpy(np.array(case.image, dtype=np.float32, order="C"))[None],
            "mask": torch.from_numpy(case.mask.astype(np.float32))[None],
            "case": torch.tensor(i, dtype=torch.int64),
        }
