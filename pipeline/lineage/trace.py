"""Walk from any output file back to the raw inputs through `dvc.lock` and the `lineage.json` records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputDataError
from pipeline.lineage.record import LINEAGE_FILE


@dataclass(frozen=True)
class TraceStep:
    stage: str
    output: str
    cmd: str
    deps: dict[str, str]  # path → md5 recorded by DVC
    params: dict[str, Any]
    lineage: dict[str, Any] | None


def _owner(lock: dict[str, Any], rel: str) -> tuple[str, dict[str, Any], str] | None:
    for name, stage in lock.get("stages", {}).items():
        for out in stage.get("outs", []):
            path = out["path"].rstrip("/")
            if rel == path or rel.startswith(path + "/"):
                return name, stage, path
    return None


def trace(file: Path, repo_root: Path) -> list[TraceStep]:
    """Return the chain of stages that produced ``file``, newest first, ending at the raw data."""
    lock_path = repo_root / "dvc.lock"
    if not lock_path.is_file():
        raise InputDataError(str(lock_path), "no dvc.lock: run `dvc repro` first", "no_lock")
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8")) or {}
    try:
        rel = file.resolve().relative_to(repo_root.resolve()).as_posix()
    except ValueError:
        raise InputDataError(str(file), "not inside the project", "outside") from None
    steps: list[TraceStep] = []
    queue, seen = [rel], set()
    while queue:
        current = queue.pop(0)
        hit = _owner(lock, current)
        if hit is None or hit[0] in seen:
            continue
        name, stage, out = hit
        seen.add(name)
        lineage_path = repo_root / out / LINEAGE_FILE
        record = json.loads(lineage_path.read_text(encoding="utf-8")) if lineage_path.is_file() else None
        deps = {d["path"]: d.get("md5", "") for d in stage.get("deps", [])}
        steps.append(TraceStep(name, out, stage.get("cmd", ""), deps, stage.get("params", {}), record))
        queue.extend(deps)
    if not steps:
        raise InputDataError(rel, "no DVC stage lists this file among its outputs", "untracked")
    return steps
