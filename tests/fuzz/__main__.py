"""``python -m tests.fuzz --cases 10000 --seed 0 [--workers 2] [--report out.json]``; exit status 1 on any
failure. ``--replay ID [ID ...]`` reruns single cases of a seed (``--keep-failures DIR`` keeps their
files)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.conftest import SHARED_DATA
from tests.fuzz.cases import KINDS
from tests.fuzz.harness import run_fuzz, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case id")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0, help="wall seconds per case")
    parser.add_argument("--budget-mib", type=int, default=1024, help="address space a case may add")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {KINDS}")
    parser.add_argument("--report", type=Path, help="write the full report (JSON) here")
    parser.add_argument("--replay", type=int, nargs="+", help="run only these case ids")
    parser.add_argument("--keep-failures", type=Path, help="copy the files of failing cases here")
    parser.add_argument("--log", type=Path, help="write one JSON line per case here")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared real scans")
    args = parser.parse_args(argv)

    if not args.data.is_dir():
        print(f"shared data not found at {args.data}", file=sys.stderr)
        return 2
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}")
    if args.keep_failures is not None:
        args.keep_failures.mkdir(parents=True, exist_ok=True)
    report = run_fuzz(
        args.data,
        cases=args.cases,
        seed=args.seed,
        start=args.start,
        workers=args.workers,
        timeout_s=args.timeout,
        budget=args.budget_mib << 20,
        kinds=kinds,
        keep_failures=args.keep_failures,
        only=args.replay,
        log=args.log,
    )
    report["run"]["command"] = " ".join(
        ["python -m tests.fuzz", *(argv if argv is not None else sys.argv[1:])]
    )
    print(summary(report))
    if args.replay:
        for f in report["failures"]:
            print(f"\n--- case {f['id']} ---\n{f['detail']}")
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
