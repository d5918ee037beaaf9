from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineStateError
from pipeline.metrics.anomaly import (
    binary_scores_report,
    dice_at_threshold,
    pixel_report,
    pr_curve,
    roc_curve,
    threshold_report,
)
from pipeline.metrics.plots import write_curve_csv, write_json


def planted_maps(n: int = 12, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps where lesion pixels score in (0.7, 1] and every other pixel in [0, 0.3); every other slice has a
    lesion. Returns maps, masks, foreground."""
    rng = np.random.default_rng(seed)
    maps = rng.uniform(0.0, 0.3, (n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    masks[::2, 10:16, 12:20] = 1
    maps[masks > 0] = rng.uniform(0.7001, 1.0, int(masks.sum())).astype(np.float32)
    fg = np.zeros_like(masks, dtype=bool)
    fg[:, 2:-2, 2:-2] = True
    return maps, masks, fg


# ------------------------------------------------------------------------------------------ image level
def test_perfect_and_reversed_scores() -> None:
    labels = np.array([0, 0, 0, 1, 1, -1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 5.0])
    report = binary_scores_report(scores, labels)
    assert report["auroc"] == pytest.approx(1.0)
    assert report["auprc"] == pytest.approx(1.0)
    assert (report["n_pos"], report["n_neg"], report["n_unknown"]) == (2, 3, 1)
    assert report["prevalence"] == pytest.approx(0.4)
    assert "note" not in report
    assert binary_scores_report(-scores, labels)["auroc"] == pytest.approx(0.0)


def test_random_scores_on_balanced_labels_give_one_half() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 2000)
    report = binary_scores_report(rng.random(labels.size), labels)
    assert report["auroc"] == pytest.approx(0.5, abs=0.03)
    assert report["auprc"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, -1], [-1, -1, -1]])
def test_single_class_gives_none_with_a_note(labels: list[int]) -> None:
    report = binary_scores_report([0.1, 0.2, 0.3], labels)
    assert report["auroc"] is None and report["auprc"] is None
    assert "undefined" in report["note"]
    assert roc_curve([0.1, 0.2, 0.3], labels) == []
    assert pr_curve([0.1, 0.2, 0.3], labels) == []


def test_average_precision_matches_a_hand_computed_example() -> None:
    # ranked: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg) → AP = 1/2 · 1/1 + 1/2 · 2/3 = 5/6
    report = binary_scores_report([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert report["auprc"] == pytest.approx(5 / 6)
    assert report["auroc"] == pytest.approx(0.75)
    # ties are one operating point: 0.5 (pos, neg) then 0.2 (pos) → AP = 1/2 · 1/2 + 1/2 · 2/3
    assert binary_scores_report([0.5, 0.5, 0.2], [1, 0, 1])["auprc"] == pytest.approx(0.25 + 1 / 3)


def test_bad_inputs_raise() -> None:
    with pytest.raises(PipelineStateError):
        binary_scores_report([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError):
        binary_scores_report([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError):
        binary_scores_report([0.1, 0.2, 0.3], [0, 1])


def test_roc_curve_endpoints_area_and_thinning() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 3000)
    scores = rng.normal(size=labels.size) + labels
    full = roc_curve(scores, labels, max_points=10**6)
    assert full[0] == {"fpr": 0.0, "tpr": 0.0, "threshold": None}
    assert (full[-1]["fpr"], full[-1]["tpr"]) == (1.0, 1.0)
    assert full[-1]["threshold"] == pytest.approx(scores.min())
    fpr = np.array([p["fpr"] for p in full])
    tpr = np.array([p["tpr"] for p in full])
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(binary_scores_report(scores, labels)["auroc"], abs=1e-9)
    thin = roc_curve(scores, labels, max_points=50)
    assert 2 < len(thin) <= 50
    assert thin[0] == full[0] and thin[-1] == full[-1]
    assert all(p in full for p in thin), "thinned points are exact points of the full curve"


def test_pr_curve_endpoints() -> None:
    labels = np.array([1, 0, 1, 0, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    curve = pr_curve(scores, labels)
    assert curve[0] == {"recall": pytest.approx(1 / 3), "precision": 1.0, "threshold": pytest.approx(0.9)}
    assert curve[-1]["recall"] == 1.0
    assert curve[-1]["precision"] == pytest.approx(3 / 8)
    assert len(curve) == 8


def test_threshold_report_counts() -> None:
    scores = np.array([0.1, 0.5, 0.6, 0.9, 0.4, 0.7])
    labels = np.array([0, 0, 1, 1, 1, -1])
    report = threshold_report(scores, labels, 0.5)
    assert (report["tp"], report["fp"], report["tn"], report["fn"]) == (2, 1, 1, 1)
    assert report["sensitivity"] == pytest.approx(2 / 3)
    assert report["specificity"] == pytest.approx(1 / 2)
    assert report["precision"] == pytest.approx(2 / 3)
    nothing = threshold_report(scores, labels, 5.0)
    assert nothing["precision"] is None and "nothing called positive" in nothing["note"]


# ------------------------------------------------------------------------------------------ pixel level
def test_best_dice_finds_the_planted_threshold() -> None:
    maps, masks, fg = planted_maps()
    report = pixel_report(maps, masks, fg)
    assert report["sampled"] is False and report["best_dice_method"] == "exact"
    assert report["best_dice"] == pytest.approx(1.0)
    lesion = masks > 0
    assert report["best_dice_threshold"] == pytest.approx(float(maps[lesion & fg].min()))
    assert float(maps[fg & ~lesion].max()) < 0.3 < 0.7 < report["best_dice_threshold"]
    assert report["auroc"] == pytest.approx(1.0) and report["auprc"] == pytest.approx(1.0)
    assert report["n_lesion_pixels"] == int(masks.sum())
    assert report["n_pixels"] == int(fg.sum())
    at = dice_at_threshold(maps, masks, fg, report["best_dice_threshold"])
    assert at["dice"] == pytest.approx(1.0) and at["fp"] == at["fn"] == 0
    assert dice_at_threshold(maps, masks, fg, 0.5)["dice"] == pytest.approx(1.0)
    assert dice_at_threshold(maps, masks, fg, 0.0)["dice"] < 0.2


def test_sampled_pixel_report_is_deterministic_and_stratified() -> None:
    maps, masks, fg = planted_maps(n=20)
    one = pixel_report(maps, masks, fg, max_pixels=5000, seed=7)
    assert one["sampled"] is True and one["n_sampled"] == 5000
    assert one == pixel_report(maps, masks, fg, max_pixels=5000, seed=7)
    assert one["best_dice_method"] == "histogram"
    assert one["best_dice"] == pytest.approx(1.0)
    lesion = masks > 0
    assert float(maps[fg & ~lesion].max()) < one["best_dice_threshold"] <= float(maps[fg & lesion].min())
    assert one["auroc"] == pytest.approx(1.0)


def test_sampled_metrics_are_close_to_exact_ones() -> None:
    rng = np.random.default_rng(5)
    maps, masks, fg = planted_maps(n=20, seed=5)
    noisy = (maps + rng.normal(0, 0.25, maps.shape)).astype(np.float32)
    exact = pixel_report(noisy, masks, fg)
    sampled = pixel_report(noisy, masks, fg, max_pixels=8000, seed=1)
    assert 0.7 < exact["auroc"] < 1.0
    assert sampled["auroc"] == pytest.approx(exact["auroc"], abs=0.02)
    assert sampled["auprc"] == pytest.approx(exact["auprc"], abs=0.05)
    # the histogram sweep sees every pixel: it matches the exact best Dice closely
    assert sampled["best_dice"] == pytest.approx(exact["best_dice"], abs=2e-3)


def test_best_dice_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    maps = rng.random((4, 12, 12)).astype(np.float32)
    masks = (rng.random((4, 12, 12)) < 0.2).astype(np.uint8)
    maps[masks > 0] += 0.3
    fg = np.ones_like(masks, dtype=bool)
    report = pixel_report(maps, masks, fg)
    brute = max(dice_at_threshold(maps, masks, fg, float(t))["dice"] for t in np.unique(maps))
    assert report["best_dice"] == pytest.approx(brute)
    assert dice_at_threshold(maps, masks, fg, report["best_dice_threshold"])["dice"] == pytest.approx(brute)


def test_pixel_report_uses_known_slices_and_says_what_it_cannot_score() -> None:
    maps, masks, fg = planted_maps()
    labels = np.zeros(len(maps), np.int8)
    labels[::2] = 1
    labels[-4:] = -1
    report = pixel_report(maps, masks, fg, labels=labels)
    assert report["n_slices"] == len(maps) - 4
    assert report["n_pixels"] == int(fg[:-4].sum())
    # only normal slices: no lesion pixel → metrics None with a note
    normal = pixel_report(maps[1::2], masks[1::2], fg[1::2])
    assert normal["auroc"] is None and normal["best_dice"] is None and "no positive" in normal["note"]
    empty = dice_at_threshold(maps[1::2], masks[1::2], fg[1::2], 2.0)
    assert empty["dice"] is None and "note" in empty
    # a lesion cut by the foreground is counted, not silently dropped
    fg2 = fg.copy()
    fg2[0, 10:12] = False
    assert pixel_report(maps, masks, fg2)["n_lesion_outside_foreground"] == 16
    with pytest.raises(PipelineStateError):
        bad = maps.copy()
        bad[0, 5, 5] = np.nan
        pixel_report(bad, masks, fg)


# ------------------------------------------------------------------------------------------ plot files
def test_curve_csv_and_json_are_rounded_and_never_nan(tmp_path: Path) -> None:
    scores = np.array([0.123456789, 0.2, 0.3, 0.9])
    labels = np.array([0, 1, 0, 1])
    curve = roc_curve(scores, labels)
    write_curve_csv(tmp_path / "roc.csv", curve, ["fpr", "tpr", "threshold"])
    with open(tmp_path / "roc.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0] == {"fpr": "0", "tpr": "0", "threshold": ""}
    assert rows[-1]["threshold"] == "0.123457"
    assert len(rows) == len(curve)

    write_json(
        tmp_path / "m.json", {"auroc": 1 / 3, "n": np.int64(4), "x": [np.float32(0.5), None], "s": "a"}
    )
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"auroc": 0.333333, "n": 4, "x": [0.5, None], "s": "a"}
    assert text.endswith("\n")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    with pytest.raises(PipelineStateError, match="auroc"):
        write_json(tmp_path / "bad.json", {"model": {"auroc": math.nan}})
    with pytest.raises(PipelineStateError):
        write_curve_csv(tmp_path / "bad.csv", [{"a": math.inf}], ["a"])
    with pytest.raises(ValueError):
        write_curve_csv(tmp_path / "bad.csv", [{"a": 1, "b": 2}], ["a"])
    assert not (tmp_path / "bad.json").exists() and not (tmp_path / "bad.csv").exists()
