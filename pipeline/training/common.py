"""Pieces every training stage shares: run keys, fit configs, slice prediction, image files."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from pipeline.config import CommonConfig, TrainLoopConfig
from pipeline.io.atomic import atomic_write_bytes
from pipeline.lineage.record import write_lineage
from pipeline.runtime.device import describe_device, resolve_device
from pipeline.runtime.distributed import DistInfo
from pipeline.training.checkpoint import load_weights, save_weights
from pipeline.training.engine import FitConfig, FitResult, fit
from pipeline.training.loaders import eval_loader, train_loader


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


def fit_task(
    task: Any,
    train_set: Any,
    val_set: Any,
    loop: TrainLoopConfig,
    common: CommonConfig,
    monitor: tuple[str, str],
    key: str,
    out_dir: Path,
    live_dir: Path | None,
    dist: DistInfo | None,
    progress: bool,
    val_batch_size: int | None = None,
) -> FitResult:
    """Train ``task`` with the engine on loaders built the way exact resume and DDP need them.
    ``monitor`` is (validation metric, "max" | "min") and picks best.pt."""
    return fit(
        task,
        train_loader(train_set, loop.batch_size, common.seed, loop.num_workers, dist),
        eval_loader(val_set, val_batch_size or loop.batch_size),
        fit_config(loop, common, monitor[0], monitor[1], key),
        out_dir,
        live_dir=live_dir,
        progress=progress,
        dist=dist,
    )


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


def tile_slices(images: list[np.ndarray], columns: int = 8) -> np.ndarray:
    """Tile (i, j) slices, row by row, into one (i, j) image that save_png shows in reading order."""
    h, w = images[0].shape
    rows = -(-len(images) // columns)
    grid = np.zeros((columns * h, rows * w), np.float32)
    for k, img in enumerate(images):
        c, r = k % columns, k // columns
        grid[(columns - 1 - c) * h : (columns - c) * h, (rows - 1 - r) * w : (rows - r) * w] = img
    return grid


def save_trained(
    out_dir: Path,
    stage: str,
    net: nn.Module,
    section: Any,
    key: str,
    common: CommonConfig,
    result: FitResult,
    lineage: dict[str, Any] | None,
) -> None:
    """Write ``model.pt`` (weights + the config that rebuilds the network) and ``lineage.json`` (with the
    device, precision and the ops torch flagged as having no deterministic implementation)."""
    meta = {"config": section.model_dump(), "run_key": key, "stage": stage}
    save_weights(out_dir / "model.pt", {"net": net}, meta)
    if lineage is not None:
        save_lineage(out_dir, key, common, result, lineage)


def save_lineage(
    out_dir: Path, key: str, common: CommonConfig, result: FitResult, lineage: dict[str, Any]
) -> None:
    """``lineage.json`` of a training stage, with the device, precision and the ops torch flagged, while
    training, as having no deterministic implementation."""
    device = resolve_device(common.device)
    write_lineage(
        out_dir,
        {
            **lineage,
            "run_key": key,
            "device": describe_device(device),
            "precision": result.precision_used,
            "deterministic": common.deterministic,
            # what torch flagged while this run trained (a resumed run: since the resume), not a list of
            # what might be flagged
            "nondeterministic_ops": list(result.nondeterministic_ops),
        },
    )


def load_best(net: nn.Module, out_dir: Path, device_name: str) -> tuple[nn.Module, Any]:
    """Load ``out_dir/best.pt`` into ``net`` (left as trained when there is none); move it to the device."""
    device = resolve_device(device_name)
    best = out_dir / "best.pt"
    if best.is_file():
        net.load_state_dict(load_weights(best)[0]["net"])
    return net.to(device), device


def stacked_spacing(data_dir: Path) -> tuple[float, float, float]:
    """Voxel spacing of slices stacked as (slice, i, j), from the preprocess plan."""
    plan = json.loads((data_dir / "plan.json").read_text(encoding="utf-8"))
    ts = [float(v) for v in plan["target_spacing"]]
    return (ts[2], ts[0], ts[1])


def fit_summary(result: FitResult) -> dict[str, Any]:
    """The training figures every training stage reports."""
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "resumed_from_epoch": result.resumed_from_epoch,
        "images_per_second": result.images_per_second,
        "data_wait_fraction": result.data_wait_fraction,
        "device": result.device,
        "precision": result.precision_used,
    }
