"""Export benchmark: samples/s of the export's per-sample path (condition + generator + NIfTI + DICOM/SEG
bytes + write) against the generator's forward pass alone, side by side on the same trained model.

    python benchmarks/export.py                     # mask2image from models/train_cgan (after dvc repro)
    python benchmarks/export.py --variant label2image --n 64

Prints samples/s of (a) the networks' forward alone, one sample per call as the export runs it (the
generator, plus for label2image with ``export.label2image_masks: segmenter`` the U-Net that labels the
sample), (b) the generator forward batched (what a throughput-first exporter would do, without
bit-identical regeneration), and (c) the whole per-sample export path; the ratio (c)/(a) says how much
condition building and writing cost (goal: writing does not dominate, ratio >= 0.5). The memorisation gate
runs once per export, not per sample, and is not part of the per-sample path.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.config import load_params, parse_section  # noqa: E402
from pipeline.data.slices import select_rows  # noqa: E402
from pipeline.export.conditions import LABEL, choose_condition, condition_maps, sample_seed  # noqa: E402
from pipeline.export.dicom_writer import Provenance  # noqa: E402
from pipeline.export.run import uses_segmenter  # noqa: E402
from pipeline.export.samples import build_sample, sample_affine, sample_files, segment, write_files  # noqa: E402
from pipeline.export.sampling import load_generator  # noqa: E402
from pipeline.metrics.features import load_segmenter  # noqa: E402
from pipeline.preprocess.store import load_slices  # noqa: E402
from pipeline.runtime.device import resolve_device  # noqa: E402
from pipeline.training.gan import sample_noise  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="mask2image")
    ap.add_argument("--n", type=int, default=48, help="samples per measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16, help="batch of the batched-forward reference")
    ap.add_argument(
        "--project", type=Path, default=REPO, help="project folder with models/ and data/ after dvc repro"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.project / "params.yaml")
    cfg = parse_section(params, "export")
    device = resolve_device(args.device)
    gen = load_generator(args.project / "models" / "train_cgan" / args.variant / "model.pt", device)
    segmenter = None
    if uses_segmenter(cfg, gen.v.kind):
        segmenter = load_segmenter(args.project / "models" / "train_seg" / "model.pt", device)
    store = load_slices(args.project / "data" / "preprocess" / "slices" / "train")
    candidates = select_rows(store, "labelled", cfg.min_foreground)
    seeds = [sample_seed(cfg.seed, args.variant, i) for i in range(args.n)]
    conds = [choose_condition(cfg, gen.v.kind, s, store, candidates) for s in seeds]
    maps = [
        None if c.source == LABEL else condition_maps(c, cfg.masks, s, store)
        for c, s in zip(conds, seeds, strict=True)
    ]

    def forward(k: int, batch: int) -> None:
        noise = sample_noise(gen.v, batch, gen.size, device, torch.Generator().manual_seed(seeds[k]))
        with torch.no_grad():
            if gen.v.kind == "mask2image":
                head, lesion, _ = maps[k]  # type: ignore[misc]
                cond = torch.from_numpy(np.stack([head, lesion]).astype(np.float32))[None]
                gen.net(cond.expand(batch, -1, -1, -1).to(device), noise)
            else:
                out = gen.net(noise, torch.full((batch,), conds[k].label, dtype=torch.int64, device=device))
                if segmenter is not None and batch == 1:
                    segment(segmenter, out[0, 0].cpu().numpy())

    forward(0, 1)  # warm-up
    t = time.perf_counter()
    for k in range(args.n):
        forward(k, 1)
    single = args.n / (time.perf_counter() - t)
    t = time.perf_counter()
    done = 0
    while done < args.n:
        forward(done % args.n, args.batch)
        done += args.batch
    batched = done / (time.perf_counter() - t)

    affine = sample_affine((2.0, 2.0, 5.0), gen.size)

    def export_one(k: int, root: Path) -> None:
        sample = build_sample(cfg, gen, k, seeds[k], store, candidates, segmenter=segmenter)
        prov = Provenance(sample.sample_id, args.variant, seeds[k], gen.sha256, "0" * 64, "bench", "bench")
        write_files(root, sample_files(sample, affine, prov, cfg.compress, cfg.dicom))

    with tempfile.TemporaryDirectory() as tmp:
        # The first sample pays once per export for loading the DICOM standard (highdicom) and building the
        # DICOM templates; it is timed apart, as the forward's warm-up is.
        t = time.perf_counter()
        export_one(0, Path(tmp))
        first = time.perf_counter() - t
        t = time.perf_counter()
        for k in range(args.n):
            export_one(k, Path(tmp))
        full = args.n / (time.perf_counter() - t)
    nets = "G + segmenter" if segmenter is not None else "generator"
    rows = [
        (f"{nets} forward, 1 per call", f"{single:8.1f} samples/s"),
        (f"generator forward, batch {args.batch}", f"{batched:8.1f} samples/s"),
        ("export path (condition+nets+NIfTI+DICOM)", f"{full:8.1f} samples/s"),
        ("first export sample (one-off setup)", f"{first * 1000:8.0f} ms"),
        ("ratio export / forward (1 per call)", f"{full / single:8.2f}"),
        ("ratio export / forward (batched)", f"{full / batched:8.2f}"),
    ]
    print(f"{args.variant} {gen.size[0]}x{gen.size[1]} on {device}, {args.n} samples, dicom={cfg.dicom}")
    for name, value in rows:
        print(f"  {name + ':':<42s}{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
