"""The reconstruction objective: a denoising autoencoder trained on normal slices.

Corruption follows denoising-AE anomaly detection for brain MRI (Kascenas et al., MIDL 2022): coarse Gaussian
noise, drawn on a low-resolution grid and upsampled, teaches the network to replace blob-sized deviations
by normal anatomy; random patch masking is the alternative.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import CommonConfig, TrainAeConfig
from pipeline.data.slices import SliceDataset
from pipeline.models.networks import bottleneck_ratio, build_autoencoder
from pipeline.runtime.distributed import DistInfo, is_main
from pipeline.runtime.seed import seed_everything
from pipeline.training.common import fit_summary, fit_task, load_best, run_key, save_trained
from pipeline.training.task import StepContext

#: Normalised intensity above which a pixel counts as head when corrupting (noise is not added to air).
HEAD_THRESHOLD = 0.05


def corrupt(
    images: torch.Tensor, cfg: TrainAeConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Corrupted copy of ``images`` (B,1,H,W) per ``cfg.corruption``; draws from ``generator`` (or the global
    RNG, which the engine reseeds every epoch)."""
    if cfg.corruption == "none":
        return images
    b, _, h, w = images.shape
    kw = (
        {"generator": generator, "device": images.device}
        if generator is not None
        else {"device": images.device}
    )
    if cfg.corruption == "coarse_noise":
        r = cfg.noise_resolution
        noise = torch.randn((b, 1, r, r), **kw) * cfg.noise_std
        noise = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
        return images + noise * (images > HEAD_THRESHOLD)
    p = cfg.mask_patch
    gh, gw = -(-h // p), -(-w // p)
    keep = (torch.rand((b, 1, gh, gw), **kw) >= cfg.mask_ratio).float()
    keep = F.interpolate(keep, scale_factor=p, mode="nearest")[..., :h, :w]
    return images * keep


class AeTask:
    """Batches: dicts with ``image`` (B,1,H,W) of normal slices."""

    name = "train_ae"

    def __init__(self, cfg: TrainAeConfig, preview_batch: dict[str, torch.Tensor] | None = None) -> None:
        self.cfg = cfg
        self.net = build_autoencoder(cfg)
        self.opt = torch.optim.AdamW(
            self.net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.train.epochs)
        self.preview_batch = preview_batch

    def _loss(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(recon, target) if self.cfg.loss == "l1" else F.mse_loss(recon, target)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"net": self.opt}

    def schedulers(self) -> dict[str, Any]:
        return {"net": self.sched}

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, torch.Tensor]:
        net = ctx.modules["net"]
        clean = batch["image"]
        with ctx.autocast():
            recon = net(corrupt(clean, self.cfg))
        loss = self._loss(recon.float(), clean)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def validate(self, batches: Iterable[dict[str, torch.Tensor]], ctx: StepContext) -> dict[str, float]:
        """Reconstruction loss of uncorrupted validation normals."""
        net = ctx.modules["net"]
        total, count = 0.0, 0
        for batch in batches:
            with ctx.autocast():
                recon = net(batch["image"])
            total += float(self._loss(recon.float(), batch["image"])) * batch["image"].shape[0]
            count += batch["image"].shape[0]
        return {"loss": total / max(count, 1)}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    @torch.no_grad()
    def preview(self, ctx: StepContext) -> dict[str, np.ndarray]:
        if self.preview_batch is None:
            return {}
        net = ctx.modules["net"]
        image = self.preview_batch["image"].to(ctx.device)
        with ctx.autocast():
            recon = net(image).float().cpu().numpy()
        rows = [
            np.concatenate([image[i, 0].cpu().numpy(), recon[i, 0]], axis=0) for i in range(image.shape[0])
        ]
        return {"reconstruction": np.clip(np.concatenate(rows, axis=1), 0.0, 1.0)}


@torch.no_grad()
def reconstruct(net: nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Reconstructions (N,H,W) float32 of slices (N,H,W), in eval mode, in batches."""
    net.eval()
    out = np.empty_like(images, dtype=np.float32)
    for start in range(0, images.shape[0], batch_size):
        chunk = torch.from_numpy(np.array(images[start : start + batch_size], dtype=np.float32))[:, None]
        out[start : start + chunk.shape[0]] = net(chunk.to(device)).float().cpu().numpy()[:, 0]
    return out


def train_ae(
    cfg: TrainAeConfig,
    common: CommonConfig,
    data_dir: Path,
    out_dir: Path,
    live_dir: Path | None,
    *,
    dist: DistInfo | None = None,
    progress: bool = False,
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the denoising autoencoder on the train split's normal slices; keep the checkpoint with the
    lowest validation reconstruction loss (validation normals). Writes checkpoints, ``model.pt`` and
    ``lineage.json`` into ``out_dir``; returns the metrics."""
    seed_everything(common.seed, common.deterministic)
    train_set = SliceDataset(
        data_dir / "slices" / "train", "normal", cfg.min_foreground, cfg.augment, common.seed
    )
    val_set = SliceDataset(data_dir / "slices" / "val", "normal", cfg.min_foreground, None)
    picks = np.linspace(0, len(val_set) - 1, num=min(4, len(val_set))).astype(int)
    preview = {"image": torch.stack([val_set[int(i)]["image"] for i in picks])}
    task = AeTask(cfg, preview)
    key = run_key(cfg, common, data_dir)
    result = fit_task(
        task,
        train_set,
        val_set,
        cfg.train,
        common,
        ("val/loss", "min"),
        key,
        out_dir,
        live_dir,
        dist,
        progress,
    )
    if dist is not None and not is_main(dist):
        return {}
    load_best(task.net, out_dir, common.device)
    h, w = train_set.store.image.shape[1:]
    metrics = {
        **fit_summary(result),
        "best_val_loss": result.best_metric,
        "train_normal_slices": len(train_set),
        "val_normal_slices": len(val_set),
        "bottleneck_ratio": bottleneck_ratio(cfg, int(h), int(w)),
    }
    save_trained(out_dir, "train_ae", task.net, cfg, key, common, result, lineage)
    return metrics
