"""The fuzzing harness in the default suite: it catches each kind of failure, and a small sample of mutated
real files goes through the readers without one (the dedicated run is ``python -m tests.fuzz``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fuzz.cases import KINDS, build_case, load_corpus
from tests.fuzz.harness import run_fuzz, summary
from tests.fuzz.pool import WorkerPool

SELFTESTS = [
    # (target, extra request fields, expected outcome, expected failure kind)
    ("selftest_ok", {}, "read", None),
    ("selftest_raise", {}, "failure", "exception"),
    ("selftest_hang", {}, "failure", "timeout"),
    ("selftest_crash", {}, "failure", "crash"),
    ("selftest_memory", {"bytes": 512 << 20}, "failure", "memory"),
    ("selftest_swallowed_memory", {"bytes": 512 << 20}, "failure", "memory"),
    ("selftest_nan", {}, "failure", "wrong_result"),
    ("selftest_leak", {}, "failure", "phi_leak"),
    ("selftest_ok", {}, "read", None),  # after a hang and a crash: the pool has replaced its workers
]


def test_harness_reports_every_kind_of_failure(tmp_path: Path) -> None:
    """Deliberately broken targets run through the same pool as the readers; none may pass silently."""
    pool = WorkerPool(2, tmp_path, timeout_s=2.0, budget=256 << 20)
    cases = list(range(len(SELFTESTS)))
    results = {r.case: r for r in pool.run(cases, lambda i: {"target": SELFTESTS[i][0], **SELFTESTS[i][1]})}
    assert sorted(results) == cases
    for i, (target, _, outcome, failure) in enumerate(SELFTESTS):
        assert (results[i].outcome, results[i].failure) == (outcome, failure), (target, results[i].detail)
    assert results[2].elapsed < 4.0  # the hang was cut at the timeout
    assert pool.respawns >= 2


@pytest.mark.shared
def test_cases_are_rebuilt_identically(shared_data: Path, tmp_path: Path) -> None:
    corpus = load_corpus(shared_data)
    for case_id in (0, 1, 17, 4242):
        a = build_case(corpus, 0, case_id, tmp_path / "a")
        b = build_case(corpus, 0, case_id, tmp_path / "b")
        assert (a.kind, a.source, a.mutations) == (b.kind, b.source, b.mutations)
        files_a = sorted(p for p in a.folder.rglob("*") if p.is_file() and not p.is_symlink())
        files_b = sorted(p for p in b.folder.rglob("*") if p.is_file() and not p.is_symlink())
        assert [p.read_bytes() for p in files_a] == [p.read_bytes() for p in files_b]


@pytest.mark.shared
@pytest.mark.slow
def test_fuzz_sample_has_no_failure(shared_data: Path) -> None:
    start = time.monotonic()
    report = run_fuzz(shared_data, cases=300, seed=0, workers=2)
    assert report["failures"] == [], summary(report)
    assert set(report["outcomes"]) == set(KINDS)
    assert report["totals"]["read"] > 0 and report["totals"]["rejected"] > 0
    assert time.monotonic() - start < 60
