"""Pieces every training stage shares: run keys, fit configs, slice prediction, image files."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import CommonConfig, TrainLoopConfig
from pipeline.io.atomic import atomic_write_bytes
from pipeline.training.engine import FitConfig


def data_fingerprint(data_dir: Path) -> str:
    """Identity of a preprocess output: its recorded input hash and the manifest's bytes."""
    lineage = json.loads((data_dir / "lineage.json").read_text(encoding="utf-8"))
    h = hashlib.sha256(str(lineage.get("inputs", {}).get("data_root", "")).encode())
    h.update((data_dir / "manifest.csv").read_bytes())
    return h.hexdigest()


def code_fingerprint() -> str:
    """Hash of the installed `pipeline` package's source: new code never resumes an old run's checkpoint
    (DVC keeps checkpoint folders across runs, `persist: true`, so that killed runs can resume)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def run_key(section: Any, common: CommonConfig, data_dir: Path) -> str:
    """A checkpoint is resumed only by a run with the same params, data and code."""
    payload = json.dumps(
        {"section": section.model_dump(), "seed": common.seed, "deterministic": common.deterministic},
        sort_keys=True,
    )
    return hashlib.sha256((payload + data_fingerprint(data_dir) + code_fingerprint()).encode()).hexdigest()[
        :16
    ]


def fit_config(loop: TrainLoopConfig, common: CommonConfig, monitor: str, mode: str, key: str) -> FitConfig:
    return FitConfig(
        epochs=loop.epochs,
        checkpoint_every=loop.checkpoint_every,
        monitor=monitor,
        monitor_mode=mode,  # type: ignore[arg-type]
        seed=common.seed,
        deterministic=common.deterministic,
        device=common.device,
        precision=loop.precision,
        max_steps_per_epoch=loop.max_steps_per_epoch,
        run_key=key,
    )


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a 2D float image in [0, 1] or an (H, W, 3) uint8 image as PNG, atomically. Arrays are indexed
    (i, j) = (towards R, towards A); shown with anterior up and the patient's right on the right
    (neurological convention)."""
    if image.ndim == 2:
        image = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    shown = np.ascontiguousarray(np.swapaxes(image, 0, 1)[::-1])
    buf = io.BytesIO()
    Image.fromarray(shown).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
