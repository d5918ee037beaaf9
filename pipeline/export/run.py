"""The export stage: N synthetic samples of one cGAN variant, gated against memorisation, written as an
nnU-Net / MONAI Decathlon dataset (NIfTI) and as DICOM (Secondary Capture + SEG), with a per-sample manifest,
a dataset card and lineage.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import CommonConfig, ExportConfig
from pipeline.data.slices import select_rows
from pipeline.errors import PipelineStateError
from pipeline.export.card import dataset_card
from pipeline.export.conditions import sample_seed
from pipeline.export.dicom_writer import Provenance
from pipeline.export.memorisation import Nearest, calibrate, nearest_training, reference
from pipeline.export.samples import (
    SEGMENTER_MASK,
    Sample,
    build_sample,
    sample_affine,
    sample_files,
    write_files,
)
from pipeline.export.sampling import load_generator
from pipeline.io.atomic import atomic_dir
from pipeline.lineage.hashing import sha256_bytes, sha256_file
from pipeline.lineage.record import LINEAGE_FILE, write_lineage
from pipeline.metrics.features import AeFeatures, load_segmenter
from pipeline.metrics.segmentation import label_agreement
from pipeline.preprocess.store import SliceSet, load_slices
from pipeline.runtime.device import describe_device, resolve_device
from pipeline.training.common import save_png, stacked_spacing, tile_slices

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MEMORISATION = "memorisation.csv"
MANIFEST_FIELDS = (
    "sample_id",
    "variant",
    "seed",
    "label",
    "condition_source",
    "condition_case",
    "condition_slice",
    "condition_row",
    "lesion_added",
    "lesion_pixels",
    "mask_source",
    "image_nifti",
    "image_nifti_sha256",
    "mask_nifti",
    "mask_nifti_sha256",
    "image_dicom",
    "image_dicom_sha256",
    "seg_dicom",
    "seg_dicom_sha256",
    "generator_sha256",
    "generator_run_key",
    "params_sha256",
    "code_version",
    "nn_detail_corr",
    "nn_detail_case",
    "nn_feature_cos",
    "nn_feature_case",
)
MEMORISATION_FIELDS = (
    "sample_id",
    "seed",
    "nn_detail_corr",
    "nn_detail_case",
    "nn_detail_slice",
    "nn_feature_cos",
    "nn_feature_case",
    "nn_feature_slice",
    "flagged",
    "released",
)
ROLES = ("image_nifti", "mask_nifti", "image_dicom", "seg_dicom")


def params_sha256(common: CommonConfig, cfg: ExportConfig, variant: str) -> str:
    """Hash of everything in params.yaml that decides a sample besides the generator weights."""
    text = json.dumps(
        {"common": common.model_dump(), "export": cfg.model_dump(), "variant": variant}, sort_keys=True
    )
    return sha256_bytes(text.encode("utf-8"))


def _csv(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
    return buf.getvalue()


def _fmt(x: float) -> str:
    return f"{float(x):.6f}"


def _where(store: SliceSet, row: int) -> tuple[str, int]:
    meta = store.rows[row]
    return str(meta["case_id"]), int(str(meta["slice"]))


def uses_segmenter(cfg: ExportConfig, kind: str) -> bool:
    """Whether an export of a ``kind`` generator labels its samples with the train_seg U-Net."""
    return kind == "label2image" and cfg.label2image_masks == SEGMENTER_MASK


def export(
    cfg: ExportConfig,
    common: CommonConfig,
    variant: str,
    data_dir: Path,
    model_file: Path,
    ae_file: Path,
    out_dir: Path,
    code_version: str,
    software_version: str,
    lineage: dict[str, Any] | None = None,
    seg_file: Path | None = None,
) -> dict[str, Any]:
    """Generate, gate and write the export of ``variant`` into ``out_dir`` (atomically); return metrics.
    ``seg_file`` (a train_seg model) labels label2image samples when ``export.label2image_masks`` says so."""
    t0 = time.perf_counter()
    device = resolve_device(common.device)
    gen = load_generator(model_file, device)
    if gen.variant != variant:
        raise PipelineStateError(f"{model_file}: holds variant {gen.variant!r}, not {variant!r}")
    segmenter = None
    if uses_segmenter(cfg, gen.v.kind):
        if seg_file is None or not seg_file.is_file():
            raise PipelineStateError(
                f"export@{variant}: export.label2image_masks is 'segmenter' but the train_seg model "
                f"{seg_file} is missing; train it first, or set export.label2image_masks: none"
            )
        segmenter = load_segmenter(seg_file, device)
    train = load_slices(data_dir / "slices" / "train")
    held_out = load_slices(data_dir / "slices" / "val")
    spacing = stacked_spacing(data_dir)
    affine = sample_affine((spacing[1], spacing[2], spacing[0]), gen.size)
    candidates = select_rows(train, "labelled", cfg.min_foreground)
    p_hash = params_sha256(common, cfg, variant)

    t_gen = time.perf_counter()
    samples = [
        build_sample(cfg, gen, i, sample_seed(cfg.seed, variant, i), train, candidates, segmenter=segmenter)
        for i in range(cfg.n_samples)
    ]
    gen_seconds = time.perf_counter() - t_gen

    # memorisation gate, calibrated on held-out real slices
    features = AeFeatures(ae_file, device)
    mem = cfg.memorisation
    # every training slice that holds any head: a blank slice cannot be copied
    ref_rows = np.flatnonzero([float(r["foreground_fraction"]) > 0 for r in train.rows])
    ref = reference(np.asarray(train.image)[ref_rows], ref_rows, features, mem)
    held_rows = select_rows(held_out, "all", cfg.min_foreground)  # as many head as a conditioning slice
    held_lesions = np.asarray(held_out.mask)[held_rows] > 0
    held = nearest_training(np.asarray(held_out.image)[held_rows], held_lesions, ref, features, mem)
    conditioned = gen.v.kind == "mask2image"
    gate = calibrate(held, mem.percentile, feature_gates=not conditioned)
    images = np.stack([s.image for s in samples])
    lesions = np.stack([s.lesion for s in samples]) if conditioned else None
    near = nearest_training(images, lesions, ref, features, mem)
    flags = gate.flags(near)
    n_flagged = int(flags.sum())
    frac = n_flagged / len(samples)
    if n_flagged and (mem.action == "fail" or frac > mem.max_flagged_fraction):
        listed = ", ".join(s.sample_id for s, f in zip(samples, flags, strict=True) if f)
        raise PipelineStateError(
            f"export@{variant}: {n_flagged} of {len(samples)} samples ({frac:.1%}) are closer to a training "
            f"slice than the {mem.percentile:g}th percentile of held-out real slices ({listed}); "
            f"memorisation.action is {mem.action!r}, max_flagged_fraction {mem.max_flagged_fraction:g}. "
            "Nothing was written."
        )

    manifest, mem_rows, released = [], [], []
    with atomic_dir(out_dir) as tmp:
        for s, flagged, k in zip(samples, flags, range(len(samples)), strict=True):
            dc_case, dc_slice = _where(train, int(near.detail_row[k]))
            fc_case, fc_slice = _where(train, int(near.feature_row[k]))
            mem_rows.append(
                {
                    "sample_id": s.sample_id,
                    "seed": s.seed,
                    "nn_detail_corr": _fmt(near.detail_corr[k]),
                    "nn_detail_case": dc_case,
                    "nn_detail_slice": dc_slice,
                    "nn_feature_cos": _fmt(near.feature_cos[k]),
                    "nn_feature_case": fc_case,
                    "nn_feature_slice": fc_slice,
                    "flagged": int(flagged),
                    "released": int(not flagged),
                }
            )
            if flagged:
                log.warning("export@%s: %s dropped by the memorisation gate", variant, s.sample_id)
                continue
            prov = Provenance(
                s.sample_id, variant, s.seed, gen.sha256, p_hash, code_version, software_version
            )
            files = sample_files(s, affine, prov, cfg.compress, cfg.dicom)
            write_files(tmp, files)
            released.append(s)
            row: dict[str, Any] = {
                "sample_id": s.sample_id,
                "variant": variant,
                "seed": s.seed,
                "label": s.label,
                "condition_source": s.condition.source,
                "condition_case": s.condition.case_id,
                "condition_slice": s.condition.slice_index,
                "condition_row": s.condition.row,
                "lesion_added": int(s.lesion_added) if conditioned else None,
                "lesion_pixels": int(s.lesion.sum()) if s.lesion is not None else None,
                "mask_source": s.mask_source or None,
                "generator_sha256": gen.sha256,
                "generator_run_key": gen.run_key,
                "params_sha256": p_hash,
                "code_version": code_version,
                "nn_detail_corr": _fmt(near.detail_corr[k]),
                "nn_detail_case": dc_case,
                "nn_feature_cos": _fmt(near.feature_cos[k]),
                "nn_feature_case": fc_case,
            }
            for role, (rel, data) in files.items():
                row[role] = rel
                row[f"{role}_sha256"] = sha256_bytes(data)
            manifest.append(row)
        (tmp / MANIFEST).write_text(_csv(manifest, MANIFEST_FIELDS), encoding="utf-8")
        (tmp / MEMORISATION).write_text(_csv(mem_rows, MEMORISATION_FIELDS), encoding="utf-8")
        has_mask = conditioned or segmenter is not None
        (tmp / "dataset.json").write_text(
            json.dumps(
                _dataset_json(
                    variant, released, cfg.compress, has_mask, not conditioned, _modality(data_dir)
                ),
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        if released:
            save_png(tmp / "samples.png", tile_slices([s.image for s in released[:16]]))
        metrics = {
            "variant": variant,
            "n_requested": len(samples),
            "n_released": len(released),
            "n_flagged": n_flagged,
            "flagged_fraction": frac,
            "memorisation": {
                "percentile": gate.percentile,
                "n_held_out": gate.n_reference,
                "detail_threshold": gate.detail_threshold,
                "feature_threshold": gate.feature_threshold,
                "feature_gates": gate.feature_gates,
                "samples": _summary(near),
                "held_out": _summary(held),
            },
            "conditions": _condition_counts(released),
            "label_counts": {str(k): sum(s.label == k for s in released) for k in (0, 1)},
            **({"label_mask_agreement": _label_mask_agreement(released)} if segmenter is not None else {}),
            "seconds": {
                "generate": gen_seconds,
                "total": time.perf_counter() - t0,
            },
            "samples_per_second": len(samples) / max(gen_seconds, 1e-9),
            "generator_sha256": gen.sha256,
        }
        mask_source = samples[0].mask_source if has_mask else ""
        (tmp / "dataset_card.md").write_text(
            dataset_card(variant, cfg, metrics, lineage or {}, mask_source), encoding="utf-8"
        )
        if lineage is not None:
            record = {
                **lineage,
                "variant": variant,
                "generator": {"file": model_file.as_posix(), "sha256": gen.sha256, "run_key": gen.run_key},
                "feature_model": ae_file.as_posix(),
                "data": data_dir.as_posix(),
                "affine": affine.tolist(),
                "params_sha256": p_hash,
                "code_version": code_version,
                "software_version": software_version,
                "device": describe_device(device),
            }
            if segmenter is not None and seg_file is not None:
                record["segmenter"] = {"file": seg_file.as_posix(), "sha256": sha256_file(seg_file)}
            write_lineage(tmp, record)
    log.info(
        "export@%s: %d samples, %d released, %d over the memorisation threshold → %s",
        variant,
        len(samples),
        len(released),
        n_flagged,
        out_dir,
    )
    return metrics


def _summary(near: Nearest) -> dict[str, float]:
    return {
        "detail_corr_median": float(np.median(near.detail_corr)) if near.detail_corr.size else 0.0,
        "detail_corr_max": float(near.detail_corr.max()) if near.detail_corr.size else 0.0,
        "feature_cos_median": float(np.median(near.feature_cos)) if near.feature_cos.size else 0.0,
        "feature_cos_max": float(near.feature_cos.max()) if near.feature_cos.size else 0.0,
    }


def _label_mask_agreement(samples: list[Sample]) -> dict[str, Any]:
    """How often the segmenter's mask agrees with a label2image sample's drawn label. Low agreement means
    the generator does not draw what its label asks for (or the segmenter misses synthetic lesions); either
    way the masks deserve a look."""
    masked = [s for s in samples if s.lesion is not None]
    pred = np.stack([s.lesion for s in masked]) if masked else np.zeros((0, 1, 1), bool)
    return label_agreement(pred, np.array([s.label for s in masked], np.int64))


def _condition_counts(samples: list[Sample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        out[s.condition.source] = out.get(s.condition.source, 0) + 1
    return dict(sorted(out.items()))


def _modality(data_dir: Path) -> str:
    """The modality the preprocess plan normalised (e.g. "MR"); "mixed" when several."""
    plan = json.loads((data_dir / "plan.json").read_text(encoding="utf-8"))
    names = sorted(plan.get("intensity", {}))
    return names[0] if len(names) == 1 else "mixed"


def _dataset_json(
    variant: str, samples: list[Sample], compress: bool, has_mask: bool, has_class: bool, modality: str
) -> dict[str, Any]:
    """nnU-Net v2 ``dataset.json`` keys plus the Decathlon ``training`` list MONAI's
    ``load_decathlon_datalist`` reads. The channel is named "<modality> normalised", never plain "CT": the
    intensities are already normalised to [0, 1], and nnU-Net would apply its CT windowing to a "CT"
    channel. ``has_class``: each entry also carries the label the sample was drawn with."""
    ext = ".nii.gz" if compress else ".nii"
    training = []
    for s in samples:
        entry = {"image": f"./imagesTr/{s.sample_id}_0000{ext}"}
        if has_mask:
            entry["label"] = f"./labelsTr/{s.sample_id}{ext}"
        if has_class:
            entry["class"] = str(s.label)
        training.append(entry)
    out: dict[str, Any] = {
        "name": f"medsynth_{variant}",
        "description": "SYNTHETIC images generated by medsynth; not from patients; not for diagnosis",
        "channel_names": {"0": f"{modality} normalised"},
        "labels": {"background": 0, "lesion": 1} if has_mask else {"normal": 0, "abnormal": 1},
        **({"classes": {"normal": 0, "abnormal": 1}} if has_mask and has_class else {}),
        "numTraining": len(samples),
        "file_ending": ext,
        "synthetic": True,
        "training": training,
    }
    return out


def read_manifest(export_dir: Path) -> list[dict[str, str]]:
    """The rows of ``export_dir/manifest.csv``."""
    with open(export_dir / MANIFEST, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_export_lineage(export_dir: Path) -> dict[str, Any]:
    return json.loads((export_dir / LINEAGE_FILE).read_text(encoding="utf-8"))
