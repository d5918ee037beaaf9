"""torchrun / DistributedDataParallel helpers. Nothing home-made: torch.distributed with env:// rendezvous.

The stage reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (set by torchrun) through
:func:`dist_info_from_env` and passes the resulting :class:`DistInfo` down; torch itself reads
``MASTER_ADDR``/``MASTER_PORT`` during ``init_process_group(init_method="env://")``.
Every helper is a no-op in a single process, so the same code runs with and without torchrun.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ConfigError(
                f"invalid distributed setup: rank={self.rank}, local_rank={self.local_rank}, "
                f"world_size={self.world_size}"
            )


SINGLE = DistInfo()


def dist_info_from_env(environ: Mapping[str, str]) -> DistInfo:
    """DistInfo from torchrun's variables (pure: the stage passes ``os.environ``).

    None of RANK/LOCAL_RANK/WORLD_SIZE set → a single process; some but not all, or a non-integer →
    ConfigError.
    """
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    present = [k for k in keys if k in environ]
    if not present:
        return SINGLE
    missing = [k for k in keys if k not in environ]
    if missing:
        raise ConfigError(f"distributed launch is missing {', '.join(missing)} (set: {', '.join(present)})")
    try:
        rank, local_rank, world = (int(environ[k]) for k in keys)
    except ValueError as exc:
        raise ConfigError(f"RANK/LOCAL_RANK/WORLD_SIZE must be integers: {exc}") from None
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world)


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def init_distributed(dist: DistInfo, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the process group (gloo on CPU, nccl on CUDA) when ``world_size > 1``; idempotent."""
    if dist.world_size <= 1 or is_initialized():
        return
    if not tdist.is_available():
        raise ConfigError("world_size > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    tdist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=dist.rank,
        world_size=dist.world_size,
        timeout=timedelta(seconds=timeout_s),
        **kwargs,
    )
    logger.info("joined process group: rank %d/%d (%s)", dist.rank, dist.world_size, backend)


def cleanup() -> None:
    """Leave the process group if one was joined."""
    if is_initialized():
        tdist.destroy_process_group()


def is_main(dist: DistInfo | None) -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and logs to DVCLive."""
    return dist is None or dist.rank == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if not is_initialized():
        return
    if tdist.get_backend() == "nccl":
        tdist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        tdist.barrier()


def _reduce_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if tdist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def all_reduce_sum(values: Mapping[str, float]) -> dict[str, float]:
    """Sum each value over ranks (every rank must pass the same keys). Identity in one process."""
    if not is_initialized() or tdist.get_world_size() == 1 or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_reduce_device())
    tdist.all_reduce(packed, op=tdist.ReduceOp.SUM)
    return dict(zip(keys, packed.cpu().tolist(), strict=True))


def all_reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """Average each value over ranks (every rank must pass the same keys). Identity in one process."""
    if not is_initialized():
        return {k: float(v) for k, v in values.items()}
    world = tdist.get_world_size()
    return {k: v / world for k, v in all_reduce_sum(values).items()}


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank ``src``'s ``value`` on every rank (identity in one process)."""
    if not is_initialized():
        return int(value)
    packed = torch.tensor([int(value)], dtype=torch.int64, device=_reduce_device())
    tdist.broadcast(packed, src=src)
    return int(packed.item())
