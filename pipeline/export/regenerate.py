"""`medsynth regenerate FILE`: rebuild one exported sample from its manifest row and compare byte for byte.

Everything a sample depends on is named by its manifest row and the export's ``lineage.json``: the seed, the
conditioning (training slice row, or label), the generator checkpoint (by sha256), the export params and
the preprocessed training slices. Regeneration runs on the CPU; an export made on a GPU may differ in the
last bits, which the report then says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import ExportConfig
from pipeline.errors import InputDataError, PipelineStateError
from pipeline.export.conditions import Condition
from pipeline.export.dicom_writer import Provenance
from pipeline.export.run import MANIFEST, ROLES, read_export_lineage, read_manifest
from pipeline.export.samples import SEGMENTER_MASK, build_sample, sample_files
from pipeline.export.sampling import load_generator
from pipeline.lineage.hashing import sha256_bytes, sha256_file
from pipeline.lineage.record import LINEAGE_FILE
from pipeline.metrics.features import load_segmenter
from pipeline.preprocess.store import load_slices

__all__ = ["FileCheck", "export_folder", "find_sample", "is_export_folder", "regenerate"]


@dataclass(frozen=True)
class FileCheck:
    role: str
    path: str  # relative to the export folder
    manifest_sha256: str
    disk_sha256: str | None  # None when the file is missing
    regenerated_sha256: str

    @property
    def identical(self) -> bool:
        return self.manifest_sha256 == self.disk_sha256 == self.regenerated_sha256


def is_export_folder(folder: Path) -> bool:
    """True for a folder written by the export stage (a manifest and an export lineage record)."""
    record = folder / LINEAGE_FILE
    if not ((folder / MANIFEST).is_file() and record.is_file()):
        return False
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("stage") == "export"
    except (OSError, ValueError):
        return False


def export_folder(file: Path) -> Path | None:
    """The export folder ``file`` lies in, or None."""
    return next((d for d in Path(file).resolve().parents if is_export_folder(d)), None)


def find_sample(file: Path, stop: Path | None = None) -> tuple[Path, dict[str, str], str]:
    """(export folder, manifest row, role) of an exported file: the nearest folder above ``file`` written by
    the export stage, and the row that lists the file."""
    file = Path(file).resolve()
    for folder in file.parents:
        if is_export_folder(folder):
            rel = file.relative_to(folder).as_posix()
            for row in read_manifest(folder):
                for role in ROLES:
                    if row.get(role) == rel:
                        return folder, row, role
            raise InputDataError(
                str(file), f"not listed in {folder / MANIFEST} (a dropped sample, or not an export file)"
            )
        if stop is not None and folder == Path(stop).resolve():
            break
    raise InputDataError(str(file), "no export manifest.csv in any folder above it", "not_exported")


def _condition(row: dict[str, str]) -> Condition:
    has_row = row.get("condition_row", "") != ""
    return Condition(
        row["condition_source"],
        int(row["label"]),
        int(row["condition_row"]) if has_row else None,
        row.get("condition_case", ""),
        int(row["condition_slice"]) if row.get("condition_slice", "") != "" else None,
    )


def _segmenter(record: dict[str, Any], row: dict[str, str], repo_root: Path) -> torch.nn.Module | None:
    """The train_seg U-Net that made a label2image sample's mask, checked against the export's record."""
    if row.get("mask_source") != SEGMENTER_MASK:
        return None
    entry = record.get("segmenter") or {}
    seg_file = repo_root / str(entry.get("file", ""))
    if not entry or not seg_file.is_file():
        raise PipelineStateError(f"{seg_file}: the segmenter that made this sample's mask is missing")
    on_disk = sha256_file(seg_file)
    if on_disk != entry.get("sha256"):
        raise PipelineStateError(
            f"{seg_file}: sha256 {on_disk[:16]}… differs from the export's {str(entry.get('sha256'))[:16]}…; "
            "train_seg was retrained since this sample was exported"
        )
    return load_segmenter(seg_file, torch.device("cpu"))


def regenerate(file: Path, repo_root: Path) -> dict[str, Any]:
    """Rebuild the sample ``file`` belongs to and compare every one of its files with the manifest's sha256
    and the bytes on disk. Raises PipelineStateError when an input it needs has changed (generator, training
    slices); returns a report with one entry per file and ``identical`` overall."""
    folder, row, role = find_sample(file, repo_root)
    record = read_export_lineage(folder)
    cfg = ExportConfig.model_validate(record["params"]["export"])
    model_file = repo_root / record["generator"]["file"]
    if not model_file.is_file():
        raise PipelineStateError(f"{model_file}: the generator this sample came from is missing")
    on_disk = sha256_file(model_file)
    if on_disk != row["generator_sha256"]:
        raise PipelineStateError(
            f"{model_file}: sha256 {on_disk[:16]}… differs from the manifest's "
            f"{row['generator_sha256'][:16]}…; "
            "the generator was retrained since this sample was exported"
        )
    gen = load_generator(model_file, torch.device("cpu"))
    store = load_slices(repo_root / record["data"] / "slices" / "train")
    cond = _condition(row)
    if cond.row is not None:
        meta = store.rows[cond.row] if cond.row < len(store.rows) else None
        same = meta is not None and (str(meta["case_id"]), int(str(meta["slice"]))) == (
            cond.case_id,
            cond.slice_index,
        )
        if not same:
            raise PipelineStateError(
                f"{repo_root / record['data']}: training slice row {cond.row} is no longer case "
                f"{cond.case_id} slice {cond.slice_index}; the preprocessed data changed since the export"
            )
    segmenter = _segmenter(record, row, repo_root)
    index = int(row["sample_id"].rsplit("_", 1)[1])
    sample = build_sample(cfg, gen, index, int(row["seed"]), store, np.zeros(0, np.int64), cond, segmenter)
    prov = Provenance(
        row["sample_id"],
        row["variant"],
        int(row["seed"]),
        row["generator_sha256"],
        row["params_sha256"],
        row["code_version"],
        str(record["software_version"]),
    )
    files = sample_files(sample, np.asarray(record["affine"], np.float64), prov, cfg.compress, cfg.dicom)
    checks = []
    for r in ROLES:
        if not row.get(r):
            continue
        rel = row[r]
        path = folder / rel
        regenerated = files[r][1] if r in files else b""
        checks.append(
            FileCheck(
                r,
                rel,
                row[f"{r}_sha256"],
                sha256_file(path) if path.is_file() else None,
                sha256_bytes(regenerated),
            )
        )
    device = record.get("device", {})
    return {
        "sample_id": row["sample_id"],
        "export": folder.as_posix(),
        "requested_role": role,
        "identical": all(c.identical for c in checks),
        "files": [
            {
                "role": c.role,
                "path": c.path,
                "manifest_sha256": c.manifest_sha256,
                "disk_sha256": c.disk_sha256,
                "regenerated_sha256": c.regenerated_sha256,
                "identical": c.identical,
            }
            for c in checks
        ],
        "export_device": device.get("type", "cpu") if isinstance(device, dict) else str(device),
    }
