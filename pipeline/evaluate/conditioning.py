"""Conditioning fidelity: does a synthetic image carry what it was conditioned on?

The segmentation U-Net trained on real slices looks at each synthetic image. For mask2image its prediction
is scored against the conditioning mask; for label2image, the share of abnormal-label images where it
finds a lesion and of normal-label images where it finds none. The same scoring on real test slices
(against their true masks) says what "as good as real" would be.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.metrics.segmentation import label_agreement
from pipeline.training.seg import predict_slices

__all__ = ["conditioning_report", "label_report", "mask_agreement"]


def mask_agreement(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Pooled Dice over all slices (N, H, W), mean per-slice Dice over slices whose truth has a lesion, the
    share of those where the prediction touches the lesion, and the share of lesion-free slices with a
    false lesion."""
    p, t = pred.reshape(len(pred), -1) > 0, truth.reshape(len(truth), -1) > 0
    tp, pp, tt = (p & t).sum(axis=1), p.sum(axis=1), t.sum(axis=1)
    has = tt > 0
    pooled = 2.0 * tp.sum() / (pp.sum() + tt.sum()) if pp.sum() + tt.sum() else None
    per = 2.0 * tp[has] / (pp[has] + tt[has]) if has.any() else np.zeros(0)
    return {
        "dice_pooled": float(pooled) if pooled is not None else None,
        "dice_mean_lesion_slices": float(per.mean()) if per.size else None,
        "detected_fraction": float((tp[has] > 0).mean()) if has.any() else None,
        "false_lesion_fraction": float((pp[~has] > 0).mean()) if (~has).any() else None,
        "n_slices": int(len(p)),
        "n_lesion_slices": int(has.sum()),
    }


def conditioning_report(
    net: torch.nn.Module,
    synthetic: np.ndarray,
    synthetic_masks: np.ndarray,
    real: np.ndarray,
    real_masks: np.ndarray,
    batch_size: int,
) -> dict[str, Any]:
    """``synthetic`` (vs conditioning masks) and ``real_test`` (vs true masks) agreement of ``net``."""
    device = next(net.parameters()).device
    return {
        "synthetic": mask_agreement(predict_slices(net, synthetic, batch_size, device), synthetic_masks),
        "real_test": mask_agreement(predict_slices(net, real, batch_size, device), real_masks),
    }


def label_report(
    net: torch.nn.Module,
    synthetic: np.ndarray,
    synthetic_labels: np.ndarray,
    real: np.ndarray,
    real_masks: np.ndarray,
    batch_size: int,
) -> dict[str, Any]:
    """label2image: ``synthetic`` (vs the labels they were drawn with) and ``real_test`` (vs whether their
    true mask has a lesion) label agreement of ``net``'s predictions."""
    device = next(net.parameters()).device
    real_labels = real_masks.reshape(len(real_masks), -1).any(axis=1).astype(np.int64)
    return {
        "synthetic": label_agreement(predict_slices(net, synthetic, batch_size, device), synthetic_labels),
        "real_test": label_agreement(predict_slices(net, real, batch_size, device), real_labels),
    }
