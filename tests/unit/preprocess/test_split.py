from __future__ import annotations

from collections import Counter

from pipeline.preprocess.split import assign_split


def test_split_is_deterministic_and_stable_when_patients_are_added() -> None:
    first = {f"p{i}": assign_split(f"p{i}", 7, 0.6, 0.2) for i in range(50)}
    more = {f"p{i}": assign_split(f"p{i}", 7, 0.6, 0.2) for i in range(200)}
    assert all(more[p] == s for p, s in first.items())


def test_split_fractions_are_respected_roughly() -> None:
    counts = Counter(assign_split(f"patient-{i}", 11, 0.6, 0.2) for i in range(5000))
    assert abs(counts["train"] / 5000 - 0.6) < 0.03
    assert abs(counts["val"] / 5000 - 0.2) < 0.03
    assert abs(counts["test"] / 5000 - 0.2) < 0.03


def test_seed_changes_the_assignment() -> None:
    a = [assign_split(f"p{i}", 1, 0.6, 0.2) for i in range(100)]
    b = [assign_split(f"p{i}", 2, 0.6, 0.2) for i in range(100)]
    assert a != b
