"""Conditions of synthetic samples: seeds, choices and mask deformation are functions of the seed alone."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ExportConfig, parse_section
from pipeline.errors import PipelineStateError
from pipeline.export.conditions import (
    DEFORMED_MASK,
    LABEL,
    TRAINING_MASK,
    Condition,
    choose_condition,
    condition_maps,
    place_lesion,
    sample_seed,
)
from pipeline.preprocess.store import SliceSet
from tests.helpers import repo_params


def _cfg(**masks: object) -> ExportConfig:
    params = repo_params()
    params["export"]["masks"].update(masks)
    return parse_section(params, "export")


def _store(n: int = 6, size: int = 48) -> SliceSet:
    ii, jj = np.mgrid[:size, :size]
    head = ((ii - size / 2) / (size * 0.4)) ** 2 + ((jj - size / 2) / (size * 0.35)) ** 2 <= 1
    image = np.stack([head * (0.5 + 0.05 * k) for k in range(n)]).astype(np.float32)
    mask = np.zeros((n, size, size), np.uint8)
    mask[::2, 20:26, 20:26] = 1
    label = np.array([1 if k % 2 == 0 else 0 for k in range(n)], np.int8)
    rows = [{"case_id": f"c{k // 3}", "slice": k % 3, "foreground_fraction": 0.3} for k in range(n)]
    return SliceSet(image, mask, label, rows)


def test_sample_seeds_are_stable_distinct_and_63_bit() -> None:
    seeds = [sample_seed(4242, "mask2image", i) for i in range(200)]
    assert seeds == [sample_seed(4242, "mask2image", i) for i in range(200)]
    assert len(set(seeds)) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(4242, "label2image", 0) != seeds[0] and sample_seed(1, "mask2image", 0) != seeds[0]


def test_choose_condition_depends_on_the_seed_only() -> None:
    store, cfg = _store(), _cfg(new_fraction=0.5)
    candidates = np.arange(6)
    picks = [choose_condition(cfg, "mask2image", s, store, candidates) for s in range(40)]
    assert picks == [choose_condition(cfg, "mask2image", s, store, candidates) for s in range(40)]
    assert {p.source for p in picks} == {TRAINING_MASK, DEFORMED_MASK}
    assert all(p.case_id == store.rows[p.row]["case_id"] for p in picks if p.row is not None)
    labels = [choose_condition(cfg, "label2image", s, store, candidates) for s in range(40)]
    assert {c.source for c in labels} == {LABEL} and {c.label for c in labels} == {0, 1}


def test_choose_condition_without_candidates_is_a_clear_error() -> None:
    with pytest.raises(PipelineStateError, match="min_foreground"):
        choose_condition(_cfg(), "mask2image", 1, _store(), np.zeros(0, np.int64))


def test_training_mask_condition_is_the_stored_mask() -> None:
    store = _store()
    head, lesion, added = condition_maps(Condition(TRAINING_MASK, 1, 0, "c0", 0), _cfg().masks, 7, store)
    assert np.array_equal(lesion, store.mask[0] > 0) and head[24, 24] and not head[0, 0] and not added


def test_deformed_mask_is_seeded_moved_and_stays_inside_the_head() -> None:
    store, cfg = _store(), _cfg(lesion_probability=1.0)
    cond = Condition(DEFORMED_MASK, 1, 0, "c0", 0)
    a = condition_maps(cond, cfg.masks, 11, store)
    b = condition_maps(cond, cfg.masks, 11, store)
    c = condition_maps(cond, cfg.masks, 12, store)
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2], strict=True)) and a[2] == b[2] is True
    assert not np.array_equal(a[1], c[1])  # another seed, another mask
    head, lesion, _ = a
    assert lesion.any() and not (lesion & ~head).any()
    assert not np.array_equal(lesion, store.mask[0] > 0)


def test_place_lesion_is_an_ellipse_inside_the_head() -> None:
    head = np.zeros((64, 64), bool)
    head[8:56, 10:54] = True
    rng = np.random.default_rng(0)
    for _ in range(20):
        lesion = place_lesion(head, rng, (3.0, 6.0))
        assert 9 <= lesion.sum() <= 200 and not (lesion & ~head).any()
    assert not place_lesion(np.zeros((64, 64), bool), rng, (3.0, 6.0)).any()
