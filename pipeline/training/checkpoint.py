"""Checkpoints: state_dicts, numbers and strings only, written atomically, read with ``weights_only=True``.

Two formats share this module:

* **training checkpoint** (``last.pt``/``best.pt``, :func:`save_checkpoint`/:func:`load_checkpoint`): every
  module's state_dict, optimisers, schedulers, ``Task.extra_state()``, epoch, global step, best metric,
  history, the global RNG states and the run key. Enough to resume exactly.
* **weights file** (:func:`save_weights`/:func:`load_weights`): module state_dicts plus JSON-able meta
  (config, lineage) for downstream stages. :func:`load_weights` also reads the modules of a training
  checkpoint, so ``best.pt`` can be used directly.

No pickled modules or arbitrary objects: what the unpickler may build is limited to tensors, numbers,
strings, None, lists, tuples and dicts, so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError, InputDataError, PipelineStateError
from pipeline.io.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medsynth-checkpoint"
WEIGHTS_FORMAT = "medsynth-weights"
FORMAT_VERSION = 1


@dataclass
class TrainingState:
    """Everything a training checkpoint holds (see the module docstring). ``epoch`` is the last completed
    epoch (0-based); a resumed run continues with ``epoch + 1``."""

    run_key: str
    task: str
    epoch: int
    global_step: int
    modules: dict[str, dict[str, Any]]
    optimizers: dict[str, dict[str, Any]]
    schedulers: dict[str, dict[str, Any]]
    extra: dict[str, Any]
    best_metric: float | None = None
    best_epoch: int | None = None
    monitor: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """Global python/numpy/torch(/CUDA) generator states as tensors and plain numbers."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the device count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------------ training checkpoints
def _to_bytes(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def encode_checkpoint(state: TrainingState) -> bytes:
    """The bytes of a training checkpoint (``torch.save`` of plain containers and tensors)."""
    obj = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "run_key": state.run_key,
        "task": state.task,
        "epoch": int(state.epoch),
        "global_step": int(state.global_step),
        "best_metric": None if state.best_metric is None else float(state.best_metric),
        "best_epoch": None if state.best_epoch is None else int(state.best_epoch),
        "monitor": state.monitor,
        "history": [dict(h) for h in state.history],
        "modules": state.modules,
        "optimizers": state.optimizers,
        "schedulers": state.schedulers,
        "extra": state.extra,
        "rng": state.rng,
        "config": state.config,
    }
    try:
        return _to_bytes(obj)
    except Exception as exc:  # e.g. a scheduler state holding a lambda
        raise PipelineStateError(f"cannot serialise the training checkpoint: {exc}") from exc


def save_checkpoint(path: Path, state: TrainingState) -> None:
    """Write a training checkpoint atomically (serialise to bytes, then temp file + rename)."""
    data = encode_checkpoint(state)
    atomic_write_bytes(Path(path), data)
    logger.debug("wrote checkpoint %s (epoch %d, %d bytes)", path, state.epoch, len(data))


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputDataError(str(path), "file not found", code="missing") from None
    except Exception as exc:  # truncated zip, bad pickle, forbidden global, ...
        raise InputDataError(str(path), f"not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def load_checkpoint(path: Path) -> TrainingState:
    """Read a training checkpoint; InputDataError when it is missing, truncated or not ours."""
    obj = _torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise InputDataError(str(path), "not a medsynth training checkpoint")
    if obj.get("format_version") != FORMAT_VERSION:
        raise InputDataError(
            str(path), f"checkpoint format version {obj.get('format_version')} (expected {FORMAT_VERSION})"
        )
    try:
        return TrainingState(
            run_key=str(obj["run_key"]),
            task=str(obj["task"]),
            epoch=int(obj["epoch"]),
            global_step=int(obj["global_step"]),
            modules=dict(obj["modules"]),
            optimizers=dict(obj["optimizers"]),
            schedulers=dict(obj["schedulers"]),
            extra=dict(obj["extra"]),
            best_metric=obj["best_metric"],
            best_epoch=obj["best_epoch"],
            monitor=str(obj["monitor"]),
            history=[dict(h) for h in obj["history"]],
            rng=dict(obj["rng"]),
            config=dict(obj.get("config") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputDataError(str(path), f"checkpoint is missing or has an ill-typed field ({exc})") from None


# ------------------------------------------------------------------------------------------- weights files
def _json_meta(meta: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(meta, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise PipelineStateError(f"weights meta must be JSON-serialisable: {exc}") from None


def save_weights(path: Path, modules: dict[str, nn.Module], meta: dict[str, Any]) -> None:
    """Write module weights (state_dicts on CPU, DDP wrappers removed) and JSON-able ``meta`` atomically."""
    states = {}
    for name, module in modules.items():
        module = module.module if _is_ddp(module) else module
        states[name] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    obj = {
        "format": WEIGHTS_FORMAT,
        "format_version": FORMAT_VERSION,
        "modules": states,
        "meta_json": json.dumps(_json_meta(meta), sort_keys=True),
    }
    atomic_write_bytes(Path(path), _to_bytes(obj))


@contextmanager
def rebuilding_from(path: Path) -> Iterator[None]:
    """Wrap the rebuild of a network from a weights file's metadata (config validation, variant lookup,
    build, ``load_state_dict``): an edited or damaged file gives one InputDataError naming it (code
    ``bad_meta``) instead of a bare KeyError, ValidationError (a ValueError) or state-dict RuntimeError."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, ConfigError) as e:
        text = str(e).strip()
        first = text.splitlines()[0] if text else ""
        reason = f"metadata does not describe a usable network ({type(e).__name__}: {first})"
        raise InputDataError(str(path), reason, "bad_meta") from e


def load_weights(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """``(state_dicts by module name, meta)`` from a weights file or a training checkpoint (CPU tensors).

    For a training checkpoint the meta holds its epoch, run key, best metric/epoch, monitor and task name.
    InputDataError when the file is missing, truncated or neither format.
    """
    obj = _torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == WEIGHTS_FORMAT:
        if obj.get("format_version") != FORMAT_VERSION:
            raise InputDataError(str(path), f"weights format version {obj.get('format_version')} unknown")
        return dict(obj["modules"]), json.loads(obj["meta_json"])
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        meta = {
            k: obj.get(k) for k in ("task", "run_key", "epoch", "global_step", "best_metric", "best_epoch")
        }
        meta["monitor"] = obj.get("monitor")
        return dict(obj["modules"]), meta
    raise InputDataError(str(path), "neither a medsynth weights file nor a training checkpoint")


def _is_ddp(module: nn.Module) -> bool:
    return isinstance(module, torch.nn.parallel.DistributedDataParallel)
