"""cGAN training throughput: train_cgan's mask2image step (CganTask driven by the engine, the variant and
stability settings of params.yaml) in fp32 and in bf16, side by side, on in-memory head phantoms.

    python benchmarks/cgan.py                                         # CPU, 96x96, fp32
    python benchmarks/cgan.py --device cuda --precision both --size 256 256 --batch 32 --steps 300

Prints images/s and (on CUDA) peak GPU memory of each precision and the ratio bf16 / fp32. Issue 4's goal:
mask2image at 256x256 in bf16 >= 100 img/s on one H100 (pix2pix trained at about 11 img/s on a Titan X,
StyleGAN2-ADA at about 45 img/s at 256x256 on a V100). One image is one real image through a whole GAN step
(a D step with lazy R1 and a G step). The data are built in memory so only the step is timed; timings are
of the last epoch (the first warms up).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from benchmarks.train import timed_fit_config  # noqa: E402
from pipeline.config import load_params, parse_section  # noqa: E402
from pipeline.runtime.device import effective_precision, resolve_device  # noqa: E402
from pipeline.runtime.seed import seed_everything  # noqa: E402
from pipeline.training.engine import fit, make_train_sampler  # noqa: E402
from pipeline.training.gan import CganTask  # noqa: E402


class HeadSlices(Dataset[dict[str, torch.Tensor]]):
    """Elliptical heads with a bright lesion: ``image``, ``cond`` (head mask, lesion mask) and ``label``, the
    items train_cgan's CganSlices gives. Built once, so loading costs ~nothing."""

    def __init__(self, n: int, h: int, w: int) -> None:
        gen = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        head = ((yy / 0.85) ** 2 + (xx / 0.7) ** 2 < 1).float()
        self.images = torch.empty(n, 1, h, w)
        self.cond = torch.empty(n, 2, h, w)
        for i in range(n):
            cy, cx = ((torch.rand(2, generator=gen) - 0.5) * 0.8).tolist()
            lesion = (((yy - cy) ** 2 + (xx - cx) ** 2) < 0.01).float() * head
            texture = 0.15 * torch.rand(h, w, generator=gen)
            self.images[i, 0] = head * (0.4 + texture) + 0.4 * lesion
            self.cond[i] = torch.stack([head, lesion])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        label = torch.tensor(int(self.cond[i, 1].any()), dtype=torch.int64)
        return {"image": self.images[i], "cond": self.cond[i], "label": label}


def run(args: argparse.Namespace, precision: str, loader: DataLoader[Any]) -> dict[str, float]:
    device = resolve_device(args.device)
    used = effective_precision(device, precision)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    params = load_params(REPO / "params.yaml")
    seed_everything(0, deterministic=False)
    task = CganTask(parse_section(params, "train_cgan"), "mask2image", tuple(args.size), None)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(task, loader, None, timed_fit_config(args, used), Path(tmp))
    last = result.history[-1]
    out = {
        "img_s": float(last["perf/images_per_second"]),
        "data_wait": float(last["perf/data_wait_fraction"]),
        "precision_used": used,
    }
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=("fp32", "bf16", "both"), default="fp32")
    ap.add_argument("--size", type=int, nargs=2, default=(96, 96), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="GAN steps per epoch")
    ap.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    h, w = args.size
    dataset = HeadSlices(min(args.batch * args.steps, 512), h, w)
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        sampler=make_train_sampler(dataset, seed=0),
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )
    device = resolve_device(args.device)
    print(
        f"train_cgan mask2image, {h}x{w}, batch {args.batch}, {args.steps} steps/epoch, device {device}"
        + (f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "")
    )
    results = {}
    for precision in ("fp32", "bf16") if args.precision == "both" else (args.precision,):
        r = run(args, precision, loader)
        results[precision] = r
        mem = f", peak {r['peak_gib']:.2f} GiB" if "peak_gib" in r else ""
        print(
            f"  {precision} (ran as {r['precision_used']}): {r['img_s']:.1f} img/s, "
            f"data wait {r['data_wait']:.1%}{mem}"
        )
    if len(results) == 2:
        print(f"  ratio bf16 / fp32: {results['bf16']['img_s'] / results['fp32']['img_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
