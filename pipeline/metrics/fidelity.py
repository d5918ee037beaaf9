"""Fidelity and diversity of a synthetic set in a feature space that needs no downloaded weights.

The measures, on feature sets (N, D) from the project's own networks (see :mod:`pipeline.metrics.features`)
or, for MS-SSIM, on the images themselves:

  * **Fréchet distance** between Gaussians fitted to two feature sets, FID's formula
    |mu_a - mu_b|² + tr(Ca) + tr(Cb) - 2 tr((Ca Cb)^½). The trace of the matrix square root comes from
    eigenvalues: tr((Ca Cb)^½) = Σ √λ(Ca^½ Cb Ca^½), a symmetric PSD matrix similar to Ca Cb, so two ``eigh``
    calls replace ``scipy.linalg.sqrtm``'s Schur decomposition of the non-symmetric product: faster at
    2048-d (``benchmarks/frechet.py`` measures it) and no complex round-off to discard.
  * **KID** (Bińkowski et al. 2018, here in the project's feature space, not Inception's): unbiased MMD²
    with the cubic polynomial kernel k(x, y) = (x·y / D + 1)³ over random subsets; mean and std over subsets.
  * **Precision and recall** on k-NN manifolds (Kynkäänniemi et al. 2019): a set's manifold is the union of
    balls around its features, each with the radius to that feature's k-th nearest other feature of the set.
    Precision = share of ``fake`` inside the real manifold; recall = share of ``real`` inside the fake one.
  * **MS-SSIM diversity**: mean MS-SSIM (MONAI's metric) over random distinct pairs of *one* set; 1 = all
    alike, lower = more diverse.
  * :func:`real_floor`: any two-set measure between two disjoint random subsets of the real set.

Conventions:
  - **Precision**: features are converted to float64 and everything is computed in float64; MS-SSIM runs in
    float32 because MONAI converts to it.
  - **Sample size**: the Fréchet distance of finite samples has a positive bias that grows as the sets shrink
    (identical distributions do not give 0); report it next to :func:`real_floor` at the *same* sizes. KID is
    unbiased: its floor is near 0 and can be negative.
  - **Determinism**: every random draw (KID subsets, MS-SSIM pairs, floor splits) comes from a local
    ``np.random.default_rng(seed)``; results depend only on the inputs, the arguments and the seed.
  - **Memory**: pairwise distances are computed in blocks of ``_BLOCK`` rows, so a few thousand rows per set
    need a few tens of MB.

Errors: wrong array shapes or sets too small for a measure raise ``ValueError``; parameter values that are
invalid or do not fit the data (non-positive counts, k not below the set sizes, an MS-SSIM kernel and scale
count too large for the images) raise ``ConfigError``; non-finite values raise ``PipelineStateError`` (a
diverged generator must not produce a plausible-looking distance).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pipeline.errors import ConfigError, PipelineStateError

log = logging.getLogger(__name__)

__all__ = [
    "frechet_distance",
    "frechet_from_moments",
    "kernel_inception_distance",
    "ms_ssim_diversity",
    "precision_recall",
    "real_floor",
]

#: Rows per block of a pairwise distance matrix: a block against 4096 rows is 16 MB of float64.
_BLOCK = 512
#: Image pairs per MONAI call; bounds the memory of its five filtered copies per scale.
_PAIR_BLOCK = 64
#: MS-SSIM scale weights of Wang et al. 2003 for the three finest scales, renormalised to sum 1: 96x96 slices
#: cannot hold the five scales of the original with an informative kernel.
_MS_SSIM_WEIGHTS = tuple(float(w) for w in np.array([0.0448, 0.2856, 0.3001]) / (0.0448 + 0.2856 + 0.3001))


# ----------------------------------------------------------------------------------------------- checks
def _features(x: Any, name: str, min_rows: int = 1) -> np.ndarray:
    if np.iscomplexobj(x):
        raise ValueError(f"{name}: complex features are not supported")
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features (N, D), got shape {x.shape}")
    if len(x) < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} rows, got {len(x)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name}: features have no dimensions, shape {x.shape}")
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise PipelineStateError(f"{name}: {bad} non-finite feature values")
    return x


def _same_dims(a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("a", "b")) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {names[0]} {a.shape[1]}, {names[1]} {b.shape[1]}")


def _count(value: Any, name: str, minimum: int = 1) -> int:
    # bool is an int subclass; True as a count is a config mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------ Fréchet distance
def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    # Round-off makes eigenvalues of a singular covariance (N <= D) slightly negative; they are 0.
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_moments(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b): means (D,), covariances (D, D), both
    symmetric positive semi-definite. Returns max(value, 0) (round-off can make equal Gaussians negative)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    for name, mu, cov in (("a", mu_a, cov_a), ("b", mu_b, cov_b)):
        if mu.ndim != 1 or mu.size < 1:
            raise ValueError(f"mu_{name}: expected a mean vector (D,), got shape {mu.shape}")
        if cov.shape != (mu.size, mu.size):
            raise ValueError(f"cov_{name}: expected ({mu.size}, {mu.size}) for its mean, got {cov.shape}")
        bad = int((~np.isfinite(mu)).sum() + (~np.isfinite(cov)).sum())
        if bad:
            raise PipelineStateError(f"moments {name}: {bad} non-finite values")
    if mu_a.size != mu_b.size:
        raise ValueError(f"feature sizes differ: a {mu_a.size}, b {mu_b.size}")
    # eigh reads one triangle only; averaging keeps an asymmetric round-off from being silently dropped.
    cov_a, cov_b = (cov_a + cov_a.T) / 2.0, (cov_b + cov_b.T) / 2.0
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_root = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
    return max(value, 0.0)


def _mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, D) and b (M, D), N, M >= 2 (covariances
    with ddof=1). Returns a float >= 0."""
    a, b = _features(a, "a", 2), _features(b, "b", 2)
    _same_dims(a, b)
    value = frechet_from_moments(*_mean_cov(a), *_mean_cov(b))
    log.debug("Fréchet distance %.6g (%d vs %d rows, %d dims)", value, len(a), len(b), a.shape[1])
    return value


# -------------------------------------------------------------------------------------------------- KID
def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m = len(x)
    # The diagonals k(x, x) are left out of the within-set means: that is what makes the estimate unbiased.
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2.0 * kxy.mean()
    )


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, *, subsets: int = 50, subset_size: int = 100, seed: int = 0
) -> dict[str, Any]:
    """KID between features a (N, D) and b (M, D): unbiased MMD² with k(x, y) = (x·y / D + 1)³ on
    ``subsets`` pairs of random subsets of min(subset_size, N, M) rows, drawn without replacement from each
    set. Returns ``{"mean", "std" (over subsets, ddof=0), "subsets", "subset_size" (the size used)}``."""
    a, b = _features(a, "a", 2), _features(b, "b", 2)
    _same_dims(a, b)
    subsets = _count(subsets, "subsets")
    subset_size = _count(subset_size, "subset_size", 2)
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        x = a[rng.choice(len(a), size, replace=False)]
        y = b[rng.choice(len(b), size, replace=False)]
        values[s] = _mmd2_unbiased(x, y)
    result = {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "subsets": subsets,
        "subset_size": size,
    }
    log.debug("KID %.6g +- %.3g (%d subsets of %d rows)", result["mean"], result["std"], subsets, size)
    return result


# ------------------------------------------------------------------------------- precision and recall
def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _pairwise(x: np.ndarray, y: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(x), len(y)); x2, y2 are the rows' squared norms."""
    d2 = x2[:, None] + y2[None, :] - 2.0 * (x @ y.T)
    # The expansion loses the sign of near-zero squared distances to cancellation.
    return np.sqrt(np.clip(d2, 0.0, None))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of x (N, D) to its k-th nearest *other* row; (N,)."""
    x2 = _sq_norms(x)
    out = np.empty(len(x))
    for start in range(0, len(x), _BLOCK):
        d = _pairwise(x[start : start + _BLOCK], x, x2[start : start + _BLOCK], x2)
        # Remove each row's own distance by position, not by value: with the expansion it is not exactly 0
        # and could sort after a true duplicate.
        rows = np.arange(len(d))
        d[rows, start + rows] = np.inf
        out[start : start + len(d)] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def _inside(queries: np.ndarray, support: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Whether each query row lies in the union of balls (support[i], radii[i]); (len(queries),) bool."""
    q2, s2 = _sq_norms(queries), _sq_norms(support)
    inside = np.zeros(len(queries), bool)
    for start in range(0, len(queries), _BLOCK):
        d = _pairwise(queries[start : start + _BLOCK], support, q2[start : start + _BLOCK], s2)
        inside[start : start + len(d)] = (d <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> dict[str, Any]:
    """Improved precision and recall of real (N, D) and fake (M, D) features with k-th-neighbour manifolds,
    1 <= k < min(N, M). Returns ``{"precision": share of fake inside the real manifold, "recall": share of
    real inside the fake manifold, "k"}``."""
    real, fake = _features(real, "real", 2), _features(fake, "fake", 2)
    _same_dims(real, fake, ("real", "fake"))
    k = _count(k, "k")
    if k >= min(len(real), len(fake)):
        raise ConfigError(
            f"k must be below both set sizes ({len(real)} real, {len(fake)} fake rows), got {k}; "
            f"use k <= {min(len(real), len(fake)) - 1}"
        )
    precision = float(_inside(fake, real, _radii(real, k)).mean())
    recall = float(_inside(real, fake, _radii(fake, k)).mean())
    log.debug(
        "precision %.4f, recall %.4f (k=%d, %d real, %d fake)", precision, recall, k, len(real), len(fake)
    )
    return {"precision": precision, "recall": recall, "k": k}


# ------------------------------------------------------------------------------------------- MS-SSIM
def _min_side(kernel_size: int, scales: int) -> int:
    """Smallest image side MS-SSIM accepts. Two limits: MONAI's own check (side // max(1, scales-1)² must
    exceed kernel_size - 1) and its unpadded convolution at the coarsest scale (side // 2^(scales-1) must be
    at least kernel_size); at 3 and 5 scales they agree, otherwise either one may be the stricter."""
    return kernel_size * max(max(1, scales - 1) ** 2, 2 ** (scales - 1))


def _distinct_pairs(n: int, pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` different unordered pairs (i < j) of range(n), uniformly without replacement."""
    total = n * (n - 1) // 2
    # Index the upper triangle row by row: row i holds the n-1-i pairs (i, i+1..n-1).
    starts = np.concatenate([[0], np.cumsum(np.arange(n - 1, 0, -1))])[:-1]
    flat = np.sort(rng.choice(total, size=pairs, replace=False))
    first = np.searchsorted(starts, flat, side="right") - 1
    second = first + 1 + (flat - starts[first])
    return first, second


def ms_ssim_diversity(
    images: np.ndarray,
    *,
    pairs: int = 200,
    seed: int = 0,
    data_range: float = 1.0,
    kernel_size: int = 7,
    weights: Sequence[float] = _MS_SSIM_WEIGHTS,
) -> dict[str, Any]:
    """Mean and std (ddof=0) of MS-SSIM over ``pairs`` random distinct pairs of different images of one set,
    images (N, H, W), N >= 2; all N(N-1)/2 pairs when fewer exist. ``len(weights)`` is the number of scales
    (weights are renormalised to sum 1); H and W must be at least
    ``kernel_size * max((scales-1)², 2^(scales-1))``: 28 for the default 7-pixel kernel and 3 scales.
    Returns ``{"mean", "std", "pairs" (pairs used)}``."""
    # MONAI's import costs seconds; only this measure needs it.
    from monai.metrics import MultiScaleSSIMMetric

    if np.iscomplexobj(images):
        raise ValueError("images: complex images are not supported")
    x = np.asarray(images, np.float32)
    if x.ndim != 3 or len(x) < 2:
        raise ValueError(f"images: expected at least two images (N, H, W), got shape {x.shape}")
    pairs = _count(pairs, "pairs")
    kernel_size = _count(kernel_size, "kernel_size")
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or w.size < 1 or not np.isfinite(w).all() or (w <= 0).any():
        raise ConfigError(f"weights must be one or more positive numbers, got {tuple(weights)!r}")
    if not np.isfinite(data_range) or data_range <= 0:
        raise ConfigError(f"data_range must be a positive number, got {data_range!r}")
    need = _min_side(kernel_size, w.size)
    if min(x.shape[1:]) < need:
        raise ConfigError(
            f"MS-SSIM with {w.size} scales and a {kernel_size}-pixel kernel needs images of at least "
            f"{need}x{need} pixels, got {x.shape[1]}x{x.shape[2]}; use fewer weights (scales) or a "
            "smaller kernel"
        )
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise PipelineStateError(f"images: {bad} non-finite pixel values")

    n = len(x)
    available = n * (n - 1) // 2
    if pairs > available:
        log.info(
            "MS-SSIM: %d pairs asked, only %d distinct pairs among %d images; using all", pairs, available, n
        )
        pairs = available
    first, second = _distinct_pairs(n, pairs, np.random.default_rng(seed))
    metric = MultiScaleSSIMMetric(
        spatial_dims=2,
        data_range=float(data_range),
        kernel_size=kernel_size,
        weights=tuple(float(v) for v in w / w.sum()),
    )
    values = np.empty(pairs)
    with torch.no_grad():
        for start in range(0, pairs, _PAIR_BLOCK):
            i, j = first[start : start + _PAIR_BLOCK], second[start : start + _PAIR_BLOCK]
            out = metric(torch.from_numpy(x[i, None]), torch.from_numpy(x[j, None]))
            values[start : start + len(i)] = out.double().numpy().ravel()
    metric.reset()  # the metric keeps every batch's values for aggregate(); they are already in `values`
    result = {"mean": float(values.mean()), "std": float(values.std()), "pairs": int(pairs)}
    log.debug(
        "MS-SSIM diversity %.4f +- %.4f over %d pairs of %d images", result["mean"], result["std"], pairs, n
    )
    return result


# ------------------------------------------------------------------------------------------ real floor
def real_floor(
    real: np.ndarray,
    size_a: int,
    size_b: int,
    fn: Callable[..., Any],
    *,
    seed: int = 0,
    **kw: Any,
) -> dict[str, Any]:
    """Real-vs-real floor: ``fn(first, second, **kw)`` on two disjoint random subsets of real (N, D) with
    ``size_a`` and ``size_b`` rows, the sizes of the sets a generated-vs-real value was computed on, so both
    carry the same sample-size bias. When N < size_a + size_b each size is cut to at most N // 2 (the
    largest equal split) and ``reduced`` is True. ``seed`` draws the split and is passed on to ``fn`` when it
    takes a ``seed`` keyword (e.g. :func:`kernel_inception_distance`).
    Returns ``{"value": fn's result (float or dict), "size_a", "size_b" (sizes used), "reduced": bool}``."""
    real = _features(real, "real", 2)
    size_a, size_b = _count(size_a, "size_a"), _count(size_b, "size_b")
    n = len(real)
    reduced = size_a + size_b > n
    if reduced:
        half = n // 2
        log.warning(
            "real floor: %d real rows cannot give disjoint subsets of %d and %d; using %d and %d",
            n,
            size_a,
            size_b,
            min(size_a, half),
            min(size_b, half),
        )
        size_a, size_b = min(size_a, half), min(size_b, half)
    perm = np.random.default_rng(seed).permutation(n)
    first, second = real[perm[:size_a]], real[perm[size_a : size_a + size_b]]
    if "seed" in inspect.signature(fn).parameters:
        kw = {**kw, "seed": seed}
    return {"value": fn(first, second, **kw), "size_a": size_a, "size_b": size_b, "reduced": reduced}
