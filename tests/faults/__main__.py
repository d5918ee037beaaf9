"""`python -m tests.faults --kills 20 --seed 0`: SIGKILL stages of a tiny copy of the pipeline at seeded
random points, check the disk after every kill, rerun, and exit non-zero on any broken guarantee."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.driver import run_faults


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--kills", type=int, default=20, help="how many kills (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the plan: stages, triggers, delays")
    p.add_argument("--stages", nargs="*", help="kill only these stages (default: every stage)")
    p.add_argument("--targets", nargs="*", default=[], help="`dvc repro` targets (default: whole pipeline)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per training stage (default 3)")
    p.add_argument("--workdir", type=Path, help="keep the project and kill logs here (default: a temp dir)")
    args = p.parse_args(argv)

    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="medsynth-faults-"))
    t0 = time.monotonic()
    try:
        summary = run_faults(
            workdir,
            args.kills,
            args.seed,
            targets=args.targets,
            stages=args.stages,
            epochs=args.epochs,
            log=lambda line: print(line, flush=True),
        )
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summary.wall_s = time.monotonic() - t0
    print("\n".join(summary.lines()), flush=True)
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
