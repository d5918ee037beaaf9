"""The evaluate stage's pieces on tiny, known inputs: subset choice, confidence intervals, mask agreement,
the U-Net encoder features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluate.conditioning import mask_agreement
from pipeline.evaluate.utility import mean_ci, real_subset_cases
from pipeline.metrics.features import unet_bottom
from pipeline.preprocess.store import SliceSet


def _store(cases: dict[str, int]) -> SliceSet:
    """Two slices per case; ``cases[c]`` = 1 gives the case's second slice a lesion."""
    rows, labels = [], []
    for c, lesion in cases.items():
        for k in range(2):
            rows.append({"case_id": c, "slice": k})
            labels.append(int(lesion and k == 1))
    n = len(rows)
    return SliceSet(np.zeros((n, 4, 4), np.float32), np.zeros((n, 4, 4), np.uint8), np.asarray(labels), rows)


def test_real_subset_is_seeded_and_always_holds_a_lesion_case() -> None:
    store = _store({f"c{i}": int(i == 7) for i in range(8)})
    for seed in range(20):
        chosen = real_subset_cases(store, 2, seed)
        assert len(chosen) == 2 and "c7" in chosen
        assert chosen == real_subset_cases(store, 2, seed)
    assert len({tuple(real_subset_cases(store, 3, s)) for s in range(20)}) > 1


def test_mean_ci() -> None:
    r = mean_ci([0.5, 0.6, 0.7])
    assert r["mean"] == pytest.approx(0.6) and r["ci_low"] < 0.6 < r["ci_high"]
    # t(0.975, 2) = 4.303; sd 0.1; n 3
    assert r["ci_high"] - 0.6 == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-3)
    assert mean_ci([0.4])["ci_low"] is None


def test_mask_agreement() -> None:
    truth = np.zeros((3, 8, 8), np.uint8)
    truth[0, 2:4, 2:4] = 1
    truth[1, 5:7, 5:7] = 1
    pred = truth.copy()
    pred[1] = 0  # missed lesion
    pred[2, 0, 0] = 1  # false lesion on a lesion-free slice
    r = mask_agreement(pred, truth)
    assert r["dice_mean_lesion_slices"] == pytest.approx(0.5)
    assert r["detected_fraction"] == pytest.approx(0.5) and r["false_lesion_fraction"] == 1.0
    assert r["dice_pooled"] == pytest.approx(2 * 4 / (5 + 8))
    assert mask_agreement(truth, truth)["dice_pooled"] == 1.0


def test_unet_bottom_is_the_deepest_level() -> None:
    from monai.networks.nets import UNet

    net = UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    seen = []
    unet_bottom(net).register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    net(torch.zeros(1, 1, 16, 16))
    assert seen == [torch.Size([1, 16, 4, 4])]
    with pytest.raises(ValueError, match="not a MONAI UNet"):
        unet_bottom(torch.nn.Linear(2, 2))
