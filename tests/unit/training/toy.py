"""A tiny task, dataset and runner for engine tests (not collected: the name does not start with test_).

Run as ``python -m tests.unit.training.toy --out DIR ...`` (also under torchrun) to train in a separate
process; the final weights land in ``DIR/final.pt`` (rank 0).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.runtime.distributed import DistInfo, cleanup, dist_info_from_env, is_main
from pipeline.runtime.seed import derive_seed, seed_everything, worker_init_fn
from pipeline.training.checkpoint import save_weights
from pipeline.training.engine import FitConfig, FitResult, fit, make_train_sampler
from pipeline.training.task import StepContext


class ToyDataset(Dataset[dict[str, torch.Tensor]]):
    """``n`` random 1×s×s images; target = a fixed blur of the image. Per-sample augmentation (flip and
    noise) is drawn from ``(seed, epoch, index)``, like the project's datasets."""

    def __init__(self, n: int = 16, size: int = 12, seed: int = 0, sleep: float = 0.0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 1, size, size, generator=gen)
        kernel = torch.full((1, 1, 3, 3), 1.0 / 9.0)
        self.targets = F.conv2d(self.images, kernel, padding=1)
        self.seed, self.epoch, self.sleep = seed, 0, sleep

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.sleep:
            time.sleep(self.sleep)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, index))
        image, target = self.images[index], self.targets[index]
        if torch.rand((), generator=gen) < 0.5:
            image, target = image.flip(-1), target.flip(-1)
        image = image + 0.05 * torch.randn(image.shape, generator=gen)
        return {"image": image, "target": target}


class ToyTask:
    """Conv net regressing the blurred image; Adam + StepLR; optional dropout and input noise drawn from
    the global torch RNG (to check that resume reproduces them)."""

    name = "toy"

    def __init__(self, dropout: float = 0.2, noise: float = 0.02, lr: float = 1e-2) -> None:
        layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        layers.append(nn.Conv2d(8, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=2, gamma=0.5)
        self.noise = noise
        self.steps_seen = 0
        self.preview_input = torch.linspace(0, 1, 144).reshape(1, 1, 12, 12)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.opt}

    def schedulers(self) -> dict[str, Any]:
        return {"step": self.sched}

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        net = ctx.modules["net"]
        x = batch["image"]
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        with ctx.autocast():
            out = net(x)
        loss = F.mse_loss(out.float(), batch["target"])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.steps_seen += 1
        return {"loss": float(loss.item())}

    def validate(self, batches: Any, ctx: StepContext) -> dict[str, float]:
        net = ctx.modules["net"]
        errors = [F.mse_loss(net(b["image"]), b["target"]).item() for b in batches]
        mse = float(np.mean(errors))
        return {"mse": mse, "score": -mse}

    def extra_state(self) -> dict[str, Any]:
        return {"steps_seen": self.steps_seen}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps_seen = int(state["steps_seen"])

    def preview(self, ctx: StepContext) -> dict[str, np.ndarray]:
        out = ctx.modules["net"](self.preview_input.to(ctx.device))
        return {"pred": out[0, 0].clamp(0, 1).cpu().numpy()}


def build(
    *,
    seed: int = 7,
    batch: int = 4,
    workers: int = 0,
    sleep: float = 0.0,
    sampler: str = "distributed",
    dropout: float = 0.2,
    noise: float = 0.02,
    dist: DistInfo | None = None,
) -> tuple[ToyTask, DataLoader[Any], DataLoader[Any]]:
    """Seed, then build the task and loaders the way a stage does."""
    seed_everything(seed, deterministic=True)
    task = ToyTask(dropout=dropout, noise=noise)
    train = ToyDataset(n=16, seed=seed, sleep=sleep)
    val = ToyDataset(n=8, seed=seed + 1)
    common: dict[str, Any] = {"batch_size": batch, "num_workers": workers, "worker_init_fn": worker_init_fn}
    if sampler == "distributed":
        loader = DataLoader(train, sampler=make_train_sampler(train, seed=seed, dist=dist), **common)
    else:  # a plain shuffling loader: the engine reseeds its RandomSampler per epoch
        loader = DataLoader(train, shuffle=True, **common)
    return task, loader, DataLoader(val, batch_size=4)


def config(epochs: int, *, seed: int = 7, run_key: str = "k1", checkpoint_every: int = 1) -> FitConfig:
    return FitConfig(
        epochs=epochs,
        checkpoint_every=checkpoint_every,
        monitor="mse",
        monitor_mode="min",
        seed=seed,
        deterministic=True,
        device="cpu",
        precision="bf16",  # must quietly be fp32 on CPU
        run_key=run_key,
    )


def run(
    out: Path, epochs: int, *, live: Path | None = None, dist: DistInfo | None = None, **kw: Any
) -> FitResult:
    task, train, val = build(dist=dist, **kw)
    result = fit(task, train, val, config(epochs), out, live_dir=live, dist=dist)
    if is_main(dist):
        save_weights(out / "final.pt", task.modules(), {"epochs": epochs})
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--noise", type=float, default=0.02)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    dist = dist_info_from_env(os.environ)
    try:
        run(
            args.out,
            args.epochs,
            dist=dist,
            batch=args.batch,
            workers=args.workers,
            sleep=args.sleep,
            dropout=args.dropout,
            noise=args.noise,
        )
    finally:
        cleanup()


if __name__ == "__main__":
    main()
