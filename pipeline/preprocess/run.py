"""The preprocess stage: discover → read and validate → canonical orientation → resample → normalise →
crop/pad → slice store, with a patient-level split and a quarantine of every case that fails.

Every output is written into a temporary folder renamed into place at the end (`atomic_dir`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PreprocessConfig
from pipeline.errors import GeometryError, InputDataError, PipelineStateError
from pipeline.io.atomic import atomic_dir
from pipeline.io.dicom import read_series
from pipeline.io.itk import read_itk
from pipeline.io.nifti import nifti_bytes, read_nifti
from pipeline.io.shards import CASES_PER_SHARD, ShardWriter
from pipeline.io.volume import Volume, read_limit_set, to_canonical
from pipeline.lineage.hashing import combined_hash, sha256_file
from pipeline.preprocess.discover import CaseSpec, Discovery, Source, discover
from pipeline.preprocess.intensity import IntensityStats, foreground_mask, normalise
from pipeline.preprocess.spatial import crop_or_pad_window, crop_pad_inplane, is_oblique, resample
from pipeline.preprocess.split import SPLITS, assign_split
from pipeline.preprocess.store import SliceSet, write_slices

log = logging.getLogger(__name__)

MANIFEST_FIELDS = (
    "case_id",
    "patient_id",
    "split",
    "modality",
    "source_kind",
    "n_source_files",
    "source_sha256",
    "original_shape",
    "original_spacing",
    "original_axcodes",
    "oblique",
    "shape",
    "spacing",
    "has_mask",
    "n_slices",
    "n_abnormal_slices",
    "lesion_voxels",
    "intensity_method",
    "intensity_lo",
    "intensity_hi",
    "image",
    "mask",
)
REJECTED_FIELDS = ("case", "file", "code", "reason")


@dataclass(frozen=True)
class CaseResult:
    spec: CaseSpec
    image: Volume
    mask: Volume
    has_mask: bool
    original: dict[str, Any]
    stats: IntensityStats
    slices: SliceSet


def read_source(src: Source, cfg: PreprocessConfig, modality: str, root: Path) -> Volume:
    if src.kind == "dicom":
        assert src.series is not None
        return read_series(src.series, root, cfg.geometry)
    if src.kind == "nifti":
        return read_nifti(src.files[0], src.label, modality)
    return read_itk(src.files[0], src.label, modality)


def _mask_array(mask: Volume, label: str) -> np.ndarray:
    values = mask.array
    if np.any(values < 0) or np.any(values > 255) or np.any(values != np.round(values)):
        raise InputDataError(label, "mask values must be integers in 0..255", "mask_values")
    return values.astype(np.uint8)


def process_case(spec: CaseSpec, cfg: PreprocessConfig, root: Path) -> CaseResult:
    """Turn one case into its canonical, resampled, normalised volumes and slices. Raises InputDataError."""
    raw = read_source(spec.image, cfg, spec.modality, root)
    image = to_canonical(raw)
    original = {
        "original_shape": "x".join(str(s) for s in image.shape),
        "original_spacing": "x".join(f"{s:.4g}" for s in image.spacing),
        "original_axcodes": "".join(raw.axcodes),
        "oblique": is_oblique(image.affine),
    }
    if spec.mask is not None:
        mask = to_canonical(read_source(spec.mask, cfg, spec.modality, root))
        # Tolerance 1e-3 mm: DICOM decimal strings round positions; more than that is another grid.
        if not image.same_grid(mask, atol_mm=1e-3):
            raise GeometryError(
                spec.mask.label, "mask grid (shape or affine) differs from the image grid", "mask_grid"
            )
        # Same grid within tolerance: give the mask the image's exact affine so both resample identically.
        mask = image.with_array(_mask_array(mask, spec.mask.label).astype(np.float32))
    else:
        mask = image.with_array(np.zeros(image.shape, dtype=np.float32))

    image = resample(image, cfg.target_spacing, is_mask=False)
    mask = resample(mask, cfg.target_spacing, is_mask=True)
    fg = foreground_mask(image.array)
    norm, stats = normalise(image.array, fg, spec.modality, cfg.intensity)

    size = (cfg.slice_size[0], cfg.slice_size[1])
    if fg.any():
        idx = np.argwhere(fg.any(axis=2))
        centre = (idx.min(axis=0) + idx.max(axis=0)) / 2.0
    else:
        centre = np.array(image.shape[:2]) / 2.0 - 0.5
    starts = (crop_or_pad_window(centre[0], size[0]), crop_or_pad_window(centre[1], size[1]))
    image = crop_pad_inplane(image.with_array(norm), starts, size)
    fg_vol = crop_pad_inplane(image.with_array(fg.astype(np.float32)), starts, size).array > 0.5
    mask = crop_pad_inplane(mask, starts, size)
    mask_u8 = mask.array.astype(np.uint8)

    lesion = (mask_u8 > 0).sum(axis=(0, 1))
    if spec.mask is None:
        labels = np.full(image.shape[2], -1, np.int8)
    else:
        labels = (lesion >= cfg.min_lesion_voxels).astype(np.int8)
    fg_frac = fg_vol.mean(axis=(0, 1))
    rows = [
        {
            "case_id": spec.case_id,
            "patient_id": spec.patient_id,
            "slice": k,
            "label": int(labels[k]),
            "foreground_fraction": f"{fg_frac[k]:.4f}",
            "lesion_voxels": int(lesion[k]),
        }
        for k in range(image.shape[2])
    ]
    slices = SliceSet(
        image=np.ascontiguousarray(image.array.transpose(2, 0, 1)),
        mask=np.ascontiguousarray(mask_u8.transpose(2, 0, 1)),
        label=labels,
        rows=rows,
    )
    return CaseResult(spec, image, mask.with_array(mask_u8), spec.mask is not None, original, stats, slices)


def discover_cases(
    cfg: PreprocessConfig, root: Path, cases_csv: Path | None = None, workers: int = 1
) -> Discovery:
    """`discover` with the stage's settings (its read limit too)."""
    with read_limit_set(cfg.max_read_mib << 20):
        return discover(
            root,
            mask_series_pattern=cfg.mask_series_pattern,
            mask_file_suffixes=cfg.mask_file_suffixes,
            default_modality=cfg.default_modality,
            salt=cfg.pseudonym_salt,
            cases_csv=cases_csv,
            workers=workers,
        )


def process_or_reject(args: tuple[CaseSpec, PreprocessConfig, Path]) -> CaseResult | InputDataError:
    spec, cfg, root = args
    try:
        with read_limit_set(cfg.max_read_mib << 20):
            return process_case(spec, cfg, root)
    except InputDataError as err:
        return err
    except (MemoryError, RecursionError, ValueError, OverflowError, RuntimeError) as err:
        # A reader bug or an input no check anticipated must not kill the run: quarantine the case.
        return InputDataError(
            spec.image.label, f"unexpected {type(err).__name__} while reading", "unexpected"
        )


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: nested threads only oversubscribe


def _source_files(spec: CaseSpec) -> tuple[Path, ...]:
    return spec.image.files + (spec.mask.files if spec.mask else ())


def _hashes(files: Iterable[Path], root: Path) -> dict[str, str]:
    out = {}
    for f in files:
        try:
            out[f.relative_to(root).as_posix()] = sha256_file(f)
        except OSError as err:
            # recorded, not fatal: the case reading it is quarantined with its own reason
            out[f.relative_to(root).as_posix()] = f"unreadable ({type(err).__name__})"
    return out


def hash_and_process(
    args: tuple[CaseSpec, PreprocessConfig, Path],
) -> tuple[CaseResult | InputDataError, dict[str, str]]:
    """Hash a case's source files, then process it, in the same worker: the hashes are spread over every
    core with the reading, and they are taken just before the bytes are decoded, so the pixel data comes
    from disk once (the read that follows the hash finds the file in the page cache)."""
    spec, _, root = args
    hashes = _hashes(_source_files(spec), root)
    return process_or_reject(args), hashes


def _run_cases(
    specs: list[CaseSpec], cfg: PreprocessConfig, root: Path, workers: int
) -> list[tuple[CaseResult | InputDataError, dict[str, str]]]:
    jobs = [(s, cfg, root) for s in specs]
    if workers <= 1 or len(jobs) <= 1:
        return [hash_and_process(j) for j in jobs]
    # spawn, not fork: torch's thread pools do not survive fork reliably. Results keep input order, so
    # the outputs do not depend on the number of workers.
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_init
    ) as pool:
        return list(pool.map(hash_and_process, jobs, chunksize=1))


def _csv_text(fields: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def run_preprocess(
    cfg: PreprocessConfig,
    root: Path,
    out_dir: Path,
    workers: int,
    lineage: dict[str, Any],
    cases_csv: Path | None = None,
) -> dict[str, Any]:
    """Run the whole stage into ``out_dir`` (replaced atomically). ``root`` must be absolute. ``lineage`` is
    the record without inputs; input hashes are added here, taken before any case is processed. Returns the
    summary (the content of plan.json)."""
    if not Path(root).is_absolute():
        raise ValueError(f"data root must be an absolute path, got {root}")
    found = discover_cases(cfg, root, cases_csv, workers)
    log.info("found %d case(s), %d file-level rejection(s)", len(found.cases), len(found.rejected))

    done = _run_cases(found.cases, cfg, root, workers)
    results = [r for r, _ in done]
    input_hashes: dict[str, str] = {}
    for _, hashes in done:
        input_hashes.update(hashes)
    # files no case reads (rejected, unrecognised) are hashed here: their only full read
    input_hashes.update(
        _hashes((f for f in found.files if f.relative_to(root).as_posix() not in input_hashes), root)
    )
    input_hashes = dict(sorted(input_hashes.items()))
    accepted = [r for r in results if isinstance(r, CaseResult)]
    case_rejections = [
        (spec, r) for spec, r in zip(found.cases, results, strict=True) if isinstance(r, InputDataError)
    ]
    rejected_rows = [{"case": "", "file": e.file, "code": e.code, "reason": e.reason} for e in found.rejected]
    rejected_rows += [
        {"case": s.case_id, "file": e.file, "code": e.code, "reason": e.reason} for s, e in case_rejections
    ]
    for row in rejected_rows:
        log.warning("quarantined %s [%s]: %s", row["file"], row["code"], row["reason"])

    n_cases = len(found.cases)
    if not accepted:
        raise PipelineStateError(
            f"{root}: no usable case ({n_cases} found, {len(case_rejections)} rejected, "
            f"{len(found.rejected)} unreadable file(s)); see the reasons above"
        )
    frac = len(case_rejections) / n_cases
    if frac > cfg.max_rejected_fraction:
        raise PipelineStateError(
            f"{root}: {len(case_rejections)} of {n_cases} cases rejected ({frac:.0%}), more than "
            f"preprocess.max_rejected_fraction={cfg.max_rejected_fraction:.0%}; see the reasons above"
        )

    splits = {
        r.spec.case_id: assign_split(r.spec.patient_id, cfg.split.seed, cfg.split.train, cfg.split.val)
        for r in accepted
    }
    manifest_rows = []
    by_split: dict[str, list[SliceSet]] = {s: [] for s in SPLITS}
    with atomic_dir(out_dir) as tmp:
        with ShardWriter(tmp, "volumes", CASES_PER_SHARD) as shards:
            for r in accepted:
                cid = r.spec.case_id
                image_rel, mask_rel = shards.add(
                    [
                        (f"{cid}_image.nii", nifti_bytes(r.image.array.astype(np.float32), r.image.affine)),
                        (f"{cid}_mask.nii", nifti_bytes(r.mask.array.astype(np.uint8), r.mask.affine)),
                    ]
                )
                by_split[splits[cid]].append(r.slices)
                files = _source_files(r.spec)
                manifest_rows.append(
                    {
                        "case_id": cid,
                        "patient_id": r.spec.patient_id,
                        "split": splits[cid],
                        "modality": r.spec.modality,
                        "source_kind": r.spec.image.kind,
                        "n_source_files": len(files),
                        "source_sha256": combined_hash(
                            {
                                f.relative_to(root).as_posix(): input_hashes[f.relative_to(root).as_posix()]
                                for f in files
                            }
                        ),
                        **r.original,
                        "shape": "x".join(str(s) for s in r.image.shape),
                        "spacing": "x".join(f"{s:.4g}" for s in r.image.spacing),
                        "has_mask": r.has_mask,
                        "n_slices": r.image.shape[2],
                        "n_abnormal_slices": int((r.slices.label == 1).sum()),
                        "lesion_voxels": int((r.mask.array > 0).sum()),
                        "intensity_method": r.stats.method,
                        "intensity_lo": f"{r.stats.lo:.6g}",
                        "intensity_hi": f"{r.stats.hi:.6g}",
                        "image": image_rel,
                        "mask": mask_rel,
                    }
                )
        counts = {s: write_slices(tmp / "slices" / s, by_split[s]) for s in SPLITS}
        (tmp / "manifest.csv").write_text(_csv_text(MANIFEST_FIELDS, manifest_rows), encoding="utf-8")
        (tmp / "rejected.csv").write_text(_csv_text(REJECTED_FIELDS, rejected_rows), encoding="utf-8")
        plan = _plan(cfg, accepted, counts, splits, len(rejected_rows))
        (tmp / "plan.json").write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        record = {**lineage, "inputs": {"data_root": combined_hash(input_hashes), "files": input_hashes}}
        (tmp / "lineage.json").write_text(
            json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    for split in SPLITS:
        if counts[split] == 0:
            log.warning("split %r is empty: too few patients for the split fractions", split)
    return plan


def _plan(
    cfg: PreprocessConfig,
    accepted: list[CaseResult],
    counts: dict[str, int],
    splits: dict[str, str],
    n_rejected: int,
) -> dict[str, Any]:
    """Derived dataset fingerprint: what later stages and users need to know about the data."""
    orig_spacing = np.array([[float(v) for v in r.original["original_spacing"].split("x")] for r in accepted])
    by_modality: dict[str, list[IntensityStats]] = {}
    for r in accepted:
        by_modality.setdefault(r.spec.modality, []).append(r.stats)
    return {
        "n_cases": len(accepted),
        "n_patients": len({r.spec.patient_id for r in accepted}),
        "n_rejected": n_rejected,  # rows of rejected.csv: unreadable files and rejected cases
        "cases_per_split": dict(sorted(Counter(splits.values()).items())),
        "slices_per_split": counts,
        "abnormal_slices_per_split": {
            s: int(sum(int((r.slices.label == 1).sum()) for r in accepted if splits[r.spec.case_id] == s))
            for s in SPLITS
        },
        "target_spacing": list(cfg.target_spacing),
        "slice_size": list(cfg.slice_size),
        "original_spacing_median": [float(v) for v in np.median(orig_spacing, axis=0)],
        "original_spacing_min": [float(v) for v in orig_spacing.min(axis=0)],
        "original_spacing_max": [float(v) for v in orig_spacing.max(axis=0)],
        "oblique_cases": int(sum(bool(r.original["oblique"]) for r in accepted)),
        "intensity": {
            m: {
                "method": stats[0].method,
                "lo_median": float(np.median([s.lo for s in stats])),
                "hi_median": float(np.median([s.hi for s in stats])),
                "foreground_mean_median": float(np.median([s.mean for s in stats])),
                "foreground_std_median": float(np.median([s.std for s in stats])),
            }
            for m, stats in sorted(by_modality.items())
        },
        "label_values": sorted({int(v) for r in accepted for v in np.unique(r.mask.array)}),
    }
