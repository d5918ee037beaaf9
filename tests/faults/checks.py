"""What a killed run may leave on disk, checked file by file and output by output.

A stage output is *complete* when every file in it reads back whole with the library that consumes it
(JSON, CSV/TSV, YAML, NIfTI, DICOM, PNG, ``.npy``, ``.pt``). A cached, non-persistent output (written with
``pipeline.io.atomic.atomic_dir``) must moreover be all or nothing: when it exists it holds exactly the files
of a complete run. Temporaries of atomic writes (``.<name>.tmp-*``, ``.<name>.old-*``) may lie around after a
kill, but DVC must never record one as part of an output.

Limits: a CSV/TSV cut exactly between two lines reads as a shorter complete table, and free text (``.md``)
cannot be told complete; the all-or-nothing file lists and the atomic writes cover those.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMP_NAME = re.compile(r"^\..+\.(tmp|old)-[^/]+$")


def is_temp(rel: str | Path) -> bool:
    """True when any component of ``rel`` is an atomic-write temporary (see ``.dvcignore``)."""
    return any(TEMP_NAME.match(part) for part in Path(rel).parts)


@dataclass(frozen=True)
class Output:
    """One path a stage declares in dvc.yaml. ``cached`` and not ``persist``: written atomically as a
    whole; otherwise (persistent checkpoints folder, metrics, plots) every file is written atomically."""

    stage: str
    path: str
    cached: bool
    persist: bool

    @property
    def whole(self) -> bool:
        return self.cached and not self.persist


def pipeline_outputs(root: Path) -> list[Output]:
    """Every output, metrics file and plots folder of every stage in ``root/dvc.yaml`` (foreach expanded)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [
            Output(stage.name, str(out.def_path), bool(out.use_cache), bool(out.persist))
            for stage in repo.index.stages
            for out in stage.outs
        ]


# ------------------------------------------------------------------------------------------- single files
def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def _check_table(path: Path, delimiter: str) -> None:
    text = _text(path)
    if text and not text.endswith("\n"):
        raise ValueError("no newline at the end (cut short?)")
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if not rows or not rows[0]:
        raise ValueError("no header")
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise ValueError(f"line {n} has {len(row)} fields, the header {len(rows[0])}")


def _check_nifti(path: Path) -> None:
    import nibabel as nib

    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as fh:  # reading to the end checks the gzip CRC and length
            data = fh.read()
        image = nib.Nifti1Image.from_bytes(data)
    else:
        image = nib.load(str(path))
    image.get_fdata()


def _check_tar(path: Path) -> None:
    """A shard archive (pipeline.io.shards): every member reads to its end; NIfTI members parse."""
    import tarfile

    import nibabel as nib

    with tarfile.open(path, "r:") as tar:
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            data = fh.read() if fh is not None else b""
            if len(data) != member.size:
                raise ValueError(f"member {member.name} is cut short")
            if member.name.endswith(".nii"):
                nib.Nifti1Image.from_bytes(data).get_fdata()


def _check_dicom(path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(str(path))
    if "PixelData" in ds:
        ds.pixel_array  # noqa: B018 - decoding is the check: a cut file has too few pixel bytes


def _check_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.load()


def _check_npy(path: Path) -> None:
    import numpy as np

    np.load(path, allow_pickle=False)


def _check_pt(path: Path) -> None:
    import torch

    torch.load(path, map_location="cpu", weights_only=True)


def _check_yaml(path: Path) -> None:
    import yaml

    yaml.safe_load(_text(path))


CHECKERS = {
    ".json": lambda p: json.loads(_text(p)),
    ".csv": lambda p: _check_table(p, ","),
    ".tsv": lambda p: _check_table(p, "\t"),
    ".yaml": _check_yaml,
    ".yml": _check_yaml,
    ".lock": _check_yaml,  # dvc.lock
    ".nii": _check_nifti,
    ".tar": _check_tar,
    ".nii.gz": _check_nifti,
    ".dcm": _check_dicom,
    ".png": _check_png,
    ".npy": _check_npy,
    ".pt": _check_pt,
    ".md": _text,  # free text: only that it decodes; truncation cannot be told
    ".txt": _text,
    ".html": _text,
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def check_file(path: Path) -> str | None:
    """Why ``path`` is not a complete file of its type (None when it reads back whole, or when its type has
    no checker: see :data:`CHECKERS`)."""
    checker = CHECKERS.get(_suffix(path))
    if checker is None:
        return None
    try:
        if path.stat().st_size == 0 and _suffix(path) not in (".md", ".txt"):
            return "empty file"
        checker(path)
    except Exception as exc:  # any failure to read back is the finding
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    return None


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class Report:
    """What :func:`inspect` found. ``violations`` are broken guarantees; ``temps`` are atomic-write
    temporaries inside or beside outputs (expected right after a kill, litter after a completed rerun)."""

    violations: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    files_checked: int = 0
    unchecked_suffixes: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)


def files_of(path: Path) -> list[str]:
    """Relative paths of the files under ``path`` (``[""]`` for a file), temporaries left out."""
    if path.is_file():
        return [""]
    return sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and not is_temp(p.relative_to(path))
    )


def _temps_around(root: Path, out: Path) -> list[str]:
    """Temporaries inside ``out`` and those of ``out`` itself beside it."""
    found = [p for p in out.rglob("*") if is_temp(p.relative_to(out))] if out.is_dir() else []
    if out.parent.is_dir():
        found += [
            p for p in out.parent.iterdir() if TEMP_NAME.match(p.name) and p.name.startswith(f".{out.name}.")
        ]
    return sorted({p.relative_to(root).as_posix() for p in found if not any(q in found for q in p.parents)})


def inspect(root: Path, outputs: Iterable[Output], complete: dict[str, list[str]] | None = None) -> Report:
    """Check every output under ``root``. ``complete`` maps an output path to the files a complete run
    leaves in it (from an uninterrupted run): an all-or-nothing output that exists must hold exactly those."""
    report = Report()
    for out in outputs:
        path = root / out.path
        report.temps += _temps_around(root, path)
        if not path.exists():
            report.missing.append(out.path)
            continue
        rels = files_of(path)
        if out.whole and complete is not None and out.path in complete and rels != complete[out.path]:
            extra = sorted(set(rels) - set(complete[out.path]))
            lost = sorted(set(complete[out.path]) - set(rels))
            report.violations.append(
                f"{out.path}: not the complete output ({len(lost)} file(s) missing, e.g. {lost[:3]}; "
                f"{len(extra)} unexpected, e.g. {extra[:3]})"
            )
        for rel in rels:
            file = path / rel if rel else path
            if _suffix(file) not in CHECKERS:
                report.unchecked_suffixes.add(_suffix(file) or file.name)
                continue
            report.files_checked += 1
            problem = check_file(file)
            if problem is not None:
                report.violations.append(f"{file.relative_to(root).as_posix()}: {problem}")
    return report


def lockfile_problem(root: Path, stages: Iterable[str] = ()) -> str | None:
    """Why ``root/dvc.lock`` is not a complete lock file holding an entry for each of ``stages`` (None when
    it is, or when there is none). DVC writes it in 8 KiB pieces, and a piece can end where the YAML still
    parses (in the middle of a hash, say): DVC then reads it without complaint, so check the end too."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return None
    problem = check_file(lock)
    if problem is not None:
        return problem
    if not _text(lock).endswith("\n"):
        return "no newline at the end (cut short?)"
    missing = sorted(set(stages) - set((yaml_load(lock) or {}).get("stages") or {}))
    return f"no entry for {', '.join(missing)}" if missing else None


def yaml_load(path: Path) -> Any:
    import yaml

    return yaml.safe_load(_text(path))


def recorded_temps(root: Path) -> list[str]:
    """Temporaries DVC took as part of an output: entries of the ``.dir`` listings in the cache that
    dvc.lock points to whose path has a temporary's name."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return []
    found = []
    for stage, entry in (yaml_load(lock) or {}).get("stages", {}).items():
        for out in entry.get("outs", []) or []:
            md5 = str(out.get("md5", ""))
            if out.get("path") and is_temp(out["path"]):
                found.append(f"{stage}: {out['path']}")
            if not md5.endswith(".dir"):
                continue
            listing = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
            if listing.exists():
                for item in json.loads(listing.read_text()):
                    if is_temp(item["relpath"]):
                        found.append(f"{stage}: {out['path']}/{item['relpath']}")
    return found
