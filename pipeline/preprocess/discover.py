"""Find the cases under a data root: DICOM series (any depth, several per folder), NIfTI and ITK files, and
their masks.

Pairing conventions (README, "Your own data"):
- DICOM: a series whose SeriesDescription matches ``mask_series_pattern`` is a mask; it pairs with every other
  series of the same study and frame of reference. Several candidate masks for one image is an error.
- Files: ``<stem><suffix>.nii[.gz]|.nrrd|...`` with a suffix from ``mask_file_suffixes`` is the mask of
  ``<stem>.*`` or ``<stem>_image.*`` in the same folder.
- Or a cases CSV (columns ``case,image,mask`` and optional ``patient,modality``; paths relative to the root,
  a DICOM series given as its folder) which replaces both conventions.
Case and patient ids are keyed pseudonyms: no name, UID or path of the source appears in them.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError, InputDataError
from pipeline.io.dicom import SeriesInfo, scan_dicom
from pipeline.io.itk import is_itk
from pipeline.io.nifti import is_nifti
from pipeline.lineage.hashing import keyed_pseudonym

log = logging.getLogger(__name__)

#: Files that are never scans: documentation and tables users keep beside their data.
IGNORED_SUFFIXES = (".md", ".txt", ".csv", ".json", ".tsv", ".yaml", ".yml", ".py", ".pdf", ".png", ".jpg")
IGNORED_NAMES = ("readme", "license", "licence", "sha256sums", "md5sums", "copying", "notice")


def _ignored(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(IGNORED_SUFFIXES) or name.split(".")[0] in IGNORED_NAMES


@dataclass(frozen=True)
class Source:
    """Where one volume comes from. ``label`` names it in errors: a path relative to the data root."""

    kind: str  # dicom | nifti | itk
    files: tuple[Path, ...]
    label: str
    series: SeriesInfo | None = None


@dataclass(frozen=True)
class CaseSpec:
    case_id: str
    patient_id: str
    modality: str
    image: Source
    mask: Source | None


@dataclass
class Discovery:
    cases: list[CaseSpec] = field(default_factory=list)
    rejected: list[InputDataError] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # every file considered (for input hashes)


def list_files(root: Path) -> list[Path]:
    """Every regular file under ``root`` in a stable order, hidden files and folders excluded."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _series_label(info: SeriesInfo, root: Path) -> str:
    parent = Path(os.path.commonpath([str(f.parent) for f in info.files]))
    return _rel(parent, root) or "."


def _file_stem(path: Path) -> str:
    name = path.name
    for sfx in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return path.stem


def discover(
    root: Path,
    *,
    mask_series_pattern: str,
    mask_file_suffixes: list[str],
    default_modality: str,
    salt: str,
    cases_csv: Path | None = None,
    workers: int = 1,
) -> Discovery:
    """Scan ``root`` (headers only for DICOM; in ``workers`` processes on big roots) and return the cases
    with their pseudonymous ids."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: data root does not exist or is not a folder")
    try:
        mask_re = re.compile(mask_series_pattern)
    except re.error as err:
        raise ConfigError(f"preprocess.mask_series_pattern: not a valid regex ({err})") from None

    found = Discovery(files=list_files(root))
    volume_files = [f for f in found.files if is_nifti(f) or is_itk(f)]
    dicom_candidates = [f for f in found.files if not (is_nifti(f) or is_itk(f)) and not _ignored(f)]
    scan = scan_dicom(dicom_candidates, root, workers=workers)
    found.rejected.extend(scan.rejected)

    if cases_csv is not None:
        _cases_from_csv(found, root, cases_csv, scan.series, default_modality, salt)
    else:
        _cases_from_dicom(found, root, scan.series, mask_re, salt)
        _cases_from_files(found, root, volume_files, mask_file_suffixes, default_modality, salt)
    found.cases.sort(key=lambda c: c.case_id)
    return found


def _cases_from_dicom(
    found: Discovery, root: Path, series: list[SeriesInfo], mask_re: re.Pattern[str], salt: str
) -> None:
    by_study: dict[tuple[str, str], list[SeriesInfo]] = defaultdict(list)
    for info in series:
        by_study[(info.study_uid, info.frame_of_reference)].append(info)
    for members in by_study.values():
        masks = [s for s in members if mask_re.search(s.description or "")]
        images = [s for s in members if s not in masks]
        for img in images:
            candidates = [m for m in masks if (m.rows, m.columns) == (img.rows, img.columns)]
            if len(candidates) > 1:
                # Same-size candidates are ambiguous: guessing would pair a lesion with the wrong image.
                same_count = [m for m in candidates if len(m.files) == len(img.files)]
                candidates = same_count if len(same_count) == 1 else candidates
            if len(candidates) > 1:
                found.rejected.append(
                    InputDataError(
                        _series_label(img, root),
                        f"{len(candidates)} mask series match this image series; name one in a cases CSV",
                        "ambiguous_mask",
                    )
                )
                continue
            mask = candidates[0] if candidates else None
            patient = keyed_pseudonym(salt, "patient:" + img.patient_key, "p")
            found.cases.append(
                CaseSpec(
                    case_id=keyed_pseudonym(salt, "series:" + img.series_uid, "c"),
                    patient_id=patient,
                    modality=img.modality or "OT",
                    image=Source("dicom", img.files, _series_label(img, root), img),
                    mask=None
                    if mask is None
                    else Source("dicom", mask.files, _series_label(mask, root), mask),
                )
            )


def _cases_from_files(
    found: Discovery, root: Path, files: list[Path], suffixes: list[str], modality: str, salt: str
) -> None:
    images: dict[tuple[Path, str], Path] = {}
    masks: dict[tuple[Path, str], Path] = {}
    for f in files:
        stem = _file_stem(f)
        sfx = next((s for s in sorted(suffixes, key=len, reverse=True) if stem.endswith(s)), None)
        if sfx is not None:
            masks[(f.parent, stem[: -len(sfx)])] = f
        else:
            key = stem[: -len("_image")] if stem.endswith("_image") else stem
            images[(f.parent, key)] = f
    for (folder, key), img in sorted(images.items()):
        mask = masks.pop((folder, key), None)
        kind = "nifti" if is_nifti(img) else "itk"
        ident = _rel(folder / key, root)
        found.cases.append(
            CaseSpec(
                case_id=keyed_pseudonym(salt, "file:" + ident, "c"),
                patient_id=keyed_pseudonym(salt, "patient:" + ident, "p"),
                modality=modality,
                image=Source(kind, (img,), _rel(img, root)),
                mask=None
                if mask is None
                else Source("nifti" if is_nifti(mask) else "itk", (mask,), _rel(mask, root)),
            )
        )
    for (_folder, _key), orphan in sorted(masks.items()):
        found.rejected.append(
            InputDataError(_rel(orphan, root), "mask file without a matching image file", "orphan_mask")
        )


def _cases_from_csv(
    found: Discovery, root: Path, cases_csv: Path, series: list[SeriesInfo], default_modality: str, salt: str
) -> None:
    if not cases_csv.is_file():
        raise ConfigError(f"{cases_csv}: cases CSV not found")
    series_by_folder: dict[Path, list[SeriesInfo]] = defaultdict(list)
    for info in series:
        series_by_folder[Path(os.path.commonpath([str(f.parent) for f in info.files]))].append(info)

    def source(rel: str, line: int) -> Source:
        path = (root / rel).resolve()
        label = rel
        if path.is_dir():
            hits = series_by_folder.get(path, [])
            if len(hits) != 1:
                raise InputDataError(
                    f"{cases_csv.name}:{line}",
                    f"{label}: expected one DICOM series, found {len(hits)}",
                    "cases_csv",
                )
            return Source("dicom", hits[0].files, label, hits[0])
        if path.is_file() and (is_nifti(path) or is_itk(path)):
            return Source("nifti" if is_nifti(path) else "itk", (path,), label)
        raise InputDataError(
            f"{cases_csv.name}:{line}", f"{label}: not a series folder or a NIfTI/ITK file", "cases_csv"
        )

    with open(cases_csv, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"case", "image", "mask"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f"{cases_csv}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                image = source(row["image"], line)
                mask = source(row["mask"], line) if row.get("mask") else None
            except InputDataError as err:
                found.rejected.append(err)
                continue
            modality = row.get("modality") or (image.series.modality if image.series else default_modality)
            patient = row.get("patient") or (image.series.patient_key if image.series else row["case"])
            found.cases.append(
                CaseSpec(
                    case_id=keyed_pseudonym(salt, "case:" + row["case"], "c"),
                    patient_id=keyed_pseudonym(salt, "patient:" + patient, "p"),
                    modality=modality,
                    image=image,
                    mask=mask,
                )
            )
