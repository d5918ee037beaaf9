"""3D segmentation (``train_seg.spatial_dims: 3``): the U-Net trained on random patches of the preprocessed
volumes, validated and evaluated on whole volumes with MONAI sliding-window inference (window = patch size).

Outputs mirror the 2D path (:func:`pipeline.training.seg.train_seg`): ``last.pt``/``best.pt`` (best by
validation Dice), ``model.pt`` (weights + config), ``lineage.json``, test overlays, and the same metrics keys.
Evaluation predicts each whole volume (X, Y, K), then stacks it as slices (K, X, Y) so that
:func:`pipeline.metrics.segmentation.per_case_dice_hd95` reports per-case 3D Dice/HD95 exactly as for 2D.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from pipeline.config import CommonConfig, TrainSegConfig
from pipeline.data.volumes import CaseVolume, VolumeDataset, WholeVolumeDataset, load_split_volumes
from pipeline.errors import ConfigError
from pipeline.metrics.segmentation import per_case_dice_hd95
from pipeline.runtime.distributed import DistInfo, is_main
from pipeline.runtime.seed import seed_everything
from pipeline.training.common import (
    fit_summary,
    fit_task,
    load_best,
    run_key,
    save_png,
    save_trained,
    stacked_spacing,
)
from pipeline.training.seg import SegTask, overlay

log = logging.getLogger(__name__)

#: Windows per forward pass in sliding-window inference: small, so a whole volume never needs more memory
#: than a couple of training patches.
SW_BATCH_SIZE = 2
#: Overlap of neighbouring windows (fraction of the window), blended with Gaussian weights.
SW_OVERLAP = 0.25

Inferer = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def check_patch_size(cfg: TrainSegConfig) -> None:
    """The U-Net halves each axis ``len(strides)`` times: every patch side must divide by the product of
    the strides (so a window's output has the window's shape)."""
    factor = math.prod(cfg.strides)
    bad = [p for p in cfg.patch_size if p < 1 or p % factor]
    if bad:
        raise ConfigError(
            f"train_seg.patch_size {cfg.patch_size}: every side must be a positive multiple of "
            f"prod(strides) = {factor} for spatial_dims 3"
        )


def window_inferer(
    patch_size: Sequence[int], sw_batch_size: int = SW_BATCH_SIZE, overlap: float = SW_OVERLAP
) -> Inferer:
    """``infer(net, image)``: logits (B, 2, X, Y, Z) of image (B, 1, X, Y, Z) by sliding windows of
    ``patch_size`` (volumes smaller than a window are padded and cropped back)."""
    roi = tuple(int(p) for p in patch_size)

    def infer(net: nn.Module, image: torch.Tensor) -> torch.Tensor:
        out = sliding_window_inference(
            image, roi_size=roi, sw_batch_size=sw_batch_size, predictor=net, overlap=overlap, mode="gaussian"
        )
        assert isinstance(out, torch.Tensor)
        return out.as_subclass(torch.Tensor)

    return infer


@torch.no_grad()
def predict_volume(net: nn.Module, image: np.ndarray, infer: Inferer, device: torch.device) -> np.ndarray:
    """Lesion mask (X, Y, Z) uint8 of one volume (X, Y, Z), in eval mode and fp32."""
    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    return infer(net, x).float().argmax(dim=1)[0].cpu().numpy().astype(np.uint8)


def _as_slices(volume: np.ndarray) -> np.ndarray:
    """(X, Y, K) → (K, X, Y), the slice store's layout."""
    return np.ascontiguousarray(np.moveaxis(volume, 2, 0))


def _split_eval_3d(
    net: nn.Module,
    cases: list[CaseVolume],
    split: str,
    spacing: tuple[float, float, float],
    infer: Inferer,
    device: torch.device,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Per-case Dice/HD95 of whole-volume predictions of one split's labelled cases, and the predictions."""
    if not cases:
        return {"n_cases": 0, "note": f"split {split!r} has no labelled case"}, []
    preds = [predict_volume(net, c.image, infer, device) for c in cases]
    pred = np.concatenate([_as_slices(p) for p in preds])
    truth = np.concatenate([_as_slices(c.mask) for c in cases])
    case_ids = [c.case_id for c in cases for _ in range(c.image.shape[2])]
    return per_case_dice_hd95(pred, truth, case_ids, spacing), preds


def _save_overlays(out_dir: Path, cases: list[CaseVolume], preds: list[np.ndarray], limit: int = 6) -> None:
    """Up to ``limit`` test slices that hold lesion, as in 2D: image grey, truth green, prediction red."""
    n = 0
    for case, pred in zip(cases, preds, strict=True):
        mask = case.mask
        for k in range(case.image.shape[2]):
            if n >= limit:
                return
            if mask[:, :, k].any():
                save_png(
                    out_dir / "overlays" / f"test_{n:02d}.png",
                    overlay(np.asarray(case.image[:, :, k]), mask[:, :, k], pred[:, :, k]),
                )
                n += 1


def train_seg_3d(
    cfg: TrainSegConfig,
    common: CommonConfig,
    data_dir: Path,
    out_dir: Path,
    live_dir: Path | None,
    *,
    dist: DistInfo | None = None,
    progress: bool = False,
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the 3D U-Net on random patches of the train volumes (``cfg.abnormal_fraction`` of them centred
    on lesion, see :class:`pipeline.data.volumes.VolumeDataset`), keep the best checkpoint by validation
    Dice (pooled over every voxel of the whole val volumes, sliding window), evaluate it on val and test
    (per-case Dice and HD95 in mm) and return the metrics. Writes what the 2D path writes into ``out_dir``.

    ``images_per_second`` counts training patches. ``best_val_dice_slices`` keeps its 2D name: the pooled
    Dice over all voxels (equivalently all slices) of the val volumes."""
    if cfg.spatial_dims != 3:
        raise ConfigError(f"train_seg_3d needs train_seg.spatial_dims 3, got {cfg.spatial_dims}")
    check_patch_size(cfg)
    seed_everything(common.seed, common.deterministic)
    train_set = VolumeDataset(
        data_dir, "train", cfg.patch_size, cfg.augment, common.seed, cfg.abnormal_fraction
    )
    val_set = WholeVolumeDataset(data_dir, "val")
    infer = window_inferer(cfg.patch_size)
    task = SegTask(cfg, None, infer=infer)
    key = run_key(cfg, common, data_dir)
    result = fit_task(
        task,
        train_set,
        val_set,
        cfg.train,
        common,
        ("val/dice", "max"),
        key,
        out_dir,
        live_dir,
        dist,
        progress,
        val_batch_size=1,  # whole volumes differ in shape
    )
    if dist is not None and not is_main(dist):
        return {}

    net, device = load_best(task.net, out_dir, common.device)
    spacing = stacked_spacing(data_dir)
    metrics: dict[str, Any] = {
        **fit_summary(result),
        "best_val_dice_slices": result.best_metric,
        "spatial_dims": 3,
        "patch_size": list(train_set.patch_size),
        "samples_per_case": train_set.samples_per_case,
        "train_patches_per_epoch": len(train_set),
    }
    for split in ("val", "test"):
        cases = val_set.cases if split == "val" else load_split_volumes(data_dir, split)
        report, preds = _split_eval_3d(net, cases, split, spacing, infer, device)
        metrics[split] = report
        if split == "test" and preds:
            _save_overlays(out_dir, cases, preds)
    save_trained(out_dir, "train_seg", task.net, cfg, key, common, result, lineage)
    return metrics
