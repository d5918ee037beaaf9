"""CganTask: every loss and penalty option runs, L1 falls, EMA moves, sampling is seeded, state survives."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import torch

from pipeline.config import TrainCganConfig, load_params, parse_section
from pipeline.training.gan import CganTask, sample_noise, swd_levels
from pipeline.training.task import StepContext
from tests.conftest import REPO_ROOT

SIZE = (32, 32)


def _cfg(m2i: dict[str, object] | None = None, **overrides: object) -> TrainCganConfig:
    params = copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))
    section = params["train_cgan"]
    section["variants"]["mask2image"].update(
        {"g_channels": [8, 16, 32], "d_channels": [8, 16], **(m2i or {})}
    )
    section["variants"]["label2image"].update({"g_channels": [32, 16, 8], "d_channels": [8, 16, 32]})
    section.update({"swd_samples": 8, **overrides})
    return parse_section(params, "train_cgan")


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(n, 1, *SIZE, generator=gen) * 0.5
    lesion = torch.zeros(n, 1, *SIZE)
    lesion[:, :, 10:16, 12:18] = 1.0
    image = image + 0.5 * lesion
    head = torch.ones(n, 1, *SIZE)
    return {"image": image, "cond": torch.cat([head, lesion], 1), "label": torch.tensor([0, 1] * (n // 2))}


def _ctx(task: CganTask) -> StepContext:
    return StepContext(device=torch.device("cpu"), autocast=contextlib.nullcontext, modules=task.modules())


@pytest.mark.parametrize("variant", ["mask2image", "label2image"])
@pytest.mark.parametrize("loss", ["hinge", "non_saturating", "least_squares"])
def test_every_loss_and_penalty_option_runs(variant: str, loss: str) -> None:
    torch.manual_seed(0)
    cfg = _cfg(
        {"mode_seeking_weight": 1.0},
        loss=loss,
        r1_every=1,
        r1_gamma=1.0,
        diffaugment=["translation", "cutout", "brightness", "contrast"],
    )
    task = CganTask(cfg, variant, SIZE, None)
    out = task.train_step(_batch(), _ctx(task))
    assert {"d_loss", "g_loss", "r1", "d_real_acc", "d_fake_acc", "ada_p"} <= set(out)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in out.values())
    assert float(out["r1"]) > 0, "R1 computed on this step (r1_every=1)"
    assert float(out["mode_seeking"]) > 0, "mode seeking term computed"
    # no augmentation, no R1, fixed p
    plain = CganTask(_cfg(loss=loss, r1_gamma=0.0, diffaugment=[], ada_target=0.0), variant, SIZE, None)
    assert float(plain.train_step(_batch(), _ctx(plain))["r1"]) == 0.0


def test_a_few_steps_lower_the_l1_term_and_move_the_ema() -> None:
    torch.manual_seed(0)
    task = CganTask(_cfg({"l1_weight": 10.0}), "mask2image", SIZE, None)
    ema_before = copy.deepcopy(task.ema.module.state_dict())
    batch = _batch()
    ctx = _ctx(task)
    l1 = [float(task.train_step(batch, ctx)["l1"]) for _ in range(25)]
    assert min(l1[-5:]) < l1[0], l1
    moved = any(not torch.equal(ema_before[k], v) for k, v in task.ema.module.state_dict().items())
    assert moved, "the EMA generator follows the trained one"


@pytest.mark.parametrize("variant", ["mask2image", "label2image"])
def test_same_seed_same_sample(variant: str) -> None:
    torch.manual_seed(0)
    task = CganTask(_cfg(), variant, SIZE, None)
    v, g, batch = task.v, task.ema.module, _batch(2)

    def draw(seed: int) -> torch.Tensor:
        noise = sample_noise(v, 2, SIZE, torch.device("cpu"), torch.Generator().manual_seed(seed))
        return task._generate(g, batch, noise)

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))
    assert float(draw(5).min()) >= 0.0 and float(draw(5).max()) <= 1.0


def test_mask2image_samples_are_black_outside_the_head_mask() -> None:
    torch.manual_seed(0)
    task = CganTask(_cfg(), "mask2image", SIZE, None)
    batch = _batch(2)
    batch["cond"][:, 0, :, :8] = 0  # the head mask leaves the first 8 columns out
    noise = sample_noise(task.v, 2, SIZE, torch.device("cpu"), torch.Generator().manual_seed(1))
    for g in (task.g, task.ema.module):
        fake = task._generate(g, batch, noise)
        assert torch.all(fake[:, :, :, :8] == 0) and torch.all(fake[:, :, :, 8:] > 0)


def test_extra_state_round_trips() -> None:
    torch.manual_seed(0)
    task = CganTask(_cfg(), "mask2image", SIZE, None)
    for _ in range(3):
        task.train_step(_batch(), _ctx(task))
    state = copy.deepcopy(task.extra_state())
    other = CganTask(_cfg(), "mask2image", SIZE, None)
    other.load_extra_state(state)
    assert other.ada.p == task.ada.p and other.d_steps == task.d_steps
    for k, val in task.ema.module.state_dict().items():
        assert torch.equal(val, other.ema.module.state_dict()[k])


def test_validate_and_preview() -> None:
    torch.manual_seed(0)
    batch = _batch(4)
    task = CganTask(_cfg(), "mask2image", SIZE, batch)
    metrics = task.validate([batch, batch], _ctx(task))
    assert metrics["swd"] >= 0 and 0 <= metrics["l1"] <= 1
    grid = task.preview(_ctx(task))["samples"]
    assert grid.shape == (4 * SIZE[1], 4 * SIZE[0]) and grid.min() >= 0 and grid.max() <= 1
    assert swd_levels((96, 96)) == 4 and swd_levels((48, 48)) == 3 and swd_levels((32, 32)) == 3


def _ada_rank(rank: int, world: int, init_file: str, out: str) -> None:
    """One gloo rank of test_ada_probability_is_shared_across_ranks."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.training import gan

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # rank 0's D always ranks reals first, rank 1's never: their mean (0) is below the target
        gan.d_rank_sign = lambda real, fake: 1.0 if rank == 0 else -1.0
        torch.manual_seed(rank)
        task = CganTask(_cfg(ada_target=0.6, ada_speed=0.01, ada_p_init=0.2), "mask2image", SIZE, None)
        modules = {k: DistributedDataParallel(m) for k, m in task.modules().items()}
        cpu = torch.device("cpu")
        ctx = StepContext(cpu, contextlib.nullcontext, modules, rank=rank, world_size=world)
        for _ in range(3):
            task.train_step(_batch(), ctx)
        Path(out, f"{rank}.txt").write_text(repr(task.ada.p))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ada_probability_is_shared_across_ranks(tmp_path: Path) -> None:
    """Under DDP every rank adapts p from the all-reduced signal, so the ranks never disagree on p."""
    torch.multiprocessing.spawn(_ada_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    p = [float((tmp_path / f"{r}.txt").read_text()) for r in (0, 1)]
    assert p == [pytest.approx(0.17), pytest.approx(0.17)], p  # 3 steps down by 0.01 from 0.2 on both


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", ["mask2image", "label2image"])
def test_cuda_bf16_step(variant: str) -> None:
    """The stage's GAN step under bf16 autocast on CUDA (R1 and mode seeking included): finite losses."""
    from pipeline.runtime.device import autocast_factory

    torch.manual_seed(0)
    cuda = torch.device("cuda")
    task = CganTask(_cfg({"mode_seeking_weight": 0.1}, r1_every=1), variant, SIZE, None)
    modules = {k: m.to(cuda) for k, m in task.modules().items()}
    ctx = StepContext(cuda, autocast_factory(cuda, "bf16"), modules)
    batch = {k: v.to(cuda) for k, v in _batch().items()}
    for _ in range(3):
        out = task.train_step(batch, ctx)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in out.values())
