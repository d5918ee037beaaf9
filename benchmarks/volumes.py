"""Memory of the 3D patch dataset: medsynth's memory-mapped VolumeDataset against the MONAI recipe it
replaced (every volume in memory, padded once, with the flat index of every lesion and head voxel for
``RandCropByPosNegLabeld``), side by side, each in its own process.

    python benchmarks/volumes.py                      # 48 cases of 160 x 160 x 96 voxels (~470 MB of float32)
    python benchmarks/volumes.py --cases 200 --shape 128 128 64

Generates the cases as preprocess shards in a temporary folder, builds the dataset, draws ``--items``
patches, and prints each process's peak resident memory above its baseline (after imports), the
anonymous memory it holds at the end (the RSS peak of the memory-mapped dataset includes file pages the
kernel can drop), the dataset's own resident bytes, and patches/s.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _anon_mib() -> float:
    """Anonymous resident memory now (Linux): what the process holds itself, without the file pages of its
    memory maps, which the kernel can drop and reread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def write_cases(root: Path, n: int, shape: tuple[int, int, int]) -> None:
    from pipeline.io.nifti import nifti_bytes
    from pipeline.io.shards import CASES_PER_SHARD, ShardWriter

    grid = np.indices(shape, dtype=np.float32)
    half = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    head = (((grid - half) / (half * 0.9)) ** 2).sum(0) < 1
    rows = []
    with ShardWriter(root, "volumes", CASES_PER_SHARD) as shards:
        for k in range(n):
            rng = np.random.default_rng(k)
            centre = (half[:, 0, 0, 0] * rng.uniform(0.6, 1.4, 3))[:, None, None, None]
            lesion = (((grid - centre) / 6.0) ** 2).sum(0) < 1
            image = (head * rng.uniform(0.3, 0.7, shape) + lesion * 0.3).astype(np.float32)
            refs = shards.add(
                [
                    (f"c{k}_image.nii", nifti_bytes(image, np.eye(4))),
                    (f"c{k}_mask.nii", nifti_bytes(lesion.astype(np.uint8), np.eye(4))),
                ]
            )
            rows.append(
                {"case_id": f"c{k}", "split": "train", "has_mask": "True", "image": refs[0], "mask": refs[1]}
            )
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run_mode(mode: str, root: Path, patch: tuple[int, int, int], items: int) -> None:
    """In a child process: build one dataset, draw ``items`` patches, print one result line."""
    import torch  # noqa: F401  (imported by both datasets: part of the baseline)
    from monai.transforms import Compose, RandCropByPosNegLabeld, SpatialPadd
    from monai.transforms.utils import map_binary_to_indices

    from pipeline.data.volumes import VolumeDataset, load_split_volumes

    base, anon_base = _rss_mib(), _anon_mib()
    t0 = time.perf_counter()
    if mode == "medsynth":
        ds = VolumeDataset(root, "train", patch, augment=None, seed=0, pos_fraction=0.5, samples_per_case=4)
        held = ds.resident_bytes()
        draw = ds.__getitem__
        n_items = len(ds)
    else:
        pad = SpatialPadd(keys=("image", "mask"), spatial_size=patch)
        crop = Compose(
            [
                RandCropByPosNegLabeld(
                    keys=("image", "mask"),
                    label_key="mask",
                    spatial_size=patch,
                    pos=0.5,
                    neg=0.5,
                    num_samples=1,
                    fg_indices_key="fg",
                    bg_indices_key="bg",
                )
            ]
        )
        data = []
        for case in load_split_volumes(root, "train"):
            d = pad({"image": np.array(case.image)[None], "mask": case.mask[None].astype(np.float32)})
            fg, bg = map_binary_to_indices(d["mask"], d["image"], 0.0)
            data.append({"image": d["image"], "mask": d["mask"], "fg": np.asarray(fg), "bg": np.asarray(bg)})
        held = sum(int(np.asarray(v).nbytes) for d in data for v in d.values())

        def draw(i: int) -> object:
            crop.set_random_state(seed=i)
            return crop(dict(data[i % len(data)]))

        n_items = 4 * len(data)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(items):
        draw(i % n_items)
    rate = items / (time.perf_counter() - t0)
    anon = _anon_mib() - anon_base
    peak = _rss_mib() - base
    fields = (mode, f"{peak:.0f}", f"{held / 2**20:.1f}", f"{rate:.0f}", f"{built:.1f}", f"{anon:.0f}")
    print("\t".join(fields), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cases", type=int, default=48)
    ap.add_argument("--shape", type=int, nargs=3, default=[160, 160, 96])
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 64, 32])
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--mode", choices=["medsynth", "monai"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    patch = tuple(args.patch)
    if args.mode:
        run_mode(args.mode, args.root, patch, args.items)
        return 0
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cases(root, args.cases, shape)
        float_mb = args.cases * np.prod(shape) * 4 / 2**20
        size, window = "x".join(map(str, shape)), "x".join(map(str, patch))
        print(f"{args.cases} cases of {size} voxels ({float_mb:.0f} MiB as float32), patch {window}, "
              f"{args.items} patches; {os.cpu_count()} CPUs")  # fmt: skip
        results = {}
        for mode in ("medsynth", "monai"):
            cmd = [sys.executable, __file__, "--mode", mode, "--root", str(root), "--items", str(args.items),
                   "--patch", *map(str, patch)]  # fmt: skip
            line = (
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            _, peak, held, rate, built, anon = line.split("\t")
            results[mode] = float(peak)
            print(f"  {mode:<9s} peak RSS over baseline {peak:>6s} MiB (incl. mapped file pages); anonymous "
                  f"memory held at the end {anon:>5s} MiB; dataset holds {held:>7s} MiB; "
                  f"{rate:>5s} patches/s; built in {built} s")  # fmt: skip
    ratio = results["monai"] / max(results["medsynth"], 1.0)
    print(f"  ratio peak memory monai recipe / medsynth: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
