"""Seeding: reproducible global streams, per-epoch reseeding, loader generators and worker seeding."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from monai.transforms import RandGaussianNoise
from torch.utils.data import DataLoader, Dataset

from pipeline.runtime.seed import (
    derive_seed,
    flagged_nondeterministic_ops,
    loader_generator,
    loader_seed,
    seed_epoch,
    seed_everything,
    worker_init_fn,
)


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_everything_repeats_every_stream() -> None:
    seed_everything(11, deterministic=True)
    first = draws()
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    seed_everything(11, deterministic=True)
    assert draws() == first
    seed_everything(12, deterministic=False)
    assert draws() != first
    assert not torch.are_deterministic_algorithms_enabled()
    seed_everything(11, deterministic=True)  # leave the process deterministic for later tests


def test_seed_epoch_does_not_depend_on_earlier_draws() -> None:
    seed_epoch(5, epoch=3, rank=0)
    expected = draws()
    seed_everything(99, deterministic=True)
    torch.rand(1000)  # an earlier epoch's consumption
    seed_epoch(5, epoch=3, rank=0)
    assert draws() == expected
    seed_epoch(5, epoch=3, rank=1)
    assert draws() != expected
    seed_epoch(5, epoch=4, rank=0)
    assert draws() != expected


def test_derive_seed_range_and_independence() -> None:
    seeds = {derive_seed(1, epoch, index) for epoch in range(20) for index in range(50)}
    assert len(seeds) == 1000
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(-3, 2) == derive_seed(-3, 2)


def test_loader_generator_is_a_function_of_seed_and_epoch() -> None:
    a = torch.randperm(20, generator=loader_generator(4, 2))
    b = torch.randperm(20, generator=loader_generator(4, 2))
    c = torch.randperm(20, generator=loader_generator(4, 3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert loader_generator(4, 2).initial_seed() == loader_seed(4, 2)


class _TransformDraws(Dataset[float]):
    """Draws from a MONAI random transform's own state, which torch does not reseed per worker."""

    def __init__(self) -> None:
        self.noise = RandGaussianNoise(prob=1.0)
        self.noise.set_random_state(seed=0)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> float:
        return float(self.noise.R.rand())


def _worker_values(init: Any) -> list[float]:
    loader = DataLoader(
        _TransformDraws(), batch_size=1, num_workers=2, worker_init_fn=init,
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    return [float(v) for batch in loader for v in batch]


@pytest.mark.slow
def test_worker_init_fn_gives_distinct_reproducible_workers() -> None:
    # workers 0 and 1 take samples (0, 2) and (1, 3); copies of one transform state repeat each other
    plain = _worker_values(None)
    assert plain[0] == plain[1]
    first = _worker_values(worker_init_fn)
    assert first[0] != first[1]
    assert _worker_values(worker_init_fn) == first


def test_flagged_nondeterministic_ops_records_what_torch_alerts() -> None:
    # torch's Python alert (same text as its CUDA kernels' alert); no CPU op of our models raises one
    from torch._prims_common import alert_not_deterministic

    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with pytest.warns(UserWarning, match="fake_op_for_test"), flagged_nondeterministic_ops() as flagged:
            alert_not_deterministic("fake_op_for_test")
            alert_not_deterministic("fake_op_for_test")
            torch.ones(3).sum()
        assert flagged == {"fake_op_for_test"}
        with flagged_nondeterministic_ops() as none:
            torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3)).sum()
        assert none == set()
    finally:
        torch.use_deterministic_algorithms(False)
