"""Privacy metrics on known cases: copies of training records, fresh draws, separable memberships."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineStateError
from pipeline.metrics.privacy import closest_record_distances, dcr_report, membership_auc


def test_closest_record_distances_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(300, 5)), rng.normal(size=(40, 5))
    brute = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)).min(axis=1)
    assert np.allclose(closest_record_distances(q, r), brute, atol=1e-9)
    assert closest_record_distances(r[:3], r)[:3] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)


def test_dcr_flags_copies_and_passes_fresh_draws() -> None:
    rng = np.random.default_rng(1)
    train, holdout = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    fresh, _ = dcr_report(rng.normal(size=(100, 8)), train, holdout, seed=0)
    assert 0.8 < fresh["ratio"] < 1.25 and 0.3 < fresh["closer_to_train_fraction"] < 0.7
    copies = train[:100] + rng.normal(scale=1e-3, size=(100, 8))
    leaked, dist = dcr_report(copies, train, holdout, seed=0)
    assert leaked["ratio"] < 0.05 and leaked["closer_to_train_fraction"] == 1.0
    assert dist["train"].shape == (100,) and leaked["n_reference"] == 200


def test_dcr_cuts_the_larger_reference_to_the_smaller() -> None:
    rng = np.random.default_rng(2)
    summary, _ = dcr_report(rng.normal(size=(10, 3)), rng.normal(size=(500, 3)), rng.normal(size=(50, 3)))
    assert summary["n_reference"] == 50


def test_membership_auc() -> None:
    rng = np.random.default_rng(3)
    same = membership_auc(rng.normal(size=2000), rng.normal(size=2000))
    assert abs(same["auc"] - 0.5) < 0.05 and same["advantage"] < 0.1
    leak = membership_auc(rng.normal(2.0, size=500), rng.normal(size=500))
    assert leak["auc"] > 0.9
    inverted = membership_auc(rng.normal(-2.0, size=500), rng.normal(size=500))
    assert inverted["auc"] < 0.1 and inverted["advantage"] > 0.8
    assert membership_auc(np.ones(3), np.zeros(0))["auc"] is None


def test_bad_inputs_raise() -> None:
    with pytest.raises(PipelineStateError):
        closest_record_distances(np.array([[np.nan]]), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="feature sizes"):
        closest_record_distances(np.zeros((2, 3)), np.zeros((2, 4)))
