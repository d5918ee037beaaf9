"""Seeding and determinism: the one place where global random number generators are set.

Every random stream in training is derived from ``(seed, epoch, rank, ...)`` with numpy's ``SeedSequence``,
so a value drawn in epoch ``e`` does not depend on how many epochs ran before it in this process (what makes
a resumed run equal to an uninterrupted one) nor on how many ran in other processes.

Side effect worth knowing: ``seed_everything(..., deterministic=True)`` on a machine with CUDA sets the
environment variable ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for this process, because cuBLAS only gives
reproducible matrix products with a fixed workspace (it reads the variable when its handle is created, so it
must be set before the first CUDA matmul). The library never reads environment variables; this is the only
one it writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_MAX_U32 = 2**32
_MAX_I63 = 2**63

# Tags keep derived streams apart: the same (seed, epoch) gives unrelated numbers for different purposes.
_TAG_GLOBAL = 0x61_6C_6C  # "all": global python/numpy/torch generators at an epoch start
_TAG_LOADER = 0x6C_6F_61  # "loa": the train loader's shuffle order


def derive_seed(seed: int, *keys: int) -> int:
    """A seed in ``[0, 2**63)`` derived from ``seed`` and integer ``keys`` (e.g. epoch, sample index).

    Different key tuples give statistically independent seeds (numpy ``SeedSequence``); negative inputs are
    allowed (they are mapped to non-negative entropy first).
    """
    entropy = [int(v) % _MAX_I63 for v in (seed, *keys)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) % _MAX_I63


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python ``random``, numpy's global generator, torch (CPU and every CUDA device) and MONAI.

    MONAI's ``set_determinism`` also records the seed that MONAI ``Compose`` chains built afterwards use
    for their own random state. ``deterministic=True`` turns on ``torch.use_deterministic_algorithms``
    (``warn_only=True``: an op without a deterministic CUDA kernel warns instead of aborting a run;
    :func:`flagged_nondeterministic_ops` records which ones did), cuDNN deterministic mode and no
    cuDNN autotuning. ``deterministic=False`` lets cuDNN autotune (fastest kernels for fixed shapes).
    """
    from monai.utils import set_determinism

    seed = int(seed)
    set_determinism(seed=seed % _MAX_U32, use_deterministic_algorithms=None)
    random.seed(seed)
    np.random.seed(seed % _MAX_U32)
    torch.manual_seed(seed % _MAX_I63)  # seeds every CUDA device too
    if deterministic and torch.cuda.is_available():
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # documented in the module docstring
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    logger.debug("seeded everything with %d (deterministic=%s)", seed, deterministic)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Reseed the global python, numpy and torch generators from ``(seed, epoch, rank)``.

    Called by the engine at every epoch start, so dropout, noise and any global draw in epoch ``epoch``
    are the same whether or not the run was resumed just before it.
    """
    base = derive_seed(seed, _TAG_GLOBAL, epoch, rank)
    random.seed(base)
    np.random.seed(base % _MAX_U32)
    torch.manual_seed(base)


def loader_seed(seed: int, epoch: int) -> int:
    """The seed of the train loader's shuffle order in ``epoch`` (the same on every rank)."""
    return derive_seed(seed, _TAG_LOADER, epoch)


def loader_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded for ``epoch``'s shuffle order (see :func:`loader_seed`)."""
    gen = torch.Generator()
    gen.manual_seed(loader_seed(seed, epoch))
    return gen


def worker_init_fn(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: seed a worker's numpy, python and MONAI generators.

    torch already seeds each worker with ``base_seed + worker_id`` (``base_seed`` drawn from the loader's
    generator, or the global one that :func:`seed_epoch` set); numpy, ``random`` and the random state of
    MONAI transforms inside the dataset are derived from that seed, so workers do not repeat each other
    and a rerun repeats them exactly.
    """
    from monai.data.utils import set_rnd

    # One intra-op thread per worker: N workers × all-core torch pools oversubscribe the CPU and starve the
    # augmentation the workers exist for.
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    worker_seed = info.seed if info is not None else torch.initial_seed()
    random.seed(worker_seed)
    np.random.seed(worker_seed % _MAX_U32)
    if info is not None:
        set_rnd(info.dataset, seed=worker_seed % _MAX_U32)
    logger.debug("worker %d seeded with %d", worker_id, worker_seed)


#: torch's alert text under ``use_deterministic_algorithms(True, warn_only=True)``.
_ALERT = re.compile(r"^(\S+) does not have a deterministic implementation")


@contextlib.contextmanager
def flagged_nondeterministic_ops() -> Iterator[set[str]]:
    """Collect the names of the ops torch flags, while the block runs, as having no deterministic
    implementation (it does so in deterministic mode, see :func:`seed_everything`).

    On CUDA these are typically the backward passes of reflection/replication padding, linear-mode
    upsampling and 3D pooling, and scatter/index accumulation: results then differ in the last bits between
    runs. The warnings are still shown once; the set is for lineage, so that an auditor sees which ops a run
    actually used instead of a list of the ops it might have used.
    """
    found: set[str] = set()
    with warnings.catch_warnings():
        # torch warns through Python's warnings; "always" so that a second stage in one process still sees it.
        warnings.filterwarnings("always", message=".*does not have a deterministic implementation")
        shown = warnings.showwarning

        def record(message: Warning | str, *args: Any, **kwargs: Any) -> None:
            match = _ALERT.search(str(message))
            if match:
                if match.group(1) in found:
                    return
                found.add(match.group(1))
            shown(message, *args, **kwargs)

        warnings.showwarning = record
        yield found
