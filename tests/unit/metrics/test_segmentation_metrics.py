from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.metrics.segmentation import dice_hd95, label_agreement, per_case_dice_hd95


def square(size: int = 40, top: int = 10, left: int = 10, side: int = 20) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[top : top + side, left : left + side] = 1
    return m


def test_identical_masks_give_dice_one_hd_zero() -> None:
    a = np.stack([square(), square(top=5, side=8)])
    report = dice_hd95(a, a.copy())
    assert report["dice_mean"] == pytest.approx(1.0)
    assert report["hd95_mean"] == pytest.approx(0.0)
    assert report["global_dice"] == {"1": pytest.approx(1.0)}
    assert report["n_items"] == 2 and "note" not in report


def test_disjoint_masks_give_dice_zero() -> None:
    a = square(top=0, left=0, side=10)[None]
    b = square(top=25, left=25, side=10)[None]
    report = dice_hd95(a, b)
    assert report["dice_mean"] == 0.0
    assert report["hd95_mean"] > 20
    assert report["global_dice"]["1"] == 0.0


def test_empty_vs_empty_convention() -> None:
    empty = np.zeros((1, 16, 16), np.uint8)
    excluded = dice_hd95(empty, empty)
    assert excluded["dice_mean"] is None and excluded["hd95_mean"] is None
    assert excluded["classes"]["1"]["n_both_empty"] == 1
    assert "empty in both" in excluded["note"]
    assert excluded["per_item"] == {"dice": [None], "hd95": [None]}
    assert excluded["global_dice"] == {"1": None}
    perfect = dice_hd95(empty, empty, both_empty="perfect")
    assert perfect["dice_mean"] == 1.0 and perfect["hd95_mean"] == 0.0
    with pytest.raises(ConfigError):
        dice_hd95(empty, empty, both_empty="one")  # type: ignore[arg-type]


def test_one_side_empty_gives_dice_zero_and_no_hd95() -> None:
    a = square()[None]
    empty = np.zeros_like(a)
    for pred, target, key in ((a, empty, "n_pred_only"), (empty, a, "n_target_only")):
        report = dice_hd95(pred, target)
        assert report["dice_mean"] == 0.0
        assert report["hd95_mean"] is None
        assert report["classes"]["1"][key] == 1
        assert "HD95 undefined" in report["note"]


def test_hd95_of_a_shifted_square_is_the_shift_in_mm() -> None:
    a = square()[None]
    along_w = square(left=14)[None]  # shifted 4 pixels along W
    along_h = square(top=13)[None]  # shifted 3 pixels along H
    assert dice_hd95(a, along_w)["hd95_mean"] == pytest.approx(4.0)
    assert dice_hd95(a, along_w)["hd95_unit"] == "pixels"
    spaced = dice_hd95(a, along_w, spacing=(2.0, 0.5))
    assert spaced["hd95_mean"] == pytest.approx(2.0) and spaced["hd95_unit"] == "mm"
    assert dice_hd95(a, along_h, spacing=(2.0, 0.5))["hd95_mean"] == pytest.approx(6.0)
    assert dice_hd95(a, along_w)["dice_mean"] == pytest.approx(2 * 16 * 20 / 800)


def test_volumes_torch_and_multiclass() -> None:
    vol = np.zeros((2, 6, 16, 16), np.int64)
    vol[:, 1:5, 4:12, 4:12] = 1
    vol[:, 2:4, 6:10, 6:10] = 2
    pred = vol.copy()
    pred[1, 1:5, 4:12, 4:6] = 0  # class 1 partly missed in item 1
    report = dice_hd95(torch.from_numpy(pred), torch.from_numpy(vol), spacing=(3.0, 1.0, 1.0))
    assert set(report["classes"]) == {"1", "2"}
    assert report["classes"]["2"]["dice_mean"] == pytest.approx(1.0)
    assert report["classes"]["1"]["dice_mean"] < 1.0
    assert report["per_item"]["dice"][0] == pytest.approx(1.0)
    assert dice_hd95(pred, vol, num_classes=4)["classes"]["3"]["n_both_empty"] == 2
    with pytest.raises(ValueError):
        dice_hd95(pred, vol, num_classes=2)
    with pytest.raises(ValueError):
        dice_hd95(pred, vol, spacing=(1.0, 1.0))


def test_per_case_stacks_slices_into_volumes() -> None:
    a, e = square(), np.zeros((40, 40), np.uint8)
    # case x: perfect; case y: lesion predicted one slice off; case z: both empty (excluded)
    pred = np.stack([a, e, e, a, e, e])
    target = np.stack([a, e, a, e, e, e])
    ids = ["x", "x", "y", "y", "z", "z"]
    report = per_case_dice_hd95(pred, target, ids, spacing=(3.0, 1.0, 1.0))
    assert report["n_cases"] == 3
    assert report["cases"]["x"] == {"dice": pytest.approx(1.0), "hd95": pytest.approx(0.0)}
    assert report["cases"]["y"]["dice"] == 0.0
    assert report["cases"]["y"]["hd95"] == pytest.approx(3.0), "one slice apart = slice spacing"
    assert report["cases"]["z"] == {"dice": None, "hd95": None}
    assert report["dice_mean"] == pytest.approx(0.5) and report["dice_std"] == pytest.approx(0.5)
    assert report["global_dice"]["1"] == pytest.approx(0.5)
    assert report["classes"]["1"]["n_both_empty"] == 1
    # slices of one case need not be contiguous
    shuffled = per_case_dice_hd95(
        pred[[0, 2, 1, 3, 4, 5]], target[[0, 2, 1, 3, 4, 5]], ["x", "y", "x", "y", "z", "z"]
    )
    assert shuffled["cases"]["x"]["dice"] == pytest.approx(1.0)
    assert shuffled["cases"]["y"]["dice"] == 0.0
    with pytest.raises(ValueError):
        per_case_dice_hd95(pred, target, ids[:-1])


def test_label_agreement_counts_lesions_per_label() -> None:
    pred = np.zeros((5, 4, 4), bool)
    pred[0, 1, 1] = pred[1, 2, 2] = pred[3, 0, 0] = True  # abnormal: 0, 1 found, 2 missed; normal: 3 false
    got = label_agreement(pred, np.array([1, 1, 1, 0, 0]))
    want = {"abnormal_with_lesion": 2 / 3, "normal_without_lesion": 0.5, "n_abnormal": 3, "n_normal": 2}
    assert got == want


def test_label_agreement_empty_groups_are_none() -> None:
    got = label_agreement(np.zeros((0, 4, 4), bool), np.zeros(0, np.int64))
    assert got["abnormal_with_lesion"] is None and got["normal_without_lesion"] is None
    assert got["n_abnormal"] == got["n_normal"] == 0
