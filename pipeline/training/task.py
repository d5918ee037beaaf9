"""What the training engine (`pipeline.training.engine.fit`) needs from a model objective.

A task owns its networks, optimisers and losses and does its own forward/backward/step in `train_step`
(a GAN steps two optimisers per batch, a U-Net one). The engine owns everything around it: device, autocast,
seeding, DDP wrapping, epochs, checkpoints and resume, DVCLive logging and progress.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn


@dataclass
class StepContext:
    """Handed to every task call by the engine.

    ``autocast`` is a context-manager factory: bf16 autocast on CUDA when precision is bf16, a no-op on CPU.
    ``modules`` are the task's modules as the engine prepared them (moved to ``device``, wrapped in
    DistributedDataParallel when world_size > 1): call these in ``train_step`` so gradients are synchronised.
    """

    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    modules: dict[str, nn.Module]
    epoch: int = 0
    step: int = 0  # global optimisation step (batches seen), continues across resume
    rank: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """A training objective. ``validate`` returns plain floats; ``train_step`` returns floats or, better on a
    GPU, detached 0-dim tensors (the engine averages them on the device and syncs once per epoch)."""

    name: str

    def modules(self) -> dict[str, nn.Module]:
        """Every stateful module, by name (checkpointed, moved to the device, DDP-wrapped if trainable)."""
        ...

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name (checkpointed). Built over the parameters of ``modules()``."""
        ...

    def schedulers(self) -> dict[str, Any]:
        """LR schedulers by name (checkpointed; the engine calls ``step()`` once per epoch). May be empty."""
        ...

    def train_step(self, batch: Any, ctx: StepContext) -> dict[str, Any]:
        """One optimisation step on one batch (already on ``ctx.device``). Returns losses to average."""
        ...

    def validate(self, batches: Iterable[Any], ctx: StepContext) -> dict[str, float]:
        """Metrics over the validation batches (already on the device), computed under ``torch.no_grad``."""
        ...

    def extra_state(self) -> dict[str, Any]:
        """Anything else to checkpoint (e.g. an EMA generator's state_dict, augmentation probability)."""
        ...

    def load_extra_state(self, state: dict[str, Any]) -> None: ...

    def preview(self, ctx: StepContext) -> dict[str, np.ndarray]:
        """Images to log this epoch (name → 2D float array in [0, 1] or HxWx3 uint8). May be empty."""
        ...
