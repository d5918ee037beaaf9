"""Usefulness: train the segmentation U-Net on (a) a small real subset, (b) the same subset plus the
synthetic pairs, (c) the synthetic pairs only, and test each on the real test split.

Each arm and seed trains the train_seg recipe (network, loss, augmentation, oversampling) for the same
number of batches (``utility.epochs`` × ``utility.steps_per_epoch``) so no arm wins by training longer, picks
its best epoch on the real validation split, and is scored on the real test split. A run's score is the
test split's global Dice (all test slices pooled); with a handful of test cases, per-case means swing with
one case, so they are reported beside it.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from pipeline.config import CommonConfig, EvaluateUtilityConfig, TrainSegConfig
from pipeline.data.slices import SliceDataset
from pipeline.errors import PipelineStateError
from pipeline.evaluate.data import SyntheticSet
from pipeline.preprocess.store import SliceSet, load_slices, write_slices
from pipeline.runtime.seed import seed_everything
from pipeline.training.common import fit_task, load_best, stacked_spacing
from pipeline.training.gan import head_mask
from pipeline.training.seg import SegTask, evaluate_split

__all__ = ["ARMS", "mean_ci", "real_subset_cases", "utility"]

log = logging.getLogger(__name__)

ARMS = ("real", "real_plus_synthetic", "synthetic")


def real_subset_cases(store: SliceSet, n: int, seed: int) -> list[str]:
    """``n`` training cases in a seeded order (sha256 of seed and case id), at least one with a lesion: a
    subset without any lesion cannot train a lesion segmenter."""
    cases = sorted({str(r["case_id"]) for r in store.rows})
    order = sorted(cases, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    labels = np.asarray(store.label)
    lesion_cases = {str(store.rows[i]["case_id"]) for i in np.flatnonzero(labels == 1)}
    if not lesion_cases:
        raise PipelineStateError("the training split has no lesion slice: usefulness cannot be measured")
    chosen = order[:n]
    if not lesion_cases & set(chosen):
        chosen[-1] = next(c for c in order if c in lesion_cases)
    return sorted(chosen)


def _case_part(store: SliceSet, cases: list[str]) -> SliceSet:
    rows = [i for i, r in enumerate(store.rows) if str(r["case_id"]) in cases]
    return SliceSet(
        np.asarray(store.image[rows]),
        np.asarray(store.mask[rows]),
        np.asarray(store.label[rows]),
        [store.rows[i] for i in rows],
    )


def _synthetic_part(syn: SyntheticSet) -> SliceSet:
    assert syn.masks is not None
    lesion = syn.masks.reshape(len(syn.masks), -1).sum(axis=1)
    rows = [
        {
            "case_id": sid,
            "patient_id": "synthetic",
            "slice": 0,
            "label": int(lesion[k] > 0),
            "foreground_fraction": f"{float(head_mask(syn.images[k]).mean()):.4f}",
            "lesion_voxels": int(lesion[k]),
        }
        for k, sid in enumerate(syn.ids)
    ]
    return SliceSet(syn.images, syn.masks, (lesion > 0).astype(np.int8), rows)


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and two-sided Student-t confidence interval of independent runs (None with fewer than 2)."""
    x = np.asarray(values, np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": int(len(x))}
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": int(len(x))}


def _train_arm(
    folder: Path,
    seg: TrainSegConfig,
    common: CommonConfig,
    u: EvaluateUtilityConfig,
    data_dir: Path,
    work: Path,
) -> dict[str, Any]:
    seed_everything(common.seed, common.deterministic)
    train_set = SliceDataset(
        folder, "labelled", seg.min_foreground, seg.augment, common.seed, seg.abnormal_fraction
    )
    per_epoch = u.steps_per_epoch * u.batch_size
    if len(train_set) < per_epoch:  # small arms repeat their slices so every arm trains as many batches
        train_set.rows = np.resize(train_set.rows, per_epoch)
    val_set = SliceDataset(data_dir / "slices" / "val", "labelled", seg.min_foreground, None)
    task = SegTask(seg)
    fit_task(
        task, train_set, val_set, seg.train, common, ("val/dice", "max"), "utility", work, None, None, False
    )
    net, device = load_best(task.net, work, common.device)
    report, _, _ = evaluate_split(net, data_dir, "test", stacked_spacing(data_dir), device, u.batch_size)
    return {
        "test_dice": report.get("global_dice", {}).get("1"),
        "test_dice_case_mean": report.get("dice_mean"),
    }


def utility(
    syn: SyntheticSet,
    seg: TrainSegConfig,
    u: EvaluateUtilityConfig,
    common: CommonConfig,
    data_dir: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train every arm for every seed; returns (summary, one row per arm and seed)."""
    if syn.masks is None:
        raise PipelineStateError(
            f"{syn.variant}: usefulness needs image-mask pairs (mask2image, or label2image exported with "
            "export.label2image_masks: segmenter)"
        )
    if seg.spatial_dims != 2:
        raise PipelineStateError("usefulness trains the 2D train_seg recipe; train_seg.spatial_dims is 3")
    seg = seg.model_copy(
        update={
            "train": seg.train.model_copy(
                update={
                    "epochs": u.epochs,
                    "batch_size": u.batch_size,
                    "max_steps_per_epoch": u.steps_per_epoch,
                    "checkpoint_every": u.epochs,
                }
            )
        }
    )
    store = load_slices(data_dir / "slices" / "train")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medsynth-utility-") as tmp:
        root = Path(tmp)
        for seed in u.seeds:
            cases = real_subset_cases(store, u.real_cases, seed)
            real, synthetic = _case_part(store, cases), _synthetic_part(syn)
            parts = {"real": [real], "real_plus_synthetic": [real, synthetic], "synthetic": [synthetic]}
            for arm in ARMS:
                folder = root / f"{arm}-{seed}" / "slices"
                write_slices(folder, parts[arm])
                run_common = common.model_copy(update={"seed": seed})
                result = _train_arm(folder, seg, run_common, u, data_dir, root / f"{arm}-{seed}" / "run")
                n_slices = sum(len(p.label) for p in parts[arm])
                log.info(
                    "utility %s seed %d (%d slices): test Dice %s", arm, seed, n_slices, result["test_dice"]
                )
                rows.append(
                    {"arm": arm, "seed": seed, "n_train_slices": n_slices, "cases": len(cases), **result}
                )
    summary: dict[str, Any] = {
        "score": "test global Dice",
        "real_cases": u.real_cases,
        "seeds": list(u.seeds),
    }
    by_arm = {a: [r for r in rows if r["arm"] == a] for a in ARMS}
    for arm, arm_rows in by_arm.items():
        dice = [float(r["test_dice"] or 0.0) for r in arm_rows]
        summary[arm] = {
            "dice": mean_ci(dice),
            "dice_case_mean": mean_ci([float(r["test_dice_case_mean"] or 0.0) for r in arm_rows]),
            "n_train_slices": arm_rows[0]["n_train_slices"],
        }
    gains = [
        float(b["test_dice"] or 0.0) - float(a["test_dice"] or 0.0)
        for a, b in zip(by_arm["real"], by_arm["real_plus_synthetic"], strict=True)
    ]
    summary["gain"] = mean_ci(gains)
    summary["gain_min"] = float(min(gains))
    real_mean = summary["real"]["dice"]["mean"]
    summary["synthetic_over_real"] = (
        summary["synthetic"]["dice"]["mean"] / real_mean if real_mean > 0 else None
    )
    return summary, rows
