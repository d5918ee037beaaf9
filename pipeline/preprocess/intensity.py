"""Foreground estimation and per-modality intensity normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.config import IntensityConfig


@dataclass(frozen=True)
class IntensityStats:
    method: str
    lo: float
    hi: float
    mean: float
    std: float


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample.

    Written here (a dozen lines) rather than pulled from scikit-image, which the pipeline does not otherwise
    need; SimpleITK's filter would force a SimpleITK import into this path.
    """
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Body/head mask: above Otsu's threshold, largest connected component, holes filled."""
    finite = image[np.isfinite(image)]
    if finite.size == 0 or float(finite.max()) == float(finite.min()):
        return np.zeros(image.shape, dtype=bool)
    fg = image > otsu_threshold(finite)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
        fg = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(fg)


def normalise(
    image: np.ndarray, fg: np.ndarray, modality: str, cfg: IntensityConfig
) -> tuple[np.ndarray, IntensityStats]:
    """Map intensities to a common scale.

    - CT: clip to ``ct_window`` (Hounsfield units) and scale to [0, 1];
    - MR and others: ``percentile`` maps the foreground's [p_lo, p_hi] percentiles to [0, 1] and clips, or
      ``zscore`` standardises the foreground and sets the background to 0 (as nnU-Net does).
    """
    sample = image[fg] if fg.any() else image.ravel()
    mean, std = float(sample.mean()), float(sample.std())
    if modality.upper() == "CT":
        lo, hi = cfg.ct_window
        out = (np.clip(image, lo, hi) - lo) / (hi - lo)
        return out.astype(np.float32), IntensityStats("ct_window", lo, hi, mean, std)
    method = cfg.mr if modality.upper() == "MR" else cfg.other
    if method == "percentile":
        lo, hi = (float(v) for v in np.percentile(sample, cfg.mr_percentiles))
        scale = hi - lo if hi > lo else 1.0
        out = np.clip((image - lo) / scale, 0.0, 1.0)
        return out.astype(np.float32), IntensityStats("percentile", lo, hi, mean, std)
    out = np.where(fg, (image - mean) / (std if std > 0 else 1.0), 0.0)
    return out.astype(np.float32), IntensityStats(
        "zscore", float(sample.min()), float(sample.max()), mean, std
    )
