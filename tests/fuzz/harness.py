"""Run N cases through the worker pool and summarise: outcomes per kind, failures, time and memory."""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.fuzz.cases import KINDS, Case, build_case, load_corpus
from tests.fuzz.pool import Result, WorkerPool

OUTCOMES = ("read", "rejected", "failure")


def run_fuzz(
    shared: Path,
    *,
    cases: int,
    seed: int = 0,
    start: int = 0,
    workers: int = 2,
    timeout_s: float = 5.0,
    budget: int = 1 << 30,
    kinds: tuple[str, ...] = KINDS,
    keep_failures: Path | None = None,
    only: list[int] | None = None,
    log: Path | None = None,
) -> dict[str, Any]:
    """Build cases ``start .. start+cases-1`` (or the ids in ``only``) and run them; returns the report.

    ``log``: one JSON line per case (id, kind, source, mutations, outcome, rejection reasons, time, peak)."""
    corpus = load_corpus(shared)
    workdir = Path(tempfile.mkdtemp(prefix="medsynth-fuzz-"))
    ids = only if only is not None else list(range(start, start + cases))
    results: list[Result] = []
    began = time.monotonic()

    def generate() -> Iterator[Case]:
        for case_id in ids:
            yield build_case(corpus, seed, case_id, workdir / "cases", kinds)

    pool = WorkerPool(workers, workdir, timeout_s=timeout_s, budget=budget)
    log_fh = open(log, "w") if log is not None else None  # noqa: SIM115 (closed below)
    try:
        for res in pool.run(generate(), lambda c: c.request):
            results.append(res)
            if log_fh is not None:
                log_fh.write(json.dumps(_record(res)) + "\n")
            if res.outcome == "failure" and keep_failures is not None and res.case.folder is not None:
                dst = keep_failures / res.case.folder.name
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(res.case.folder, dst, symlinks=True)
            res.case.cleanup()
    finally:
        if log_fh is not None:
            log_fh.close()
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.monotonic() - began
    return _report(
        results, pool, wall, seed=seed, ids=ids, workers=workers, timeout_s=timeout_s, budget=budget
    )


def _record(res: Result) -> dict[str, Any]:
    c = res.case
    return {
        "id": c.id,
        "kind": c.kind,
        "source": c.source,
        "mutations": c.mutations,
        "outcome": res.outcome,
        "failure": res.failure,
        "reasons": res.reasons,
        "elapsed_s": round(res.elapsed, 4),
        "peak_rss_mib": round(res.peak_rss / 2**20, 1),
    }


def _case_ref(result: Any) -> dict[str, Any] | None:
    """Id, kind and mutations of one case's result (None when there is none), for the report."""
    if result is None:
        return None
    return {"id": result.case.id, "kind": result.case.kind, "mutations": result.case.mutations}


def _report(results: list[Result], pool: WorkerPool, wall: float, **run: Any) -> dict[str, Any]:
    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    codes: Counter[str] = Counter()
    catch_all = 0  # rejections through a reader's "unexpected error" fallback: typed, but worth a look
    mutations: dict[str, Counter[str]] = defaultdict(Counter)
    failures = []
    for res in results:
        per_kind[res.case.kind][res.outcome] += 1
        codes.update(res.codes)
        catch_all += sum("unexpected error while" in r for r in res.reasons)
        for m in res.case.mutations or ["none"]:
            mutations[m.split(":")[0]][res.outcome] += 1
        if res.outcome == "failure":
            failures.append(
                {
                    "id": res.case.id,
                    "kind": res.case.kind,
                    "source": res.case.source,
                    "mutations": res.case.mutations,
                    "failure": res.failure,
                    "detail": res.detail,
                    "elapsed_s": round(res.elapsed, 3),
                }
            )
    slowest = max(results, key=lambda r: r.elapsed, default=None)
    biggest = max(results, key=lambda r: r.peak_rss, default=None)
    baseline_rss = max((b["rss"] for b in pool.baselines), default=0)
    return {
        "run": {
            **{k: v for k, v in run.items() if k != "ids"},
            "first_id": min(run["ids"], default=None),
            "n_cases": len(results),
            "wall_s": round(wall, 1),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": _cpu_count(),
            "python": platform.python_version(),
        },
        "outcomes": {k: {o: per_kind[k][o] for o in OUTCOMES} for k in sorted(per_kind)},
        "totals": {o: sum(c[o] for c in per_kind.values()) for o in OUTCOMES},
        "rejection_codes": dict(codes.most_common()),
        "catch_all_rejections": catch_all,
        "mutations": {m: dict(c) for m, c in sorted(mutations.items())},
        "max_case_s": round(slowest.elapsed, 3) if slowest else 0.0,
        "slowest_case": _case_ref(slowest),
        "max_case_peak_rss_mib": round(biggest.peak_rss / 2**20, 1) if biggest else 0.0,
        "biggest_case": _case_ref(biggest),
        "worker_baseline_rss_mib": round(baseline_rss / 2**20, 1),
        "worker_rlimit_as_mib": round(max((b["rlimit_as"] for b in pool.baselines), default=0) / 2**20, 1),
        "workers_started": len(pool.baselines),
        "failures": failures,
    }


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def summary(report: dict[str, Any]) -> str:
    run = report["run"]
    lines = [
        f"fuzz: {run['n_cases']} cases (seed {run['seed']}, from id {run['first_id']}) in {run['wall_s']} s, "
        f"{run['workers']} workers on {run['cpus']} CPUs, timeout {run['timeout_s']:g} s, "
        f"budget {run['budget'] >> 20} MiB over the worker baseline",
        "",
        f"{'kind':<14}{'read':>9}{'rejected':>10}{'failure':>9}{'total':>8}",
    ]
    for kind, c in report["outcomes"].items():
        lines.append(f"{kind:<14}{c['read']:>9}{c['rejected']:>10}{c['failure']:>9}{sum(c.values()):>8}")
    t = report["totals"]
    lines.append(f"{'all':<14}{t['read']:>9}{t['rejected']:>10}{t['failure']:>9}{sum(t.values()):>8}")
    lines += [
        "",
        f"max time per case: {report['max_case_s']} s ({report['slowest_case']})",
        f"max peak RSS of a worker during one case: {report['max_case_peak_rss_mib']} MiB "
        f"({report['biggest_case']}); worker baseline {report['worker_baseline_rss_mib']} MiB, "
        f"RLIMIT_AS {report['worker_rlimit_as_mib']} MiB; workers started: {report['workers_started']}",
        "rejection codes: " + ", ".join(f"{k} {v}" for k, v in report["rejection_codes"].items()),
        f"rejections through a reader's catch-all ('unexpected error'): {report['catch_all_rejections']}",
    ]
    if report["failures"]:
        lines += ["", f"FAILURES ({len(report['failures'])}):"]
        for f in report["failures"][:30]:
            detail = f["detail"].strip().splitlines()
            lines.append(
                f"  case {f['id']} [{f['kind']}] {f['failure']}: {detail[0] if detail else ''}"
                f"\n      source {f['source']}; mutations {f['mutations']}"
            )
    else:
        lines += ["", "no failures"]
    return "\n".join(lines)
