"""What evaluate compares: an export's released samples, and real slices of the preprocessed splits."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.data.slices import select_rows
from pipeline.errors import InputDataError
from pipeline.preprocess.store import SliceSet, load_slices

__all__ = ["RealSet", "SyntheticSet", "load_export", "real_slices", "subsample"]


@dataclass(frozen=True)
class SyntheticSet:
    """Released samples of one export, in manifest order."""

    variant: str
    ids: list[str]
    images: np.ndarray  # (N, H, W) float32
    masks: np.ndarray | None  # (N, H, W) uint8 lesion masks; None when the export has none
    labels: np.ndarray  # (N,) int64
    mask_source: str = ""  # "condition" (mask2image), "segmenter" (label2image, U-Net predictions) or ""


@dataclass(frozen=True)
class RealSet:
    """Slices of one preprocessed split."""

    split: str
    images: np.ndarray  # (N, H, W) float32
    masks: np.ndarray  # (N, H, W) uint8 lesion masks
    labels: np.ndarray  # (N,) int64
    case_ids: list[str]


def _read_slice(path: Path) -> np.ndarray:
    """The single slice (H, W) of an exported (H, W, 1) NIfTI."""
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise InputDataError(str(path), f"unreadable NIfTI ({type(err).__name__})", "bad_nifti") from err
    if data.ndim != 3 or data.shape[2] != 1:
        raise InputDataError(str(path), f"expected one slice (H, W, 1), got shape {data.shape}", "bad_shape")
    return np.asarray(data[:, :, 0])


def load_export(folder: Path) -> SyntheticSet:
    """The released samples listed in ``folder/manifest.csv`` (images and, for mask2image, masks)."""
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise InputDataError(str(manifest), "missing: run the export stage first", "missing")
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise InputDataError(str(manifest), "no released sample to evaluate", "empty")
    images = np.stack([_read_slice(folder / r["image_nifti"]).astype(np.float32) for r in rows])
    masks, source = None, ""
    if all(r.get("mask_nifti") for r in rows):
        masks = np.stack([(_read_slice(folder / r["mask_nifti"]) > 0).astype(np.uint8) for r in rows])
        source = rows[0].get("mask_source") or "condition"  # exports before mask_source: mask2image only
    labels = np.asarray([int(r["label"]) for r in rows], np.int64)
    return SyntheticSet(rows[0]["variant"], [r["sample_id"] for r in rows], images, masks, labels, source)


def real_slices(data_dir: Path, split: str, min_foreground: float) -> RealSet:
    """The labelled slices of ``split`` with at least ``min_foreground`` head (what the generators saw)."""
    store: SliceSet = load_slices(data_dir / "slices" / split)
    rows = select_rows(store, "labelled", min_foreground)
    return RealSet(
        split,
        np.asarray(store.image[rows], np.float32),
        (np.asarray(store.mask[rows]) > 0).astype(np.uint8),
        np.asarray(store.label[rows], np.int64),
        [str(store.rows[int(r)]["case_id"]) for r in rows],
    )


def subsample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(n, size)`` of ``n`` items, drawn without replacement from ``seed``."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
