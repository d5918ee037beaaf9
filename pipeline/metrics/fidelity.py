"""Fidelity and diversity of a synthetic image set in a feature space that needs no download.

* **Fréchet distance** between Gaussians fitted to two feature sets (FID's formula in the project's own
  feature spaces, see :mod:`pipeline.metrics.features`). The trace of the matrix square root comes from
  eigenvalues: tr((Ca Cb)^½) = Σ √λ of the symmetric PSD matrix Ca^½ Cb Ca^½, two ``eigh`` calls instead of
  ``scipy.linalg.sqrtm``'s Schur decomposition of a non-symmetric product (46 s against 8 s at 2048-d on
  2 cores, issue 6; ``benchmarks/frechet.py`` measures it here), and no complex round-off to discard.
* **KID** (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel over random subsets; its
  mean and standard deviation. Unbiased, so it does not grow with fewer samples as the Fréchet distance does.
* **Precision and recall** on k-NN manifolds (Kynkäänniemi et al. 2019): a feature is inside a set's
  manifold when it lies within the k-th-neighbour radius of one of the set's features.
* **MS-SSIM diversity**: mean MS-SSIM over random pairs of one set (MONAI's metric); 1 = all alike.

All return plain floats or dicts of them, computed in float64; every random draw takes an explicit seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.errors import ConfigError, PipelineStateError

__all__ = [
    "frechet_distance",
    "frechet_from_moments",
    "kernel_inception_distance",
    "ms_ssim_diversity",
    "precision_recall",
]

#: Rows per block of a pairwise distance matrix (bounded memory for a few thousand rows).
_BLOCK = 512
#: MS-SSIM scale weights of Wang et al. 2003 for the three finest scales, renormalised: 96² slices cannot
#: hold the five scales of the original with an informative kernel.
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001)


def _features(x: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features (N, D), got shape {x.shape}")
    if len(x) < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} rows, got {len(x)}")
    if not np.isfinite(x).all():
        raise PipelineStateError(f"{name}: non-finite feature values")
    return x


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_moments(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b)."""
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)  # symmetrise against round-off
    trace_root = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
    return max(value, 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, D) and b (M, D), N, M ≥ 2."""
    a, b = _features(a, "a", 2), _features(b, "b", 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: a {a.shape[1]}, b {b.shape[1]}")
    return frechet_from_moments(
        a.mean(axis=0),
        np.cov(a, rowvar=False, ddof=1).reshape(a.shape[1], -1),
        b.mean(axis=0),
        np.cov(b, rowvar=False, ddof=1).reshape(b.shape[1], -1),
    )


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m = len(x)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2.0 * kxy.mean()
    )


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, *, subsets: int = 50, subset_size: int = 100, seed: int = 0
) -> dict[str, Any]:
    """KID between features a (N, D) and b (M, D): unbiased MMD² with k(x, y) = (x·y / D + 1)³, over
    ``subsets`` random subsets of min(subset_size, N, M) rows drawn without replacement from each set.
    Returns ``{"mean", "std", "subsets", "subset_size"}``."""
    a, b = _features(a, "a", 2), _features(b, "b", 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: a {a.shape[1]}, b {b.shape[1]}")
    size = min(subset_size, len(a), len(b))
    if size < 2 or subsets < 1:
        raise ConfigError(f"KID needs subsets >= 1 of at least 2 rows, got {subsets} of {size}")
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            _mmd2_unbiased(
                a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)]
            )
            for _ in range(subsets)
        ]
    )
    return {"mean": float(values.mean()), "std": float(values.std()), "subsets": subsets, "subset_size": size}


def _pairwise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.sqrt(np.clip(d2, 0.0, None))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of x to its k-th nearest other row."""
    out = np.empty(len(x))
    for start in range(0, len(x), _BLOCK):
        d = _pairwise(x[start : start + _BLOCK], x)
        out[start : start + len(d)] = np.partition(d, k, axis=1)[:, k]  # column 0 is the row itself
    return out


def _inside(queries: np.ndarray, support: np.ndarray, radii: np.ndarray) -> np.ndarray:
    inside = np.zeros(len(queries), bool)
    for start in range(0, len(queries), _BLOCK):
        d = _pairwise(queries[start : start + _BLOCK], support)
        inside[start : start + len(d)] = (d <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> dict[str, Any]:
    """Improved precision (share of ``fake`` inside the real manifold) and recall (share of ``real`` inside
    the fake manifold), manifolds of k-th-nearest-neighbour balls. real (N, D), fake (M, D), k < N, M."""
    real, fake = _features(real, "real"), _features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if not 1 <= k < min(len(real), len(fake)):
        raise ConfigError(f"k must be in [1, {min(len(real), len(fake)) - 1}] for these sets, got {k}")
    precision = _inside(fake, real, _radii(real, k)).mean()
    recall = _inside(real, fake, _radii(fake, k)).mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}


def ms_ssim_diversity(
    images: np.ndarray,
    *,
    pairs: int = 200,
    seed: int = 0,
    data_range: float = 1.0,
    kernel_size: int = 7,
    weights: tuple[float, ...] = _MS_SSIM_WEIGHTS,
) -> dict[str, Any]:
    """Mean and std of MS-SSIM over ``pairs`` random pairs of distinct images (N, H, W) of one set."""
    from monai.metrics import MultiScaleSSIMMetric

    x = np.asarray(images, np.float32)
    if x.ndim != 3 or len(x) < 2:
        raise ValueError(f"expected at least two images (N, H, W), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise PipelineStateError("images: non-finite pixel values")
    need = (kernel_size - 1) * 2 ** (len(weights) - 1)
    if min(x.shape[1:]) <= need:
        raise ConfigError(
            f"MS-SSIM with {len(weights)} scales and kernel {kernel_size} needs images larger than {need} "
            f"pixels per side, got {x.shape[1:]}"
        )
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(x), pairs)
    second = (first + rng.integers(1, len(x), pairs)) % len(x)  # never the same image
    w = np.asarray(weights, np.float64)
    metric = MultiScaleSSIMMetric(
        spatial_dims=2, data_range=data_range, kernel_size=kernel_size, weights=tuple(w / w.sum())
    )
    values = (
        metric(torch.from_numpy(x[first, None]), torch.from_numpy(x[second, None])).double().numpy().ravel()
    )
    return {"mean": float(values.mean()), "std": float(values.std()), "pairs": int(pairs)}
