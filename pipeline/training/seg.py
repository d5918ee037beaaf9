"""The segmentation objective: MONAI U-Net, image → lesion mask, DiceCE loss, validation Dice."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from pipeline.config import CommonConfig, TrainSegConfig
from pipeline.data.slices import SliceDataset, select_rows
from pipeline.metrics.segmentation import per_case_dice_hd95
from pipeline.models.networks import build_unet
from pipeline.preprocess.store import load_slices
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
from pipeline.training.task import StepContext


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): the image in grey, truth in green, prediction in red (overlap yellow)."""
    grey = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    rgb[truth > 0, 1] = 255
    rgb[pred > 0, 0] = 255
    return rgb


class SegTask:
    """Batches: dicts with ``image`` (B,1,*S) and ``mask`` (B,1,*S) in {0,1}."""

    name = "train_seg"

    def __init__(
        self,
        cfg: TrainSegConfig,
        preview_batch: dict[str, torch.Tensor] | None = None,
        infer: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """``infer(net, image)`` gives validation logits (default ``net(image)``); 3D validation passes a
        sliding-window inferer so whole volumes are predicted patch by patch."""
        self.cfg = cfg
        self.infer = infer
        self.net = build_unet(cfg)
        self.opt = torch.optim.AdamW(
            self.net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.train.epochs)
        # Batch Dice on the lesion channel only (as nnU-Net): background Dice is ~1 everywhere and would
        # drown the lesion signal, and per-slice Dice of lesion-free slices is undefined.
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
        self.preview_batch = preview_batch

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.opt}

    def schedulers(self) -> dict[str, Any]:
        return {"net": self.sched}

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        net = ctx.modules["net"]
        with ctx.autocast():
            logits = net(batch["image"])
        loss = self.loss(logits.float(), batch["mask"])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def validate(self, batches: Iterable[dict[str, torch.Tensor]], ctx: StepContext) -> dict[str, float]:
        """Global foreground Dice over every validation pixel (2TP / (2TP + FP + FN)) and the mean loss."""
        net = ctx.modules["net"]
        tp = fp = fn = 0.0
        losses: list[float] = []
        for batch in batches:
            with ctx.autocast():
                logits = net(batch["image"]) if self.infer is None else self.infer(net, batch["image"])
            logits = logits.float()
            losses.append(float(self.loss(logits, batch["mask"])))
            pred = logits.argmax(dim=1, keepdim=True) > 0
            truth = batch["mask"] > 0.5
            tp += float((pred & truth).sum())
            fp += float((pred & ~truth).sum())
            fn += float((~pred & truth).sum())
        denom = 2 * tp + fp + fn
        # No lesion pixel and no prediction anywhere is a perfect answer, not an undefined one.
        dice = 1.0 if denom == 0 else 2 * tp / denom
        return {"dice": dice, "loss": float(np.mean(losses)) if losses else float("nan")}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    @torch.no_grad()
    def preview(self, ctx: StepContext) -> dict[str, np.ndarray]:
        if self.preview_batch is None or self.cfg.spatial_dims != 2:
            return {}
        net = ctx.modules["net"]
        image = self.preview_batch["image"].to(ctx.device)
        with ctx.autocast():
            pred = net(image).float().argmax(dim=1).cpu().numpy()
        tiles = [
            overlay(
                self.preview_batch["image"][i, 0].numpy(), self.preview_batch["mask"][i, 0].numpy(), pred[i]
            )
            for i in range(image.shape[0])
        ]
        return {"overlay": np.concatenate(tiles, axis=1)}


@torch.no_grad()
def predict_slices(net: nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Lesion masks (N,H,W) uint8 from slices (N,H,W), in eval mode."""
    net.eval()
    out = np.empty(images.shape, dtype=np.uint8)
    for start in range(0, images.shape[0], batch_size):
        chunk = torch.from_numpy(np.array(images[start : start + batch_size], dtype=np.float32))[:, None]
        out[start : start + chunk.shape[0]] = net(chunk.to(device)).float().argmax(dim=1).cpu().numpy()
    return out


def evaluate_split(
    net: nn.Module,
    data_dir: Path,
    split: str,
    spacing: tuple[float, float, float],
    device: torch.device,
    batch_size: int,
) -> tuple[dict[str, Any], np.ndarray | None, Any]:
    """Per-case Dice/HD95 of the best model on one split's labelled slices (all slices of each case)."""
    folder = data_dir / "slices" / split
    store = load_slices(folder)
    rows = select_rows(store, "labelled", 0.0)
    if rows.size == 0:
        return {"n_cases": 0, "note": f"split {split!r} has no labelled slice"}, None, store
    images = np.asarray(store.image[rows])
    truth = (np.asarray(store.mask[rows]) > 0).astype(np.uint8)
    pred = predict_slices(net, images, batch_size, device)
    case_ids = [store.rows[int(r)]["case_id"] for r in rows]
    report = per_case_dice_hd95(pred, truth, case_ids, spacing)
    return report, pred, (store, rows)


def train_seg(
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
    """Train the U-Net on the train split, keep the best validation-Dice checkpoint, evaluate it on val and
    test (per-case Dice and HD95 in mm) and return the metrics. Writes last/best checkpoints, ``model.pt``
    (weights + config), ``lineage.json`` and overlay PNGs into ``out_dir``."""
    if cfg.spatial_dims != 2:
        from pipeline.training.seg3d import train_seg_3d

        return train_seg_3d(
            cfg, common, data_dir, out_dir, live_dir, dist=dist, progress=progress, lineage=lineage
        )
    seed_everything(common.seed, common.deterministic)
    train_set = SliceDataset(
        data_dir / "slices" / "train",
        "labelled",
        cfg.min_foreground,
        cfg.augment,
        common.seed,
        cfg.abnormal_fraction,
    )
    val_set = SliceDataset(data_dir / "slices" / "val", "labelled", cfg.min_foreground, None)
    abnormal = [i for i in range(len(val_set)) if int(val_set.store.label[int(val_set.rows[i])]) == 1][:4]
    preview = None
    if abnormal:
        items = [val_set[i] for i in abnormal]
        preview = {k: torch.stack([it[k] for it in items]) for k in ("image", "mask")}
    task = SegTask(cfg, preview)
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
    )
    if dist is not None and not is_main(dist):
        return {}

    net, device = load_best(task.net, out_dir, common.device)
    spacing = stacked_spacing(data_dir)
    metrics: dict[str, Any] = {
        **fit_summary(result),
        "best_val_dice_slices": result.best_metric,
    }
    for split in ("val", "test"):
        report, pred, ctx = evaluate_split(net, data_dir, split, spacing, device, cfg.train.batch_size)  # type: ignore[arg-type]
        metrics[split] = report
        if split == "test" and pred is not None:
            store, rows = ctx
            lesion = [k for k in range(rows.size) if int(store.label[int(rows[k])]) == 1][:6]
            for n, k in enumerate(lesion):
                r = int(rows[k])
                save_png(
                    out_dir / "overlays" / f"test_{n:02d}.png",
                    overlay(np.asarray(store.image[r]), np.asarray(store.mask[r]), pred[k]),
                )
    save_trained(out_dir, "train_seg", task.net, cfg, key, common, result, lineage)
    return metrics
