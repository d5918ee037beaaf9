from __future__ import annotations

import numpy as np

from pipeline.config import IntensityConfig
from pipeline.io.volume import Volume, to_canonical
from pipeline.preprocess.intensity import foreground_mask, normalise, otsu_threshold
from pipeline.preprocess.spatial import crop_pad_inplane, is_oblique, resample


def _world(vol: Volume, ijk: tuple[float, float, float]) -> np.ndarray:
    return (vol.affine @ np.array([*ijk, 1.0]))[:3]


def test_to_canonical_keeps_world_positions() -> None:
    rng = np.random.default_rng(0)
    arr = rng.random((5, 6, 7)).astype(np.float32)
    lps_like = np.array([[-1.0, 0, 0, 10], [0, 0, -2.0, 20], [0, 3.0, 0, -5], [0, 0, 0, 1]])
    vol = Volume(arr, lps_like)
    can = to_canonical(vol)
    assert can.axcodes == ("R", "A", "S")
    # every voxel value sits at the same world point before and after
    for ijk in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        w = _world(vol, ijk)
        ijk2 = np.linalg.solve(can.affine, np.array([*w, 1.0]))[:3]
        i, j, k = (int(round(v)) for v in ijk2)
        assert can.array[i, j, k] == arr[ijk]


def test_resample_image_and_mask() -> None:
    arr = np.zeros((20, 20, 10), np.float32)
    arr[5:15, 5:15, 2:8] = 1.0
    vol = Volume(arr, np.diag([1.0, 1.0, 2.0, 1.0]))
    out = resample(vol, [2.0, 2.0, 2.0], is_mask=True)
    assert out.shape == (10, 10, 10)
    assert np.allclose(out.spacing, [2.0, 2.0, 2.0])
    assert set(np.unique(out.array)) <= {0.0, 1.0}, "masks must stay binary (nearest neighbour)"
    img = resample(vol, [0.5, 0.5, 2.0], is_mask=False)
    # MONAI keeps the span of voxel centres: (20 - 1) * 1 mm / 0.5 mm + 1 = 39
    assert img.shape == (39, 39, 10) and 0.0 < img.array.mean() < 1.0
    np.testing.assert_allclose(img.affine[:3, 3], vol.affine[:3, 3])


def test_crop_pad_keeps_world_positions() -> None:
    arr = np.arange(8 * 8 * 2, dtype=np.float32).reshape(8, 8, 2)
    vol = Volume(arr, np.diag([2.0, 2.0, 5.0, 1.0]))
    out = crop_pad_inplane(vol, (-2, 3), (6, 4))
    assert out.shape == (6, 4, 2)
    assert np.all(out.array[:2] == 0), "left padding"
    assert out.array[2, 0, 1] == arr[0, 3, 1]
    np.testing.assert_allclose(_world(out, (2, 0, 1)), _world(vol, (0, 3, 1)))


def test_is_oblique() -> None:
    assert not is_oblique(np.diag([1.0, -2.0, 3.0, 1.0]))
    th = np.deg2rad(10)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]
    assert is_oblique(rot)


def test_otsu_and_foreground() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(10, 2, 5000), rng.normal(100, 5, 5000)])
    t = otsu_threshold(values)
    assert (values < t).sum() == 5000, "the threshold separates the two classes"
    img = rng.normal(5, 1, (30, 30, 6)).astype(np.float32)
    img[8:22, 8:22, 1:5] += 100
    img[12:14, 12:14, 2] = 5  # a dark hole inside the object is filled
    fg = foreground_mask(img)
    assert fg[8:22, 8:22, 1:5].all() and not fg[:5].any()


def test_normalise_methods() -> None:
    cfg = IntensityConfig(
        mr="percentile", mr_percentiles=[1.0, 99.0], ct_window=[-100.0, 100.0], other="zscore"
    )
    img = np.linspace(0, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    fg = np.ones_like(img, bool)
    out, stats = normalise(img, fg, "MR", cfg)
    assert out.min() == 0.0 and out.max() == 1.0 and stats.method == "percentile"
    ct, _ = normalise(img - 500, fg, "CT", cfg)
    assert ct.min() == 0.0 and ct.max() == 1.0
    z, zs = normalise(img, fg, "PT", cfg)
    assert zs.method == "zscore" and abs(float(z.mean())) < 1e-4
