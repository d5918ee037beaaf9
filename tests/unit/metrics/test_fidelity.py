"""Fidelity metrics on known cases: closed forms, identical sets, shifted sets, covered and missed modes."""

from __future__ import annotations

from typing import Any

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
    real_floor,
)


def two_modes(n: int = 200, d: int = 4, seed: int = 3) -> np.ndarray:
    """2n rows: n around the origin and n around (20, ..., 20)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 20.0])


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """n different smooth images in [0, 1]: random low-frequency sinusoid mixtures."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        fy, fx, py, px = rng.uniform(0.5, 3.0, 4)
        out[i] = 0.5 + 0.25 * np.sin(2 * np.pi * (fy * yy + py)) + 0.25 * np.cos(2 * np.pi * (fx * xx + px))
    return out


# ------------------------------------------------------------------------------------ Fréchet distance
def test_frechet_closed_form_for_diagonal_gaussians() -> None:
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    va, vb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    want = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    assert frechet_from_moments(mu_a, np.diag(va), mu_b, np.diag(vb)) == pytest.approx(want, rel=1e-12)


def test_frechet_closed_form_for_commuting_full_covariances() -> None:
    # Covariances sharing eigenvectors: (Ca Cb)^½ has eigenvalues √(λa λb), so the closed form is known.
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    la, lb = rng.uniform(0.1, 5.0, 6), rng.uniform(0.1, 5.0, 6)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    want = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(la) - np.sqrt(lb)) ** 2).sum()
    got = frechet_from_moments(mu_a, (q * la) @ q.T, mu_b, (q * lb) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)


def test_frechet_eigen_route_matches_sqrtm() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64)) * 0.2
    b = rng.normal(size=(300, 64)) + 0.3
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    ref = diff @ diff + np.trace(ca) + np.trace(cb) - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_frechet_from_samples_approaches_the_closed_form() -> None:
    rng = np.random.default_rng(6)
    sa, sb = np.array([1.0, 2.0, 0.5]), np.array([2.0, 1.0, 0.5])
    a = rng.normal(size=(20000, 3)) * sa
    b = rng.normal(size=(20000, 3)) * sb + np.array([1.0, 0.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(1.0 + ((sa - sb) ** 2).sum(), rel=0.03)


def test_identical_sets_give_zero_and_shifts_grow() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    same = frechet_distance(a, rng.normal(size=(300, 16)))
    near, far = frechet_distance(a, rng.normal(size=(300, 16)) + 0.5), frechet_distance(a, a + 2.0)
    assert same < near < far and far == pytest.approx(16 * 4.0, rel=1e-6)


def test_frechet_handles_singular_covariances_and_one_dimension() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(5, 32))  # rank 4 covariances in 32 dimensions
    assert np.isfinite(frechet_distance(a, b)) and frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # One dimension: (mu_a - mu_b)² + (sd_a - sd_b)² with sample moments.
    x, y = np.array([[0.0], [2.0]]), np.array([[1.0], [5.0]])
    want = (1.0 - 3.0) ** 2 + (np.std(x, ddof=1) - np.std(y, ddof=1)) ** 2
    assert frechet_distance(x, y) == pytest.approx(want, rel=1e-12)


# -------------------------------------------------------------------------------------------------- KID
def test_kid_near_zero_for_one_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same = kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=0)
    shifted = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=100, seed=0)
    assert abs(same["mean"]) < 3 * same["std"] + 0.01
    assert shifted["mean"] > 20 * max(abs(same["mean"]), same["std"])
    assert same == kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=0)
    assert same != kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=1)
    assert kernel_inception_distance(a[:10], b, subset_size=100)["subset_size"] == 10


def test_kid_of_a_set_with_itself_is_near_zero() -> None:
    rng = np.random.default_rng(8)
    a = rng.normal(size=(300, 8))
    same = kernel_inception_distance(a, a, subsets=10, subset_size=300, seed=0)
    shifted = kernel_inception_distance(a, a + 1.0, subsets=10, subset_size=300, seed=0)
    assert same["subset_size"] == 300 and same["subsets"] == 10
    # Whole-set subsets of one set are not independent samples: the estimate is exactly
    # -2 / (m - 1) * (mean of k(x, x) - mean of k over all pairs), slightly negative, not 0.
    gram = (a @ a.T / 8 + 1.0) ** 3
    assert same["mean"] == pytest.approx(-2 / 299 * (np.diag(gram).mean() - gram.mean()), rel=1e-9)
    assert abs(same["mean"]) < 0.02 * shifted["mean"]


def test_kid_matches_a_direct_computation_on_one_subset() -> None:
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) + 0.3
    k = lambda p, q: (p @ q / 3 + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(5)) / 25
    got = kernel_inception_distance(x, y, subsets=3, subset_size=5)
    # Full-size subsets are permutations of the sets, which leave the estimate unchanged.
    assert got["mean"] == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and got["std"] == pytest.approx(
        0, abs=1e-12
    )


# ------------------------------------------------------------------------------- precision and recall
def test_precision_recall_copies_far_sets_and_missed_modes() -> None:
    real = two_modes()
    rng = np.random.default_rng(3)
    assert precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0, "k": 3}
    far = precision_recall(real, rng.normal(size=(200, 4)) + 100.0)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    half = precision_recall(real, rng.normal(size=(200, 4)))  # covers the first mode only
    assert half["precision"] > 0.9 and 0.4 < half["recall"] < 0.6


def test_precision_recall_blocks_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.metrics.fidelity as fidelity

    real, fake = two_modes(150), np.random.default_rng(10).normal(size=(250, 4)) * 3
    whole = precision_recall(real, fake, k=5)
    monkeypatch.setattr(fidelity, "_BLOCK", 7)
    assert precision_recall(real, fake, k=5) == whole


def test_precision_recall_k_counts_other_points_only() -> None:
    # Points on a line at 0, 1, 3: k=1 radii are 1, 1, 2. A fake at 4.9 is inside (3 + 2), at 5.1 outside.
    real = np.array([[0.0], [1.0], [3.0]])
    assert precision_recall(real, np.array([[4.9], [-0.5], [0.5]]), k=1)["precision"] == 1.0
    assert precision_recall(real, np.array([[5.1], [-0.5], [0.5]]), k=1)["precision"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------- MS-SSIM
def test_ms_ssim_of_identical_images_is_one_and_of_noise_low() -> None:
    rng = np.random.default_rng(4)
    same = np.repeat(rng.random((1, 48, 48), dtype=np.float32), 4, axis=0)
    result = ms_ssim_diversity(same, pairs=10)
    assert result["mean"] == pytest.approx(1.0, abs=1e-6) and result["pairs"] == 6  # only 6 pairs of 4
    noise = rng.random((8, 48, 48), dtype=np.float32)
    low = ms_ssim_diversity(noise, pairs=20)
    assert low["mean"] < 0.2 and low["pairs"] == 20
    smooth = ms_ssim_diversity(smooth_images(8, 96, 0), pairs=20)
    assert low["mean"] < smooth["mean"] < 1.0


def test_ms_ssim_is_seeded_and_runs_on_96_pixel_images() -> None:
    images = smooth_images(12, 96, 1)
    one = ms_ssim_diversity(images, pairs=30, seed=0)
    assert one == ms_ssim_diversity(images, pairs=30, seed=0)
    assert one != ms_ssim_diversity(images, pairs=30, seed=1)
    # All 66 pairs, whatever the seed: the same set of pairs.
    assert ms_ssim_diversity(images, pairs=66, seed=0)["mean"] == pytest.approx(
        ms_ssim_diversity(images, pairs=500, seed=3)["mean"], rel=1e-6
    )


def test_ms_ssim_size_limits() -> None:
    rng = np.random.default_rng(11)
    # 3 scales with a 7-pixel kernel need 28 pixels: MONAI itself rejects 25 to 27.
    for side in (20, 27):
        with pytest.raises(ConfigError, match="at least 28x28"):
            ms_ssim_diversity(rng.random((4, side, side), dtype=np.float32))
    assert 0 < ms_ssim_diversity(rng.random((4, 28, 28), dtype=np.float32))["mean"] <= 1
    # 6 scales: the coarsest convolution (96 // 32 = 3 < 7) is the limit MONAI does not check.
    with pytest.raises(ConfigError, match="6 scales"):
        ms_ssim_diversity(rng.random((4, 96, 96), dtype=np.float32), weights=(1,) * 6)
    with pytest.raises(ConfigError, match="weights"):
        ms_ssim_diversity(rng.random((4, 96, 96), dtype=np.float32), weights=(0.5, -0.5))


# ------------------------------------------------------------------------------------------ real floor
def test_real_floor_uses_disjoint_subsets_of_the_asked_sizes() -> None:
    real = np.arange(100, dtype=np.float64)[:, None] * np.ones((1, 3))  # every row distinct
    seen: dict[str, Any] = {}

    def record(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> float:
        seen.update(a=a, b=b)
        return scale

    out = real_floor(real, 30, 40, record, seed=0, scale=2.0)
    assert out == {"value": 2.0, "size_a": 30, "size_b": 40, "reduced": False}
    rows_a, rows_b = set(seen["a"][:, 0]), set(seen["b"][:, 0])
    assert len(rows_a) == 30 and len(rows_b) == 40 and not rows_a & rows_b
    real_floor(real, 30, 40, record, seed=1)
    assert set(seen["a"][:, 0]) != rows_a


def test_real_floor_reduces_to_an_equal_split_and_says_so() -> None:
    real = np.random.default_rng(12).normal(size=(51, 8))
    out = real_floor(real, 40, 40, frechet_distance, seed=0)
    assert (out["size_a"], out["size_b"], out["reduced"]) == (25, 25, True)
    assert isinstance(out["value"], float) and out["value"] > 0


def test_real_floor_passes_the_seed_to_kid() -> None:
    real = np.random.default_rng(13).normal(size=(200, 8))
    out = real_floor(real, 100, 100, kernel_inception_distance, seed=4, subsets=5, subset_size=50)
    again = real_floor(real, 100, 100, kernel_inception_distance, seed=4, subsets=5, subset_size=50)
    assert out == again and out["reduced"] is False
    assert out["value"]["subsets"] == 5 and out["value"]["subset_size"] == 50
    other = real_floor(real, 100, 100, kernel_inception_distance, seed=5, subsets=5, subset_size=50)
    assert other["value"]["mean"] != out["value"]["mean"]

    def seed_of(a: np.ndarray, b: np.ndarray, *, seed: int = -1) -> int:
        return seed

    assert real_floor(real, 10, 10, seed_of, seed=7)["value"] == 7
    assert real_floor(real, 10, 10, lambda a, b: len(a) + len(b), seed=7)["value"] == 20


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call",
    [
        lambda x, y: frechet_distance(x, y),
        lambda x, y: frechet_distance(y, x),
        lambda x, y: kernel_inception_distance(x, y),
        lambda x, y: precision_recall(y, x, k=1),
        lambda x, y: real_floor(x, 2, 2, frechet_distance),
        lambda x, y: frechet_from_moments(x[0], np.eye(2), y[0], np.eye(2)),
    ],
)
def test_non_finite_features_raise_pipeline_state_error(call: Any) -> None:
    bad = np.zeros((4, 2))
    bad[1, 1] = np.inf
    bad[0] = np.nan
    with pytest.raises(PipelineStateError, match="non-finite"):
        call(bad, np.random.default_rng(0).normal(size=(4, 2)))


def test_non_finite_images_raise_pipeline_state_error() -> None:
    images = np.zeros((3, 32, 32), np.float32)
    images[2, 5, 5] = np.nan
    with pytest.raises(PipelineStateError, match="1 non-finite"):
        ms_ssim_diversity(images)


def test_shape_errors_raise_value_error() -> None:
    with pytest.raises(ValueError, match="feature sizes"):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        kernel_inception_distance(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="feature sizes"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"cov_b"):
        frechet_from_moments(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="two images"):
        ms_ssim_diversity(np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="two images"):
        ms_ssim_diversity(np.zeros((4, 1, 32, 32)))


def test_parameter_errors_raise_config_error() -> None:
    x = np.random.default_rng(14).normal(size=(6, 2))
    with pytest.raises(ConfigError, match="k must be below"):
        precision_recall(x[:3], x, k=3)
    with pytest.raises(ConfigError, match="k must be"):
        precision_recall(x, x, k=0)
    with pytest.raises(ConfigError, match="subset_size"):
        kernel_inception_distance(x, x, subset_size=1)
    with pytest.raises(ConfigError, match="subsets"):
        kernel_inception_distance(x, x, subsets=0)
    with pytest.raises(ConfigError, match="pairs"):
        ms_ssim_diversity(np.zeros((3, 32, 32)), pairs=0)
    with pytest.raises(ConfigError, match="size_b"):
        real_floor(x, 2, True, frechet_distance)
