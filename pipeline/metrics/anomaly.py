"""Anomaly detection metrics: image level (slice or case), pixel level, curves for plots, operating point.

Conventions shared by every function here:
  - labels are 1 (abnormal / lesion), 0 (normal) or -1 (unknown); -1 is ignored, anything else is an error;
  - a higher score means more anomalous, and a sample is called positive when ``score >= threshold``;
  - a metric that is undefined for the data (e.g. AUROC with one class only) is ``None``, never NaN or a
    made-up number, and the report carries a ``note`` saying why (``note`` is present only then);
  - non-finite scores are an error (a diverged model must not produce a plausible-looking AUROC).
AUROC and average precision come from MONAI (``compute_roc_auc``, ``compute_average_precision``, both
tie-aware like scikit-learn's). Curves, Dice sweeps and operating points are computed here: MONAI has no
ROC/PR curve points nor a threshold sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_average_precision, compute_roc_auc

from pipeline.errors import PipelineStateError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 2_000_000
HISTOGRAM_BINS = 1 << 16
_CHUNK = 256

ArrayLike = np.ndarray | Sequence[float] | torch.Tensor


# ----------------------------------------------------------------------------------------------- helpers
def _np(x: Any, dtype: Any | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    return arr.astype(dtype, copy=False) if dtype is not None else arr


def _known(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores (float64) and labels (int64) of the samples with a known label, and the number left out."""
    s = _np(scores, np.float64).reshape(-1)
    y = _np(labels).reshape(-1).astype(np.int64)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores for {y.size} labels")
    bad = set(np.unique(y).tolist()) - {-1, 0, 1}
    if bad:
        raise ValueError(f"labels must be 1, 0 or -1, found {sorted(bad)}")
    keep = y >= 0
    s, y = s[keep], y[keep]
    if not np.all(np.isfinite(s)):
        raise PipelineStateError(f"{int(np.sum(~np.isfinite(s)))} non-finite anomaly scores")
    return s, y, int(np.sum(~keep))


def _one_class_note(n_pos: int, n_neg: int, what: str) -> str | None:
    if n_pos == 0 and n_neg == 0:
        return f"no {what} with a known label: AUROC and AUPRC undefined"
    if n_pos == 0:
        return f"no positive {what} (only {n_neg} negatives): AUROC and AUPRC undefined"
    if n_neg == 0:
        return f"no negative {what} (only {n_pos} positives): AUROC and AUPRC undefined"
    return None


def _auroc_auprc(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """MONAI's tie-aware AUROC and average precision; both classes must be present."""
    ts = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float64))
    ty = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return float(compute_roc_auc(ts, ty)), float(compute_average_precision(ts, ty))


def _sweep(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact sweep over the distinct scores, highest first: (threshold, tp, fp), where tp and fp count the
    samples with ``score >= threshold``."""
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], y[order]
    tp = np.cumsum(yy, dtype=np.int64)
    fp = np.arange(1, ss.size + 1, dtype=np.int64) - tp
    last = np.append(np.flatnonzero(np.diff(ss)), ss.size - 1) if ss.size else np.zeros(0, np.int64)
    return ss[last], tp[last], fp[last]


def _downsample(x: np.ndarray, y: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` points spread evenly along the curve's length (dense where it bends
    and where it moves, sparse on flat runs of tiny steps); first and last point always kept."""
    n = x.size
    if n <= max_points:
        return np.arange(n)
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    length = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    if length[-1] <= 0:
        idx = np.linspace(0, n - 1, max_points).round().astype(np.int64)
    else:
        idx = np.searchsorted(length, np.linspace(0.0, length[-1], max_points), side="left")
    return np.unique(np.concatenate([[0], np.clip(idx, 0, n - 1), [n - 1]]))


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


# ------------------------------------------------------------------------------------------ image level
def binary_scores_report(scores: ArrayLike, labels: ArrayLike) -> dict[str, Any]:
    """AUROC and AUPRC (average precision) of scores (N,) against labels (N,) in {1, 0, -1}.

    Returns ``{"auroc", "auprc", "n_pos", "n_neg", "n_unknown", "prevalence"}`` (+ ``"note"`` when a metric is
    ``None``). ``prevalence`` = n_pos / (n_pos + n_neg) is the AUPRC of a random scorer.
    """
    s, y, n_unknown = _known(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    report: dict[str, Any] = {
        "auroc": None,
        "auprc": None,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "n_unknown": n_unknown,
        "prevalence": _ratio(n_pos, n_pos + n_neg),
    }
    note = _one_class_note(n_pos, n_neg, "samples")
    if note is None:
        report["auroc"], report["auprc"] = _auroc_auprc(s, y)
    else:
        report["note"] = note
    return report


def roc_curve(scores: ArrayLike, labels: ArrayLike, max_points: int = 200) -> list[dict[str, float | None]]:
    """ROC curve points ``{"fpr", "tpr", "threshold"}`` for plotting, from (0, 0) to (1, 1).

    Each point is exact (``score >= threshold`` called positive); the first, (0, 0), has threshold ``None``
    (nothing called positive), the last is the lowest score. More than ``max_points`` points are thinned
    evenly along the curve, endpoints kept. Empty list when one class is missing.
    """
    s, y, _ = _known(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        log.info("ROC curve undefined: %d positives, %d negatives", n_pos, n_neg)
        return []
    thr, tp, fp = _sweep(s, y)
    fpr = np.concatenate([[0.0], fp / n_neg])
    tpr = np.concatenate([[0.0], tp / n_pos])
    thresholds: list[float | None] = [None, *thr.tolist()]
    keep = _downsample(fpr, tpr, max_points)
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i]), "threshold": thresholds[i]} for i in keep]


def pr_curve(scores: ArrayLike, labels: ArrayLike, max_points: int = 200) -> list[dict[str, float | None]]:
    """Precision-recall points ``{"recall", "precision", "threshold"}`` for plotting, recall increasing.

    Every point is an exact operating point (no made-up (0, 1) start): the first is the highest score, the
    last the lowest (recall 1, precision = prevalence). Thinned to ``max_points`` like ``roc_curve``. Empty
    list when there is no positive or no negative.
    """
    s, y, _ = _known(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        log.info("PR curve undefined: %d positives, %d negatives", n_pos, n_neg)
        return []
    thr, tp, fp = _sweep(s, y)
    recall = tp / n_pos
    precision = tp / (tp + fp)
    keep = _downsample(recall, precision, max_points)
    return [
        {"recall": float(recall[i]), "precision": float(precision[i]), "threshold": float(thr[i])}
        for i in keep
    ]


def threshold_report(scores: ArrayLike, labels: ArrayLike, threshold: float) -> dict[str, Any]:
    """Operating point at ``threshold`` (``score >= threshold`` is positive): counts, sensitivity,
    specificity and precision (``None`` when their denominator is 0, with a ``note``)."""
    s, y, n_unknown = _known(scores, labels)
    pred = s >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    report: dict[str, Any] = {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_unknown": n_unknown,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
    }
    missing = [
        why
        for key, why in (
            ("sensitivity", "no positive sample"),
            ("specificity", "no negative sample"),
            ("precision", "nothing called positive"),
        )
        if report[key] is None
    ]
    if missing:
        report["note"] = "undefined: " + "; ".join(missing)
    return report


# ------------------------------------------------------------------------------------------ pixel level
def _rows(n: int, labels: ArrayLike | None) -> np.ndarray:
    """Indices of the slices whose label is known (all slices when ``labels`` is None)."""
    if labels is None:
        return np.arange(n)
    lab = _np(labels).reshape(-1).astype(np.int64)
    if lab.size != n:
        raise ValueError(f"{lab.size} labels for {n} slices")
    bad = set(np.unique(lab).tolist()) - {-1, 0, 1}
    if bad:
        raise ValueError(f"labels must be 1, 0 or -1, found {sorted(bad)}")
    return np.flatnonzero(lab >= 0)


def _pixel_chunks(
    maps: Any, masks: Any, foreground: Any, rows: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (map, lesion, foreground) numpy arrays, each (n, H, W), for consecutive chunks of the selected
    slices ``rows``; a chunk of ``_CHUNK`` slices at a time keeps memory small for memory-mapped splits."""
    if not (tuple(maps.shape) == tuple(masks.shape) == tuple(foreground.shape)) or len(maps.shape) != 3:
        raise ValueError(
            f"maps, masks, foreground must share an (N, H, W) shape, got "
            f"{tuple(maps.shape)}, {tuple(masks.shape)}, {tuple(foreground.shape)}"
        )
    for start in range(0, rows.size, _CHUNK):
        idx = rows[start : start + _CHUNK]
        m = _np(maps[idx])
        lesion = _np(masks[idx]) > 0
        fg = _np(foreground[idx]).astype(bool, copy=False)
        yield m, lesion, fg


def pixel_report(
    maps: np.ndarray,
    masks: np.ndarray,
    foreground: np.ndarray,
    *,
    labels: ArrayLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
) -> dict[str, Any]:
    """Pixel-level AUROC, AUPRC and best possible Dice of anomaly maps against lesion masks.

    ``maps`` float (N, H, W), ``masks`` int (N, H, W) (lesion = any non-zero label), ``foreground`` bool
    (N, H, W), ``labels`` (N,) in {1, 0, -1} or None (= all slices known). Pixels: the foreground pixels of
    the slices with a known label, normal slices included (their false positives count). Lesion pixels outside
    the foreground cannot be scored; their number is reported (``n_lesion_outside_foreground``).

    Sampling: with at most ``max_pixels`` pixels, every pixel is used (``"sampled": false``). Beyond, AUROC
    and AUPRC are computed on a stratified random subset of exactly ``max_pixels`` pixels: lesion and other
    pixels keep their proportions, each class is sampled uniformly without replacement with
    ``numpy.random.default_rng(seed)`` (per-slice counts from one multivariate hypergeometric draw, then
    pixels within each slice) — the same data and seed give the same subset.

    Best Dice: Dice of ``map >= t`` pooled over all those pixels, maximised over t; exact sorted sweep over
    the scores when unsampled (``best_dice_method: "exact"``), else from 65,536-bin histograms of lesion and
    all pixel scores over every pixel (exact counts, thresholds at bin edges; ``"histogram"``). Ties go to
    the highest threshold.
    """
    if max_pixels < 2:
        raise ValueError(f"max_pixels must be >= 2, got {max_pixels}")
    rows = _rows(int(maps.shape[0]), labels)
    # pass 1: counts per slice, score range
    pos_counts = np.zeros(rows.size, np.int64)
    neg_counts = np.zeros(rows.size, np.int64)
    outside = 0
    lo, hi = np.inf, -np.inf
    for k, (m, lesion, fg) in enumerate(_pixel_chunks(maps, masks, foreground, rows)):
        sl = slice(k * _CHUNK, k * _CHUNK + m.shape[0])
        pos_counts[sl] = np.count_nonzero(lesion & fg, axis=(1, 2))
        neg_counts[sl] = np.count_nonzero(fg & ~lesion, axis=(1, 2))
        outside += int(np.count_nonzero(lesion & ~fg))
        vals = m[fg]
        if vals.size:
            if not np.all(np.isfinite(vals)):
                raise PipelineStateError("non-finite values in the anomaly maps")
            lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
    n_pos, n_neg = int(pos_counts.sum()), int(neg_counts.sum())
    total = n_pos + n_neg
    sampled = total > max_pixels
    report: dict[str, Any] = {
        "auroc": None,
        "auprc": None,
        "best_dice": None,
        "best_dice_threshold": None,
        "best_dice_method": "histogram" if sampled else "exact",
        "n_slices": int(rows.size),
        "n_pixels": total,
        "n_lesion_pixels": n_pos,
        "n_lesion_outside_foreground": outside,
        "prevalence": _ratio(n_pos, total),
        "sampled": sampled,
        "n_sampled": 0,
        "seed": int(seed),
    }
    notes = []
    if outside:
        notes.append(f"{outside} lesion pixels lie outside the foreground and are not scored")
    one_class = _one_class_note(n_pos, n_neg, "foreground pixels")
    if one_class:
        notes.append(one_class)

    # pass 2: the (sub)sample, and the histograms when sampled
    take_pos = take_neg = None
    if sampled:
        rng = np.random.default_rng(seed)
        k_pos = min(n_pos, max(1 if n_pos else 0, int(round(max_pixels * n_pos / total))))
        k_neg = min(n_neg, max_pixels - k_pos)
        take_pos = rng.multivariate_hypergeometric(pos_counts, k_pos) if k_pos else np.zeros_like(pos_counts)
        take_neg = rng.multivariate_hypergeometric(neg_counts, k_neg) if k_neg else np.zeros_like(neg_counts)
        edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1) if hi > lo else None
        hist_pos = np.zeros(HISTOGRAM_BINS, np.int64)
        hist_all = np.zeros(HISTOGRAM_BINS, np.int64)
    values: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    for k, (m, lesion, fg) in enumerate(_pixel_chunks(maps, masks, foreground, rows)):
        for j in range(m.shape[0]):
            i = k * _CHUNK + j
            pv = m[j][fg[j] & lesion[j]].astype(np.float64)
            nv = m[j][fg[j] & ~lesion[j]].astype(np.float64)
            if sampled:
                if edges is not None:
                    hp = np.histogram(pv, bins=edges)[0]
                    hist_pos += hp
                    hist_all += hp + np.histogram(nv, bins=edges)[0]
                pv = pv[np.sort(rng.choice(pv.size, int(take_pos[i]), replace=False))]
                nv = nv[np.sort(rng.choice(nv.size, int(take_neg[i]), replace=False))]
            values += [pv, nv]
            flags += [np.ones(pv.size, np.int64), np.zeros(nv.size, np.int64)]
    s = np.concatenate(values) if values else np.zeros(0)
    y = np.concatenate(flags) if flags else np.zeros(0, np.int64)
    report["n_sampled"] = int(s.size)

    if one_class is None:
        report["auroc"], report["auprc"] = _auroc_auprc(s, y)
    if n_pos > 0:
        if not sampled:
            thr, tp, fp = _sweep(s, y)
            dice = 2.0 * tp / (n_pos + tp + fp)
            best = int(np.argmax(dice))
            report["best_dice"], report["best_dice_threshold"] = float(dice[best]), float(thr[best])
        elif edges is None:  # every score equal: the only threshold calls every pixel positive
            report["best_dice"], report["best_dice_threshold"] = 2.0 * n_pos / (n_pos + total), float(lo)
        else:
            tp = np.cumsum(hist_pos[::-1])[::-1]  # tp[j]: lesion pixels with score >= edges[j]
            pp = np.cumsum(hist_all[::-1])[::-1]
            dice = 2.0 * tp / (n_pos + pp)
            best = int(np.flatnonzero(dice == dice.max())[-1])  # ties: highest threshold
            report["best_dice"], report["best_dice_threshold"] = float(dice[best]), float(edges[best])
    if notes:
        report["note"] = "; ".join(notes)
    return report


def dice_at_threshold(
    maps: np.ndarray,
    masks: np.ndarray,
    foreground: np.ndarray,
    threshold: float,
    *,
    labels: ArrayLike | None = None,
) -> dict[str, Any]:
    """Pooled Dice of ``(map >= threshold) & foreground`` against the lesion masks, over every foreground
    pixel of the slices with a known label (all when ``labels`` is None); exact, no sampling.

    Returns ``{"dice", "threshold", "tp", "fp", "fn"}``; ``dice`` is ``None`` (with a ``note``) when there is
    neither a lesion pixel nor a pixel called positive.
    """
    rows = _rows(int(maps.shape[0]), labels)
    tp = fp = fn = 0
    for m, lesion, fg in _pixel_chunks(maps, masks, foreground, rows):
        pred = (m >= threshold) & fg
        truth = lesion & fg
        tp += int(np.count_nonzero(pred & truth))
        fp += int(np.count_nonzero(pred & ~truth))
        fn += int(np.count_nonzero(truth & ~pred))
    report: dict[str, Any] = {
        "dice": 2.0 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else None,
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }
    if report["dice"] is None:
        report["note"] = "no lesion pixel and no pixel above the threshold: Dice undefined"
    return report
