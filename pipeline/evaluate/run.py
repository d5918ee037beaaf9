"""The evaluate stage for one exported variant: fidelity and diversity, conditioning fidelity, privacy and
usefulness, as one metrics file, plot tables, a sample grid and a markdown summary.

Every distance between synthetic and real comes with its real-vs-real floor at the same sample sizes: the
real test slices against as many real training slices (other patients) as there are synthetic samples.
A distance means little alone (it shrinks with more samples and depends on the feature space); its ratio
to the floor says how far the synthetic set is from "another draw of real patients".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import CommonConfig, EvaluateConfig, TrainSegConfig
from pipeline.evaluate.conditioning import conditioning_report, label_report
from pipeline.evaluate.data import RealSet, SyntheticSet, load_export, real_slices, subsample
from pipeline.evaluate.privacy import ae_membership, discriminator_membership, memorisation_summary
from pipeline.evaluate.utility import utility
from pipeline.io.atomic import atomic_dir
from pipeline.lineage.record import write_lineage
from pipeline.metrics.distribution import sliced_wasserstein_pyramid
from pipeline.metrics.features import AeFeatures, SegFeatures, load_segmenter
from pipeline.metrics.fidelity import (
    frechet_distance,
    kernel_inception_distance,
    ms_ssim_diversity,
    precision_recall,
)
from pipeline.metrics.plots import write_curve_csv
from pipeline.metrics.privacy import dcr_report
from pipeline.runtime.device import describe_device, resolve_device
from pipeline.runtime.seed import seed_everything
from pipeline.training.common import save_png, tile_slices
from pipeline.training.gan import swd_levels

log = logging.getLogger(__name__)

__all__ = ["GOALS", "Models", "evaluate"]

#: The issue's acceptance goals, checked on every run (demo numbers are not the acceptance data).
GOALS = {
    "utility_gain_min": 0.02,  # (b) − (a) Dice, and never negative
    "synthetic_over_real_min": 0.8,  # (c) / (a)
    "frechet_over_floor_max": 2.0,
    "kid_over_floor_max": 2.0,
    "over_threshold_fraction_max": 0.01,
}


@dataclass(frozen=True)
class Models:
    """Where evaluate finds what earlier stages made."""

    generator: Path  # models/train_cgan/<variant>/model.pt (its discriminator: membership inference)
    segmenter: Path  # models/train_seg/model.pt (features, conditioning fidelity)
    autoencoder: Path  # models/train_ae/model.pt (features, membership inference)
    export_metrics: Path  # metrics/export/<variant>.json (the memorisation thresholds)


def _ratio(value: float | None, floor: float | None) -> float | None:
    if value is None or floor is None or floor <= 0:
        return None
    return value / floor


def _standardise(*sets: np.ndarray, reference: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """Centre every set on the real ``reference`` features' mean and divide by their root-mean-square
    spread (one number for all dimensions). The networks' features have arbitrary scales (autoencoder codes
    in the tens, U-Net means below one) and KID's cubic kernel (x·y / D + 1)³ assumes unit-scale features.
    One scalar keeps the geometry: per-dimension scaling would blow up the code positions that are nearly
    constant on real slices (background) and let them dominate. Floor and value get the same transform."""
    ref = np.concatenate(reference)
    mean = ref.mean(axis=0)
    scale = float(np.sqrt(((ref - mean) ** 2).mean(axis=0).mean()))
    scale = scale if scale > 1e-12 else 1.0
    return [(x - mean) / scale for x in sets]


def _fidelity_space(
    name: str, syn: np.ndarray, test: np.ndarray, train: np.ndarray, cfg: EvaluateConfig
) -> dict[str, Any]:
    """FD, KID and precision/recall in one feature space: (test, synthetic) and the floor (test, train)."""
    syn, test, train = _standardise(syn, test, train, reference=(test, train))
    size = min(cfg.kid_subset_size, len(syn), len(test), len(train))
    fd, fd_floor = frechet_distance(test, syn), frechet_distance(test, train)
    kid = kernel_inception_distance(test, syn, subsets=cfg.kid_subsets, subset_size=size, seed=cfg.seed)
    kid_floor = kernel_inception_distance(
        test, train, subsets=cfg.kid_subsets, subset_size=size, seed=cfg.seed
    )
    pr = precision_recall(test, syn, k=cfg.pr_k)
    pr_floor = precision_recall(test, train, k=cfg.pr_k)
    log.info(
        "evaluate: %s features: FD %.4g (floor %.4g), KID %.4g (floor %.4g)",
        name,
        fd,
        fd_floor,
        kid["mean"],
        kid_floor["mean"],
    )
    return {
        "dims": int(syn.shape[1]),
        "frechet": {"value": fd, "floor": fd_floor, "over_floor": _ratio(fd, fd_floor)},
        "kid": {
            "mean": kid["mean"],
            "std": kid["std"],
            "floor_mean": kid_floor["mean"],
            "floor_std": kid_floor["std"],
            "subset_size": size,
            "over_floor": _ratio(kid["mean"], kid_floor["mean"]),
        },
        "precision": pr["precision"],
        "recall": pr["recall"],
        "floor_precision": pr_floor["precision"],
        "floor_recall": pr_floor["recall"],
    }


def _fidelity(
    syn: np.ndarray,
    test: np.ndarray,
    train_sub: np.ndarray,
    models: Models,
    cfg: EvaluateConfig,
    device: torch.device,
) -> dict[str, Any]:
    """syn (M, H, W), test (N, H, W), train_sub (M, H, W): the floor compares test with train_sub."""
    out: dict[str, Any] = {}
    spaces = {
        "autoencoder": AeFeatures(models.autoencoder, device),
        "segmenter": SegFeatures(models.segmenter, device),
    }
    for name, features in spaces.items():
        out[name] = _fidelity_space(name, features(syn), features(test), features(train_sub), cfg)
    levels = swd_levels(syn.shape[1:])

    def swd(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        return sliced_wasserstein_pyramid(
            torch.from_numpy(a[:, None]),
            torch.from_numpy(b[:, None]),
            levels=levels,
            n_projections=cfg.swd_projections,
            seed=cfg.seed,
        )

    value, floor = swd(test, syn), swd(test, train_sub)
    out["swd"] = {
        "value": value["mean"],
        "floor": floor["mean"],
        "over_floor": _ratio(value["mean"], floor["mean"]),
        "levels": value["levels"],
    }
    div = ms_ssim_diversity(syn, pairs=cfg.ms_ssim_pairs, seed=cfg.seed)
    div_real = ms_ssim_diversity(train_sub, pairs=cfg.ms_ssim_pairs, seed=cfg.seed)
    out["ms_ssim"] = {"synthetic": div["mean"], "real": div_real["mean"], "pairs": div["pairs"]}
    return out


def _privacy(
    syn: SyntheticSet,
    train: RealSet,
    holdout: RealSet,
    models: Models,
    export_dir: Path,
    export_metrics: dict[str, Any],
    cfg: EvaluateConfig,
    device: torch.device,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    ae = AeFeatures(models.autoencoder, device)
    dcr_pixel, dist_pixel = dcr_report(syn.images, train.images, holdout.images, seed=cfg.seed)
    dcr_ae, _ = dcr_report(ae(syn.images), ae(train.images), ae(holdout.images), seed=cfg.seed)
    return {
        "memorisation": memorisation_summary(export_dir, export_metrics),
        "dcr": {"pixel": dcr_pixel, "autoencoder": dcr_ae},
        "membership": {
            "discriminator": discriminator_membership(models.generator, train, holdout, device, cfg.seed),
            "autoencoder": ae_membership(models.autoencoder, train, holdout, device),
        },
    }, dist_pixel


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[dict[str, Any]]:
    counts, _ = np.histogram(values, edges)
    centres = (edges[:-1] + edges[1:]) / 2
    return [{"distance": float(c), "count": int(n)} for c, n in zip(centres, counts, strict=True)]


def _kid_within(kid: dict[str, Any], factor: float) -> bool:
    """KID ≤ factor × floor. The unbiased floor of two real sets is about 0 and can be negative; then "twice
    the floor" is read as "twice the floor's own spread": KID must be within factor × max(floor, its std)."""
    return bool(kid["mean"] <= factor * max(kid["floor_mean"], kid["floor_std"]))


def _goals(metrics: dict[str, Any]) -> dict[str, Any]:
    fid = metrics["fidelity"]
    checks: dict[str, Any] = {
        "frechet_within_2x_floor": all(
            (fid[s]["frechet"]["over_floor"] or np.inf) <= GOALS["frechet_over_floor_max"]
            for s in ("autoencoder", "segmenter")
        ),
        "kid_within_2x_floor": all(
            _kid_within(fid[s]["kid"], GOALS["kid_over_floor_max"]) for s in ("autoencoder", "segmenter")
        ),
        "memorisation_at_most_1pct": (metrics["privacy"]["memorisation"]["over_threshold_fraction"] or 0.0)
        <= GOALS["over_threshold_fraction_max"],
    }
    u = metrics.get("utility")
    if u:
        checks["utility_gain_at_least_0.02"] = u["gain"]["mean"] >= GOALS["utility_gain_min"]
        checks["utility_gain_never_negative"] = u["gain_min"] >= 0.0
        checks["synthetic_only_at_least_0.8x_real"] = (u["synthetic_over_real"] or 0.0) >= GOALS[
            "synthetic_over_real_min"
        ]
    return checks


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "met" if x else "NOT met"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def _fidelity_table(
    title: str,
    columns: tuple[str, ...],
    rows: dict[str, dict[str, Any]],
    cells: Callable[[dict[str, Any]], tuple[Any, ...]],
) -> list[str]:
    """A summary.md section scoring the real-trained U-Net's view of synthetic vs real test slices."""
    lines = [
        "",
        f"## {title} (real-trained U-Net on synthetic images)",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(x) for x in cells(r)) + " |")
    return lines


def _summary_md(metrics: dict[str, Any]) -> str:
    f, p = metrics["fidelity"], metrics["privacy"]
    lines = [
        f"# Evaluation of export@{metrics['variant']}",
        "",
        f"{metrics['n_synthetic']} released synthetic slices against {metrics['n_real_test']} real test "
        f"slices; floors: the same test slices against {metrics['n_synthetic']} real training slices.",
        "",
        "## Fidelity and diversity",
        "",
        "| measure | synthetic vs real | real vs real (floor) | ratio |",
        "|---|---|---|---|",
    ]
    for space in ("autoencoder", "segmenter"):
        s = f[space]
        lines.append(
            f"| Fréchet distance, {space} features ({s['dims']}-d) | {_fmt(s['frechet']['value'])} | "
            f"{_fmt(s['frechet']['floor'])} | {_fmt(s['frechet']['over_floor'])} |"
        )
        k = s["kid"]
        lines.append(
            f"| KID, {space} features | {_fmt(k['mean'])} ± {_fmt(k['std'])} | "
            f"{_fmt(k['floor_mean'])} ± {_fmt(k['floor_std'])} | {_fmt(k['over_floor'])} |"
        )
        lines.append(
            f"| precision / recall, {space} | {_fmt(s['precision'])} / {_fmt(s['recall'])} | "
            f"{_fmt(s['floor_precision'])} / {_fmt(s['floor_recall'])} | |"
        )
    lines.append(
        f"| SWD, Laplacian pyramid | {_fmt(f['swd']['value'])} | {_fmt(f['swd']['floor'])} | "
        f"{_fmt(f['swd']['over_floor'])} |"
    )
    lines.append(
        f"| MS-SSIM between samples (lower = more diverse) | {_fmt(f['ms_ssim']['synthetic'])} | "
        f"{_fmt(f['ms_ssim']['real'])} | |"
    )
    c = metrics.get("conditioning")
    if c:
        lines += _fidelity_table(
            "Conditioning fidelity",
            ("pooled Dice", "mean Dice, lesion slices", "lesions found", "false lesions"),
            {"synthetic vs conditioning mask": c["synthetic"], "real test vs truth": c["real_test"]},
            lambda r: (
                r["dice_pooled"],
                r["dice_mean_lesion_slices"],
                r["detected_fraction"],
                r["false_lesion_fraction"],
            ),
        )
    lc = metrics.get("label_conditioning")
    if lc:
        lines += _fidelity_table(
            "Label fidelity",
            ("abnormal with a lesion found", "normal with none found"),
            {"synthetic vs drawn label": lc["synthetic"], "real test vs truth": lc["real_test"]},
            lambda r: (
                f"{_fmt(r['abnormal_with_lesion'])} (n={r['n_abnormal']})",
                f"{_fmt(r['normal_without_lesion'])} (n={r['n_normal']})",
            ),
        )
    m, dcr, mia = p["memorisation"], p["dcr"], p["membership"]
    lines += [
        "",
        "## Privacy",
        "",
        f"- Memorisation gate: {m['n_over_threshold']} of {m['n_samples']} drawn samples over the threshold "
        f"({_fmt(m['over_threshold_fraction'])}).",
        f"- Distance to closest record, pixels: median train / held-out {_fmt(dcr['pixel']['ratio'])} "
        f"(1 ideal); closer to a training slice: {_fmt(dcr['pixel']['closer_to_train_fraction'])} "
        "(0.5 ideal).",
        f"- Same in autoencoder features: {_fmt(dcr['autoencoder']['ratio'])}, "
        f"{_fmt(dcr['autoencoder']['closer_to_train_fraction'])}.",
        f"- Membership inference AUC (0.5 ideal): discriminator {_fmt(mia['discriminator']['auc'])}, "
        f"autoencoder reconstruction error {_fmt(mia['autoencoder']['auc'])}.",
    ]
    u = metrics.get("utility")
    if u:
        lines += [
            "",
            f"## Usefulness ({u['score']}, mean and 95 % CI over seeds {u['seeds']})",
            "",
            "| arm | training slices | Dice | 95 % CI |",
            "|---|---|---|---|",
        ]
        for arm in ("real", "real_plus_synthetic", "synthetic"):
            d = u[arm]["dice"]
            lines.append(
                f"| {arm} | {u[arm]['n_train_slices']} | {_fmt(d['mean'])} | "
                f"{_fmt(d['ci_low'])} – {_fmt(d['ci_high'])} |"
            )
        g = u["gain"]
        lines.append(
            f"\nGain (real + synthetic − real): {_fmt(g['mean'])} (95 % CI {_fmt(g['ci_low'])} – "
            f"{_fmt(g['ci_high'])}, worst seed {_fmt(u['gain_min'])}); synthetic only / real: "
            f"{_fmt(u['synthetic_over_real'])}."
        )
    lines += ["", "## Acceptance goals (issue 6) on this data", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in metrics["goals"].items()]
    return "\n".join(lines) + "\n"


def evaluate(
    cfg: EvaluateConfig,
    seg_cfg: TrainSegConfig,
    common: CommonConfig,
    variant: str,
    data_dir: Path,
    export_dir: Path,
    models: Models,
    out_dir: Path,
    plots_dir: Path,
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``export_dir`` (one variant's export) against the preprocessed real splits; writes
    ``out_dir`` (summary.md, grid.png, lineage.json) and ``plots_dir`` (CSV tables) and returns the
    metrics."""
    t0 = time.perf_counter()
    seed_everything(common.seed, common.deterministic)
    device = resolve_device(common.device)
    syn = load_export(export_dir)
    export_metrics = json.loads(models.export_metrics.read_text(encoding="utf-8"))
    train = real_slices(data_dir, "train", cfg.min_foreground)
    val = real_slices(data_dir, "val", cfg.min_foreground)
    test = real_slices(data_dir, "test", cfg.min_foreground)
    holdout = RealSet(
        "val+test",
        np.concatenate([val.images, test.images]),
        np.concatenate([val.masks, test.masks]),
        np.concatenate([val.labels, test.labels]),
        val.case_ids + test.case_ids,
    )
    test_images = test.images[subsample(len(test.images), cfg.max_real, cfg.seed)]
    train_sub = train.images[subsample(len(train.images), len(syn.images), cfg.seed + 1)]

    metrics: dict[str, Any] = {
        "variant": variant,
        "n_synthetic": len(syn.images),
        "n_real_test": len(test_images),
        "n_real_train": len(train.images),
    }
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    metrics["fidelity"] = _fidelity(syn.images, test_images, train_sub, models, cfg, device)
    seconds["fidelity"] = time.perf_counter() - t
    t = time.perf_counter()
    net = load_segmenter(models.segmenter, device)
    if syn.mask_source == "condition" and syn.masks is not None:
        metrics["conditioning"] = conditioning_report(net, syn.images, syn.masks, test.images, test.masks, 32)
    else:  # label2image; its masks, if any, are this U-Net's own predictions: scoring them would be circular
        metrics["label_conditioning"] = label_report(net, syn.images, syn.labels, test.images, test.masks, 32)
    seconds["conditioning"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics["privacy"], dcr = _privacy(syn, train, holdout, models, export_dir, export_metrics, cfg, device)
    seconds["privacy"] = time.perf_counter() - t
    utility_rows: list[dict[str, Any]] = []
    if syn.masks is not None:
        t = time.perf_counter()
        metrics["utility"], utility_rows = utility(syn, seg_cfg, cfg.utility, common, data_dir)
        seconds["utility"] = time.perf_counter() - t
    metrics["goals"] = _goals(metrics)
    seconds["total"] = time.perf_counter() - t0
    metrics["seconds"] = seconds

    edges = np.linspace(0.0, float(max(dcr["train"].max(), dcr["holdout"].max())) * 1.0001, 21)
    write_curve_csv(plots_dir / "dcr_train.csv", _histogram(dcr["train"], edges), ("distance", "count"))
    write_curve_csv(plots_dir / "dcr_holdout.csv", _histogram(dcr["holdout"], edges), ("distance", "count"))
    if utility_rows:
        write_curve_csv(
            plots_dir / "utility.csv",
            [
                {
                    "run": f"{r['arm']} (seed {r['seed']})",
                    "arm": r["arm"],
                    "seed": r["seed"],
                    "dice": r["test_dice"],
                }
                for r in utility_rows
            ],
            ("run", "arm", "seed", "dice"),
        )
    with atomic_dir(out_dir) as tmp:
        n = min(cfg.n_grid, len(syn.images))
        real_pick = subsample(len(train.images), n, cfg.seed + 2)
        save_png(
            tmp / "grid.png",
            tile_slices([*syn.images[:n], *train.images[real_pick]], columns=n),
        )
        (tmp / "summary.md").write_text(_summary_md(metrics), encoding="utf-8")
        if lineage is not None:
            write_lineage(
                tmp,
                {
                    **lineage,
                    "variant": variant,
                    "export": export_dir.as_posix(),
                    "data": data_dir.as_posix(),
                    "device": describe_device(device),
                },
            )
    return metrics
