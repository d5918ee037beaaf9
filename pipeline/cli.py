"""`medsynth <command>`: run a stage, trace an output's lineage, or check a data folder without writing."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

STAGES = ("demo_data", "preprocess", "train_seg", "train_ae", "score_anomalies")


def _lineage(args: argparse.Namespace) -> int:
    from pipeline.errors import MedsynthError
    from pipeline.lineage.trace import trace

    try:
        steps = trace(Path(args.file), Path(args.repo))
    except MedsynthError as err:
        print(f"medsynth lineage: {err}", file=sys.stderr)
        return 3
    for step in steps:
        print(f"== {step.stage}: {step.output}")
        print(f"   cmd: {step.cmd}")
        for path, md5 in step.deps.items():
            print(f"   dep: {path} md5={md5}")
        if step.lineage:
            code = step.lineage.get("code", {})
            print(f"   code: {code.get('git_commit')} dirty={code.get('git_dirty')}")
            print(f"   seeds: {json.dumps(step.lineage.get('seeds', {}), sort_keys=True)}")
            inputs = step.lineage.get("inputs", {})
            if "data_root" in inputs:
                n_files = len(inputs.get("files", {}))
                print(f"   raw inputs: {n_files} file(s), combined sha256 {inputs['data_root']}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from pipeline.config import load_section
    from pipeline.errors import MedsynthError
    from pipeline.preprocess.run import discover_cases, process_or_reject

    try:
        cfg = load_section(Path(args.params), "preprocess")
        root = Path(args.root).resolve()
        found = discover_cases(cfg, root)
    except MedsynthError as err:
        print(f"medsynth validate-data: {err}", file=sys.stderr)
        return 2
    bad = 0
    for err in found.rejected:
        bad += 1
        print(f"REJECT {err.file} [{err.code}] {err.reason}")
    for spec in found.cases:
        result = process_or_reject((spec, cfg, root))
        if hasattr(result, "code"):
            bad += 1
            print(f"REJECT {result.file} [{result.code}] {result.reason}")
        else:
            print(f"OK     {spec.image.label} → case {spec.case_id} ({'with' if spec.mask else 'no'} mask)")
    print(f"{len(found.cases)} case(s), {bad} rejection(s)")
    return 0 if bad == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medsynth", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        sub.add_parser(
            stage, help=f"run the {stage} stage (same as python -m stages.{stage})", add_help=False
        )
    lin = sub.add_parser("lineage", help="trace an output file back to its inputs")
    lin.add_argument("file")
    lin.add_argument("--repo", default=".", help="project root holding dvc.lock")
    val = sub.add_parser("validate-data", help="read and validate every case under a folder; write nothing")
    val.add_argument("root")
    val.add_argument("--params", default="params.yaml")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STAGES:
        return importlib.import_module(f"stages.{argv[0]}").main(argv[1:])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _lineage(args) if args.command == "lineage" else _validate(args)


if __name__ == "__main__":
    sys.exit(main())
