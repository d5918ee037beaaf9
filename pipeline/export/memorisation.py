"""Memorisation gate: does a synthetic slice sit closer to one training slice than real unseen slices do?

Two similarities to every training slice, each sample keeping its nearest:

* **detail correlation**: cosine of the high-pass detail (image minus its Gaussian blur) over the sample's
  head interior, leaving out a margin around its lesion. A mask-conditioned sample shares its outline and
  its lesion with the training slice whose mask it was drawn on; that is the conditioning doing its job, not
  memorisation, and plain pixel correlation cannot tell the two apart. Measured on the demo export: plain
  pixel correlation put 42 % of mask2image samples above the 99th percentile of held-out real slices (0.88,
  samples up to 0.97, each against its own conditioning slice); the detail correlation does not (see the
  stage's metrics), while an exact copy still scores 1.
* **feature cosine** of the project's autoencoder codes (a copy that moved a little). The code mostly
  holds the head's outline, so for mask-conditioned variants it is reported but does not gate; for
  label2image, where nothing is fixed by a condition, it gates.

Thresholds come from data the generator never saw: the same nearest-training similarities of held-out real
slices (another patient's slice is as close as "just anatomy" gets); a sample above the ``percentile`` of
that distribution is flagged. Calibrating on held-out reals rather than a fixed number makes one gate fit
MRI and CT, 96² and 512².
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.config import ExportMemorisationConfig
from pipeline.errors import PipelineStateError
from pipeline.metrics.features import cosine_matrix
from pipeline.training.gan import head_mask

__all__ = [
    "Gate",
    "Nearest",
    "TrainingReference",
    "calibrate",
    "detail",
    "detail_similarity",
    "nearest_training",
    "reference",
]

Features = Callable[[np.ndarray], np.ndarray]


def detail(
    images: np.ndarray, lesions: np.ndarray | None, cfg: ExportMemorisationConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(high-pass detail (N, P), comparison region (N, P)) of images (N, H, W): detail = image − Gaussian
    blur (sigma ``detail_sigma``); region = head eroded by ``interior_erosion`` px minus each lesion dilated
    by ``lesion_margin`` px (``lesions`` (N, H, W) bool or None)."""
    n = len(images)
    details = np.zeros((n, int(np.prod(images.shape[1:]))), np.float64)
    regions = np.zeros_like(details)
    for k in range(n):
        x = np.asarray(images[k], np.float64)
        details[k] = (x - ndimage.gaussian_filter(x, cfg.detail_sigma)).ravel()
        region = head_mask(x.astype(np.float32))
        if cfg.interior_erosion > 0:
            region = ndimage.binary_erosion(region, iterations=cfg.interior_erosion)
        if lesions is not None and lesions[k].any():
            grown = lesions[k] > 0
            if cfg.lesion_margin > 0:
                grown = ndimage.binary_dilation(grown, iterations=cfg.lesion_margin)
            region &= ~grown
        regions[k] = region.ravel()
    return details, regions


def detail_similarity(d_a: np.ndarray, r_a: np.ndarray, d_b: np.ndarray) -> np.ndarray:
    """(Na, Nb): cosine of detail maps a_i and b_j over a_i's region; 0 where either is blank there.
    Three matrix products instead of Na × Nb masked copies."""
    num = (d_a * r_a) @ d_b.T
    norm_a = np.sqrt(((d_a * r_a) ** 2).sum(axis=1))[:, None]
    norm_b = np.sqrt(r_a @ (d_b**2).T)
    den = norm_a * norm_b
    return np.divide(num, den, out=np.zeros_like(num), where=den > 1e-12)


@dataclass(frozen=True)
class Nearest:
    """Per image: the highest detail correlation and feature cosine to any training slice, and which slice
    (row of the training store) gave each."""

    detail_corr: np.ndarray  # (N,)
    detail_row: np.ndarray  # (N,) int
    feature_cos: np.ndarray  # (N,)
    feature_row: np.ndarray  # (N,) int


@dataclass(frozen=True)
class TrainingReference:
    """The training slices the gate compares against, prepared once."""

    rows: np.ndarray  # rows of the training store
    details: np.ndarray  # (N, P)
    features: np.ndarray  # (N, D)


def reference(
    images: np.ndarray, rows: np.ndarray, features: Features, cfg: ExportMemorisationConfig
) -> TrainingReference:
    if len(images) == 0:
        raise PipelineStateError("memorisation gate: no training slices to compare against")
    details, _ = detail(images, None, cfg)
    return TrainingReference(np.asarray(rows), details, features(images))


def nearest_training(
    images: np.ndarray,
    lesions: np.ndarray | None,
    ref: TrainingReference,
    features: Features,
    cfg: ExportMemorisationConfig,
    chunk: int = 256,
) -> Nearest:
    """Nearest training slice of each image (N, H, W) (with its lesion masks, or None), chunked so memory
    stays at chunk × N_train."""
    dc, dr, fc, fr = [], [], [], []
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        part_lesions = None if lesions is None else lesions[start : start + chunk]
        d, r = detail(part, part_lesions, cfg)
        sim = detail_similarity(d, r, ref.details)
        cos = cosine_matrix(features(part), ref.features)
        dc.append(sim.max(axis=1))
        dr.append(ref.rows[sim.argmax(axis=1)])
        fc.append(cos.max(axis=1))
        fr.append(ref.rows[cos.argmax(axis=1)])
    if not dc:
        empty = np.zeros(0)
        return Nearest(empty, empty.astype(int), empty, empty.astype(int))
    return Nearest(np.concatenate(dc), np.concatenate(dr), np.concatenate(fc), np.concatenate(fr))


@dataclass(frozen=True)
class Gate:
    """Thresholds from held-out reals; ``flags`` marks samples over the gating similarities."""

    detail_threshold: float
    feature_threshold: float
    percentile: float
    n_reference: int
    feature_gates: bool  # False for mask-conditioned variants (see the module docstring)

    def flags(self, nearest: Nearest) -> np.ndarray:
        over = nearest.detail_corr > self.detail_threshold
        if self.feature_gates:
            over |= nearest.feature_cos > self.feature_threshold
        return over


def calibrate(held_out: Nearest, percentile: float, feature_gates: bool) -> Gate:
    """Thresholds = ``percentile`` of the held-out real slices' nearest-training similarities."""
    if held_out.detail_corr.size == 0:
        raise PipelineStateError(
            "memorisation gate: no held-out real slices (validation split) to calibrate the threshold on"
        )
    return Gate(
        float(np.percentile(held_out.detail_corr, percentile)),
        float(np.percentile(held_out.feature_cos, percentile)),
        float(percentile),
        int(held_out.detail_corr.size),
        feature_gates,
    )
