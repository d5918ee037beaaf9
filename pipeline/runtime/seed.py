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

import logging
import os
import random

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
    (``warn_only=True``: an op without a deterministic CUDA kernel warns instead of aborting a run; see
    :func:`nondeterministic_ops_note` for the ones our models may hit), cuDNN deterministic mode and no
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


_CUDA_NONDETERMINISTIC_BACKWARD = [
    "reflection_pad{1,2,3}d backward (ReflectionPad, padding_mode='reflect' convolutions)",
    "replication_pad{1,2,3}d backward (ReplicationPad, padding_mode='replicate')",
    "upsample_bilinear2d / upsample_trilinear3d / upsample_linear1d / upsample_bicubic2d backward "
    "(nn.Upsample and F.interpolate with linear modes, MONAI UpSample 'nontrainable')",
    "max_pool3d_with_indices backward (3D MaxPool)",
    "adaptive_avg_pool{2,3}d / adaptive_max_pool{2,3}d backward",
    "avg_pool3d backward",
    "scatter_add_ / index_add_ / index_put_(accumulate=True) / bincount / histc on CUDA tensors",
    "nll_loss2d / cross-entropy with class weights on CUDA (loss reduction)",
    "ctc_loss backward, embedding_bag backward (not used by our models)",
]


def nondeterministic_ops_note(device: torch.device | str) -> list[str]:
    """Known CUDA ops without a deterministic implementation that our models may use (for lineage).

    Under ``deterministic=True`` torch warns when one of them runs; results on CUDA may then differ in the
    last bits between runs. Empty on CPU, where these ops are deterministic.
    """
    if torch.device(device).type != "cuda":
        return []
    return list(_CUDA_NONDETERMINISTIC_BACKWARD)
