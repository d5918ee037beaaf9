"""EMA of a generator: exact first copy, update math, buffers, eval mode, state round trip."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from pipeline.training.ema import EMA


def toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def set_weights(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_first_update_copies_exactly_and_module_is_frozen_eval_copy() -> None:
    model = toy()
    ema = EMA(model)
    set_weights(model, 2.0)
    ema.update(model, 0.999)
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), model.parameters(), strict=True))
    assert not ema.module.training and all(not p.requires_grad for p in ema.module.parameters())
    assert ema.module is not model and model.training


@pytest.mark.parametrize("warmup", [False, True])
def test_update_math(warmup: bool) -> None:
    model = toy()
    ema = EMA(model, warmup=warmup)
    set_weights(model, 1.0)
    ema.update(model, 0.9)  # exact copy: 1
    set_weights(model, 3.0)
    ema.update(model, 0.9)
    d = min(0.9, 2 / 11) if warmup else 0.9
    expected = d * 1.0 + (1 - d) * 3.0
    for p in ema.module.parameters():
        assert torch.allclose(p, torch.full_like(p, expected))
    assert ema.effective_decay(0.9) == (min(0.9, 3 / 12) if warmup else 0.9)


def test_buffers_are_copied_not_averaged() -> None:
    model = toy()
    ema = EMA(model, warmup=False)
    ema.update(model, 0.5)
    model.train()
    model(torch.randn(8, 3))  # moves the BatchNorm running stats
    ema.update(model, 0.5)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert int(ema.module[1].num_batches_tracked) == 1


def test_state_round_trip_and_determinism() -> None:
    model = toy()
    a, b = EMA(model), EMA(model)
    for step in range(5):
        set_weights(model, float(step))
        a.update(model, 0.99)
        b.update(model, 0.99)
    assert all(torch.equal(x, y) for x, y in zip(a.module.parameters(), b.module.parameters(), strict=True))
    state = a.state_dict()
    assert state["updates"] == 5
    c = EMA(toy())
    c.load_state_dict(state)
    assert c.updates == 5
    assert all(torch.equal(x, y) for x, y in zip(a.module.parameters(), c.module.parameters(), strict=True))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["updates"] == 5


def test_bad_decay() -> None:
    with pytest.raises(ValueError):
        EMA(toy()).update(toy(), 1.0)
