"""Device resolution and autocast: CUDA only when present, bf16 only on CUDA, the same code on CPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.runtime.device import autocast_factory, describe_device, effective_precision, resolve_device


def test_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cuda"):
        resolve_device("cuda")


def test_unknown_device_name() -> None:
    with pytest.raises(ConfigError):
        resolve_device("tpu")


def test_autocast_is_a_no_op_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert effective_precision(cpu, "bf16") == "fp32"
    factory = autocast_factory(cpu, "bf16")
    ctx = factory()
    assert isinstance(ctx, contextlib.nullcontext)
    layer = torch.nn.Linear(4, 2)
    with factory():
        out = layer(torch.ones(3, 4))
    assert out.dtype == torch.float32
    with pytest.raises(ConfigError):
        effective_precision(cpu, "fp16")


def test_describe_device_for_lineage() -> None:
    info = describe_device(torch.device("cpu"))
    assert info["type"] == "cpu" and info["torch"] == torch.__version__
    assert {"name", "capability", "cuda"} <= info.keys()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_on_cuda() -> None:
    device = resolve_device("cuda")
    layer = torch.nn.Linear(4, 2).to(device)
    with autocast_factory(device, "bf16")():
        out = layer(torch.ones(3, 4, device=device))
    assert out.dtype == torch.bfloat16
    assert describe_device(device)["capability"]
