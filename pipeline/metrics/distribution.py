"""Distribution distances between two sets of single-channel images that need no downloaded weights.

The main measure is the sliced Wasserstein distance (SWD) on Laplacian pyramids of Karras et al. 2018
("Progressive growing of GANs", appendix D), adapted to single-channel float images:

  1. each image set is decomposed into a Laplacian pyramid (5-tap binomial kernel, reflect padding);
  2. at every level, ``patches_per_image`` random ``patch`` x ``patch`` windows are taken from every image;
     each flattened window is one descriptor (``patch**2`` values, one channel);
  3. descriptors are normalised by the mean and std of that level over the *union* of both sets (one channel,
     so one mean and one std per level). A shared normalisation keeps intensity shifts visible; the paper
     normalised each set on its own, which would hide a global shift or contrast change;
  4. descriptors are projected on ``n_projections`` random unit directions; for each direction the projected
     values of each set are sorted and the mean absolute difference of matching quantiles is taken (the 1-D
     Wasserstein-1 distance); the SWD of a level is the mean over directions.

Conventions:
  - **Units**: values are in plain units of the normalised descriptors (std of the union = 1), *not* the
    paper's x1e3 scaling; multiply by 1e3 to put them on that scale (the numbers are still not comparable
    with the paper's tables: other data, one channel, shared normalisation).
  - **Level order**: ``levels[0]`` is the finest band-pass (full resolution), ``levels[-1]`` the coarsest
    low-pass; ``mean`` is the plain mean over levels.
  - **Patch positions** are common random numbers: for image index ``i`` and level ``l`` the same positions
    are used in both sets (drawn once for ``max(N, M)`` images from a generator seeded by ``seed``). Positions
    do not depend on image content, so each set's descriptors are still an unbiased sample of its own patch
    distribution; sharing them removes position noise from the difference, and identical inputs (``a is b``,
    or equal tensors) give exactly 0 at every level. Pass ``shared_positions=False`` to draw the positions of
    ``b`` from an independent stream.
  - **What each level sees**: band-pass levels have zero mean, so a constant intensity offset changes only
    the low-pass level (and ``mean``); contrast, noise and texture changes show at the band-pass levels.
    Because the normalisation uses the union's std, a growing offset or contrast change raises the distance
    monotonically but sub-linearly.
  - When the two sets give different numbers of descriptors, quantiles are compared on a grid of
    ``max(n_a, n_b)`` mid-point levels with linear interpolation; with equal counts this is exactly the
    sorted-value comparison.
  - **Determinism**: positions, split and directions come from CPU ``torch.Generator`` objects seeded from
    ``seed`` (sub-streams derived by ``numpy.random.SeedSequence``); the result depends only on the inputs,
    the arguments and the seed, not on global RNG state. Computation runs under ``torch.no_grad`` on the
    device of ``a`` in float32 (float64 if given; float64 for the normalisation and final averages).
  - **Sample size**: SWD estimated from finite samples has a positive bias that shrinks with the sample
    size. Report a generated-vs-real distance next to :func:`swd_floor` computed at the *same* set sizes.

Errors: wrong tensor shapes raise ``ValueError``; parameters that do not fit the images (too many levels,
patch larger than the coarsest level, non-positive counts) raise ``ConfigError``; non-finite images raise
``PipelineStateError`` (a diverged generator must not produce a plausible-looking distance).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError, PipelineStateError

log = logging.getLogger(__name__)

# 5-tap binomial kernel (1 4 6 4 1) / 16, used separably (Burt & Adelson 1983).
_BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)
# Upper bound on projected values held at once (descriptors x directions); ~64 MB in float32.
_MAX_PROJECTED = 16 * 1024 * 1024
_STD_EPS = 1e-12

__all__ = ["laplacian_pyramid", "reconstruct_laplacian_pyramid", "sliced_wasserstein_pyramid", "swd_floor"]


# ----------------------------------------------------------------------------------------------- helpers
def _child_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys``; independent streams for independent purposes."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *keys]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _generator(seed: int, *keys: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(_child_seed(seed, *keys))


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name}: expected single-channel images (N, 1, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{name}: empty image set")
    if x.is_complex():
        raise ValueError(f"{name}: complex images are not supported")


def _check_finite(x: torch.Tensor, name: str) -> None:
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise PipelineStateError(f"{name}: {bad} non-finite pixel values")


def _level_sizes(h: int, w: int, levels: int) -> list[tuple[int, int]]:
    sizes = [(h, w)]
    for _ in range(levels - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def _filter_axis(x: torch.Tensor, axis: int, stride: int = 1) -> torch.Tensor:
    """Binomial 5-tap filter along ``axis`` (2 or 3) with reflect padding, keeping every ``stride``-th output.
    Shifted slices instead of conv2d: a 1-channel 1x5 convolution is several times slower on CPU."""
    n = int(x.shape[axis])
    pad = (2, 2, 0, 0) if axis == 3 else (0, 0, 2, 2)
    xp = F.pad(x, pad, mode="reflect")
    n_out = (n + stride - 1) // stride
    span = (n_out - 1) * stride + 1
    terms = [xp.narrow(axis, k, span) for k in range(len(_BINOMIAL_5))]
    if stride > 1:
        terms = [t[:, :, :, ::stride] if axis == 3 else t[:, :, ::stride, :] for t in terms]
    out = terms[0] * (_BINOMIAL_5[0] / 16.0)
    for term, weight in zip(terms[1:], _BINOMIAL_5[1:], strict=True):
        out.add_(term, alpha=weight / 16.0)
    return out


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """Binomial blur (reflect padding) evaluated only at every other pixel.
    (N, 1, H, W) -> (N, 1, ceil(H/2), ceil(W/2)); H, W >= 3."""
    return _filter_axis(_filter_axis(x, 3, stride=2), 2, stride=2)


def _upsample_axis(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Polyphase form of zero insertion followed by the binomial kernel x2 with reflect padding of the
    zero-inserted signal: even outputs ``(x[i-1] + 6 x[i] + x[i+1]) / 8``, odd ``(x[i] + x[i+1]) / 2``.
    Reflecting the zero-inserted signal means ``x[-1] = x[1]`` and, past the end, ``x[h] = x[h-2]`` when
    ``size`` is odd (2h - 1) or ``x[h] = x[h-1]`` when it is even (2h). Needs h >= 2."""
    h = int(x.shape[axis])
    left = x.narrow(axis, 1, 1)
    right = x.narrow(axis, h - 2 if size % 2 else h - 1, 1)
    xp = torch.cat([left, x, right], dim=axis)  # (…, h + 2, …)
    prev, mid, nxt = xp.narrow(axis, 0, h), xp.narrow(axis, 1, h), xp.narrow(axis, 2, h)
    even = (prev + nxt).mul_(0.125).add_(mid, alpha=0.75)
    odd = (mid + nxt).mul_(0.5)
    out = torch.stack([even, odd], dim=axis + 1).flatten(axis, axis + 1)  # (…, 2h, …)
    return out.narrow(axis, 0, size)


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Expand by 2 per axis (Burt & Adelson). (N, 1, h, w) -> (N, 1, H, W), H in {2h - 1, 2h}, W likewise."""
    return _upsample_axis(_upsample_axis(x, 3, size[1]), 2, size[0])


# ----------------------------------------------------------------------------------------------- pyramid
def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid of single-channel images.

    images: (N, 1, H, W), any real dtype (computed in float32 unless float64 is given).
    Returns ``levels`` tensors: ``levels - 1`` band-pass images ``G_l - up(G_{l+1})`` of shape
    (N, 1, H_l, W_l) with ``H_{l+1} = ceil(H_l / 2)``, finest first, then the coarsest low-pass
    ``G_{levels-1}``. :func:`reconstruct_laplacian_pyramid` inverts it up to float rounding. Every level that
    is blurred must be at least 3 pixels on each side (reflect padding).
    """
    _check_images(images, "images")
    if not isinstance(levels, int) or levels < 1:
        raise ConfigError(f"levels must be a positive integer, got {levels!r}")
    x = images if images.dtype == torch.float64 else images.to(torch.float32)
    sizes = _level_sizes(int(x.shape[2]), int(x.shape[3]), levels)
    if levels > 1 and min(sizes[-2]) < 3:
        raise ConfigError(
            f"{levels} pyramid levels do not fit images of {tuple(x.shape[2:])}: level {levels - 2} would be "
            f"{sizes[-2]}, below the 3 pixels the 5-tap kernel needs"
        )
    bands: list[torch.Tensor] = []
    current = x
    for level in range(levels - 1):
        low = _downsample(current)
        bands.append(current - _upsample(low, sizes[level]))
        current = low
    bands.append(current)
    return bands


def reconstruct_laplacian_pyramid(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`laplacian_pyramid`: upsample the low-pass and add each band, coarsest first.
    Returns (N, 1, H_0, W_0)."""
    if not pyramid:
        raise ValueError("empty pyramid")
    current = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        current = band + _upsample(current, (int(band.shape[2]), int(band.shape[3])))
    return current


# ----------------------------------------------------------------------------------------------- SWD
def _patch_positions(
    n_images: int, h: int, w: int, patch: int, per_image: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (n_images, per_image) for rows and columns, uniform over valid windows."""
    ys = torch.randint(0, h - patch + 1, (n_images, per_image), generator=gen)
    xs = torch.randint(0, w - patch + 1, (n_images, per_image), generator=gen)
    return ys, xs


def _extract_patches(level: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, patch: int) -> torch.Tensor:
    """Gather windows without unfolding the whole image.
    level: (N, 1, H, W); ys, xs: (N, P) on any device. Returns (N * P, patch * patch)."""
    n, _, h, w = level.shape
    device = level.device
    ys, xs = ys[:n].to(device), xs[:n].to(device)
    offs = torch.arange(patch, device=device)
    rows = ys[:, :, None, None] + offs[None, None, :, None]  # (N, P, patch, 1)
    cols = xs[:, :, None, None] + offs[None, None, None, :]  # (N, P, 1, patch)
    index = (rows * w + cols).reshape(n, -1)  # (N, P * patch * patch)
    flat = level.reshape(n, h * w)
    return torch.gather(flat, 1, index).reshape(-1, patch * patch)


def _sorted_quantiles(sorted_values: torch.Tensor, n_out: int) -> torch.Tensor:
    """Values at mid-point quantile levels ``(k + 0.5) / n_out`` of sorted rows, linear interpolation.
    sorted_values: (K, n) sorted along the last axis. Returns (K, n_out)."""
    n = int(sorted_values.shape[1])
    if n == n_out:
        return sorted_values
    q = (torch.arange(n_out, dtype=torch.float64, device=sorted_values.device) + 0.5) / n_out
    pos = (q * n - 0.5).clamp(0.0, n - 1.0)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = (pos - lo.to(torch.float64)).to(sorted_values.dtype)
    return sorted_values[:, lo] * (1.0 - frac) + sorted_values[:, hi] * frac


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Sort each row ascending. (K, n) -> (K, n). On CPU numpy's vectorised sort is several times faster
    than ``torch.sort``; values are identical either way."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


def _sliced_w1(da: torch.Tensor, db: torch.Tensor, directions: torch.Tensor) -> float:
    """Mean over directions of the 1-D Wasserstein-1 distance between projected descriptor sets.
    da: (n_a, D), db: (n_b, D), directions: (D, K) unit columns. Projections are chunked over K."""
    n_out = max(int(da.shape[0]), int(db.shape[0]))
    k_total = int(directions.shape[1])
    chunk = max(1, min(k_total, _MAX_PROJECTED // max(1, int(da.shape[0]) + int(db.shape[0]) + n_out)))
    total = 0.0
    for start in range(0, k_total, chunk):
        d = directions[:, start : start + chunk]
        pa = _sort_rows((da @ d).T.contiguous())  # (k, n_a)
        pb = _sort_rows((db @ d).T.contiguous())  # (k, n_b)
        diff = (_sorted_quantiles(pa, n_out) - _sorted_quantiles(pb, n_out)).abs()
        total += float(diff.to(torch.float64).mean(dim=1).sum())
    return total / k_total


def _check_swd_args(levels: int, patch: int, patches_per_image: int, n_projections: int) -> None:
    for name, value in (
        ("levels", levels),
        ("patch", patch),
        ("patches_per_image", patches_per_image),
        ("n_projections", n_projections),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


@torch.no_grad()
def sliced_wasserstein_pyramid(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    levels: int = 4,
    patch: int = 7,
    patches_per_image: int = 64,
    n_projections: int = 128,
    seed: int = 0,
    shared_positions: bool = True,
) -> dict[str, Any]:
    """Sliced Wasserstein distance between Laplacian-pyramid patch distributions of two image sets.

    a: (N, 1, H, W), b: (M, 1, H, W), same H and W (N and M may differ); ``b`` is moved to ``a``'s device.
    The coarsest pyramid level must be at least ``patch`` pixels on each side.
    Returns ``{"levels": [float] * levels (finest band first, coarsest low-pass last), "mean": float,
    "n_a": N, "n_b": M}`` in plain units (see the module docstring; not the paper's x1e3). Identical inputs
    give exactly 0 with the default ``shared_positions=True``.
    """
    _check_images(a, "a")
    _check_images(b, "b")
    _check_swd_args(levels, patch, patches_per_image, n_projections)
    if a.shape[2:] != b.shape[2:]:
        raise ValueError(f"image sizes differ: a {tuple(a.shape[2:])}, b {tuple(b.shape[2:])}")
    h, w = int(a.shape[2]), int(a.shape[3])
    sizes = _level_sizes(h, w, levels)
    if min(sizes[-1]) < patch:
        raise ConfigError(
            f"{levels} pyramid levels with {patch}x{patch} patches do not fit {h}x{w} images: the coarsest "
            f"level is {sizes[-1]}; use fewer levels or a smaller patch"
        )
    _check_finite(a, "a")
    _check_finite(b, "b")
    b = b.to(a.device)
    n_a, n_b = int(a.shape[0]), int(b.shape[0])
    same = a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
    pyr_a = laplacian_pyramid(a, levels)
    pyr_b = pyr_a if same else laplacian_pyramid(b, levels)

    dim = patch * patch
    per_level: list[float] = []
    for level, (lev_a, lev_b) in enumerate(zip(pyr_a, pyr_b, strict=True)):
        lh, lw = sizes[level]
        if shared_positions:
            ys_a, xs_a = _patch_positions(
                max(n_a, n_b), lh, lw, patch, patches_per_image, _generator(seed, 0, level)
            )
            ys_b, xs_b = ys_a, xs_a
        else:
            ys_a, xs_a = _patch_positions(n_a, lh, lw, patch, patches_per_image, _generator(seed, 0, level))
            ys_b, xs_b = _patch_positions(n_b, lh, lw, patch, patches_per_image, _generator(seed, 1, level))
        da = _extract_patches(lev_a, ys_a, xs_a, patch)  # (N * P, patch * patch)
        db = _extract_patches(lev_b, ys_b, xs_b, patch)  # (M * P, patch * patch)
        # One channel: one mean and one std over all descriptor values of both sets.
        union = torch.cat([da, db]).to(torch.float64)
        mean, std = float(union.mean()), float(union.std(correction=0))
        del union
        scale = 1.0 / std if std > _STD_EPS else 1.0
        da = (da - mean) * scale
        db = (db - mean) * scale
        directions = torch.randn(
            (dim, n_projections), generator=_generator(seed, 2, level), dtype=torch.float64
        )
        directions = (directions / directions.norm(dim=0, keepdim=True)).to(da.dtype).to(da.device)
        per_level.append(_sliced_w1(da, db, directions))

    result = {"levels": per_level, "mean": float(np.mean(per_level)), "n_a": n_a, "n_b": n_b}
    log.debug("SWD over %d levels (%d vs %d images): %s", levels, n_a, n_b, per_level)
    return result


def swd_floor(real: torch.Tensor, seed: int = 0, *, size: int | None = None, **kw: Any) -> dict[str, Any]:
    """Real-vs-real floor: :func:`sliced_wasserstein_pyramid` between two disjoint random halves of ``real``.

    real: (N, 1, H, W) with N >= 2. ``size`` images go in each half (default ``N // 2``; at most ``N // 2``):
    pass the size of the sets a generated-vs-real distance was computed on so both share the sample-size bias.
    The split is a seeded permutation; ``seed`` and ``kw`` are passed on. Returns the same dict as
    :func:`sliced_wasserstein_pyramid` (``n_a == n_b == size``).
    """
    _check_images(real, "real")
    n = int(real.shape[0])
    half = n // 2
    if half < 1:
        raise PipelineStateError(f"the real-vs-real floor needs at least 2 images, got {n}")
    if size is None:
        size = half
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= half:
        raise ConfigError(f"size must be an integer in [1, {half}] for {n} real images, got {size!r}")
    perm = torch.randperm(n, generator=_generator(seed, 3)).to(real.device)
    first, second = real[perm[:size]], real[perm[size : 2 * size]]
    return sliced_wasserstein_pyramid(first, second, seed=seed, **kw)
