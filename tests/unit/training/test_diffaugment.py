"""DiffAugment for single-channel images and the adaptive augmentation probability."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.training.diffaugment import OPS, P_MAX, AdaptiveP, diff_augment


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(shape: tuple[int, ...] = (6, 1, 16, 16)) -> torch.Tensor:
    return torch.rand(shape, generator=seeded(42))


@pytest.mark.parametrize("ops", [list(OPS), ["translation"], ["cutout"], ["brightness"], ["contrast"]])
def test_shapes_kept_and_gradients_flow(ops: list[str]) -> None:
    x = batch().requires_grad_(True)
    out = diff_augment(x, ops, 1.0, seeded())
    assert out.shape == x.shape
    out.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_p_zero_and_no_ops_are_identity() -> None:
    x, cond = batch(), batch((6, 2, 16, 16))
    assert diff_augment(x, list(OPS), 0.0) is x
    assert diff_augment(x, [], 1.0) is x
    out, c = diff_augment(x, list(OPS), 0.0, cond=cond)
    assert out is x and c is cond


def test_p_one_changes_every_sample() -> None:
    x = batch()
    out = diff_augment(x, ["brightness", "contrast"], 1.0, seeded())
    assert all(not torch.allclose(out[i], x[i]) for i in range(x.shape[0]))


def test_deterministic_with_a_seeded_generator() -> None:
    x = batch()
    a = diff_augment(x, list(OPS), 0.5, seeded(3))
    b = diff_augment(x, list(OPS), 0.5, seeded(3))
    c = diff_augment(x, list(OPS), 0.5, seeded(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_conditioning_gets_the_same_geometric_transform() -> None:
    # image == conditioning: after translation and cutout the pair must still be identical.
    square = torch.zeros(8, 1, 16, 16)
    square[:, :, 5:11, 4:9] = 1.0
    cond = torch.cat([square, 1 - square], dim=1)
    out, c = diff_augment(square.clone(), ["translation", "cutout"], 1.0, seeded(1), cond=cond)
    assert not torch.equal(out, square)  # something moved
    assert torch.equal(out, c[:, :1])
    # the second channel moved the same way (zeros shifted in, cut out where the image was cut)
    moved_ones = diff_augment(torch.ones(8, 1, 16, 16), ["translation", "cutout"], 1.0, seeded(1))
    assert torch.equal(c[:, 1:], moved_ones - out)


def test_translation_shifts_by_whole_pixels_and_fills_zeros() -> None:
    x = torch.zeros(16, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = diff_augment(x, ["translation"], 1.0, seeded(5))
    for img in out[:, 0]:
        assert img.sum() == 1.0  # a single pixel moved, none lost (shift ≤ 2 < 8)
        i, j = (img == 1).nonzero()[0].tolist()
        assert abs(i - 8) <= 2 and abs(j - 8) <= 2
    edge = torch.ones(16, 1, 16, 16)
    shifted = diff_augment(edge, ["translation"], 1.0, seeded(5))
    assert shifted.min() == 0  # zeros shifted in, not wrapped around


def test_intensity_ops_leave_conditioning_alone() -> None:
    x, cond = batch(), (batch((6, 2, 16, 16)) > 0.5).float()
    out, c = diff_augment(x, ["brightness", "contrast"], 1.0, seeded(), cond=cond)
    assert torch.equal(c, cond) and not torch.equal(out, x)


def test_cutout_zeroes_a_quarter_at_most() -> None:
    x = torch.ones(8, 1, 16, 16)
    out = diff_augment(x, ["cutout"], 1.0, seeded(2))
    zeroed = (out == 0).float().flatten(1).sum(1)
    assert (zeroed > 0).all() and (zeroed <= 64).all()


def test_3d_volumes() -> None:
    x = torch.rand(2, 1, 8, 8, 4, requires_grad=True)
    out, c = diff_augment(x, list(OPS), 1.0, seeded(), cond=torch.rand(2, 2, 8, 8, 4))
    assert out.shape == x.shape and c.shape == (2, 2, 8, 8, 4)
    out.sum().backward()


def test_unknown_op_and_mismatched_cond() -> None:
    with pytest.raises(ConfigError, match="saturation"):
        diff_augment(batch(), ["saturation"], 0.5)
    with pytest.raises(ValueError):
        diff_augment(batch(), ["cutout"], 0.5, cond=torch.rand(6, 1, 8, 8))


def test_adaptive_p_moves_towards_the_target_and_is_clipped() -> None:
    ada = AdaptiveP(0.2, target=0.6, speed=0.05)
    assert ada.update(0.9) == pytest.approx(0.25)  # D too sure of reals: more augmentation
    assert ada.update(0.1) == pytest.approx(0.2)  # below target: less
    assert ada.update(0.6) == pytest.approx(0.2)  # at target: unchanged
    for _ in range(50):
        ada.update(1.0)
    assert ada.p == P_MAX == 0.8
    for _ in range(50):
        ada.update(-1.0)
    assert ada.p == 0.0


def test_adaptive_p_fixed_when_target_is_zero() -> None:
    ada = AdaptiveP(0.3, target=0.0, speed=0.05)
    for r in (1.0, -1.0, 0.5):
        assert ada.update(r) == 0.3


def test_adaptive_p_state_round_trip() -> None:
    ada = AdaptiveP(0.2, target=0.6, speed=0.05)
    ada.update(1.0)
    state = ada.state_dict()
    assert state == {"p": pytest.approx(0.25)} and all(type(v) is float for v in state.values())
    other = AdaptiveP(0.2, target=0.6, speed=0.05)
    other.load_state_dict(state)
    assert other.p == ada.p


def test_adaptive_p_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        AdaptiveP(1.5, 0.6, 0.05)
    with pytest.raises(ConfigError):
        AdaptiveP(0.2, 0.6, -1.0)
