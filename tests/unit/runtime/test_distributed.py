"""Distributed helpers in a single process: env parsing and no-op collectives."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.runtime.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_int,
    dist_info_from_env,
    init_distributed,
    is_main,
)


def test_dist_info_from_env() -> None:
    assert dist_info_from_env({}) == DistInfo(0, 0, 1)
    info = dist_info_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "PATH": "/bin"})
    assert info == DistInfo(rank=3, local_rank=1, world_size=4)
    assert not is_main(info) and is_main(DistInfo()) and is_main(None)


@pytest.mark.parametrize(
    "env",
    [
        {"RANK": "0"},
        {"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
        {"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "0"},
    ],
)
def test_bad_env_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        dist_info_from_env(env)


def test_single_process_helpers_are_no_ops() -> None:
    init_distributed(DistInfo(), torch.device("cpu"))  # world_size 1: no process group
    assert not torch.distributed.is_initialized()
    assert all_reduce_mean({"loss": 2.5, "dice": 1}) == {"loss": 2.5, "dice": 1.0}
    assert broadcast_int(7) == 7
    barrier()
