"""Anomaly scoring: foreground, pixel anomaly maps, slice and case scores, threshold calibration.

Pure functions: numpy arrays (memory-maps included) or torch tensors in, numpy arrays out. Images are the
preprocessed slices, float32 ``(N, H, W)`` in [0, 1] on the head foreground; a channel axis of size 1
(``(N, 1, H, W)``, as a model returns it) is accepted wherever a stack of slices is.

Conventions:
  - the foreground is ``image > threshold``, holes filled and eroded per slice, so that the reconstruction
    error at the skull and the head's edge does not dominate the maps;
  - a map is the reconstruction error inside the foreground and exactly 0 outside it;
  - a higher score means more anomalous; a slice or pixel is called anomalous when ``score >= threshold``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from pipeline.errors import ConfigError, PipelineStateError

log = logging.getLogger(__name__)

ErrorKind = Literal["abs", "squared"]
SliceMethod = Literal["max", "mean", "top_fraction"]

ERRORS: tuple[str, ...] = ("abs", "squared")
SLICE_METHODS: tuple[str, ...] = ("max", "mean", "top_fraction")
DEFAULT_CHUNK = 256


def _slices_view(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray | torch.Tensor:
    """``(N, H, W)`` view of a stack of slices; drops a channel axis of size 1. No copy."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{name}: expected (N, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
    return x


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A numpy view (or copy when the tensor lives on a device) of an array or tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _disk(radius: int) -> np.ndarray:
    """In-plane disk structuring element of the given radius, shape (1, 2r+1, 2r+1): never crosses slices."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy * yy + xx * xx <= radius * radius)[None]


def foreground_mask(
    images: np.ndarray | torch.Tensor,
    threshold: float,
    erosion_radius: int = 3,
    fill_holes: bool = True,
) -> np.ndarray:
    """Head foreground per slice.

    ``images`` (N, H, W) (or (N, 1, H, W)) → bool (N, H, W): ``image > threshold``; holes filled per slice
    (dark structures inside the head, such as ventricles or a hypointense lesion, stay in the foreground);
    then eroded per slice by a disk of ``erosion_radius`` pixels (0 = no erosion). Pixels at the array border
    count as outside, so the erosion also trims a head that touches the border.
    """
    if erosion_radius < 0:
        raise ConfigError(f"erosion_radius must be >= 0, got {erosion_radius}")
    fg = _numpy(_slices_view(images, "images")) > threshold
    if fill_holes and fg.size:
        # A cross in the slice plane only: filling and its border test stay within each slice.
        fg = ndimage.binary_fill_holes(fg, structure=ndimage.generate_binary_structure(2, 1)[None])
    if erosion_radius > 0 and fg.size:
        fg = ndimage.binary_erosion(fg, structure=_disk(erosion_radius), border_value=0)
    return np.asarray(fg, dtype=bool)


def anomaly_maps(
    images: np.ndarray | torch.Tensor,
    recons: np.ndarray | torch.Tensor,
    foreground: np.ndarray,
    smooth_sigma: float = 0.0,
    error: ErrorKind = "abs",
    chunk: int = DEFAULT_CHUNK,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Pixel anomaly maps: reconstruction error inside the foreground, 0 outside.

    ``images``, ``recons`` (N, H, W) (or (N, 1, H, W)); ``foreground`` bool (N, H, W) → float32 (N, H, W).
    ``error``: ``"abs"`` |x - x̂| or ``"squared"`` (x - x̂)². ``smooth_sigma`` > 0 smooths each slice in 2D
    with a Gaussian of that sigma (pixels) as a normalised convolution restricted to the foreground,
    ``G*(e·fg) / G*fg``: error from outside the foreground does not leak in, and the rim is not pulled towards
    0 by the zeros outside. Works ``chunk`` slices at a time (float64 temporaries stay small); writes into
    ``out`` (e.g. a memory-map) when given.
    """
    if error not in ERRORS:
        raise ConfigError(f"anomaly error must be one of {ERRORS}, got {error!r}")
    if smooth_sigma < 0:
        raise ConfigError(f"smooth_sigma must be >= 0, got {smooth_sigma}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    images = _slices_view(images, "images")
    recons = _slices_view(recons, "recons")
    fg_all = _slices_view(np.asarray(foreground), "foreground")
    shape = tuple(images.shape)
    if tuple(recons.shape) != shape or fg_all.shape != shape:
        raise ValueError(
            f"shapes differ: images {shape}, recons {tuple(recons.shape)}, foreground {fg_all.shape}"
        )
    if out is None:
        out = np.zeros(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, got {out.dtype} {out.shape}")
    sigma = (0.0, float(smooth_sigma), float(smooth_sigma))
    for start in range(0, shape[0], chunk):
        sl = slice(start, min(start + chunk, shape[0]))
        x = _numpy(images[sl]).astype(np.float32, copy=False)
        y = _numpy(recons[sl]).astype(np.float32, copy=False)
        fg = fg_all[sl].astype(bool, copy=False)
        diff = x - y
        err = np.abs(diff) if error == "abs" else diff * diff
        err = np.where(fg, err, np.float32(0.0))
        if smooth_sigma > 0:
            num = ndimage.gaussian_filter(err.astype(np.float64), sigma=sigma, mode="constant", cval=0.0)
            den = ndimage.gaussian_filter(fg.astype(np.float64), sigma=sigma, mode="constant", cval=0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                err = np.where(fg & (den > 0), num / np.where(den > 0, den, 1.0), 0.0)
        out[sl] = err
    return out


def slice_scores(
    maps: np.ndarray,
    foreground: np.ndarray,
    method: SliceMethod = "top_fraction",
    top_fraction: float = 0.01,
) -> np.ndarray:
    """One score per slice from its map's foreground pixels.

    ``maps`` float (N, H, W), ``foreground`` bool (N, H, W) → float64 (N,). ``"max"``: the largest pixel;
    ``"mean"``: the mean; ``"top_fraction"``: the mean of the ``ceil(top_fraction · n_fg)`` largest pixels (at
    least one), robust to single-pixel noise. A slice without foreground scores 0.
    """
    if method not in SLICE_METHODS:
        raise ConfigError(f"slice score method must be one of {SLICE_METHODS}, got {method!r}")
    if method == "top_fraction" and not 0.0 < top_fraction <= 1.0:
        raise ConfigError(f"top_fraction must be in (0, 1], got {top_fraction}")
    maps = _slices_view(maps, "maps")
    foreground = _slices_view(np.asarray(foreground), "foreground")
    if tuple(maps.shape) != foreground.shape:
        raise ValueError(f"shapes differ: maps {tuple(maps.shape)}, foreground {foreground.shape}")
    scores = np.zeros(maps.shape[0], dtype=np.float64)
    for i in range(maps.shape[0]):
        values = _numpy(maps[i])[foreground[i]].astype(np.float64)
        if values.size == 0:
            continue
        if method == "max":
            scores[i] = values.max()
        elif method == "mean":
            scores[i] = values.mean()
        else:
            k = max(1, int(np.ceil(top_fraction * values.size)))
            scores[i] = np.partition(values, values.size - k)[values.size - k :].mean()
    return scores


def _check_ids(n: int, case_ids: Sequence[str]) -> None:
    if len(case_ids) != n:
        raise ValueError(f"{len(case_ids)} case ids for {n} slices")


def case_scores(slice_scores: np.ndarray | Sequence[float], case_ids: Sequence[str]) -> dict[str, float]:
    """Case score = max over the case's slices. ``slice_scores`` (N,), ``case_ids`` N strings → {case_id:
    score}, cases in order of first appearance."""
    scores = np.asarray(slice_scores, dtype=np.float64).reshape(-1)
    _check_ids(scores.shape[0], case_ids)
    result: dict[str, float] = {}
    for case_id, score in zip(case_ids, scores, strict=True):
        key = str(case_id)
        result[key] = float(score) if key not in result else max(result[key], float(score))
    return result


def case_labels(labels: np.ndarray | Sequence[int], case_ids: Sequence[str]) -> dict[str, int]:
    """Case label from slice labels (N,) in {1, 0, -1}: 1 if any slice is abnormal, else -1 if any slice is
    unknown, else 0 (all slices normal). Cases in order of first appearance."""
    values = np.asarray(labels).reshape(-1).astype(np.int64)
    _check_ids(values.shape[0], case_ids)
    bad = set(np.unique(values).tolist()) - {-1, 0, 1}
    if bad:
        raise ValueError(f"slice labels must be 1, 0 or -1, found {sorted(bad)}")
    seen: dict[str, set[int]] = {}
    for case_id, label in zip(case_ids, values.tolist(), strict=True):
        seen.setdefault(str(case_id), set()).add(label)
    return {case: 1 if 1 in found else (-1 if -1 in found else 0) for case, found in seen.items()}


def calibrate_threshold(normal_scores: np.ndarray | Sequence[float], quantile: float) -> float:
    """Anomaly threshold = the ``quantile`` (in [0, 1], linear interpolation) of the scores of normal
    validation slices; a slice scoring ``>=`` it is called anomalous, so about ``1 - quantile`` of normal
    slices are false positives."""
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"threshold quantile must be in [0, 1], got {quantile}")
    scores = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise PipelineStateError("cannot calibrate the anomaly threshold: no normal validation slice")
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise PipelineStateError(f"cannot calibrate the anomaly threshold: {bad} non-finite normal scores")
    threshold = float(np.quantile(scores, quantile))
    log.info("anomaly threshold %.6g = quantile %.4g of %d normal scores", threshold, quantile, scores.size)
    return threshold
