"""Training-step benchmark: the engine (`pipeline.training.engine.fit` driving SegTask/AeTask) against a
plain PyTorch loop over the same MONAI network, loss, optimiser and batches, run side by side.

    python benchmarks/train.py                                   # CPU, U-Net, 96x96, in-memory batches
    python benchmarks/train.py --task ae
    python benchmarks/train.py --device cuda --precision both --size 192 160 --batch 64 --steps 100
    python benchmarks/train.py --device cuda --data phantom --workers 12 --size 192 160   # real loader

Prints images/s of each, the ratio engine / plain (goal >= 0.95), the engine's share of step time spent
waiting for data, and on CUDA the peak GPU memory. Timings are of the last epoch (the first warms up).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.data import ConcatDataset, DataLoader, Dataset  # noqa: E402

from pipeline.config import load_params, parse_section  # noqa: E402
from pipeline.runtime.device import autocast_factory, effective_precision, resolve_device  # noqa: E402
from pipeline.runtime.seed import seed_everything, worker_init_fn  # noqa: E402
from pipeline.training.ae import AeTask, corrupt  # noqa: E402
from pipeline.training.engine import FitConfig, fit, make_train_sampler, move_to_device  # noqa: E402
from pipeline.training.seg import SegTask  # noqa: E402


class BlobSlices(Dataset[dict[str, torch.Tensor]]):
    """In-memory slices with bright blobs: loading costs ~nothing, so only the training step is timed."""

    def __init__(self, n: int, h: int, w: int) -> None:
        gen = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        self.images = 0.3 * torch.rand(n, 1, h, w, generator=gen)
        self.masks = torch.zeros(n, 1, h, w)
        for i in range(n):
            cy, cx = (torch.rand(2, generator=gen) * torch.tensor([h, w])).tolist()
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (min(h, w) / 10) ** 2
            self.masks[i, 0][blob] = 1.0
            self.images[i, 0][blob] += 0.6

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i]}


def phantom_store(h: int, w: int, tmp: Path, cases: int) -> Path:
    """Run the real demo_data and preprocess code at slice size (h, w); return the train slice folder."""
    from pipeline.data.demo import generate_demo
    from pipeline.preprocess.run import run_preprocess

    params = load_params(REPO / "params.yaml")
    spacing = 240.0 / max(h, w)
    params["demo_data"].update(
        {
            "matrix": [w, h, 24],
            "spacing": [spacing, spacing, 5.0],
            "n_cases": cases,
            "n_nifti": cases // 4,
            "n_oblique": cases // 4,
        }
    )
    params["preprocess"].update({"target_spacing": [spacing, spacing, 5.0], "slice_size": [w, h]})
    generate_demo(tmp / "raw", parse_section(params, "demo_data"))
    lineage = {"stage": "benchmark"}
    run_preprocess(parse_section(params, "preprocess"), (tmp / "raw").resolve(), tmp / "pre", 4, lineage)
    return tmp / "pre" / "slices" / "train"


def make_task(kind: str, params: dict[str, Any]) -> Any:
    seed_everything(0, deterministic=False)
    return (
        SegTask(parse_section(params, "train_seg"))
        if kind == "seg"
        else AeTask(parse_section(params, "train_ae"))
    )


def plain_epoch(
    task: Any, kind: str, loader: DataLoader[Any], device: torch.device, precision: str, steps: int
) -> float:
    """One epoch of the textbook loop; returns images/s."""
    net = task.net
    net.train()
    autocast = autocast_factory(device, precision)
    n, start = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        if i >= steps:
            break
        batch = move_to_device(batch, device, non_blocking=True)
        clean = batch["image"]
        with autocast():
            out = net(corrupt(clean, task.cfg) if kind == "ae" else clean)
        loss = task._loss(out.float(), clean) if kind == "ae" else task.loss(out.float(), batch["mask"])
        task.opt.zero_grad(set_to_none=True)
        loss.backward()
        task.opt.step()
        n += clean.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def timed_fit_config(args: argparse.Namespace, precision: str) -> FitConfig:
    """The engine's settings for a timing run: ``args.epochs`` epochs of ``args.steps`` batches, no
    validation or best checkpoint, one checkpoint at the end."""
    return FitConfig(
        epochs=args.epochs,
        checkpoint_every=args.epochs,
        monitor="",
        monitor_mode="max",
        seed=0,
        deterministic=False,
        device=args.device,
        precision=precision,  # type: ignore[arg-type]
        max_steps_per_epoch=args.steps,
    )


def run(
    args: argparse.Namespace, precision: str, loader: DataLoader[Any], params: dict[str, Any]
) -> dict[str, float]:
    device = resolve_device(args.device)
    used = effective_precision(device, precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    task = make_task(args.task, params)
    task.net.to(device)
    plain = 0.0
    for _ in range(args.epochs):
        plain = plain_epoch(task, args.task, loader, device, used, args.steps)
    task = make_task(args.task, params)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(task, loader, None, timed_fit_config(args, used), Path(tmp))
    last = result.history[-1]
    out = {
        "plain_img_s": plain,
        "engine_img_s": float(last["perf/images_per_second"]),
        "data_wait": float(last["perf/data_wait_fraction"]),
    }
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("seg", "ae"), default="seg")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=("fp32", "bf16", "both"), default="fp32")
    ap.add_argument("--size", type=int, nargs=2, default=(96, 96), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="batches per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    ap.add_argument("--data", choices=("memory", "phantom"), default="memory")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--cases", type=int, default=16, help="phantom cases (--data phantom)")
    ap.add_argument("--repeat", type=int, default=1, help="repeat the phantom slices within an epoch")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(REPO / "params.yaml")
    h, w = args.size
    with tempfile.TemporaryDirectory() as tmp:
        if args.data == "phantom":
            from pipeline.data.slices import SliceDataset

            cfg = parse_section(params, "train_seg")
            selection = "labelled" if args.task == "seg" else "normal"
            slices = SliceDataset(phantom_store(h, w, Path(tmp), args.cases), selection, 0.0, cfg.augment, 0)
            # repeated so an epoch has enough steps to time at large batch sizes
            dataset: Dataset[Any] = ConcatDataset([slices] * args.repeat)
        else:
            dataset = BlobSlices(max(args.batch * args.steps, args.batch), h, w)
        loader = DataLoader(
            dataset,
            batch_size=args.batch,
            sampler=make_train_sampler(dataset, seed=0),
            num_workers=args.workers,
            worker_init_fn=worker_init_fn if args.workers else None,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )
        device = resolve_device(args.device)
        print(
            f"task {args.task}, {h}x{w}, batch {args.batch}, {args.steps} steps/epoch, data {args.data} "
            f"({len(dataset)} slices, {args.workers} workers), device {device}"
            + (f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
        )
        results = {}
        for precision in ("fp32", "bf16") if args.precision == "both" else (args.precision,):
            r = run(args, precision, loader, params)
            results[precision] = r
            mem = f", peak {r['peak_gib']:.2f} GiB" if "peak_gib" in r else ""
            print(
                f"  {precision}: engine {r['engine_img_s']:.1f} img/s, "
                f"plain loop {r['plain_img_s']:.1f} img/s, "
                f"ratio engine/plain {r['engine_img_s'] / r['plain_img_s']:.3f}, "
                f"data wait {r['data_wait']:.1%}{mem}"
            )
        if len(results) == 2:
            print(
                "  bf16 / fp32 (engine): "
                f"{results['bf16']['engine_img_s'] / results['fp32']['engine_img_s']:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
