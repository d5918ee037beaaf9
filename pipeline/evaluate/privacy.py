"""Privacy of an export: its memorisation gate over all samples, distance to closest record, membership
inference from the GAN's discriminator and from the autoencoder's reconstruction error."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import TrainAeConfig, TrainCganConfig
from pipeline.errors import InputDataError
from pipeline.evaluate.data import RealSet
from pipeline.metrics.privacy import membership_auc
from pipeline.models.gan import build_patch_discriminator, build_projection_discriminator
from pipeline.models.networks import build_autoencoder
from pipeline.training.checkpoint import load_weights, rebuilding_from
from pipeline.training.gan import D_COND, N_CLASSES

__all__ = ["ae_membership", "discriminator_membership", "memorisation_summary"]


def memorisation_summary(export_dir: Path, export_metrics: dict[str, Any]) -> dict[str, Any]:
    """The export's gate over every sample it drew (released and dropped): how many were over the
    threshold, and the nearest-training similarities next to the thresholds held-out real slices set."""
    path = export_dir / "memorisation.csv"
    if not path.is_file():
        raise InputDataError(str(path), "missing: run the export stage first", "missing")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    detail = np.asarray([float(r["nn_detail_corr"]) for r in rows])
    feature = np.asarray([float(r["nn_feature_cos"]) for r in rows])
    flagged = np.asarray([int(r["flagged"]) for r in rows])
    mem = export_metrics.get("memorisation", {})
    return {
        "n_samples": len(rows),
        "n_over_threshold": int(flagged.sum()),
        "over_threshold_fraction": float(flagged.mean()) if len(rows) else None,
        "detail_threshold": mem.get("detail_threshold"),
        "feature_threshold": mem.get("feature_threshold"),
        "feature_gates": mem.get("feature_gates"),
        "detail_corr_median": float(np.median(detail)) if len(rows) else None,
        "detail_corr_max": float(detail.max()) if len(rows) else None,
        "feature_cos_median": float(np.median(feature)) if len(rows) else None,
        "feature_cos_max": float(feature.max()) if len(rows) else None,
    }


def _load_discriminator(model_file: Path, device: torch.device) -> tuple[nn.Module, str]:
    modules, meta = load_weights(model_file)
    if meta.get("stage") != "train_cgan" or "discriminator" not in modules:
        raise InputDataError(str(model_file), "not a train_cgan weights file (no discriminator)", "not_cgan")
    with rebuilding_from(model_file):
        cfg = TrainCganConfig.model_validate(meta["config"])
        v = cfg.variants[str(meta["variant"])]
        if v.kind == "mask2image":
            net = build_patch_discriminator(v, 1 + (D_COND.stop - D_COND.start), cfg.spectral_norm)
        else:
            net = build_projection_discriminator(v, N_CLASSES, cfg.spectral_norm)
        net.load_state_dict(modules["discriminator"])
    return net.eval().requires_grad_(False).to(device), v.kind


@torch.no_grad()
def _d_scores(
    net: nn.Module, kind: str, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, batch: int
) -> np.ndarray:
    """Mean discriminator logit per image, as in training: the PatchGAN sees image + lesion mask, the
    projection discriminator image + slice label."""
    out = []
    device = next(net.parameters()).device
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch, None].astype(np.float32)).to(device)
        if kind == "mask2image":
            m = torch.from_numpy(masks[start : start + batch, None].astype(np.float32)).to(device)
            logits, _ = net(torch.cat([x, m], dim=1))
        else:
            y = torch.from_numpy(labels[start : start + batch].astype(np.int64)).to(device)
            logits, _ = net(x, y)
        out.append(logits.float().reshape(len(x), -1).mean(dim=1).cpu().numpy())
    return np.concatenate(out)


def discriminator_membership(
    model_file: Path, members: RealSet, others: RealSet, device: torch.device, seed: int, batch: int = 8
) -> dict[str, Any]:
    """Membership AUC of the discriminator's score: training slices (members) against held-out real slices.

    The projection discriminator mixes a batch's standard deviation into every image's score, so members
    and non-members are scored together, in batches of one seeded shuffle (as in training, where a batch
    mixes slices), and the scores mapped back."""
    net, kind = _load_discriminator(model_file, device)
    images = np.concatenate([members.images, others.images])
    masks = np.concatenate([members.masks, others.masks])
    labels = np.concatenate([members.labels, others.labels])
    order = np.random.default_rng(seed).permutation(len(images))
    scores = np.empty(len(images))
    scores[order] = _d_scores(net, kind, images[order], masks[order], labels[order], batch)
    n = len(members.images)
    return membership_auc(scores[:n], scores[n:])


@torch.no_grad()
def ae_membership(
    model_file: Path, members: RealSet, others: RealSet, device: torch.device, batch: int = 64
) -> dict[str, Any]:
    """Membership AUC of the autoencoder's negative reconstruction error (mean |x - x̂|), on normal slices
    only: those are what it was trained on."""
    modules, meta = load_weights(model_file)
    if meta.get("stage") != "train_ae" or "net" not in modules:
        raise InputDataError(str(model_file), "not a train_ae weights file", "not_ae")
    with rebuilding_from(model_file):
        net = build_autoencoder(TrainAeConfig.model_validate(meta["config"]))
        net.load_state_dict(modules["net"])
    net = net.eval().requires_grad_(False).to(device)

    def neg_error(images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch, None].astype(np.float32)).to(device)
            out.append(-(net(x).float() - x).abs().flatten(1).mean(dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    return membership_auc(
        neg_error(members.images[members.labels == 0]), neg_error(others.images[others.labels == 0])
    )
