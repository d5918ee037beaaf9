"""The one training loop every model uses: ``fit(task, train_loader, val_loader, cfg, out_dir)``.

The task does forward/backward/optimiser steps (:mod:`pipeline.training.task`); the engine owns the rest:
device and autocast, seeding, DistributedDataParallel, epochs, validation, checkpoints and resume, DVCLive,
throughput measurement and the progress bar.

Resume is exact because nothing random in an epoch depends on what ran before it in this process: at every
epoch start the global python/numpy/torch generators are reseeded from ``(seed, epoch, rank)``, the train
sampler's order is set from ``(seed, epoch)`` (a ``RandomSampler``'s generator is reseeded in place, a
``DistributedSampler`` gets ``set_epoch``), and ``train_loader.dataset.set_epoch(epoch)`` is called when the
dataset has it (datasets derive per-sample augmentation from ``(seed, epoch, index)``). Model, optimiser,
scheduler and task state come back from ``last.pt``.

Checkpoint policy: ``last.pt`` every ``checkpoint_every`` epochs, at the final epoch, and at every epoch whose
monitored metric improves; ``best.pt`` (same content) is written right after ``last.pt`` at an improving
epoch. So ``best.pt`` never describes an epoch later than ``last.pt``, and a run killed between the two
writes repairs ``best.pt`` from ``last.pt`` on resume.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from pipeline.errors import ConfigError, InputDataError, PipelineStateError
from pipeline.io.atomic import atomic_write_bytes
from pipeline.runtime.device import autocast_factory, effective_precision, resolve_device
from pipeline.runtime.distributed import (
    SINGLE,
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_int,
    init_distributed,
    is_main,
)
from pipeline.runtime.seed import flagged_nondeterministic_ops, loader_seed, seed_epoch, seed_everything
from pipeline.training.checkpoint import (
    TrainingState,
    capture_rng_state,
    encode_checkpoint,
    load_checkpoint,
    restore_rng_state,
)
from pipeline.training.task import StepContext, Task

logger = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class FitConfig:
    """How to train. ``monitor`` names a metric of the epoch record: a key returned by ``Task.validate``
    (looked up as ``val/<monitor>``), a train loss (``train/<monitor>``) or a full record key; ``""`` keeps
    no best checkpoint."""

    epochs: int
    checkpoint_every: int  # epochs between checkpoints (last.pt is always written at the end)
    monitor: str  # validation metric name that picks best.pt, e.g. "val_dice"
    monitor_mode: Literal["max", "min"]
    seed: int
    deterministic: bool
    device: str  # auto|cpu|cuda
    precision: Literal["bf16", "fp32"]
    max_steps_per_epoch: int = 0  # 0 = whole loader
    run_key: str = ""  # hash of params + inputs: a checkpoint with another key is not resumed

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.monitor_mode not in ("max", "min"):
            raise ConfigError(f"monitor_mode must be max or min, got {self.monitor_mode!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"precision must be bf16 or fp32, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.max_steps_per_epoch < 0:
            raise ConfigError(f"max_steps_per_epoch must be >= 0, got {self.max_steps_per_epoch}")


@dataclass(frozen=True)
class FitResult:
    """What a fit did. ``history`` has one record per completed epoch (resumed ones included) with keys
    ``epoch``, ``step``, ``train/<loss>``, ``val/<metric>``, ``lr/<optimizer>`` and ``perf/...``.
    Throughput figures cover the epochs run by this call (all ranks together)."""

    epochs_run: int
    resumed_from_epoch: int | None
    best_epoch: int | None
    best_metric: float | None
    last_metrics: dict[str, float]
    history: list[dict[str, float]]
    images_per_second: float
    data_wait_fraction: float
    device: str
    precision_used: str
    #: ops torch flagged as having no deterministic implementation while this call trained (CUDA, mostly)
    nondeterministic_ops: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- helpers
def make_train_sampler(
    dataset: Dataset[Any],
    *,
    seed: int,
    dist: DistInfo | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> DistributedSampler[Any]:
    """The train sampler stages should use, for any world size (no process group needed to build it).

    A ``DistributedSampler`` whose permutation depends only on ``(seed, epoch)``, not on the number of
    processes: rank ``r`` of ``n`` takes every ``n``-th index of it. With per-rank batch ``B/n`` the union of
    the ranks' ``i``-th batches is then exactly the single-process ``i``-th batch of size ``B``.
    """
    dist = dist or SINGLE
    return DistributedSampler(
        dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Tensors inside (nested) dicts, lists and tuples moved to ``device``; other leaves unchanged."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        items = {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
        try:
            return type(obj)(items)
        except TypeError:
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(move_to_device(v, device, non_blocking) for v in obj)
    return obj


def first_dim(obj: Any) -> int:
    """Size of the first dimension of the first tensor found depth-first (0 when there is none)."""
    if isinstance(obj, torch.Tensor):
        return int(obj.shape[0]) if obj.dim() > 0 else 0
    if isinstance(obj, Mapping):
        values: Iterable[Any] = obj.values()
    elif isinstance(obj, list | tuple):
        values = obj
    else:
        return 0
    for value in values:
        n = first_dim(value)
        if n:
            return n
    return 0


def _samplers(loader: DataLoader[Any]) -> list[Any]:
    found: list[Any] = []
    for candidate in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if candidate is not None and all(candidate is not f for f in found):
            found.append(candidate)
    return found


def _check_loader(loader: DataLoader[Any], dist: DistInfo, deterministic: bool) -> None:
    samplers = _samplers(loader)
    if dist.world_size > 1 and not any(isinstance(s, DistributedSampler) for s in samplers):
        logger.warning(
            "world_size=%d but the train loader has no DistributedSampler: every rank sees every sample",
            dist.world_size,
        )
    if getattr(loader, "num_workers", 0) > 0 and getattr(loader, "persistent_workers", False):
        logger.warning(
            "the train loader keeps persistent workers: dataset.set_epoch does not reach them and their "
            "random state carries across epochs, so a resumed run%s may differ from an uninterrupted one",
            " (deterministic mode)" if deterministic else "",
        )


def _prepare_epoch(loader: DataLoader[Any], seed: int, epoch: int) -> None:
    """Set the epoch's shuffle order and augmentation epoch (independent of earlier epochs)."""
    for sampler in _samplers(loader):
        if isinstance(sampler, RandomSampler):
            if sampler.generator is None:
                sampler.generator = torch.Generator()
            sampler.generator.manual_seed(loader_seed(seed, epoch))
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
    set_epoch = getattr(loader.dataset, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_image(array: Any) -> np.ndarray:
    """Preview image → uint8 (2D grey or HxWx3): floats are taken as [0, 1] and clipped."""
    arr = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    if arr.dtype != np.uint8:
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0)
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise PipelineStateError(f"preview images must be 2D or HxWx3, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _monitor_value(record: Mapping[str, float], monitor: str) -> float | None:
    if not monitor:
        return None
    for key in (monitor, f"val/{monitor}", f"train/{monitor}"):
        if key in record:
            return float(record[key])
    raise ConfigError(f"monitor {monitor!r} is not among the epoch's metrics: {', '.join(sorted(record))}")


def _improved(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _incompatibility(
    state: TrainingState,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, Any],
    schedulers: Mapping[str, Any],
) -> str | None:
    """Why a checkpoint cannot be loaded into this task without partial writes (None when it can)."""
    for what, have, stored in (
        ("modules", modules, state.modules),
        ("optimizers", optimizers, state.optimizers),
        ("schedulers", schedulers, state.schedulers),
    ):
        if set(have) != set(stored):
            return f"{what} {sorted(stored)} in the checkpoint, {sorted(have)} in the task"
    for name, module in modules.items():
        current = module.state_dict()
        stored_sd = state.modules[name]
        if set(current) != set(stored_sd):
            return f"module {name!r} has different parameter names"
        for key, tensor in current.items():
            other = stored_sd[key]
            if isinstance(tensor, torch.Tensor) and (
                not isinstance(other, torch.Tensor) or other.shape != tensor.shape
            ):
                return f"module {name!r} parameter {key!r} has a different shape"
    for name, opt in optimizers.items():
        groups = state.optimizers[name].get("param_groups", [])
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in opt.param_groups]:
            return f"optimizer {name!r} has different parameter groups"
    return None


class _Live:
    """DVCLive on rank 0. Opened fresh (``resume=False``) and refilled from the checkpoint's history, so
    step ``e`` is always epoch ``e``: DVCLive's own resume continues from its ``metrics.json``, which can be
    ahead of ``last.pt`` (killed after logging, before checkpointing) and repeats step 0 after a one-epoch
    run, both of which would duplicate steps.

    DVCLive writes in place (a TSV is created empty and filled when closed, an image straight into its
    name), and ``live_dir/plots`` is a stage output: so DVCLive works in a temporary sibling folder whose
    files are copied into ``live_dir`` atomically after every step, and a kill leaves each file whole."""

    def __init__(self, live_dir: Path, history: list[dict[str, float]]) -> None:
        from dvclive import Live

        self.dir = Path(live_dir)
        self.staging = self.dir.parent / f".{self.dir.name}.tmp-live"  # ignored by .dvcignore/.gitignore
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a killed run
        self.in_step = False
        self.live = Live(dir=str(self.staging), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        for record in history:
            self.log(record, {}, publish=False)
        self._publish()
        if history:
            logger.info("DVCLive: replayed %d epoch(s) from the checkpoint into %s", len(history), live_dir)

    def log(self, record: Mapping[str, float], images: Mapping[str, Any], publish: bool = True) -> None:
        self.in_step = True
        for key, value in record.items():
            if key not in ("epoch", "step"):
                self.live.log_metric(key, float(value))
        for name, image in images.items():
            self.live.log_image(f"{name}.png", _to_image(image))
        self.live.next_step()
        self.in_step = False
        if publish:
            self._publish()

    def images(self, images: Mapping[str, Any]) -> None:
        for name, image in images.items():
            self.live.log_image(f"{name}.png", _to_image(image))

    def end(self) -> None:
        self.live.end()
        if not self.in_step:  # an exception inside a step leaves its files unfinished: keep the last step
            self._publish()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _publish(self) -> None:
        """Make ``live_dir`` hold exactly DVCLive's files, each replaced atomically when it changed."""
        files = {p.relative_to(self.staging) for p in self.staging.rglob("*") if p.is_file()}
        for rel in sorted(files):
            data = (self.staging / rel).read_bytes()
            target = self.dir / rel
            if not target.is_file() or target.read_bytes() != data:
                atomic_write_bytes(target, data)
        if self.dir.is_dir():
            for path in [p for p in self.dir.rglob("*") if p.is_file()]:
                if path.relative_to(self.dir) not in files:
                    path.unlink()


@dataclass
class _Progress:
    """Mutable training counters (what resume restores)."""

    start_epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    resumed_from: int | None = None


# -------------------------------------------------------------------------------------------------- fit
def fit(
    task: Task,
    train_loader: DataLoader[Any],
    val_loader: DataLoader[Any] | None,
    cfg: FitConfig,
    out_dir: Path,
    *,
    live_dir: Path | None = None,
    progress: bool = False,
    dist: DistInfo | None = None,
    batch_size_of: Callable[[Any], int] | None = None,
) -> FitResult:
    """Train ``task`` for ``cfg.epochs`` epochs (resuming from ``out_dir/last.pt`` when it matches).

    Builds the task's models before calling: seed with :func:`pipeline.runtime.seed.seed_everything` first so
    initial weights are reproducible (a resumed run overwrites them anyway). Under torchrun pass ``dist``;
    the process group is joined here if the stage has not done so (the stage calls ``cleanup()`` at the end).
    """
    dist = dist or SINGLE
    main = is_main(dist)
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device, dist.local_rank)
    precision = effective_precision(device, cfg.precision)
    if cfg.precision == "bf16" and precision != "bf16":
        logger.info("precision bf16 requested; %s runs fp32", device)
    init_distributed(dist, device)
    seed_everything(cfg.seed + dist.rank, cfg.deterministic)
    size_of = batch_size_of or first_dim
    _check_loader(train_loader, dist, cfg.deterministic)

    raw = dict(task.modules())
    for module in raw.values():
        module.to(device)
    optimizers = dict(task.optimizers())
    schedulers = dict(task.schedulers())
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*out_dir.glob(f".{LAST}.tmp-*"), *out_dir.glob(f".{BEST}.tmp-*")]:
            stale.unlink(missing_ok=True)  # a write cut short by a kill (atomic_write_bytes temporaries)

    prog = _resume(task, raw, optimizers, schedulers, cfg, out_dir, main)
    agreed = broadcast_int(prog.start_epoch)
    if agreed != prog.start_epoch:
        raise PipelineStateError(
            f"rank {dist.rank} would start at epoch {prog.start_epoch} but rank 0 at {agreed}: "
            f"{out_dir / LAST} reads differently on different ranks"
        )

    modules = _wrap_ddp(raw, device, dist)
    autocast = autocast_factory(device, precision)
    ctx = StepContext(
        device=device, autocast=autocast, modules=modules, rank=dist.rank, world_size=dist.world_size
    )
    eval_ctx = StepContext(
        device=device, autocast=autocast, modules=raw, rank=dist.rank, world_size=dist.world_size
    )
    live = _Live(Path(live_dir), prog.history) if (main and live_dir is not None) else None

    total_images = total_time = total_wait = 0.0
    epochs_run = 0
    with flagged_nondeterministic_ops() as flagged:
        try:
            if live is not None and prog.start_epoch >= cfg.epochs:
                live.images(_preview(task, raw, eval_ctx))
            for epoch in range(prog.start_epoch, cfg.epochs):
                seed_epoch(cfg.seed, epoch, dist.rank)
                _prepare_epoch(train_loader, cfg.seed, epoch)
                ctx.epoch = eval_ctx.epoch = epoch
                losses, perf = _train_epoch(task, train_loader, ctx, cfg, prog, main and progress, size_of)
                total_images += perf["images"]
                total_time += perf["seconds"]
                total_wait += perf["wait"]
                eval_ctx.step = prog.global_step

                record: dict[str, float] = {"epoch": float(epoch), "step": float(prog.global_step)}
                record.update({f"train/{k}": v for k, v in losses.items()})
                if val_loader is not None:
                    record.update(
                        {f"val/{k}": v for k, v in _validate(task, val_loader, raw, eval_ctx).items()}
                    )
                record.update(
                    {f"lr/{name}": float(opt.param_groups[0]["lr"]) for name, opt in optimizers.items()}
                )
                record["perf/images_per_second"] = (
                    perf["images"] / perf["seconds"] if perf["seconds"] > 0 else 0.0
                )
                record["perf/data_wait_fraction"] = (
                    perf["wait"] / perf["seconds"] if perf["seconds"] > 0 else 0.0
                )
                record["perf/epoch_seconds"] = perf["seconds"]

                value = _monitor_value(record, cfg.monitor)
                _step_schedulers(schedulers, value)
                improved = _improved(value, prog.best_metric, cfg.monitor_mode)
                if improved:
                    prog.best_metric, prog.best_epoch = value, epoch
                prog.history.append(record)
                epochs_run += 1
                _log_epoch(record, cfg.epochs, improved)

                if live is not None:
                    live.log(record, _preview(task, raw, eval_ctx))
                final = epoch == cfg.epochs - 1
                if main and (improved or final or (epoch + 1) % cfg.checkpoint_every == 0):
                    data = encode_checkpoint(_state(task, raw, optimizers, schedulers, cfg, prog, epoch))
                    atomic_write_bytes(out_dir / LAST, data)
                    if improved:
                        atomic_write_bytes(out_dir / BEST, data)
            barrier()
        finally:
            if live is not None:
                live.end()

    if epochs_run:
        ips = total_images / total_time if total_time > 0 else 0.0
        wait = total_wait / total_time if total_time > 0 else 0.0
    else:
        ips = float(np.mean([h.get("perf/images_per_second", 0.0) for h in prog.history] or [0.0]))
        wait = float(np.mean([h.get("perf/data_wait_fraction", 0.0) for h in prog.history] or [0.0]))
    return FitResult(
        epochs_run=epochs_run,
        resumed_from_epoch=prog.resumed_from,
        best_epoch=prog.best_epoch,
        best_metric=prog.best_metric,
        last_metrics=dict(prog.history[-1]) if prog.history else {},
        history=[dict(h) for h in prog.history],
        images_per_second=ips,
        data_wait_fraction=wait,
        device=str(device),
        precision_used=precision,
        nondeterministic_ops=tuple(sorted(flagged)),
    )


def _wrap_ddp(raw: Mapping[str, nn.Module], device: torch.device, dist: DistInfo) -> dict[str, nn.Module]:
    if dist.world_size <= 1:
        return dict(raw)
    from torch.nn.parallel import DistributedDataParallel as DDP

    wrapped: dict[str, nn.Module] = {}
    for name, module in raw.items():
        if any(p.requires_grad for p in module.parameters()):
            ids = [device.index] if device.type == "cuda" else None
            wrapped[name] = DDP(module, device_ids=ids, output_device=ids[0] if ids else None)
        else:
            wrapped[name] = module
    return wrapped


def _train_epoch(
    task: Task,
    loader: DataLoader[Any],
    ctx: StepContext,
    cfg: FitConfig,
    prog: _Progress,
    show: bool,
    size_of: Callable[[Any], int],
) -> tuple[dict[str, float], dict[str, float]]:
    """One pass over the train loader. Returns (losses averaged over steps and ranks, perf counters)."""
    device = ctx.device
    non_blocking = device.type == "cuda"
    limit = cfg.max_steps_per_epoch
    try:
        total = len(loader)
    except TypeError:
        total = None
    if limit and total is not None:
        total = min(total, limit)
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"epoch {ctx.epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)

    sums: dict[str, Any] = {}
    steps = images = 0
    _sync(device)
    start = time.perf_counter()
    iterator: Iterator[Any] = iter(loader)
    wait = time.perf_counter() - start
    try:
        while not limit or steps < limit:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            wait += time.perf_counter() - t0
            batch = move_to_device(batch, device, non_blocking)
            images += size_of(batch)
            ctx.step = prog.global_step
            losses = task.train_step(batch, ctx)
            for key, value in losses.items():
                # 0-dim tensors stay on the device until the epoch ends: float() here would make every
                # step wait for the GPU to finish the previous one.
                part = value.detach() if isinstance(value, torch.Tensor) else float(value)
                sums[key] = sums[key] + part if key in sums else part
            steps += 1
            prog.global_step += 1
            if bar is not None:
                bar.update(1)
                if steps % 10 == 1:
                    bar.set_postfix({k: f"{float(v):.4g}" for k, v in losses.items()}, refresh=False)
        _sync(device)
        seconds = time.perf_counter() - start
    finally:
        if bar is not None:
            bar.close()
        del iterator  # shuts non-persistent workers down now, not at the next epoch
    if steps == 0:
        raise PipelineStateError(f"the train loader yielded no batch in epoch {ctx.epoch}")
    means = all_reduce_mean({k: float(v) / steps for k, v in sums.items()})
    for key, value in means.items():
        if not math.isfinite(value):
            logger.warning("epoch %d: train loss %s is %s", ctx.epoch, key, value)
    counts = all_reduce_sum({"images": float(images), "seconds": seconds, "wait": wait})
    world = ctx.world_size
    perf = {"images": counts["images"], "seconds": counts["seconds"] / world, "wait": counts["wait"] / world}
    return means, perf


def _validate(
    task: Task, loader: DataLoader[Any], raw: Mapping[str, nn.Module], ctx: StepContext
) -> dict[str, float]:
    """``task.validate`` with every module in eval mode and no autograd; metrics averaged over ranks."""
    non_blocking = ctx.device.type == "cuda"
    batches = (move_to_device(b, ctx.device, non_blocking) for b in loader)
    modes = {name: m.training for name, m in raw.items()}
    for module in raw.values():
        module.eval()
    try:
        with torch.no_grad():
            metrics = task.validate(batches, ctx)
    finally:
        for name, module in raw.items():
            module.train(modes[name])
    return all_reduce_mean({k: float(v) for k, v in metrics.items()})


def _preview(task: Task, raw: Mapping[str, nn.Module], ctx: StepContext) -> dict[str, Any]:
    modes = {name: m.training for name, m in raw.items()}
    for module in raw.values():
        module.eval()
    try:
        with torch.no_grad():
            return dict(task.preview(ctx))
    finally:
        for name, module in raw.items():
            module.train(modes[name])


def _step_schedulers(schedulers: Mapping[str, Any], value: float | None) -> None:
    for name, scheduler in schedulers.items():
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if value is None:
                raise ConfigError(f"scheduler {name!r} (ReduceLROnPlateau) needs a monitor metric")
            scheduler.step(value)
        else:
            scheduler.step()


def _log_epoch(record: Mapping[str, float], epochs: int, improved: bool) -> None:
    def fmt(prefix: str) -> str:
        return " ".join(f"{k[len(prefix) :]}={v:.4g}" for k, v in record.items() if k.startswith(prefix))

    logger.info(
        "epoch %d/%d  train[%s]  val[%s]  %.1f img/s  data wait %.0f%%%s",
        int(record["epoch"]) + 1,
        epochs,
        fmt("train/"),
        fmt("val/"),
        record["perf/images_per_second"],
        100.0 * record["perf/data_wait_fraction"],
        "  (best)" if improved else "",
    )


def _state(
    task: Task,
    raw: Mapping[str, nn.Module],
    optimizers: Mapping[str, Any],
    schedulers: Mapping[str, Any],
    cfg: FitConfig,
    prog: _Progress,
    epoch: int,
) -> TrainingState:
    return TrainingState(
        run_key=cfg.run_key,
        task=str(task.name),
        epoch=epoch,
        global_step=prog.global_step,
        modules={name: m.state_dict() for name, m in raw.items()},
        optimizers={name: o.state_dict() for name, o in optimizers.items()},
        schedulers={name: s.state_dict() for name, s in schedulers.items()},
        extra=task.extra_state(),
        best_metric=prog.best_metric,
        best_epoch=prog.best_epoch,
        monitor=cfg.monitor,
        history=prog.history,
        rng=capture_rng_state(),
        config=dataclasses.asdict(cfg),
    )


def _resume(
    task: Task,
    raw: Mapping[str, nn.Module],
    optimizers: Mapping[str, Any],
    schedulers: Mapping[str, Any],
    cfg: FitConfig,
    out_dir: Path,
    main: bool,
) -> _Progress:
    """Load ``last.pt`` into the task when it belongs to this run; otherwise start fresh (never raises for
    an unreadable or foreign checkpoint: it is reported and will be overwritten)."""
    last, best = out_dir / LAST, out_dir / BEST
    state: TrainingState | None = None
    if last.exists():
        try:
            state = load_checkpoint(last)
        except InputDataError as exc:
            logger.warning("ignoring %s and starting fresh: %s", last, exc.reason)
        else:
            reason = None
            if state.run_key != cfg.run_key:
                reason = f"run key {state.run_key!r} differs from this run's {cfg.run_key!r}"
            elif state.task != str(task.name):
                reason = f"it belongs to task {state.task!r}, not {task.name!r}"
            else:
                reason = _incompatibility(state, raw, optimizers, schedulers)
            if reason is not None:
                logger.warning("not resuming from %s (%s); starting fresh", last, reason)
                state = None
    if state is None:
        if main and best.exists():
            logger.info("removing %s left by an earlier run", best)
            best.unlink()
        return _Progress()

    try:
        for name, module in raw.items():
            module.load_state_dict(state.modules[name])
        for name, opt in optimizers.items():
            opt.load_state_dict(state.optimizers[name])
        for name, sched in schedulers.items():
            sched.load_state_dict(state.schedulers[name])
        task.load_extra_state(state.extra)
        if state.rng:
            restore_rng_state(state.rng)
    except Exception as exc:  # the task is now partly loaded: going on would train a hybrid
        raise PipelineStateError(
            f"{last}: checkpoint matched this run but could not be applied ({exc}); delete it to start fresh"
        ) from exc
    if state.epoch + 1 >= cfg.epochs:
        logger.info(
            "resumed from %s: epoch %d of %d done, nothing left to train", last, state.epoch + 1, cfg.epochs
        )
        if state.epoch + 1 > cfg.epochs:
            logger.warning("%s went beyond epochs=%d; keeping it as it is", last, cfg.epochs)
    else:
        logger.info(
            "resumed from %s: epoch %d done, continuing at epoch %d", last, state.epoch + 1, state.epoch + 2
        )
    if main and state.best_epoch is not None and state.best_epoch == state.epoch:
        _repair_best(best, state)
    return _Progress(
        start_epoch=state.epoch + 1,
        global_step=state.global_step,
        best_metric=state.best_metric,
        best_epoch=state.best_epoch,
        history=[dict(h) for h in state.history],
        resumed_from=state.epoch,
    )


def _repair_best(best: Path, state: TrainingState) -> None:
    """``last.pt`` is itself the best epoch: make sure ``best.pt`` holds it (a kill between the two writes
    leaves an older ``best.pt``)."""
    try:
        current = load_checkpoint(best).epoch if best.exists() else None
    except InputDataError:
        current = None
    if current != state.epoch:
        logger.info("rewriting %s from the resumed checkpoint (best epoch %d)", best, state.epoch + 1)
        atomic_write_bytes(best, encode_checkpoint(state))
