"""How long `dvc status` takes when a stage output holds many files, against the same bytes in a few shards.

Builds a throwaway git + DVC project with two stages: ``per_file`` writes N small files into one output
folder (the layout of a per-case or per-sample folder: ``data/preprocess/volumes/``, ``data/export/*/``),
``sharded`` writes the same bytes as ``--shards`` files. After `dvc repro`, times `dvc status` on each stage
(best of ``--repeat`` runs, DVC's state database warm) and prints the ratio.

    python benchmarks/dvc_status.py --files 20000 [--shards 8] [--repeat 3]

20,000 files are the preprocess volumes of 10,000 series (an image and a mask each).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GEN = """
import os, sys
from pathlib import Path
n, shards, size, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
if shards == 0:
    for i in range(n):
        (out / f"case{i:06d}.nii").write_bytes(i.to_bytes(8, "little") * (size // 8))
else:
    per = -(-n // shards)
    for s in range(shards):
        with open(out / f"shard{s:03d}.bin", "wb") as fh:
            for i in range(s * per, min(n, (s + 1) * per)):
                fh.write(i.to_bytes(8, "little") * (size // 8))
"""


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _time_status(root: Path, stage: str, repeat: int) -> float:
    _run(["dvc", "status", stage], root)  # warm DVC's state database and the OS caches
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = _run(["dvc", "status", stage], root).stdout
        best = min(best, time.perf_counter() - t0)
        if "up to date" not in out:
            raise SystemExit(f"`dvc status {stage}` is not clean:\n{out}")
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--size", type=int, default=4096, help="bytes per file (default 4096)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", type=Path, help="keep the project here (default: a temp dir)")
    args = p.parse_args(argv)

    root = args.workdir or Path(tempfile.mkdtemp(prefix="medsynth-dvc-status-"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / "gen.py").write_text(GEN)
        _run(["git", "init", "-q"], root)
        _run(["dvc", "init", "-q"], root)
        _run(["dvc", "config", "core.analytics", "false"], root)
        gen = f"python gen.py {args.files} {{shards}} {args.size} {{out}}"
        for name, shards in (("per_file", 0), ("sharded", args.shards)):
            _run(
                ["dvc", "stage", "add", "-q", "-n", name, "-d", "gen.py", "-o", f"out_{name}",
                 gen.format(shards=shards, out=f"out_{name}")],
                root,
            )  # fmt: skip
        t0 = time.perf_counter()
        _run(["dvc", "repro", "-q"], root)
        made = time.perf_counter() - t0
        per_file = _time_status(root, "per_file", args.repeat)
        sharded = _time_status(root, "sharded", args.repeat)
        t0 = time.perf_counter()
        _run(["dvc", "status"], root)
        both = time.perf_counter() - t0
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"dvc status, {args.files} files of {args.size} B in one output folder: {per_file:.2f} s")
    print(f"dvc status, the same bytes in {args.shards} shard files:             {sharded:.2f} s")
    print(f"ratio per-file / sharded: {per_file / sharded:.2f}; whole project: {both:.2f} s")
    print(f"(dvc repro of both stages, including caching: {made:.1f} s; {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
