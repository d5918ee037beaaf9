"""Segmentation metrics: Dice and HD95 per item (slice or volume) and per case (slices stacked into volumes).

Dice comes from MONAI ``DiceMetric`` (background excluded) and HD95 from MONAI ``HausdorffDistanceMetric``
(``percentile=95``: the larger of the two directed 95th percentiles of surface distances, in mm when
``spacing`` is given, else in pixels).

Empty-structure conventions (per item and class), as nnU-Net reports them:
  - reference empty, prediction not: Dice 0 (a false positive is penalised), HD95 ``None`` (undefined);
  - reference present, prediction empty: Dice 0, HD95 ``None``;
  - both empty: with ``both_empty="exclude"`` (default, nnU-Net) the item is left out of Dice and HD95 means
    and counted in ``n_both_empty``; with ``both_empty="perfect"`` (BraTS challenge rule) it scores Dice 1 and
    HD95 0.
Means and stds (population, ddof 0) are over the defined values; a mean with no value is ``None``. Counts of
every case above are in the report, with a ``note`` whenever something was left out.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

BothEmpty = Literal["exclude", "perfect"]
BOTH_EMPTY: tuple[str, ...] = ("exclude", "perfect")
_CHUNK = 64


def _labels(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError(f"{name}: label maps must hold integers")
    return t.to(torch.int64)


def _check_pair(pred: torch.Tensor, target: torch.Tensor, num_classes: int | None) -> int:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim not in (3, 4):
        raise ValueError(f"expected (N, H, W) or (N, D, H, W) label maps, got shape {tuple(pred.shape)}")
    lo = min(int(pred.min()), int(target.min())) if pred.numel() else 0
    hi = max(int(pred.max()), int(target.max())) if pred.numel() else 0
    if lo < 0:
        raise ValueError(f"label maps must be >= 0, found {lo}")
    n = max(2, hi + 1) if num_classes is None else num_classes
    if hi >= n:
        raise ValueError(f"label {hi} found with num_classes={n}")
    return n


def _item_metrics(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None,
    both_empty: str,
) -> dict[str, np.ndarray]:
    """Per item (B) and foreground class (C-1): Dice, HD95 (NaN where excluded/undefined), and presence
    flags. ``pred``, ``target`` int64 (B, *spatial)."""
    dice_metric = DiceMetric(
        include_background=False, reduction="none", ignore_empty=False, num_classes=num_classes
    )
    hd_metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    b = pred.shape[0]
    dice = np.full((b, num_classes - 1), np.nan)
    hd = np.full((b, num_classes - 1), np.nan)
    has_pred = np.zeros((b, num_classes - 1), bool)
    has_target = np.zeros((b, num_classes - 1), bool)
    for start in range(0, b, _CHUNK):
        sl = slice(start, min(start + _CHUNK, b))
        p, t = pred[sl], target[sl]
        dice[sl] = dice_metric(p.unsqueeze(1), t.unsqueeze(1)).double().numpy()
        for c in range(1, num_classes):
            pc, tc = p == c, t == c
            hp = pc.flatten(1).any(1).numpy()
            ht = tc.flatten(1).any(1).numpy()
            has_pred[sl, c - 1], has_target[sl, c - 1] = hp, ht
            both = np.flatnonzero(hp & ht)
            if both.size:
                with warnings.catch_warnings():
                    # MONAI passes its own deprecated argument internally (monai 1.5-1.6); not ours to fix.
                    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
                    values = hd_metric(
                        pc[both].unsqueeze(1).float(), tc[both].unsqueeze(1).float(), spacing=spacing
                    )
                hd[start + both, c - 1] = values[:, 0].double().numpy()
    empty = ~has_pred & ~has_target
    if both_empty == "exclude":
        dice[empty] = np.nan
    else:
        dice[empty], hd[empty] = 1.0, 0.0
    return {"dice": dice, "hd95": hd, "has_pred": has_pred, "has_target": has_target}


def _stats(values: np.ndarray) -> tuple[float | None, float | None]:
    v = values[np.isfinite(values)]
    return (float(v.mean()), float(v.std())) if v.size else (None, None)


def _or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _summary(m: dict[str, np.ndarray], both_empty: str, spacing: Sequence[float] | None) -> dict[str, Any]:
    dice_mean, dice_std = _stats(m["dice"])
    hd_mean, hd_std = _stats(m["hd95"])
    classes: dict[str, Any] = {}
    notes = []
    for j in range(m["dice"].shape[1]):
        hp, ht = m["has_pred"][:, j], m["has_target"][:, j]
        c_dice, c_dice_std = _stats(m["dice"][:, j])
        c_hd, c_hd_std = _stats(m["hd95"][:, j])
        n_both = int(np.sum(~hp & ~ht))
        n_pred_only, n_target_only = int(np.sum(hp & ~ht)), int(np.sum(~hp & ht))
        classes[str(j + 1)] = {
            "dice_mean": c_dice,
            "dice_std": c_dice_std,
            "hd95_mean": c_hd,
            "hd95_std": c_hd_std,
            "n_both_empty": n_both,
            "n_pred_only": n_pred_only,
            "n_target_only": n_target_only,
        }
        if n_both and both_empty == "exclude":
            notes.append(f"class {j + 1}: {n_both} items empty in both left out of the means")
        if n_pred_only or n_target_only:
            notes.append(
                f"class {j + 1}: HD95 undefined for {n_pred_only} items with an empty reference and "
                f"{n_target_only} with an empty prediction (Dice 0, HD95 left out)"
            )
    report: dict[str, Any] = {
        "dice_mean": dice_mean,
        "dice_std": dice_std,
        "hd95_mean": hd_mean,
        "hd95_std": hd_std,
        "hd95_unit": "mm" if spacing is not None else "pixels",
        "both_empty": both_empty,
        "classes": classes,
    }
    if notes:
        report["note"] = "; ".join(notes)
    return report


def _global_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float | None]:
    # Pooled over every voxel of the set; MONAI's DiceMetric averages per item, and one item of the whole set
    # would need a one-hot copy of it. Counting is exact and small.
    out: dict[str, float | None] = {}
    for c in range(1, num_classes):
        pc, tc = pred == c, target == c
        tp, pp, tt = int((pc & tc).sum()), int(pc.sum()), int(tc.sum())
        out[str(c)] = 2.0 * tp / (pp + tt) if pp + tt else None
    return out


def _check_options(both_empty: str, spacing: Sequence[float] | None, spatial_dims: int) -> list[float] | None:
    if both_empty not in BOTH_EMPTY:
        raise ConfigError(f"both_empty must be one of {BOTH_EMPTY}, got {both_empty!r}")
    if spacing is None:
        return None
    values = [float(s) for s in spacing]
    if len(values) != spatial_dims or any(not np.isfinite(s) or s <= 0 for s in values):
        raise ValueError(f"spacing must hold {spatial_dims} positive numbers, got {list(spacing)}")
    return values


def dice_hd95(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    spacing: Sequence[float] | None = None,
    *,
    num_classes: int | None = None,
    both_empty: BothEmpty = "exclude",
) -> dict[str, Any]:
    """Dice and HD95 per item of a batch of label maps.

    ``pred``, ``target`` int (N, H, W) or (N, D, H, W): N items (slices or volumes) of labels 0..C-1 (0 =
    background). ``spacing``: one value per spatial axis, in the arrays' axis order (HD95 in mm), or None (in
    pixels). ``num_classes`` defaults to max label + 1 (at least 2). Empty-structure conventions: module doc.

    Returns ``dice_mean``, ``dice_std``, ``hd95_mean``, ``hd95_std`` over every defined (item, class) value,
    ``classes`` (the same per foreground class, with the counts of empty items), ``global_dice`` (pooled over
    all pixels, per class), ``per_item`` (``dice`` and ``hd95`` lists, class-averaged, ``None`` if undefined),
    ``n_items``, ``hd95_unit``, ``both_empty``, and ``note`` when something was left out.
    """
    p, t = _labels(pred, "pred"), _labels(target, "target")
    c = _check_pair(p, t, num_classes)
    sp = _check_options(both_empty, spacing, p.ndim - 1)
    m = _item_metrics(p, t, c, sp, both_empty)
    report = {"n_items": int(p.shape[0]), **_summary(m, both_empty, sp)}
    report["global_dice"] = _global_dice(p, t, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: undefined items
        report["per_item"] = {
            "dice": [_or_none(x) for x in np.nanmean(m["dice"], axis=1)],
            "hd95": [_or_none(x) for x in np.nanmean(m["hd95"], axis=1)],
        }
    return report


def per_case_dice_hd95(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    case_ids: Sequence[str],
    spacing: Sequence[float] | None = None,
    *,
    num_classes: int | None = None,
    both_empty: BothEmpty = "exclude",
) -> dict[str, Any]:
    """3D Dice and HD95 per case, from 2D slices.

    ``pred``, ``target`` int (N, H, W): slices, each case's slices in slice order (not necessarily
    contiguous); ``case_ids`` N strings. Each case's slices are stacked into a (D, H, W) volume and scored as
    one item; ``spacing`` is (slice, H, W) spacing in mm, or None (pixels). Conventions as ``dice_hd95``.

    Returns ``n_cases``, ``dice_mean`` ± ``dice_std`` and ``hd95_mean`` ± ``hd95_std`` over cases,
    ``classes``, ``global_dice`` (pooled over all slices, per class), ``cases`` ({case_id: {"dice", "hd95"}},
    class-averaged, ``None`` if undefined), ``hd95_unit``, ``both_empty``, and ``note`` when needed.
    """
    p, t = _labels(pred, "pred"), _labels(target, "target")
    if p.ndim != 3:
        raise ValueError(f"per-case evaluation stacks 2D slices (N, H, W), got shape {tuple(p.shape)}")
    c = _check_pair(p, t, num_classes)
    sp = _check_options(both_empty, spacing, 3)
    if len(case_ids) != p.shape[0]:
        raise ValueError(f"{len(case_ids)} case ids for {p.shape[0]} slices")
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(case_ids):
        groups.setdefault(str(case), []).append(i)
    parts = []
    for rows in groups.values():
        idx = torch.as_tensor(rows)
        parts.append(_item_metrics(p[idx].unsqueeze(0), t[idx].unsqueeze(0), c, sp, both_empty))
    merged = (
        {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        if parts
        else {
            "dice": np.zeros((0, c - 1)),
            "hd95": np.zeros((0, c - 1)),
            "has_pred": np.zeros((0, c - 1), bool),
            "has_target": np.zeros((0, c - 1), bool),
        }
    )
    report = {"n_cases": len(groups), **_summary(merged, both_empty, sp)}
    report["global_dice"] = _global_dice(p, t, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        dice = np.nanmean(merged["dice"], axis=1) if len(groups) else np.zeros(0)
        hd = np.nanmean(merged["hd95"], axis=1) if len(groups) else np.zeros(0)
    report["cases"] = {
        case: {"dice": _or_none(d), "hd95": _or_none(h)} for case, d, h in zip(groups, dice, hd, strict=True)
    }
    log.debug("per-case Dice over %d cases: %s", len(groups), report["dice_mean"])
    return report


def label_agreement(pred: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Share of abnormal slices (label 1) with a predicted lesion and of normal ones (label 0) without."""
    found = pred.any(axis=tuple(range(1, pred.ndim)))
    abnormal, normal = labels == 1, labels == 0
    return {
        "abnormal_with_lesion": float(found[abnormal].mean()) if abnormal.any() else None,
        "normal_without_lesion": float((~found[normal]).mean()) if normal.any() else None,
        "n_abnormal": int(abnormal.sum()),
        "n_normal": int(normal.sum()),
    }
