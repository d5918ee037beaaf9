"""The 2D slice store: per split, a handful of memory-mappable arrays instead of one file per slice.

Layout of ``slices/<split>/``:
  image.npy  float32 (N, H, W)   normalised intensities
  mask.npy   uint8   (N, H, W)   label values (0 = background)
  label.npy  int8    (N,)        1 abnormal, 0 normal, -1 unknown (case without mask)
  index.csv                      row, case_id, patient_id, slice, label, foreground_fraction, lesion_voxels
H and W are the canonical volume's i (towards R) and j (towards A) axes.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_FIELDS = ("row", "case_id", "patient_id", "slice", "label", "foreground_fraction", "lesion_voxels")


@dataclass(frozen=True)
class SliceSet:
    image: np.ndarray  # (N, H, W) float32
    mask: np.ndarray  # (N, H, W) uint8
    label: np.ndarray  # (N,) int8
    rows: list[dict[str, object]]


def write_slices(folder: Path, parts: list[SliceSet]) -> int:
    """Concatenate the cases' slices (in the given order) and write the split's arrays; returns N."""
    folder.mkdir(parents=True, exist_ok=True)
    if parts:
        image = np.concatenate([p.image for p in parts])
        mask = np.concatenate([p.mask for p in parts])
        label = np.concatenate([p.label for p in parts])
    else:
        image = np.zeros((0, 0, 0), np.float32)
        mask = np.zeros((0, 0, 0), np.uint8)
        label = np.zeros((0,), np.int8)
    np.save(folder / "image.npy", image, allow_pickle=False)
    np.save(folder / "mask.npy", mask, allow_pickle=False)
    np.save(folder / "label.npy", label, allow_pickle=False)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=INDEX_FIELDS, lineterminator="\n")
    writer.writeheader()
    row = 0
    for part in parts:
        for r in part.rows:
            writer.writerow({**r, "row": row})
            row += 1
    (folder / "index.csv").write_text(buf.getvalue(), encoding="utf-8")
    return int(label.shape[0])


def load_slices(folder: Path, mmap: bool = True) -> SliceSet:
    """Open a split's arrays (memory-mapped by default) and its index rows."""
    mode = "r" if mmap else None
    with open(folder / "index.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return SliceSet(
        image=np.load(folder / "image.npy", mmap_mode=mode, allow_pickle=False),
        mask=np.load(folder / "mask.npy", mmap_mode=mode, allow_pickle=False),
        label=np.load(folder / "label.npy", mmap_mode=mode, allow_pickle=False),
        rows=rows,  # type: ignore[arg-type]
    )
