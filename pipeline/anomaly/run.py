"""The score_anomalies stage: reconstruction-error maps of the trained autoencoder on the val and test
slices, slice/case/pixel scores, a threshold calibrated on validation normals, and the same numbers for a
no-learning baseline (the normalised intensity itself), so every run shows whether the model earns its keep.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.anomaly.scoring import (
    anomaly_maps,
    calibrate_threshold,
    case_labels,
    case_scores,
    foreground_mask,
    slice_scores,
)
from pipeline.config import CommonConfig, ScoreAnomaliesConfig, TrainAeConfig
from pipeline.errors import PipelineStateError
from pipeline.io.atomic import atomic_dir
from pipeline.io.nifti import nifti_bytes
from pipeline.io.shards import CASES_PER_SHARD, ShardWriter
from pipeline.io.shards import read_nifti as read_nifti_member
from pipeline.lineage.record import write_lineage
from pipeline.metrics.anomaly import (
    binary_scores_report,
    dice_at_threshold,
    pixel_report,
    pr_curve,
    roc_curve,
    threshold_report,
)
from pipeline.metrics.plots import write_curve_csv
from pipeline.models.networks import build_autoencoder
from pipeline.preprocess.store import load_slices
from pipeline.runtime.device import resolve_device
from pipeline.training.ae import reconstruct
from pipeline.training.checkpoint import load_weights, rebuilding_from
from pipeline.training.common import save_png

log = logging.getLogger(__name__)

SCORERS = ("model", "baseline")
SCORE_FIELDS = (
    "split",
    "case_id",
    "slice",
    "label",
    "score_model",
    "score_baseline",
    "flag_model",
    "flag_baseline",
)


def _split_maps(
    net: Any, data_dir: Path, split: str, cfg: ScoreAnomaliesConfig, device: Any
) -> dict[str, Any] | None:
    store = load_slices(data_dir / "slices" / split)
    n = int(store.label.shape[0])
    if n == 0:
        return None
    images = np.asarray(store.image, dtype=np.float32)
    fg = foreground_mask(images, cfg.foreground_threshold, cfg.foreground_erosion)
    recon = reconstruct(net, images, cfg.batch_size, device)
    maps = {
        "model": anomaly_maps(images, recon, fg, cfg.smooth_sigma, cfg.error),
        # the baseline's "reconstruction" is 0, so its map is the (smoothed) intensity inside the foreground
        "baseline": anomaly_maps(images, np.zeros_like(images), fg, cfg.smooth_sigma, "abs"),
    }
    return {
        "images": images,
        "recon": recon,
        "fg": fg,
        "masks": (np.asarray(store.mask) > 0).astype(np.uint8),
        "labels": np.asarray(store.label).astype(np.int64),
        "case_ids": [r["case_id"] for r in store.rows],
        "slice": [int(r["slice"]) for r in store.rows],
        "maps": maps,
        "scores": {k: slice_scores(m, fg, cfg.slice_score, cfg.top_fraction) for k, m in maps.items()},
    }


def _report(
    d: dict[str, Any], scorer: str, threshold: float, cfg: ScoreAnomaliesConfig, seed: int
) -> dict[str, Any]:
    scores, labels = d["scores"][scorer], d["labels"]
    cs, cl = case_scores(scores, d["case_ids"]), case_labels(labels, d["case_ids"])
    ids = list(cs)
    return {
        "slice": binary_scores_report(scores, labels),
        "case": binary_scores_report([cs[i] for i in ids], [cl[i] for i in ids]),
        "pixel": pixel_report(
            d["maps"][scorer], d["masks"], d["fg"], labels=labels, max_pixels=cfg.max_pixels, seed=seed
        ),
        "slice_at_threshold": threshold_report(scores, labels, threshold),
        "pixel_dice_at_threshold": dice_at_threshold(
            d["maps"][scorer], d["masks"], d["fg"], threshold, labels=labels
        ),
    }


def score_anomalies(
    cfg: ScoreAnomaliesConfig,
    common: CommonConfig,
    data_dir: Path,
    model_path: Path,
    out_dir: Path,
    plots_dir: Path,
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score val and test; write ``scores.csv``, ``maps/`` (NIfTI per case, on the preprocess grid) and
    ``overlays/`` (PNG) into ``out_dir`` atomically, ROC/PR curves into ``plots_dir``; return the metrics."""
    states, meta = load_weights(model_path)
    with rebuilding_from(model_path):
        ae_cfg = TrainAeConfig.model_validate(meta["config"])
        net = build_autoencoder(ae_cfg)
        net.load_state_dict(states["net"])
    device = resolve_device(common.device)
    net.to(device)

    val = _split_maps(net, data_dir, "val", cfg, device)
    test = _split_maps(net, data_dir, "test", cfg, device)
    if val is None or not np.any(val["labels"] == 0):
        raise PipelineStateError(
            f"{data_dir}: the val split has no normal slice to calibrate the threshold on"
        )
    thresholds = {
        k: calibrate_threshold(val["scores"][k][val["labels"] == 0], cfg.threshold_quantile) for k in SCORERS
    }
    metrics: dict[str, Any] = {
        "threshold_quantile": cfg.threshold_quantile,
        "threshold": thresholds,
    }
    for scorer in SCORERS:
        metrics[scorer] = {
            split: _report(d, scorer, thresholds[scorer], cfg, common.seed)
            for split, d in (("val", val), ("test", test))
            if d is not None
        }
    if test is not None:
        m, b = metrics["model"]["test"], metrics["baseline"]["test"]
        metrics["model_minus_baseline"] = {
            name: (None if m[level][key] is None or b[level][key] is None else m[level][key] - b[level][key])
            for name, level, key in (
                ("slice_auroc", "slice", "auroc"),
                ("pixel_auroc", "pixel", "auroc"),
                ("pixel_auprc", "pixel", "auprc"),
                ("pixel_best_dice", "pixel", "best_dice"),
            )
        }
        for scorer in SCORERS:
            write_curve_csv(
                plots_dir / f"roc_{scorer}.csv",
                roc_curve(test["scores"][scorer], test["labels"]),
                ("fpr", "tpr", "threshold"),
            )
            write_curve_csv(
                plots_dir / f"pr_{scorer}.csv",
                pr_curve(test["scores"][scorer], test["labels"]),
                ("recall", "precision", "threshold"),
            )

    with atomic_dir(out_dir) as tmp:
        if lineage is not None:
            write_lineage(tmp, {**lineage, "threshold": thresholds})
        _write_scores(tmp / "scores.csv", [("val", val), ("test", test)], thresholds)
        images = _manifest_images(data_dir)
        with ShardWriter(tmp, "maps", CASES_PER_SHARD) as maps:
            for split, d in (("val", val), ("test", test)):
                if d is not None:
                    _write_maps(maps, d, data_dir, images)
                    _write_overlays(tmp / "overlays", split, d, cfg.n_overlays)
    return metrics


def _write_scores(
    path: Path, splits: list[tuple[str, dict[str, Any] | None]], thresholds: dict[str, float]
) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SCORE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for split, d in splits:
        if d is None:
            continue
        for k in range(d["labels"].shape[0]):
            sm, sb = float(d["scores"]["model"][k]), float(d["scores"]["baseline"][k])
            writer.writerow(
                {
                    "split": split,
                    "case_id": d["case_ids"][k],
                    "slice": d["slice"][k],
                    "label": int(d["labels"][k]),
                    "score_model": f"{sm:.6g}",
                    "score_baseline": f"{sb:.6g}",
                    "flag_model": int(sm >= thresholds["model"]),
                    "flag_baseline": int(sb >= thresholds["baseline"]),
                }
            )
    path.write_text(buf.getvalue(), encoding="utf-8")


def _write_maps(maps: ShardWriter, d: dict[str, Any], data_dir: Path, images: dict[str, str]) -> None:
    """One NIfTI per case (a member of the ``maps/`` shards): the model's anomaly map stacked back onto the
    case's preprocess grid (``images``: case id → its image in the preprocess manifest)."""
    ids = np.array(d["case_ids"])
    for case in dict.fromkeys(d["case_ids"]):
        rows = np.flatnonzero(ids == case)
        if case not in images:
            raise PipelineStateError(f"{data_dir / 'manifest.csv'}: no row for case {case}")
        ref, affine = read_nifti_member(data_dir, images[case])
        volume = np.zeros(ref.shape, dtype=np.float32)
        for r in rows:
            volume[:, :, d["slice"][r]] = d["maps"]["model"][r]
        maps.add([(f"{case}_anomaly.nii", nifti_bytes(volume, affine))])


def _manifest_images(data_dir: Path) -> dict[str, str]:
    with open(data_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
        return {row["case_id"]: row["image"] for row in csv.DictReader(fh)}


def _write_overlays(folder: Path, split: str, d: dict[str, Any], n: int) -> None:
    """PNG per slice: image | reconstruction | anomaly map (red) with the lesion outline (green)."""
    abnormal = np.flatnonzero(d["labels"] == 1)
    normal = np.flatnonzero(d["labels"] == 0)
    picks = list(abnormal[: (n + 1) // 2]) + list(normal[:: max(1, normal.size // max(1, n // 2))][: n // 2])
    for k in picks:
        img, rec, amap = d["images"][k], d["recon"][k], d["maps"]["model"][k]
        scale = float(amap.max()) or 1.0
        grey = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        heat = np.stack([grey, grey, grey], axis=-1)
        heat[..., 0] = np.maximum(heat[..., 0], (np.clip(amap / scale, 0, 1) * 255).astype(np.uint8))
        mask = d["masks"][k] > 0
        heat[mask & ~ndimage.binary_erosion(mask)] = (0, 255, 0)
        rgb = [
            np.repeat((np.clip(a, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1) for a in (img, rec)
        ]
        tile = np.concatenate([*rgb, heat], axis=0)  # along i: side by side once shown (save_png transposes)
        save_png(
            folder / f"{split}_{d['case_ids'][k]}_{d['slice'][k]:03d}_label{int(d['labels'][k])}.png", tile
        )
