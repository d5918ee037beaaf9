"""Seed corpus (real files under ../shared/data) and deterministic case construction.

A case is fully determined by ``(seed, case id)``: its kind, its source, its mutations and so its bytes. The
parent builds the case files and sends the worker only paths, so a worker never runs mutation code and a
crash is always the reader's.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from tests.fuzz import dicom_mutators, nifti_mutators

KINDS = ("dicom_file", "dicom_series", "nifti")
KIND_WEIGHTS = (0.45, 0.2, 0.35)

_NOT_DICOM_NAMES = {"LICENSE", "SHA256SUMS", "MANIFEST.md", "PROVENANCE.md", "manifest.json", "README.md"}


@dataclass(frozen=True)
class Corpus:
    root: Path  # ../shared/data
    dicom_files: tuple[str, ...]  # relative to root
    series: tuple[tuple[str, ...], ...]  # each a tuple of files relative to root (one folder)
    series_weights: tuple[float, ...]
    niftis: tuple[str, ...]


def _is_candidate(path: Path) -> bool:
    return path.is_file() and path.name not in _NOT_DICOM_NAMES and not path.name.endswith((".nii.gz", ".md"))


def load_corpus(root: Path) -> Corpus:
    """Every DICOM seed file and multi-file series in the shared data, and the reference NIfTIs."""
    files: list[str] = []
    series: list[tuple[str, ...]] = []
    weights: list[float] = []
    single = root / "bad_dicom" / "single_files"
    files += sorted(p.relative_to(root).as_posix() for p in single.iterdir() if p.is_file())
    folders = sorted(
        {p.parent for sub in ("tcia_pgbm001", "dicom2nifti_reference") for p in (root / sub).rglob("*")
         if _is_candidate(p) and p.parent != root / sub}
    )  # fmt: skip
    folders += sorted(p for p in (root / "bad_dicom" / "series").iterdir() if p.is_dir())
    for folder in folders:
        members = tuple(sorted(p.relative_to(root).as_posix() for p in folder.iterdir() if _is_candidate(p)))
        if not members:
            continue
        # first, middle and last file of a series: different positions, same encoding
        picks = {members[0], members[len(members) // 2], members[-1]}
        files += sorted(picks) if "bad_dicom" not in folder.parts else []
        if len(members) > 1:
            series.append(members)
            failing = "failing" in folder.parts or "bad_dicom" in folder.parts
            weights.append(1.0 if failing else 3.0)
    niftis = sorted(
        p.relative_to(root).as_posix() for p in (root / "dicom2nifti_reference").rglob("*.nii.gz")
    )
    return Corpus(root, tuple(files), tuple(series), tuple(weights), tuple(niftis))


@cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


@cache
def _inflated(path: Path) -> bytes:
    return nifti_mutators.inflate(path.read_bytes())


@dataclass
class Case:
    id: int
    kind: str
    source: str
    mutations: list[str]
    request: dict[str, Any]  # what the worker gets: target and paths
    folder: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def case_rng(seed: int, case_id: int) -> random.Random:
    return random.Random(f"medsynth-fuzz:{seed}:{case_id}")


def _n_mutations(rng: random.Random) -> int:
    return rng.choices([0, 1, 2, 3], [0.02, 0.6, 0.28, 0.1])[0]


def build_case(
    corpus: Corpus, seed: int, case_id: int, workdir: Path, kinds: tuple[str, ...] = KINDS
) -> Case:
    """Write the files of case ``case_id`` under ``workdir`` and return how to run it."""
    rng = case_rng(seed, case_id)
    weights = [KIND_WEIGHTS[KINDS.index(k)] for k in kinds]
    kind = rng.choices(list(kinds), weights)[0]
    folder = workdir / f"case{case_id:06d}"
    folder.mkdir(parents=True)
    if kind == "dicom_file":
        return _dicom_file_case(rng, corpus, case_id, folder)
    if kind == "dicom_series":
        return _dicom_series_case(rng, corpus, case_id, folder)
    return _nifti_case(rng, corpus, case_id, folder)


def _dicom_file_case(rng: random.Random, corpus: Corpus, case_id: int, folder: Path) -> Case:
    source = rng.choice(corpus.dicom_files)
    data, done = dicom_mutators.mutate(rng, _read(corpus.root / source), _n_mutations(rng))
    path = folder / "file.dcm"
    path.write_bytes(data)
    request = {"target": "dicom", "files": [str(path)], "root": str(folder), "min_slices": 1}
    return Case(case_id, "dicom_file", source, done, request, folder)


def _dicom_series_case(rng: random.Random, corpus: Corpus, case_id: int, folder: Path) -> Case:
    members = rng.choices(corpus.series, corpus.series_weights)[0]
    victim = rng.randrange(len(members))
    series_dir = folder / "series"
    series_dir.mkdir()
    paths = []
    done: list[str] = []
    for i, rel in enumerate(members):
        dst = series_dir / f"{i:04d}_{Path(rel).name}"
        if i == victim:
            data, done = dicom_mutators.mutate(rng, _read(corpus.root / rel), max(1, _n_mutations(rng)))
            dst.write_bytes(data)
        else:
            os.symlink(corpus.root / rel, dst)
        paths.append(str(dst))
    request = {"target": "dicom", "files": paths, "root": str(folder), "min_slices": 3}
    source = f"{Path(members[0]).parent.as_posix()} [{victim + 1}/{len(members)}]"
    return Case(case_id, "dicom_series", source, done, request, folder)


def _nifti_case(rng: random.Random, corpus: Corpus, case_id: int, folder: Path) -> Case:
    if rng.random() < 0.02:
        blob, what = nifti_mutators.gzip_bomb(rng, b"")
        path = folder / "image.nii.gz"
        path.write_bytes(blob)
        request = {"target": "nifti", "path": str(path), "file": path.name}
        return Case(case_id, "nifti", "generated:bomb", [what], request, folder)
    if corpus.niftis and rng.random() < 0.5:
        source = rng.choice(corpus.niftis)
        data = _inflated(corpus.root / source)
    else:
        data, source = nifti_mutators.generated_source(rng)
    data, done = nifti_mutators.mutate(rng, data, _n_mutations(rng))
    compress = rng.random() < 0.5
    if compress:
        data = nifti_mutators.gzip_bytes(data)
        if rng.random() < 0.15:
            data, what = nifti_mutators.damage_gzip(rng, data)
            done.append(what)
    path = folder / ("image.nii.gz" if compress else "image.nii")
    path.write_bytes(data)
    request = {"target": "nifti", "path": str(path), "file": path.name}
    return Case(case_id, "nifti", source, done, request, folder)
