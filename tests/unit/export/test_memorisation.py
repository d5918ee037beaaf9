"""The memorisation gate: copies score 1 and are flagged; the threshold comes from held-out reals."""

from __future__ import annotations

import numpy as np

from pipeline.config import parse_section
from pipeline.export.memorisation import calibrate, detail, detail_similarity, nearest_training, reference
from tests.helpers import repo_params


def _cfg():
    return parse_section(repo_params(), "export").memorisation


def _heads(n: int, seed: int, size: int = 48) -> np.ndarray:
    """Elliptical heads with random texture (stand-ins for slices of different patients)."""
    rng = np.random.default_rng(seed)
    ii, jj = np.mgrid[:size, :size]
    head = ((ii - size / 2) / (size * 0.42)) ** 2 + ((jj - size / 2) / (size * 0.38)) ** 2 <= 1
    return np.stack([head * (0.5 + 0.3 * rng.random((size, size))) for _ in range(n)]).astype(np.float32)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64)


def test_detail_similarity_of_an_image_with_itself_is_one() -> None:
    images = _heads(3, 0)
    d, r = detail(images, None, _cfg())
    sim = detail_similarity(d, r, d)
    assert np.allclose(np.diag(sim), 1.0) and (np.abs(sim[~np.eye(3, dtype=bool)]) < 0.5).all()


def test_a_lesion_shared_by_condition_is_left_out() -> None:
    images = _heads(2, 1)
    lesion = np.zeros((2, 48, 48), bool)
    lesion[:, 20:28, 20:28] = True
    bright = images.copy()
    bright[:, 20:28, 20:28] = 1.0  # both carry the same lesion, different texture elsewhere
    d_les, r_les = detail(bright, lesion, _cfg())
    d_no, r_no = detail(bright, None, _cfg())
    with_lesion = detail_similarity(d_no, r_no, d_no)[0, 1]
    without = detail_similarity(d_les, r_les, d_no)[0, 1]
    assert with_lesion > without + 0.1


def test_gate_flags_a_planted_training_copy_and_not_new_images() -> None:
    cfg = _cfg()
    train, held_out, fresh = _heads(30, 2), _heads(20, 3), _heads(10, 4)

    def features(x: np.ndarray) -> np.ndarray:
        return _flat(x)[:, ::7]

    ref = reference(train, np.arange(100, 130), features, cfg)
    gate = calibrate(nearest_training(held_out, None, ref, features, cfg), cfg.percentile, feature_gates=True)
    samples = np.concatenate([fresh, train[5:6]])  # the last one is a copy of training row 105
    near = nearest_training(samples, None, ref, features, cfg)
    flags = gate.flags(near)
    assert flags[-1] and near.detail_row[-1] == 105 and near.detail_corr[-1] > 0.999
    assert flags[:-1].sum() <= 1  # fresh images: at most the 1 % tail a percentile threshold allows
