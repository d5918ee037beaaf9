"""Fidelity metrics on known cases: closed forms, identical sets, shifted sets, covered and missed modes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from pipeline.errors import ConfigError, PipelineStateError
from pipeline.metrics.fidelity import (
    frechet_distance,
    frechet_from_moments,
    kernel_inception_distance,
    ms_ssim_diversity,
    precision_recall,
)


def test_frechet_closed_form_for_diagonal_gaussians() -> None:
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    va, vb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    want = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    assert frechet_from_moments(mu_a, np.diag(va), mu_b, np.diag(vb)) == pytest.approx(want, rel=1e-12)


def test_frechet_eigen_route_matches_sqrtm() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64)) * 0.2
    b = rng.normal(size=(300, 64)) + 0.3
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    ref = diff @ diff + np.trace(ca) + np.trace(cb) - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_identical_sets_give_zero_and_shifts_grow() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    same = frechet_distance(a, rng.normal(size=(300, 16)))
    near, far = frechet_distance(a, rng.normal(size=(300, 16)) + 0.5), frechet_distance(a, a + 2.0)
    assert same < near < far and far == pytest.approx(16 * 4.0, rel=1e-6)


def test_kid_near_zero_for_one_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same = kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=0)
    shifted = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=100, seed=0)
    assert abs(same["mean"]) < 3 * same["std"] + 0.01
    assert shifted["mean"] > 20 * max(abs(same["mean"]), same["std"])
    assert same == kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=0)
    assert kernel_inception_distance(a[:10], b, subset_size=100)["subset_size"] == 10


def test_precision_recall_copies_far_sets_and_missed_modes() -> None:
    rng = np.random.default_rng(3)
    real = np.concatenate([rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 20.0])
    assert precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0, "k": 3}
    far = precision_recall(real, rng.normal(size=(200, 4)) + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    half = precision_recall(real, rng.normal(size=(200, 4)))  # covers the first mode only
    assert half["precision"] > 0.9 and 0.4 < half["recall"] < 0.6


def test_ms_ssim_diversity() -> None:
    rng = np.random.default_rng(4)
    same = np.repeat(rng.random((1, 48, 48), dtype=np.float32), 4, axis=0)
    assert ms_ssim_diversity(same, pairs=10)["mean"] == pytest.approx(1.0, abs=1e-6)
    noise = rng.random((8, 48, 48), dtype=np.float32)
    assert ms_ssim_diversity(noise, pairs=20)["mean"] < 0.2
    with pytest.raises(ConfigError, match="larger than"):
        ms_ssim_diversity(rng.random((4, 20, 20), dtype=np.float32))


def test_bad_inputs_raise() -> None:
    with pytest.raises(PipelineStateError):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="feature sizes"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ConfigError):
        precision_recall(np.zeros((3, 2)), np.zeros((3, 2)), k=3)
