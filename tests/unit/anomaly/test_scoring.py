from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.anomaly.scoring import (
    anomaly_maps,
    calibrate_threshold,
    case_labels,
    case_scores,
    foreground_mask,
    slice_scores,
)
from pipeline.errors import ConfigError, PipelineStateError


def disc_images(n: int = 2, size: int = 48, radius: float = 18.0, value: float = 0.6) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2
    return np.repeat(np.where(disc, value, 0.0).astype(np.float32)[None], n, axis=0)


def test_foreground_erosion_removes_the_rim() -> None:
    images = disc_images()
    raw = foreground_mask(images, 0.1, erosion_radius=0)
    assert np.array_equal(raw, images > 0.1)
    eroded = foreground_mask(images, 0.1, erosion_radius=3)
    assert eroded.dtype == bool and eroded.shape == images.shape
    assert not np.any(eroded & ~raw), "erosion only removes pixels"
    # every remaining pixel lies more than 2 pixels inside the head; the centre stays
    depth = ndimage.distance_transform_edt(raw[0])
    assert depth[eroded[0]].min() > 3 - 1e-9
    assert np.all(eroded[0][depth > 3.5])
    assert eroded[:, 24, 24].all()


def test_foreground_fills_holes_and_stays_per_slice() -> None:
    images = disc_images(3)
    images[0, 20:28, 20:28] = 0.0  # dark structure inside the head (ventricle, hypointense lesion)
    images[2] = 0.0  # an empty slice next to a full one
    fg = foreground_mask(images, 0.1, erosion_radius=2)
    assert fg[0, 20:28, 20:28].all(), "holes inside the head are foreground"
    assert not fg[2].any(), "no foreground leaks across slices"
    single = foreground_mask(images[1:2], 0.1, erosion_radius=2)
    assert np.array_equal(fg[1], single[0])
    no_fill = foreground_mask(images, 0.1, erosion_radius=0, fill_holes=False)
    assert not no_fill[0, 22:26, 22:26].any()


def test_foreground_accepts_channel_axis_and_torch() -> None:
    images = disc_images()
    fg = foreground_mask(torch.from_numpy(images[:, None]), 0.1, erosion_radius=1)
    assert np.array_equal(fg, foreground_mask(images, 0.1, erosion_radius=1))


def test_anomaly_maps_error_inside_foreground_only() -> None:
    images = disc_images()
    recons = images.copy()
    recons[:, 24, 24] -= 0.5
    recons[:, 0, 0] = 5.0  # huge error outside the head
    fg = foreground_mask(images, 0.1, erosion_radius=2)
    abs_maps = anomaly_maps(images, recons, fg, error="abs")
    sq_maps = anomaly_maps(images, recons, fg, error="squared")
    assert abs_maps.dtype == np.float32 and abs_maps.shape == images.shape
    assert np.all(abs_maps[~fg] == 0)
    assert abs_maps[0, 24, 24] == pytest.approx(0.5)
    assert sq_maps[0, 24, 24] == pytest.approx(0.25)
    assert np.count_nonzero(abs_maps) == 2
    with pytest.raises(ConfigError):
        anomaly_maps(images, recons, fg, error="l3")  # type: ignore[arg-type]


def test_anomaly_maps_chunks_and_torch_give_the_same_result() -> None:
    rng = np.random.default_rng(0)
    images = disc_images(5) + rng.normal(0, 0.05, (5, 48, 48)).astype(np.float32)
    recons = disc_images(5)
    fg = foreground_mask(images, 0.2, erosion_radius=2)
    ref = anomaly_maps(images, recons, fg, smooth_sigma=1.5, chunk=256)
    assert np.array_equal(anomaly_maps(images, recons, fg, smooth_sigma=1.5, chunk=2), ref)
    from_torch = anomaly_maps(
        torch.from_numpy(images[:, None]), torch.from_numpy(recons[:, None]), fg, smooth_sigma=1.5
    )
    assert np.allclose(from_torch, ref)


def test_smoothing_keeps_the_mass_centre_and_does_not_leak_from_outside() -> None:
    size = 64
    images = disc_images(1, size=size, radius=28)
    recons = images.copy()
    recons[0, 28:33, 36:41] -= 0.4  # an off-centre lesion, well inside the foreground
    recons[0, 0:4, :] = 3.0  # large error outside the foreground
    fg = foreground_mask(images, 0.1, erosion_radius=2)
    raw = anomaly_maps(images, recons, fg, smooth_sigma=0)
    smooth = anomaly_maps(images, recons, fg, smooth_sigma=2.0)
    assert smooth[0, 30, 38] < raw[0, 30, 38], "smoothing spreads the peak"
    assert np.all(smooth[~fg] == 0)
    c_raw = ndimage.center_of_mass(raw[0])
    c_smooth = ndimage.center_of_mass(smooth[0])
    assert np.allclose(c_raw, c_smooth, atol=1e-3)
    assert smooth[0].sum() == pytest.approx(raw[0].sum(), rel=1e-3)
    # error only outside the foreground: nothing appears inside after smoothing
    recons2 = images.copy()
    recons2[0, 0:4, :] = 3.0
    assert not anomaly_maps(images, recons2, fg, smooth_sigma=3.0).any()


def test_slice_scores_methods() -> None:
    maps = np.zeros((3, 10, 100), np.float32)
    fg = np.zeros(maps.shape, bool)
    fg[0] = True
    maps[0] = 0.1
    maps[0, 5, 5] = 1.0  # one noisy pixel among 1000
    fg[1, :, :50] = True
    maps[1, :, :50] = 0.4
    maps[1, :, 50:] = 9.0  # outside the foreground: ignored
    # slice 2: no foreground
    assert np.allclose(slice_scores(maps, fg, "max"), [1.0, 0.4, 0.0])
    assert np.allclose(slice_scores(maps, fg, "mean"), [(999 * 0.1 + 1.0) / 1000, 0.4, 0.0])
    top = slice_scores(maps, fg, "top_fraction", top_fraction=0.01)  # the 10 largest of slice 0
    assert top.dtype == np.float64 and top.shape == (3,)
    assert np.allclose(top, [(1.0 + 9 * 0.1) / 10, 0.4, 0.0])
    with pytest.raises(ConfigError):
        slice_scores(maps, fg, "median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        slice_scores(maps, fg, "top_fraction", top_fraction=0.0)


def test_case_scores_and_labels() -> None:
    ids = ["b", "a", "b", "a", "c", "c", "d"]
    assert case_scores(np.array([0.1, 0.5, 0.9, 0.2, 0.3, 0.3, 0.0]), ids) == {
        "b": 0.9,
        "a": 0.5,
        "c": 0.3,
        "d": 0.0,
    }
    labels = np.array([0, 0, 1, 0, -1, -1, 0], np.int8)
    assert case_labels(labels, ids) == {"b": 1, "a": 0, "c": -1, "d": 0}
    assert case_labels(np.array([-1, 0]), ["x", "x"]) == {"x": -1}
    assert case_labels(np.array([-1, 1]), ["x", "x"]) == {"x": 1}
    with pytest.raises(ValueError):
        case_scores(np.zeros(3), ["a"])
    with pytest.raises(ValueError):
        case_labels(np.array([2]), ["a"])


def test_calibrate_threshold_returns_the_quantile() -> None:
    scores = np.random.default_rng(1).permutation(np.arange(101, dtype=np.float64))
    assert calibrate_threshold(scores, 0.95) == pytest.approx(95.0)
    assert calibrate_threshold(scores, 0.0) == 0.0
    assert calibrate_threshold([0.0, 1.0], 0.25) == pytest.approx(0.25)
    with pytest.raises(PipelineStateError):
        calibrate_threshold(np.zeros(0), 0.95)
    with pytest.raises(PipelineStateError):
        calibrate_threshold([0.1, float("nan")], 0.5)
    with pytest.raises(ConfigError):
        calibrate_threshold(scores, 95)
