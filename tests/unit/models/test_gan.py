"""Conditional GAN networks: shapes (2D, one 3D smoke), output range, noise determinism, spectral norm,
size checks, and a few L1 steps that move the mask2image generator towards a target."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from pipeline.config import CganVariantConfig
from pipeline.errors import ConfigError
from pipeline.models.gan import (
    SPADE,
    build_label2image_generator,
    build_mask2image_generator,
    build_patch_discriminator,
    build_projection_discriminator,
    check_size,
    minibatch_stddev,
    patch_logits_size,
)


def variant(kind: str = "mask2image", **over: object) -> CganVariantConfig:
    base: dict[str, object] = {
        "kind": kind,
        "g_channels": [8, 16, 32] if kind == "mask2image" else [32, 16, 8],
        "d_channels": [8, 16, 32],
        "noise_channels": 2,
        "latent_dim": 8,
        "spade": True,
        "l1_weight": 10.0,
        "feature_matching_weight": 1.0,
        "mode_seeking_weight": 0.0,
        "abnormal_fraction": 0.0,
    }
    base.update(over)
    return CganVariantConfig.model_validate(base)


def noise_for(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spade", [True, False])
@pytest.mark.parametrize("size", [(32, 32), (48, 32)])
def test_mask2image_generator_shape_and_range(spade: bool, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    g = build_mask2image_generator(variant(spade=spade), in_channels=2)
    cond = (torch.rand(3, 2, *size) > 0.5).float()
    out = g(cond, noise_for(0, (3, 2, *size)))
    assert out.shape == (3, 1, *size)
    assert out.min() >= 0 and out.max() <= 1
    assert any(isinstance(m, SPADE) for m in g.modules()) == spade


def test_mask2image_generator_is_deterministic_in_its_noise() -> None:
    torch.manual_seed(0)
    g = build_mask2image_generator(variant(), in_channels=2).eval()
    cond = (torch.rand(2, 2, 32, 32, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    with torch.no_grad():
        a = g(cond, noise_for(7, (2, 2, 32, 32)))
        b = g(cond, noise_for(7, (2, 2, 32, 32)))
        c = g(cond, noise_for(8, (2, 2, 32, 32)))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_mask2image_generator_without_noise_channels() -> None:
    g = build_mask2image_generator(variant(noise_channels=0), in_channels=1)
    assert g(torch.rand(2, 1, 16, 16)).shape == (2, 1, 16, 16)


def test_mask2image_generator_rejects_bad_sizes_and_noise() -> None:
    g = build_mask2image_generator(variant(), in_channels=2)
    with pytest.raises(ConfigError, match="divisible by 4"):
        g(torch.rand(1, 2, 30, 32), torch.randn(1, 2, 30, 32))
    with pytest.raises(ValueError, match="noise"):
        g(torch.rand(1, 2, 32, 32), torch.randn(1, 3, 32, 32))


def test_mask2image_generator_is_black_outside_its_silhouette_channel() -> None:
    torch.manual_seed(0)
    g = build_mask2image_generator(variant(), in_channels=2, silhouette_channel=0)
    head = torch.zeros(2, 1, 32, 32)
    head[:, :, 8:24, 6:26] = 1
    cond = torch.cat([head, (torch.rand(2, 1, 32, 32) > 0.9).float() * head], dim=1)
    out = g(cond, noise_for(0, (2, 2, 32, 32)))
    assert torch.all(out[head == 0] == 0)
    assert torch.all(out[head == 1] > 0)  # inside, the sigmoid's open interval as before
    with pytest.raises(ConfigError, match="silhouette channel 2"):
        build_mask2image_generator(variant(), in_channels=2, silhouette_channel=2)


def test_check_size() -> None:
    check_size((96, 96), variant(g_channels=[8, 16, 32, 64]))
    with pytest.raises(ConfigError, match="divisible by 2\\*\\*\\(len\\(g_channels\\) - 1\\) = 8"):
        check_size((100, 96), variant(g_channels=[8, 16, 32, 64]))
    with pytest.raises(ConfigError, match="too small"):
        check_size((8, 8), variant(g_channels=[8, 16]))
    check_size((33, 47), variant("label2image"))
    with pytest.raises(ConfigError, match="2\\*\\*len\\(d_channels\\)"):
        check_size((4, 64), variant("label2image"))


def test_mask2image_generator_3d_smoke() -> None:
    g = build_mask2image_generator(variant(g_channels=[4, 8]), in_channels=2, spatial_dims=3)
    out = g(torch.rand(1, 2, 8, 8, 4), torch.randn(1, 2, 8, 8, 4))
    assert out.shape == (1, 1, 8, 8, 4)
    out.mean().backward()


@pytest.mark.parametrize("size", [(32, 32), (48, 48), (50, 36)])
def test_label2image_generator_shape_and_labels(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    g = build_label2image_generator(variant("label2image"), n_classes=2, out_size=size).eval()
    z = noise_for(0, (4, 8))
    with torch.no_grad():
        out0 = g(z, torch.zeros(4, dtype=torch.long))
        out1 = g(z, torch.ones(4, dtype=torch.long))
    assert out0.shape == (4, 1, *size)
    assert out0.min() >= 0 and out0.max() <= 1
    assert not torch.allclose(out0, out1)  # the label changes the image


@pytest.mark.parametrize("sn", [True, False])
def test_patch_discriminator_shapes_and_spectral_norm(sn: bool) -> None:
    torch.manual_seed(0)
    v = variant()
    d = build_patch_discriminator(v, in_channels=3, spectral_norm=sn)
    logits, feats = d(torch.rand(2, 3, 48, 48))
    assert logits.shape == (2, 1, *patch_logits_size((48, 48), 3)) == (2, 1, 10, 10)
    assert [f.shape[1] for f in feats] == v.d_channels
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4
    assert all(parametrize.is_parametrized(m, "weight") == sn for m in convs)


def test_patch_discriminator_3d_smoke() -> None:
    d = build_patch_discriminator(variant(), in_channels=3, spectral_norm=True, spatial_dims=3)
    logits, feats = d(torch.rand(1, 3, 32, 32, 16))
    assert logits.shape == (1, 1, 6, 6, 2) and len(feats) == 3


@pytest.mark.parametrize("sn", [True, False])
def test_projection_discriminator_shapes_and_projection(sn: bool) -> None:
    torch.manual_seed(0)
    v = variant("label2image", d_channels=[8, 16, 32, 64])
    d = build_projection_discriminator(v, n_classes=3, spectral_norm=sn).eval()  # eval: no power iteration
    x = torch.rand(4, 1, 32, 32)
    logits, feats = d(x, torch.tensor([0, 1, 2, 0]))
    assert logits.shape == (4,)
    assert [f.shape[1:] for f in feats] == [(8, 16, 16), (16, 8, 8), (32, 4, 4), (64, 2, 2)]
    other, _ = d(x, torch.tensor([1, 2, 0, 0]))
    assert not torch.allclose(logits[:3], other[:3]) and torch.allclose(logits[3], other[3])
    layers = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear | torch.nn.Embedding)]
    assert all(parametrize.is_parametrized(m, "weight") == sn for m in layers)


def test_a_few_l1_steps_move_the_generator_towards_a_target() -> None:
    torch.manual_seed(0)
    g = build_mask2image_generator(variant(g_channels=[8, 16]), in_channels=2)
    gen = torch.Generator().manual_seed(3)
    cond = (torch.rand(2, 2, 16, 16, generator=gen) > 0.5).float()
    target = torch.rand(2, 1, 16, 16, generator=gen)
    noise = torch.randn(2, 2, 16, 16, generator=gen)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = (g(cond, noise) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_minibatch_stddev_sees_batch_diversity_for_any_batch_size() -> None:
    same = torch.ones(6, 3, 4, 4)
    out = minibatch_stddev(same)
    assert out.shape == (6, 4, 4, 4) and torch.equal(out[:, :3], same)
    assert out[:, 3].max() < 1e-3  # identical samples: no spread
    varied = minibatch_stddev(torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert varied[:, 3].min() > 0.3
    assert minibatch_stddev(torch.randn(5, 2, 3, 3)).shape == (5, 3, 3, 3)  # prime batch: groups of 1
    assert minibatch_stddev(torch.randn(1, 2, 3, 3))[:, 2].max() < 1e-3
