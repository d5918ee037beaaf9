"""Every benchmark of the project in one command, then one table of the ratios against their goals.

    python benchmarks/all.py                      # everything, ~16 min on a 2-core CPU
    python benchmarks/all.py --skip-repro         # without the demo `dvc repro` wall time (export then
                                                  # needs models/ and data/ from an earlier dvc repro here)
    python benchmarks/all.py --json out.json

Each benchmark runs in its own process, one after the other (never two at once, so they do not share the
CPU), and measures its own pair side by side; this script only collects the lines they print:

  * the demo `dvc repro` wall time, in a fresh copy of the project (every stage runs);
  * ingest: medsynth's DICOM read against SimpleITK and dcm2niix (benchmarks/ingest.py, real scans);
  * training step: the engine against a plain PyTorch loop, U-Net and autoencoder (benchmarks/train.py);
  * export: the per-sample export path against the generator forward alone, both variants
    (benchmarks/export.py, on the models the timed `dvc repro` trained);
  * Fréchet distance: the eigenvalue route against scipy's sqrtm (benchmarks/frechet.py);
  * `dvc status` on an output of 20,000 files (the volumes of 10,000 series) against the same bytes in
    8 shards (benchmarks/dvc_status.py);
  * discovery over a generated root of 10,000 DICOM series: header scan in every core against one, and
    against reading every file whole (benchmarks/scan.py);
  * peak memory of the 3D patch dataset against the MONAI recipe it replaced (benchmarks/volumes.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.audit import audit_params, make_copies, run_repro  # noqa: E402

#: (name, script and arguments, [(label, regex of the ratio it prints, the issue's goal (at least) or None)])
BENCHMARKS: list[tuple[str, list[str], list[tuple[str, str, float | None]]]] = [
    (
        "ingest",
        ["ingest.py", "--repeat", "3"],
        [
            ("ingest: medsynth read / SimpleITK", r"ratio medsynth read / SimpleITK: ([\d.]+)x", None),
            ("ingest: medsynth read / dcm2niix", r"ratio medsynth read / dcm2niix: ([\d.]+)x", 1.0),
            (
                "ingest: medsynth read+write / dcm2niix",
                r"ratio medsynth read\+write nii / dcm2niix: ([\d.]+)x",
                None,
            ),
        ],
    ),
    (
        "train_seg step",
        ["train.py", "--task", "seg"],
        [("training step: engine / plain loop (U-Net)", r"ratio engine/plain ([\d.]+)", 0.95)],
    ),
    (
        "train_ae step",
        ["train.py", "--task", "ae"],
        [("training step: engine / plain loop (autoencoder)", r"ratio engine/plain ([\d.]+)", 0.95)],
    ),
    (
        "export mask2image",
        ["export.py", "--variant", "mask2image"],
        [("export / forward, mask2image", r"ratio export / forward \(1 per call\):\s+([\d.]+)", 0.5)],
    ),
    (
        "export label2image",
        ["export.py", "--variant", "label2image"],
        [("export / forward, label2image", r"ratio export / forward \(1 per call\):\s+([\d.]+)", 0.5)],
    ),
    (
        "frechet",
        ["frechet.py"],
        [("Fréchet: sqrtm time / eigenvalue route", r"speed ratio sqrtm / ours:\s+([\d.]+)", None)],
    ),
    (
        "dvc status",
        ["dvc_status.py", "--files", "20000", "--shards", "8"],
        [("dvc status: 20,000 files / 8 shards (time)", r"ratio per-file / sharded: ([\d.]+)", None)],
    ),
    (
        "scan",
        ["scan.py"],
        [
            (
                "scan 10,000 series: all cores / 1 process",
                r"ratio \d+ processes / 1 process: ([\d.]+)x",
                None,
            ),
            (
                "scan 10,000 series: headers / full read",
                r"ratio medsynth \(\d+ processes\) / full read: ([\d.]+)x",
                None,
            ),
        ],
    ),
    (
        "3D patch memory",
        ["volumes.py"],
        [
            (
                "3D patches: peak memory MONAI recipe / ours",
                r"ratio peak memory monai recipe / medsynth: ([\d.]+)x",
                None,
            )
        ],
    ),
]


def run_script(args: list[str], project: Path) -> tuple[str, float, int]:
    cmd = [sys.executable, str(REPO / "benchmarks" / args[0]), *args[1:]]
    if args[0] == "export.py":
        cmd += ["--project", str(project)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    return proc.stdout + proc.stderr, time.perf_counter() - start, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-repro", action="store_true", help="do not time a demo dvc repro")
    ap.add_argument("--only", nargs="*", help="benchmark names to run (default: all)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the project copy of the timed dvc repro")
    args = ap.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform(terse=True)}, "
        f"python {platform.python_version()}"
    )
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(terse=True)}}
    rows: list[tuple[str, float | None, float | None]] = []
    project = REPO
    work = None
    try:
        if not args.skip_repro:
            work = Path(tempfile.mkdtemp(prefix="medsynth-bench-"))
            # The demo as params.yaml has it; only the CPU is forced, so the time means the same everywhere.
            (project,) = make_copies(REPO, work, audit_params(REPO, {"common.device": "cpu"}), ("demo",))
            print("== dvc repro of the demo (fresh copy, every stage)", flush=True)
            seconds = run_repro(project, "0", timeout=4 * 3600)
            print(f"   {seconds / 60:.1f} min")
            results["dvc_repro_seconds"] = seconds
        for name, script, patterns in BENCHMARKS:
            if args.only and name not in args.only:
                continue
            print(f"== {name}: python benchmarks/{' '.join(script)}", flush=True)
            out, secs, rc = run_script(script, project)
            print("   " + out.strip().replace("\n", "\n   "))
            results[name] = {"output": out, "seconds": secs, "exit": rc}
            for label, pattern, goal in patterns:
                m = re.search(pattern, out)
                rows.append((label, float(m.group(1)) if m else None, goal))
    finally:
        if work is not None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print("\n== summary (ratios > 1 mean medsynth is faster; goals from the issues)")
    if "dvc_repro_seconds" in results:
        print(f"   {'demo dvc repro wall time':50s} {results['dvc_repro_seconds'] / 60:7.1f} min")
    for label, value, goal in rows:
        if value is None:
            print(f"   {label:50s} {'not measured':>12s}")
            continue
        verdict = "" if goal is None else f"  goal >= {goal:.2f} " + ("met" if value >= goal else "NOT met")
        print(f"   {label:50s} {value:7.2f}{verdict}")
    results["ratios"] = [{"benchmark": label, "value": value, "goal": goal} for label, value, goal in rows]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    # Unmet goals are results, not errors; a benchmark that crashed is an error.
    return 1 if any(r.get("exit") for r in results.values() if isinstance(r, dict) and "exit" in r) else 0


if __name__ == "__main__":
    sys.exit(main())
