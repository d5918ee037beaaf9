"""Determinism audit: run the pipeline twice from scratch on the CPU and compare every output it wrote.

``medsynth audit-determinism`` copies the project twice (same files, same git commit, no ``dvc.lock``),
shrinks the params so a run takes minutes (:data:`SMALL_PARAMS`), runs ``dvc repro`` in each copy with a
different ``PYTHONHASHSEED`` (so an output that depends on set ordering shows up) and compares every file of
every stage output that ``dvc.lock`` lists, byte for byte. The copies live in different folders, so an
output that records where it was made shows up as well.

Some values are wall-clock measurements by design (images per second, epoch seconds, data-wait share): a
file that differs only in those is reported as ``timing_only``, with its path, never silently as identical.
Everything else that differs is ``different`` and makes the verdict ``different``.

On a machine with CUDA a third run on the GPU lists, per training stage, the ops that torch flagged as having
no deterministic implementation while it trained (``nondeterministic_ops`` in each stage's lineage.json).

The report goes to ``lineage/determinism.json`` in the project; ``medsynth lineage`` shows its verdict for
each stage it traces, and whether the audited code is the code that is there now.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError, PipelineStateError
from pipeline.io.atomic import atomic_write_text
from pipeline.lineage.hashing import sha256_file
from pipeline.lineage.record import code_version, package_versions

log = logging.getLogger(__name__)

REPORT = Path("lineage") / "determinism.json"

#: Params of the audit runs (dotted keys): the full pipeline, every stage, on a small demo. The CPU and
#: deterministic mode are what the audit is about; the rest only makes it fast.
SMALL_PARAMS: dict[str, Any] = {
    "common.device": "cpu",
    "common.deterministic": True,
    "demo_data.n_cases": 6,
    "demo_data.n_nifti": 2,
    "demo_data.n_oblique": 1,
    "train_seg.train.epochs": 3,
    "train_ae.train.epochs": 4,
    "train_cgan.train.epochs": 3,
    "export.n_samples": 12,
    # 6 demo cases leave the memorisation gate a handful of held-out slices: the audit compares outputs,
    # it does not judge them.
    "export.memorisation.max_flagged_fraction": 1.0,
    "evaluate.utility.seeds": [0],
    "evaluate.utility.epochs": 2,
    "evaluate.utility.steps_per_epoch": 2,
}

#: Keys whose values are wall-clock measurements (last part of a key path, e.g. ``perf/epoch_seconds``).
TIMING_KEYS = frozenset(
    {"images_per_second", "samples_per_second", "data_wait_fraction", "epoch_seconds", "seconds"}
)


# ------------------------------------------------------------------------------------------ copies
def _project_files(repo: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a clean clone plus the user's edits holds."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise PipelineStateError(
            f"{repo}: the audit copies the project's git-tracked files ({err})"
        ) from None
    files = [f for f in out.decode().split("\0") if f]
    skip = ("dvc.lock", REPORT.as_posix())
    return [f for f in files if f not in skip and (repo / f).is_file()]


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts; the key must exist (a typo must not pass silently)."""
    node = params
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"params.yaml has no section {key.rsplit('.', 1)[0]!r} (audit override {key})")
        node = node[part]
    if last not in node:
        raise ConfigError(f"params.yaml has no key {key!r} (audit override)")
    node[last] = value


def _stage_outputs(dvc_yaml: dict[str, Any]) -> set[str]:
    outs: set[str] = set()
    for spec in dvc_yaml.get("stages", {}).values():
        for out in spec.get("do", spec).get("outs", []):
            outs.add(next(iter(out)) if isinstance(out, dict) else str(out))
    return outs


def audit_params(repo: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The project's params with ``overrides``; a relative data root that no stage produces is made
    absolute, so a copy of the project reads the same scans."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides.items():
        set_dotted(params, key, value)
    root = params.get("preprocess", {}).get("data_root")
    if root and not Path(root).is_absolute():
        produced = _stage_outputs(yaml.safe_load((repo / "dvc.yaml").read_text()))
        if not any(root == p or root.startswith(p.rstrip("/") + "/") for p in produced):
            params["preprocess"]["data_root"] = str((repo / root).resolve())
    return params


def make_copies(repo: Path, work: Path, params: dict[str, Any], names: tuple[str, ...]) -> list[Path]:
    """One committed copy of the project per name, all with the same files and the same git commit."""
    first = work / names[0]
    for rel in _project_files(repo):
        target = first / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target)
    (first / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # Fixed author and dates: the copies must share one commit id, which the outputs record.
    env = {
        **os.environ,
        "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
    }
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=audit", "-c", "user.email=audit@medsynth.invalid", "commit", "-qm", "audit"],
    ):
        subprocess.run(cmd, cwd=first, env=env, check=True, capture_output=True)
    copies = [first]
    for name in names[1:]:
        shutil.copytree(first, work / name, symlinks=True)
        copies.append(work / name)
    return copies


def run_repro(
    copy: Path, hash_seed: str, timeout: float, cuda: bool = False, targets: tuple[str, ...] = ()
) -> float:
    """``dvc repro [targets]`` in ``copy`` (targets and what they depend on); returns its wall time. The log
    is kept in ``copy/audit-repro.log``."""
    env = {
        **os.environ,
        "PYTHONHASHSEED": hash_seed,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    start = time.perf_counter()
    with (copy / "audit-repro.log").open("w") as logf:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "dvc", "repro", *targets],
                cwd=copy,
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise PipelineStateError(f"dvc repro in {copy} ran past {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (copy / "audit-repro.log").read_text()[-3000:]
        raise PipelineStateError(f"dvc repro in {copy} failed (exit {proc.returncode}):\n{tail}")
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------ comparing
def locked_outputs(copy: Path) -> dict[str, list[str]]:
    """Stage → every file (relative to the copy) under the outputs its ``dvc.lock`` records."""
    lock = yaml.safe_load((copy / "dvc.lock").read_text()) or {}
    found: dict[str, list[str]] = {}
    for stage, entry in lock.get("stages", {}).items():
        files: list[str] = []
        for out in entry.get("outs", []):
            path = copy / out["path"]
            if path.is_dir():
                files += [p.relative_to(copy).as_posix() for p in sorted(path.rglob("*")) if p.is_file()]
            elif path.is_file():
                files.append(out["path"])
        found[stage] = sorted(files)
    return found


def _is_timing(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in TIMING_KEYS


def strip_timing(value: Any) -> Any:
    """``value`` without the wall-clock entries (in nested dicts and lists)."""
    if isinstance(value, dict):
        return {k: strip_timing(v) for k, v in value.items() if not (isinstance(k, str) and _is_timing(k))}
    if isinstance(value, list | tuple):
        return type(value)(strip_timing(v) for v in value)
    return value


def _equal(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) if type(a) is type(b) else False


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _load_torch(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


_LOADERS: dict[str, Callable[[Path], Any]] = {".json": _load_json, ".pt": _load_torch}


def compare_file(a: Path, b: Path) -> str:
    """``identical`` (same bytes), ``timing_only`` (same once wall-clock values are left out) or
    ``different``."""
    if sha256_file(a) == sha256_file(b):
        return "identical"
    # DVCLive keeps each per-epoch perf value in its own TSV under .../metrics/perf/.
    if a.suffix == ".tsv" and "perf" in a.parts:
        return "timing_only"
    loader = _LOADERS.get(a.suffix)
    if loader is None:
        return "different"
    try:
        same = _equal(strip_timing(loader(a)), strip_timing(loader(b)))
    except Exception as err:  # an unreadable output is itself a finding, reported as different
        log.warning("%s: cannot compare contents (%s)", a.name, type(err).__name__)
        return "different"
    return "timing_only" if same else "different"


def compare_runs(a: Path, b: Path) -> dict[str, dict[str, Any]]:
    """Per stage: how many files, and which are timing-only, different or missing in one run."""
    outs_a, outs_b = locked_outputs(a), locked_outputs(b)
    report: dict[str, dict[str, Any]] = {}
    # dvc.lock order: the order the stages ran in
    for stage in [*outs_a, *(s for s in outs_b if s not in outs_a)]:
        fa, fb = set(outs_a.get(stage, [])), set(outs_b.get(stage, []))
        entry: dict[str, Any] = {
            "files": len(fa | fb),
            "identical": 0,
            "timing_only": [],
            "different": [],
            "missing": sorted(fa ^ fb),
        }
        for rel in sorted(fa & fb):
            verdict = compare_file(a / rel, b / rel)
            if verdict == "identical":
                entry["identical"] += 1
            else:
                entry[verdict].append(rel)
        report[stage] = entry
    return report


def verdict_of(stages: dict[str, dict[str, Any]]) -> str:
    bad = any(s["different"] or s["missing"] for s in stages.values())
    return "different" if bad else "identical"


def cuda_ops(copy: Path) -> dict[str, list[str]]:
    """Stage → ops flagged as nondeterministic during its CUDA training (from each lineage.json)."""
    found: dict[str, list[str]] = {}
    for stage, files in locked_outputs(copy).items():
        for rel in files:
            if rel.endswith("lineage.json"):
                record = _load_json(copy / rel)
                if "nondeterministic_ops" in record:
                    found[stage] = sorted(record["nondeterministic_ops"])
    return found


# ------------------------------------------------------------------------------------------ the audit
def audit_determinism(
    repo: Path,
    *,
    overrides: dict[str, Any] | None = None,
    work: Path | None = None,
    keep: bool = False,
    timeout: float = 3600.0,
    cuda: bool | None = None,
    targets: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the audit and return its report (see the module docstring). ``targets`` limits it to those stages
    and their upstream ones (default: all); ``cuda=None`` adds the CUDA run when a device is present."""
    import torch

    from pipeline.training.common import code_fingerprint

    repo = Path(repo).resolve()
    params = audit_params(repo, SMALL_PARAMS if overrides is None else overrides)
    use_cuda = torch.cuda.is_available() if cuda is None else cuda
    names = ("run_a", "run_b", "run_cuda") if use_cuda else ("run_a", "run_b")
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="medsynth-audit-")) if work is None else Path(work)
    try:
        copies = make_copies(repo, work, params, names)
        runs = []
        for copy, hash_seed in zip(copies[:2], ("1", "2"), strict=True):
            log.info("audit: dvc repro in %s (PYTHONHASHSEED=%s)", copy, hash_seed)
            seconds = run_repro(copy, hash_seed, timeout, targets=targets)
            runs.append({"copy": copy.name, "pythonhashseed": hash_seed, "seconds": seconds})
        stages = compare_runs(copies[0], copies[1])
        if use_cuda:
            cuda_copy = copies[2]
            cuda_params = yaml.safe_load((cuda_copy / "params.yaml").read_text())
            set_dotted(cuda_params, "common.device", "cuda")
            (cuda_copy / "params.yaml").write_text(yaml.safe_dump(cuda_params, sort_keys=False))
            seconds = run_repro(cuda_copy, "1", timeout, cuda=True, targets=targets)
            cuda_report: dict[str, Any] = {"checked": True, "seconds": seconds, "ops": cuda_ops(cuda_copy)}
        else:
            cuda_report = {"checked": False, "reason": "no CUDA device on this machine"}
    finally:
        if owned and not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "audit": "determinism",
        "verdict": verdict_of(stages),
        "device": "cpu",
        "code": code_version(repo),
        "code_fingerprint": code_fingerprint(),
        "params_overrides": SMALL_PARAMS if overrides is None else overrides,
        "targets": list(targets) or "all",
        "runs": runs,
        "stages": stages,
        "cuda": cuda_report,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": package_versions(),
        "kept": str(work) if keep or not owned else None,
    }


def write_report(repo: Path, report: dict[str, Any]) -> Path:
    path = Path(repo) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path


def recorded_verdict(repo: Path, stage: str) -> dict[str, Any] | None:
    """What the last audit of ``repo`` said about ``stage`` (``train_cgan@mask2image`` or its base name),
    and whether the audited library code is the code there now. None when no audit was recorded."""
    from pipeline.training.common import code_fingerprint

    path = Path(repo) / REPORT
    if not path.is_file():
        return None
    report = _load_json(path)
    entry = report.get("stages", {}).get(stage)
    if entry is None:
        return None
    verdict = "different" if entry["different"] or entry["missing"] else "identical"
    return {
        "verdict": verdict,
        "timing_only": len(entry["timing_only"]),
        "files": entry["files"],
        "git_commit": report.get("code", {}).get("git_commit"),
        "current_code": report.get("code_fingerprint") == code_fingerprint(),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = []
    for stage, s in report["stages"].items():
        bad = s["different"] + s["missing"]
        mark = "DIFFERENT" if bad else "identical"
        extra = f", {len(s['timing_only'])} timing-only" if s["timing_only"] else ""
        lines.append(f"{mark:9s} {stage}: {s['identical']}/{s['files']} files byte-identical{extra}")
        lines += [f"          differs: {p}" for p in s["different"]]
        lines += [f"          only in one run: {p}" for p in s["missing"]]
    secs = ", ".join(f"{r['seconds']:.0f} s" for r in report["runs"])
    lines.append(f"runs: {secs} (PYTHONHASHSEED 1 and 2, separate folders)")
    cuda = report["cuda"]
    if cuda["checked"]:
        for stage, ops in cuda["ops"].items():
            lines.append(f"cuda {stage}: {', '.join(ops) if ops else 'no op flagged'}")
    else:
        lines.append(f"cuda: not checked ({cuda['reason']})")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)
