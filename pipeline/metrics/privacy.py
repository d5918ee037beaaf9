"""Privacy of a synthetic set: distance to closest record and membership inference.

* **Distance to closest record (DCR)**: for every synthetic sample, the distance to its nearest training
  record and to its nearest held-out real record (a patient the generator never saw). A generator that
  generalises puts samples as close to unseen patients as to its training patients: median ratio
  train/held-out near 1 and about half the samples closer to a training record. Memorisation pulls both
  below: ratio < 1, share closer to training towards 1. The two reference sets are cut to the same size
  first, because a nearest neighbour among more records is nearer by chance alone.
* **Membership inference AUC**: how well a score (the GAN discriminator's, or the autoencoder's negative
  reconstruction error) tells training images (members) from held-out real images. 0.5 means the model
  treats them alike; 1.0 means membership can be read off it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import PipelineStateError
from pipeline.metrics.anomaly import binary_scores_report

__all__ = ["closest_record_distances", "dcr_report", "membership_auc"]

#: Rows of the query set per block of the distance matrix (bounded memory for large sets).
_BLOCK = 256


def _rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x.reshape(len(x), -1)
    if len(x) == 0:
        raise ValueError(f"{name}: empty set")
    if not np.isfinite(x).all():
        raise PipelineStateError(f"{name}: non-finite values")
    return x


def closest_record_distances(queries: np.ndarray, records: np.ndarray) -> np.ndarray:
    """(N,) Euclidean distance of each query row (N, ...) to its nearest record (M, ...), both flattened."""
    q, r = _rows(queries, "queries"), _rows(records, "records")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"feature sizes differ: queries {q.shape[1]}, records {r.shape[1]}")
    r_sq = (r * r).sum(axis=1)
    out = np.empty(len(q))
    for start in range(0, len(q), _BLOCK):
        block = q[start : start + _BLOCK]
        d2 = (block * block).sum(axis=1)[:, None] + r_sq[None, :] - 2.0 * block @ r.T
        out[start : start + len(block)] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def dcr_report(
    synthetic: np.ndarray, train: np.ndarray, holdout: np.ndarray, *, seed: int = 0
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """DCR of ``synthetic`` rows against ``train`` and ``holdout`` rows (flattened), the larger reference cut
    to the smaller's size by a seeded draw. Returns (summary, per-sample distances ``{"train", "holdout"}``).
    Summary: medians, ``ratio`` = median train / median held-out (1 ideal, < 1 closer to training), and
    ``closer_to_train_fraction`` (0.5 ideal)."""
    m = min(len(train), len(holdout))
    if m < 1:
        raise ValueError("dcr_report needs non-empty training and held-out sets")
    rng = np.random.default_rng(seed)
    train = np.asarray(train)[np.sort(rng.choice(len(train), m, replace=False))]
    holdout = np.asarray(holdout)[np.sort(rng.choice(len(holdout), m, replace=False))]
    d_train = closest_record_distances(synthetic, train)
    d_hold = closest_record_distances(synthetic, holdout)
    med_train, med_hold = float(np.median(d_train)), float(np.median(d_hold))
    summary = {
        "median_train": med_train,
        "median_holdout": med_hold,
        "ratio": med_train / med_hold if med_hold > 0 else None,
        "closer_to_train_fraction": float(np.mean(d_train < d_hold)),
        "n_synthetic": int(len(d_train)),
        "n_reference": int(m),
    }
    return summary, {"train": d_train, "holdout": d_hold}


def membership_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, Any]:
    """AUROC of a score that should be higher for members (training images) than for non-members.
    ``auc`` 0.5 = no membership signal; ``advantage`` = |2 auc - 1| (a score below 0.5 leaks as much)."""
    members = np.asarray(member_scores, np.float64).ravel()
    others = np.asarray(nonmember_scores, np.float64).ravel()
    scores = np.concatenate([members, others])
    labels = np.concatenate([np.ones(len(members), np.int64), np.zeros(len(others), np.int64)])
    report = binary_scores_report(scores, labels)
    auc = report["auroc"]
    out: dict[str, Any] = {
        "auc": auc,
        "advantage": abs(2.0 * auc - 1.0) if auc is not None else None,
        "n_members": int(len(members)),
        "n_nonmembers": int(len(others)),
    }
    if "note" in report:
        out["note"] = report["note"]
    return out
