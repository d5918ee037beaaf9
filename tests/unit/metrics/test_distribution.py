from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError, PipelineStateError
from pipeline.metrics import distribution
from pipeline.metrics.distribution import (
    laplacian_pyramid,
    reconstruct_laplacian_pyramid,
    sliced_wasserstein_pyramid,
    swd_floor,
)

H, W = 40, 36  # not powers of two; 3 levels give 40x36, 20x18, 10x9
SMALL = {"levels": 3, "patches_per_image": 32, "n_projections": 64}


def smooth_images(n: int, seed: int, h: int = H, w: int = W) -> torch.Tensor:
    """(n, 1, h, w) float32 images from one homogeneous process: smoothed noise plus a random bright disc."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, h, w), generator=gen)
    for _ in range(2):
        x = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    cy = torch.rand((n, 1, 1, 1), generator=gen) * h
    cx = torch.rand((n, 1, 1, 1), generator=gen) * w
    disc = (((yy - cy) ** 2 + (xx - cx) ** 2) < 36.0).float()
    return x * 2.0 + disc


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tensors here are tiny: with intra-op threads on a busy 2-core runner every op waits for a scheduled
    thread (about 1 s per call instead of 10 ms). One thread for this module, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return smooth_images(48, seed=1)


# ----------------------------------------------------------------------------------------------- pyramid
@pytest.mark.parametrize(("h", "w", "levels"), [(32, 32, 4), (37, 29, 4), (40, 36, 3), (5, 6, 2), (9, 9, 1)])
def test_pyramid_shapes_and_reconstruction(h: int, w: int, levels: int) -> None:
    x = torch.rand((3, 1, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pyramid = laplacian_pyramid(x, levels)
    assert len(pyramid) == levels
    eh, ew = h, w
    for band in pyramid:
        assert band.shape == (3, 1, eh, ew)
        eh, ew = math.ceil(eh / 2), math.ceil(ew / 2)
    assert torch.allclose(reconstruct_laplacian_pyramid(pyramid), x, atol=1e-12)
    pyramid32 = laplacian_pyramid(x.float(), levels)
    assert pyramid32[0].dtype == torch.float32
    assert torch.allclose(reconstruct_laplacian_pyramid(pyramid32), x.float(), atol=1e-5)


def test_pyramid_of_constant_has_zero_bands_and_constant_lowpass() -> None:
    x = torch.full((2, 1, 24, 20), 3.5)
    pyramid = laplacian_pyramid(x, 3)
    for band in pyramid[:-1]:
        assert band.abs().max() < 1e-6
    assert torch.allclose(pyramid[-1], torch.full_like(pyramid[-1], 3.5))


def test_pyramid_bands_separate_scales() -> None:
    """A fine checkerboard lives in the finest band; a ramp lives mostly in the low-pass."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    checker = (((yy + xx) % 2) * 2 - 1).view(1, 1, 32, 32)
    bands = laplacian_pyramid(checker, 3)
    assert bands[0].pow(2).mean() > 0.9 * checker.pow(2).mean()
    assert bands[-1].abs().max() < 1e-5


def test_pyramid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="single-channel"):
        laplacian_pyramid(torch.zeros(2, 3, 16, 16), 2)
    with pytest.raises(ValueError, match="single-channel"):
        laplacian_pyramid(torch.zeros(16, 16), 2)
    with pytest.raises(ConfigError, match="levels"):
        laplacian_pyramid(torch.zeros(1, 1, 16, 16), 0)
    with pytest.raises(ConfigError, match="pyramid levels"):
        laplacian_pyramid(torch.zeros(1, 1, 16, 16), 5)  # 16, 8, 4, 2, 1


# ----------------------------------------------------------------------------------------------- SWD
def test_identical_inputs_give_exactly_zero(real: torch.Tensor) -> None:
    same = sliced_wasserstein_pyramid(real, real, **SMALL)
    assert same["levels"] == [0.0, 0.0, 0.0]
    assert same["mean"] == 0.0
    assert (same["n_a"], same["n_b"]) == (48, 48)
    clone = sliced_wasserstein_pyramid(real, real.clone(), **SMALL)
    assert clone["levels"] == [0.0, 0.0, 0.0]


def test_independent_positions_give_small_nonzero_for_identical_inputs(real: torch.Tensor) -> None:
    indep = sliced_wasserstein_pyramid(real, real.clone(), shared_positions=False, **SMALL)
    shifted = sliced_wasserstein_pyramid(real, real * 1.5 + 0.5, shared_positions=False, **SMALL)
    assert all(v > 0 for v in indep["levels"])
    assert indep["mean"] < 0.25 * shifted["mean"]


def test_result_layout_and_json_types(real: torch.Tensor) -> None:
    result = sliced_wasserstein_pyramid(real[:10], real[10:30], **SMALL)
    assert set(result) == {"levels", "mean", "n_a", "n_b"}
    assert len(result["levels"]) == 3
    assert all(type(v) is float and math.isfinite(v) and v >= 0 for v in result["levels"])
    assert type(result["mean"]) is float
    assert result["mean"] == pytest.approx(sum(result["levels"]) / 3)
    assert (result["n_a"], result["n_b"]) == (10, 20)


def test_noise_increases_distance_with_its_level(real: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(real.shape, generator=gen)
    d = [sliced_wasserstein_pyramid(real, real + s * noise, **SMALL) for s in (0.05, 0.2, 0.8)]
    assert d[0]["mean"] < d[1]["mean"] < d[2]["mean"]
    # White noise is strongest in the finest band.
    assert d[1]["levels"][0] > d[0]["levels"][0] * 2


def test_intensity_shift_shows_in_lowpass_and_grows(real: torch.Tensor) -> None:
    d = [sliced_wasserstein_pyramid(real, real + s, **SMALL) for s in (0.1, 0.3, 1.0)]
    means = [r["mean"] for r in d]
    assert means[0] < means[1] < means[2]
    for r in d:
        # A constant offset is invisible to the band-pass levels (they have zero DC) ...
        assert max(r["levels"][:-1]) < 1e-4
    # ... and seen by the low-pass one, sub-linearly in the offset (the union std grows with it).
    assert 2.0 * d[0]["levels"][-1] < d[1]["levels"][-1] < 3.0 * d[0]["levels"][-1]


def test_contrast_change_shows_at_every_level(real: torch.Tensor) -> None:
    mild = sliced_wasserstein_pyramid(real, real * 1.2, **SMALL)
    strong = sliced_wasserstein_pyramid(real, real * 2.0, **SMALL)
    assert all(s > m > 0.01 for m, s in zip(mild["levels"], strong["levels"], strict=True))


def test_symmetric(real: torch.Tensor) -> None:
    other = smooth_images(30, seed=9) * 1.1
    ab = sliced_wasserstein_pyramid(real, other, **SMALL)
    ba = sliced_wasserstein_pyramid(other, real, **SMALL)
    assert ab["levels"] == pytest.approx(ba["levels"], rel=1e-5, abs=1e-8)
    assert (ba["n_a"], ba["n_b"]) == (30, 48)


def test_deterministic_for_a_seed_and_seed_dependent(real: torch.Tensor) -> None:
    other = smooth_images(24, seed=3)
    torch.manual_seed(123)
    first = sliced_wasserstein_pyramid(real, other, seed=7, **SMALL)
    torch.manual_seed(456)  # global RNG state must not matter
    second = sliced_wasserstein_pyramid(real, other, seed=7, **SMALL)
    assert first == second
    third = sliced_wasserstein_pyramid(real, other, seed=8, **SMALL)
    assert third["levels"] != first["levels"]
    assert third["mean"] == pytest.approx(first["mean"], rel=0.5)


def test_different_set_sizes(real: torch.Tensor) -> None:
    small_same = sliced_wasserstein_pyramid(real, smooth_images(13, seed=2), **SMALL)
    small_shifted = sliced_wasserstein_pyramid(real, smooth_images(13, seed=2) * 1.5 + 0.5, **SMALL)
    assert (small_same["n_a"], small_same["n_b"]) == (48, 13)
    assert small_same["mean"] < 0.5 * small_shifted["mean"]
    # Same distribution duplicated: quantile interpolation compares it with the original at ~0.
    doubled = sliced_wasserstein_pyramid(real, torch.cat([real, real]), **SMALL)
    assert doubled["mean"] < 0.5 * small_same["mean"]


def test_projection_chunking_matches_one_chunk(real: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    other = smooth_images(20, seed=4)
    whole = sliced_wasserstein_pyramid(real, other, **SMALL)
    monkeypatch.setattr(distribution, "_MAX_PROJECTED", 5000)  # a few directions per chunk
    chunked = sliced_wasserstein_pyramid(real, other, **SMALL)
    assert chunked["levels"] == pytest.approx(whole["levels"], rel=1e-6)


def test_other_dtypes_accepted(real: torch.Tensor) -> None:
    other = smooth_images(16, seed=6)
    ref = sliced_wasserstein_pyramid(real, other, **SMALL)
    as64 = sliced_wasserstein_pyramid(real.double(), other.double(), **SMALL)
    assert as64["levels"] == pytest.approx(ref["levels"], rel=1e-4)
    as_bf16 = sliced_wasserstein_pyramid(real.bfloat16(), other.bfloat16(), **SMALL)
    assert as_bf16["mean"] == pytest.approx(ref["mean"], rel=0.1)


def test_default_parameters_on_paper_like_size() -> None:
    a = smooth_images(6, seed=11, h=64, w=56)
    b = smooth_images(6, seed=12, h=64, w=56)
    result = sliced_wasserstein_pyramid(a, b)  # levels=4: 64x56, 32x28, 16x14, 8x7
    assert len(result["levels"]) == 4
    assert all(math.isfinite(v) for v in result["levels"])


def test_swd_rejects_bad_arguments(real: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="sizes differ"):
        sliced_wasserstein_pyramid(real, torch.zeros(4, 1, H, W + 2), **SMALL)
    with pytest.raises(ValueError, match="single-channel"):
        sliced_wasserstein_pyramid(real, torch.zeros(4, 2, H, W), **SMALL)
    with pytest.raises(ConfigError, match="coarsest level"):
        sliced_wasserstein_pyramid(real, real, levels=4)  # 40x36 -> 5x5 at level 3
    with pytest.raises(ConfigError, match="coarsest level"):
        sliced_wasserstein_pyramid(real, real, levels=3, patch=11)
    for bad in ({"n_projections": 0}, {"patches_per_image": -1}, {"patch": 2.5}, {"levels": True}):
        with pytest.raises(ConfigError):
            sliced_wasserstein_pyramid(real, real, **{**SMALL, **bad})
    broken = real.clone()
    broken[3, 0, 5, 5] = float("nan")
    with pytest.raises(PipelineStateError, match="non-finite"):
        sliced_wasserstein_pyramid(real, broken, **SMALL)


def test_constant_images_do_not_divide_by_zero() -> None:
    a = torch.zeros(4, 1, 16, 16)
    result = sliced_wasserstein_pyramid(a, torch.zeros(5, 1, 16, 16), levels=2)
    assert result["levels"] == [0.0, 0.0]


# ----------------------------------------------------------------------------------------------- floor
def test_floor_is_small_next_to_a_shifted_set(real: torch.Tensor) -> None:
    floor = swd_floor(real, **SMALL)
    assert (floor["n_a"], floor["n_b"]) == (24, 24)
    generated = smooth_images(24, seed=21) * 1.3 + 0.3
    shifted = sliced_wasserstein_pyramid(real[:24], generated, **SMALL)
    assert 0 < floor["mean"] < 0.5 * shifted["mean"]
    good = sliced_wasserstein_pyramid(real[:24], smooth_images(24, seed=22), **SMALL)
    assert good["mean"] < 2.0 * floor["mean"]  # same process: at the floor, up to noise


def test_floor_split_sizes_and_determinism(real: torch.Tensor) -> None:
    odd = real[:11]
    floor = swd_floor(odd, seed=3, **SMALL)
    assert (floor["n_a"], floor["n_b"]) == (5, 5)
    assert swd_floor(odd, seed=3, **SMALL) == floor
    sized = swd_floor(real, size=10, **SMALL)
    assert (sized["n_a"], sized["n_b"]) == (10, 10)
    with pytest.raises(ConfigError, match="size"):
        swd_floor(real, size=25, **SMALL)
    with pytest.raises(PipelineStateError, match="at least 2"):
        swd_floor(real[:1], **SMALL)
