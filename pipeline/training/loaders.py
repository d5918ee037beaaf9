"""DataLoaders built the way the engine needs them for exact resume and DDP.

Training shuffles through the engine's `make_train_sampler` (a DistributedSampler for any world size whose
order depends only on (seed, epoch)); the engine calls ``set_epoch`` on it and on the dataset at every epoch
start, so an epoch's order and augmentation do not depend on whether the run was resumed or on the number
of processes. Workers are not persistent: a persistent worker would never see the dataset's new epoch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from pipeline.runtime.distributed import DistInfo
from pipeline.runtime.seed import worker_init_fn
from pipeline.training.engine import make_train_sampler


def train_loader(
    dataset: Dataset[Any], batch_size: int, seed: int, num_workers: int, dist: DistInfo | None = None
) -> DataLoader[Any]:
    """Shuffled loader. ``batch_size`` is the global batch: with DDP each of n ranks takes batch_size / n."""
    world = dist.world_size if dist is not None else 1
    per_rank = max(1, batch_size // world)
    n = len(dataset)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=make_train_sampler(dataset, seed=seed, dist=dist),
        num_workers=num_workers,
        worker_init_fn=worker_init_fn if num_workers else None,
        drop_last=n // world > per_rank,  # a lone short batch on tiny data is better than none
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def eval_loader(dataset: Dataset[Any], batch_size: int, num_workers: int = 0) -> DataLoader[Any]:
    """In-order loader, no augmentation; every rank sees all of it."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=SequentialSampler(dataset),
        num_workers=num_workers,
        worker_init_fn=worker_init_fn if num_workers else None,
        pin_memory=torch.cuda.is_available(),
    )
