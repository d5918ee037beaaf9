"""GAN losses: every kind runs with the right sign behaviour; R1 on toy discriminators; feature matching;
discriminator accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.training.gan_losses import (
    LOSS_KINDS,
    d_accuracy,
    d_loss,
    d_rank_sign,
    feature_matching_loss,
    g_loss,
    r1_penalty,
)


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("shape", [(4,), (4, 1, 3, 3)])
def test_every_kind_rewards_a_right_d_and_a_fooling_g(kind: str, shape: tuple[int, ...]) -> None:
    good = d_loss(torch.full(shape, 2.0), torch.full(shape, -2.0), kind)  # D right
    bad = d_loss(torch.full(shape, -2.0), torch.full(shape, 2.0), kind)  # D wrong
    assert good.ndim == 0 and good < bad
    assert g_loss(torch.full(shape, 2.0), kind) < g_loss(torch.full(shape, -2.0), kind)
    fake = torch.zeros(shape, requires_grad=True)
    g_loss(fake, kind).backward()
    assert fake.grad is not None and (fake.grad < 0).all()  # G pushes its logits up


def test_hinge_margins() -> None:
    assert d_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -5.0]), "hinge") == 0
    assert d_loss(torch.tensor([0.0]), torch.tensor([0.0]), "hinge") == pytest.approx(2.0)
    assert g_loss(torch.tensor([1.0, 3.0]), "hinge") == pytest.approx(-2.0)


def test_least_squares_targets_and_non_saturating_values() -> None:
    assert d_loss(torch.ones(3), -torch.ones(3), "least_squares") == 0
    assert g_loss(torch.ones(3), "least_squares") == 0
    log2 = torch.log(torch.tensor(2.0))
    assert d_loss(torch.zeros(2), torch.zeros(2), "non_saturating") == pytest.approx(2 * float(log2))
    assert g_loss(torch.zeros(2), "non_saturating") == pytest.approx(float(log2))


def test_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="wasserstein"):
        d_loss(torch.zeros(1), torch.zeros(1), "wasserstein")
    with pytest.raises(ConfigError):
        g_loss(torch.zeros(1), "bce")


def test_bf16_logits_are_computed_in_float32() -> None:
    out = d_loss(torch.ones(4, dtype=torch.bfloat16), -torch.ones(4, dtype=torch.bfloat16), "hinge")
    assert out.dtype == torch.float32


class Ignoring(nn.Module):
    """A discriminator whose output does not depend on its input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0])


def test_r1_is_zero_for_a_discriminator_that_ignores_its_input() -> None:
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    r1 = r1_penalty(x, Ignoring()(x))
    assert r1.item() == 0.0
    r1.backward()  # still a valid graph
    assert float(r1_penalty(x, torch.zeros(3))) == 0.0  # constant logits without any graph


def test_r1_matches_the_analytic_gradient_and_reaches_d_parameters() -> None:
    torch.manual_seed(0)
    d = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    x = torch.rand(5, 1, 4, 4, requires_grad=True)
    r1 = r1_penalty(x, d(x).squeeze(1))
    w = d[1].weight.detach()
    assert r1.item() == pytest.approx(float(w.pow(2).sum()), rel=1e-5)  # linear D: ∇x = w for every sample
    r1.backward()
    assert d[1].weight.grad is not None and d[1].weight.grad.abs().sum() > 0


def test_r1_on_a_patch_map_is_normalised_by_the_number_of_patches() -> None:
    # A 1x1 conv with weight w gives a 4x4 logits map whose patches see disjoint pixels: per-patch R1 = w².
    conv = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.constant_(conv.weight, 3.0)
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    assert r1_penalty(x, conv(x)).item() == pytest.approx(9.0)


def test_r1_on_overlapping_patches_estimates_the_mean_per_patch_penalty() -> None:
    # A 3x3 all-c conv: every patch's own R1 is 9c², but interior pixels lie under 9 patches, so the plain
    # sum's gradient is 9c there and its norm² per patch approaches 81c² (the over-penalty being fixed).
    c = 0.5
    conv = nn.Conv2d(1, 1, 3, bias=False)
    nn.init.constant_(conv.weight, c)
    x = torch.rand(2, 1, 12, 12, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    draws = [r1_penalty(x, conv(x), gen).item() for _ in range(400)]
    assert np.mean(draws) == pytest.approx(9 * c**2, rel=0.05)
    logits = conv(x)
    (plain,) = torch.autograd.grad(logits.sum(), x)
    plain_r1 = float(plain.pow(2).reshape(2, -1).sum(1).mean()) / logits[0].numel()
    assert plain_r1 > 5 * 9 * c**2
    # the signs come from the generator: same seed, same penalty
    a = r1_penalty(x, conv(x), torch.Generator().manual_seed(3)).item()
    b = r1_penalty(x, conv(x), torch.Generator().manual_seed(3)).item()
    assert a == b


def test_r1_needs_an_input_that_requires_grad() -> None:
    with pytest.raises(ValueError, match="requires? grad"):
        r1_penalty(torch.rand(2, 1, 4, 4), torch.zeros(2))


def test_feature_matching_detaches_real_features() -> None:
    real = [torch.ones(2, 3, 4, 4, requires_grad=True), torch.zeros(2, 5, 2, 2, requires_grad=True)]
    fake = [torch.zeros(2, 3, 4, 4, requires_grad=True), torch.zeros(2, 5, 2, 2, requires_grad=True)]
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(0.5)  # mean over layers of (1, 0)
    loss.backward()
    assert real[0].grad is None and fake[0].grad is not None
    with pytest.raises(ValueError):
        feature_matching_loss(real, fake[:1])


def test_d_accuracy() -> None:
    real = torch.tensor([1.0, 2.0, -1.0, 0.0])
    fake = torch.tensor([[-1.0, -2.0], [0.5, -0.1]])
    assert d_accuracy(real, fake) == (0.5, 0.75)


def test_d_rank_sign_ignores_a_shared_offset() -> None:
    real = torch.tensor([0.5, 0.2, 0.9, -0.1])
    fake = torch.tensor([0.1, 0.3, 0.4, -0.5])
    assert d_rank_sign(real, fake) == pytest.approx(0.5)  # 3 of 4 ranked right
    assert d_rank_sign(real + 7.0, fake + 7.0) == pytest.approx(0.5)  # E[sign(D(real))] would read 1
    assert d_rank_sign(real, real) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        d_rank_sign(real, fake[:3])
