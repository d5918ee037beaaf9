"""Device resolution and mixed precision: bf16 autocast on CUDA only, the same code in fp32 on CPU."""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Callable
from typing import Any, Literal

import torch

from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

DeviceName = Literal["auto", "cpu", "cuda"]
Precision = Literal["bf16", "fp32"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``; ``"cuda"`` (ConfigError when absent).

    On CUDA the device is ``cuda:<local_rank>`` (one GPU per torchrun process).
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda; got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name == "cuda":
            raise ConfigError("device: cuda was requested but no CUDA device is available")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"local rank {local_rank} needs a GPU of its own but only {count} are visible")
    return torch.device("cuda", local_rank)


def effective_precision(device: torch.device, precision: str) -> Precision:
    """The precision a run really uses: bf16 only on a CUDA device that supports it, else fp32."""
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"precision must be bf16 or fp32; got {precision!r}")
    if precision == "bf16" and device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16"
        logger.warning(
            "bf16 requested but %s does not support it; running fp32", describe_device(device)["name"]
        )
    return "fp32"


def autocast_factory(
    device: torch.device, precision: str
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A zero-argument callable giving a fresh autocast context per use.

    CUDA + bf16 → ``torch.autocast("cuda", dtype=torch.bfloat16)``; anything else (CPU always) → a no-op
    ``contextlib.nullcontext()``, so tasks write ``with ctx.autocast(): ...`` unconditionally.
    """
    if effective_precision(device, precision) == "bf16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def describe_device(device: torch.device) -> dict[str, Any]:
    """What lineage records about the device: name, compute capability and library versions."""
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        info.update(
            name=torch.cuda.get_device_name(index),
            capability=f"{major}.{minor}",
            device_count=torch.cuda.device_count(),
            memory_gib=round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1),
        )
    else:
        info.update(
            name=platform.processor() or platform.machine() or "cpu",
            capability=None,
            threads=torch.get_num_threads(),
        )
    return info
