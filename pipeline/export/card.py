"""`dataset_card.md`: what an export is, how it was made, what it may be used for."""

from __future__ import annotations

from typing import Any

from pipeline.config import ExportConfig

__all__ = ["dataset_card"]


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def dataset_card(
    variant: str, cfg: ExportConfig, metrics: dict[str, Any], lineage: dict[str, Any], mask_source: str
) -> str:
    """The card's markdown. ``mask_source``: "condition" (mask2image), "segmenter" (label2image masks from
    the train_seg U-Net) or "" (no masks)."""
    has_mask, conditioned = bool(mask_source), mask_source == "condition"
    mem = metrics["memorisation"]
    code = lineage.get("code", {})
    ext = ".nii.gz" if cfg.compress else ".nii"
    lines = [
        f"# medsynth synthetic dataset: {variant}",
        "",
        "**Every image in this dataset is SYNTHETIC.** It was drawn from a generative model; it is not a",
        "scan of any person and must not be used for diagnosis or treatment. DICOM files say so: ImageType",
        "DERIVED\\SECONDARY, ConversionType SYN (Secondary Capture), PatientIdentityRemoved YES, a dummy",
        "patient (`SYNTHETIC^<sample id>`), and the generator, seed and params hash in SoftwareVersions and",
        "DerivationDescription.",
        "",
        "## What it holds",
        "",
        f"- {metrics['n_released']} samples released of {metrics['n_requested']} drawn "
        f"({metrics['n_flagged']} dropped by the memorisation gate).",
        f"- Labels: {metrics['label_counts'].get('0', 0)} normal, {metrics['label_counts'].get('1', 0)} "
        + ("with a lesion." if conditioned else "drawn as abnormal."),
        f"- Conditioning: {', '.join(f'{k} {v}' for k, v in metrics['conditions'].items()) or 'none'}.",
        f"- `imagesTr/<id>_0000{ext}`"
        + (f" and `labelsTr/<id>{ext}` (lesion mask, 0/1)" if has_mask else "")
        + ": one 2D slice per file (shape i × j × 1, RAS affine on the preprocessing grid), intensities",
        "  normalised to [0, 1] as in `data/preprocess`; `dataset.json` lists them for nnU-Net v2 and for",
        "  MONAI's `load_decathlon_datalist`.",
    ]
    if mask_source == "segmenter":
        agree = metrics.get("label_mask_agreement", {})
        lines += [
            "- **The lesion masks are predictions, not ground truth.** Each mask is the `train_seg` U-Net's",
            "  segmentation of the synthetic image (DICOM SEG algorithm type AUTOMATIC; `mask_source`",
            "  `segmenter` in the manifest). Label and mask agree for "
            f"{_share(agree.get('abnormal_with_lesion'))} of abnormal samples (a lesion found) and "
            f"{_share(agree.get('normal_without_lesion'))} of normal ones (none found).",
        ]
    if cfg.dicom:
        lines.append(
            "- `dicom/<id>/image.dcm` (Secondary Capture, int16, RescaleSlope 0.0001)"
            + (
                f" and `seg.dcm` (DICOM SEG of the {'conditioning' if conditioned else 'predicted'} lesion"
                " mask)"
                if has_mask
                else ""
            )
            + ": one series per object, deterministic UIDs."
        )
    lines += [
        "- `manifest.csv`: one row per released sample: its files and their sha256, seed, conditioning",
        "  source, generator checkpoint sha256, params hash, code version and nearest-training similarity.",
        "- `memorisation.csv`: every drawn sample, released or not, with its nearest training slice.",
        "",
        "## How it was made",
        "",
        f"- Generator: `train_cgan@{variant}`, checkpoint sha256 `{metrics['generator_sha256']}`.",
        f"- Code: {code.get('git_commit')} (dirty: {code.get('git_dirty')}).",
        f"- Base seed {cfg.seed}; sample i's seed is sha256(seed, variant, i), and everything random about",
        "  the sample (conditioning choice, mask deformation, noise) comes from it.",
        "- Trace any file: `medsynth lineage <file>`; rebuild and verify it: `medsynth regenerate <file>`.",
        "",
        "## Memorisation check",
        "",
        "For each sample, its nearest training slice by detail correlation (high-pass detail inside the",
        "head, leaving out the outline and the conditioning lesion, which the mask fixes) and by cosine of",
        "the project's own autoencoder codes"
        + (" (reported; it gates only unconditioned variants)" if conditioned else "")
        + ". Threshold: the "
        f"{mem['percentile']:g}th percentile of the same similarities for {mem['n_held_out']} held-out real",
        "slices (validation split) against the training set.",
        "",
        "| | detail correlation | feature cosine |",
        "|---|---|---|",
        f"| threshold | {_fmt(mem['detail_threshold'])} | {_fmt(mem['feature_threshold'])} |",
        f"| samples, median | {_fmt(mem['samples']['detail_corr_median'])} | "
        f"{_fmt(mem['samples']['feature_cos_median'])} |",
        f"| samples, max | {_fmt(mem['samples']['detail_corr_max'])} | "
        f"{_fmt(mem['samples']['feature_cos_max'])} |",
        f"| held-out reals, median | {_fmt(mem['held_out']['detail_corr_median'])} | "
        f"{_fmt(mem['held_out']['feature_cos_median'])} |",
        "",
        f"Flagged: {metrics['n_flagged']} of {metrics['n_requested']} ({metrics['flagged_fraction']:.1%}); "
        f"action: {cfg.memorisation.action}.",
        "",
        "## Intended use",
        "",
        "Augmenting training data for segmentation or classification research, and testing pipelines without",
        "patient data. Not for diagnosis, not as evidence about any patient, not as a benchmark test set.",
        "Check the `evaluate` stage's fidelity, utility and privacy numbers before relying on it.",
        "",
        "## Source data licence",
        "",
        cfg.source_licence,
        "",
    ]
    return "\n".join(lines)
