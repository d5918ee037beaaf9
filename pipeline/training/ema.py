"""Exponential moving average of a generator's weights, used for every sample (Karras et al. 2018;
Yazıcı et al. 2019): the average of the last iterates is smoother and less prone to a bad step than the
live generator."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, or ``model`` itself."""
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


class EMA:
    """An eval-mode, gradient-free copy of ``model`` whose parameters track an exponential moving average.

    ``update(model, decay)``: params ← lerp(params, model's, 1 - d); buffers are copied. The first update
    after creation (or after ``reset``) copies the model exactly. With ``warmup`` (default) the decay used at
    the n-th update (n counted from 0) is min(decay, (1 + n) / (10 + n)) (as TensorFlow's
    ExponentialMovingAverage with num_updates): a short run's average is then not dominated by the random
    initial weights, and a long run uses ``decay`` itself (above 0.99 after 1000 updates). Deterministic:
    one lerp per tensor, no randomness. The copy follows the model's device on update."""

    def __init__(self, model: nn.Module, warmup: bool = True) -> None:
        self._module = copy.deepcopy(_unwrap(model)).eval()
        self._module.requires_grad_(False)
        self.warmup = warmup
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        """The averaged model, in eval mode (call it under ``torch.no_grad``)."""
        return self._module

    def effective_decay(self, decay: float) -> float:
        """The decay the next update will use (0 for the first one: an exact copy)."""
        if self.updates == 0:
            return 0.0
        if self.warmup:
            return min(decay, (1.0 + self.updates) / (10.0 + self.updates))
        return decay

    def reset(self) -> None:
        """Make the next update an exact copy again."""
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """Fold ``model``'s current weights into the average; ``decay`` in [0, 1)."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        src = _unwrap(model)
        d = self.effective_decay(decay)
        src_params = dict(src.named_parameters())
        ema_params = dict(self._module.named_parameters())
        if src_params.keys() != ema_params.keys():
            raise ValueError("EMA.update: the model's parameters do not match the averaged copy's")
        first = next(iter(src_params.values()), None)
        if first is not None and next(iter(ema_params.values())).device != first.device:
            self._module.to(first.device)
            ema_params = dict(self._module.named_parameters())
        names = list(ema_params)
        targets = [ema_params[n] for n in names]
        sources = [src_params[n].detach().to(ema_params[n].dtype) for n in names]
        if d == 0.0:
            torch._foreach_copy_(targets, sources)
        else:
            # one fused kernel per device instead of a launch per tensor (the same call timm's EMA uses)
            torch._foreach_lerp_(targets, sources, 1.0 - d)
        src_buffers = dict(src.named_buffers())
        for name, buf in self._module.named_buffers():
            buf.copy_(src_buffers[name])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """{'module': the averaged weights (state_dict), 'updates': int} — weights_only-loadable."""
        return {"module": self._module.state_dict(), "updates": int(self.updates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
