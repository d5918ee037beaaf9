"""3D patch datasets over the memory-mapped preprocess shards: patches come from the right place, lesion
centring works, items are reproducible, and what the dataset holds does not grow with the volumes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pipeline.data.volumes import MAX_CENTRES, VolumeDataset, WholeVolumeDataset, load_split_volumes
from pipeline.io.nifti import nifti_bytes
from pipeline.io.shards import ShardWriter


def _head_with_lesion(shape: tuple[int, int, int], centre: tuple[int, int, int], r: int = 2):
    grid = np.indices(shape)
    mid = np.array(shape)[:, None, None, None] / 2
    image = (((grid - mid) / (np.array(shape)[:, None, None, None] / 2.2)) ** 2).sum(0) < 1
    lesion = ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= r * r
    values = np.where(image, 0.5, 0.0) + np.where(lesion, 0.4, 0.0)
    return values.astype(np.float32), (lesion * 2).astype(np.uint8)  # label value 2: any non-zero is lesion


def _preprocess_dir(root: Path, volumes: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    rows = []
    with ShardWriter(root, "volumes", 2) as shards:
        for n, (image, labels) in enumerate(volumes):
            refs = shards.add(
                [
                    (f"c{n}_image.nii", nifti_bytes(image, np.eye(4))),
                    (f"c{n}_mask.nii", nifti_bytes(labels, np.eye(4))),
                ]
            )
            rows.append(
                {"case_id": f"c{n}", "split": "train", "has_mask": "True", "image": refs[0], "mask": refs[1]}
            )
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return _preprocess_dir(
        tmp_path,
        [
            _head_with_lesion((40, 36, 12), (12, 20, 6)),
            _head_with_lesion((30, 30, 6), (15, 10, 3)),  # fewer slices than the patch: padded
            (_head_with_lesion((24, 24, 10), (5, 5, 5))[0], np.zeros((24, 24, 10), np.uint8)),  # no lesion
        ],
    )


def test_cases_are_memory_maps_and_whole_volumes_read_back(data: Path) -> None:
    cases = load_split_volumes(data, "train")
    assert [c.case_id for c in cases] == ["c0", "c1", "c2"]
    assert all(isinstance(c.image, np.memmap) and isinstance(c.labels, np.memmap) for c in cases)
    image, labels = _head_with_lesion((40, 36, 12), (12, 20, 6))
    np.testing.assert_array_equal(cases[0].image, image)
    np.testing.assert_array_equal(cases[0].mask, labels > 0)
    item = WholeVolumeDataset(data, "train")[0]
    assert item["image"].shape == (1, 40, 36, 12) and float(item["mask"].sum()) == float((labels > 0).sum())


def test_patches_are_slices_of_the_volume_and_lesion_centred(data: Path) -> None:
    ds = VolumeDataset(
        data, "train", (16, 16, 8), augment=None, seed=3, pos_fraction=1.0, samples_per_case=10
    )
    assert ds.centres[2] is None, "a case without lesion gets uniform windows"
    for i in range(0, len(ds), 3):  # case 0: lesion-centred patches always hold the lesion
        item = ds[i]
        assert item["image"].shape == item["mask"].shape == (1, 16, 16, 8)
        assert float(item["mask"].sum()) > 0
    # a window inside the volume is the volume's own voxels
    start = ds._window(0, np.random.RandomState(0))
    image, _ = ds._crop(0, start)
    window = tuple(slice(a, a + p) for a, p in zip(start, (16, 16, 8), strict=True))
    np.testing.assert_array_equal(image, np.asarray(ds.cases[0].image)[window])
    # case 1 has 6 slices: padded to 8, one zero slice on each side
    image, labels = ds._crop(1, [0, 0, 0])
    assert not image[:, :, 0].any() and not image[:, :, 7].any()
    np.testing.assert_array_equal(image[:, :, 1:7], np.asarray(ds.cases[1].image)[:16, :16, :])


def test_items_repeat_for_the_same_seed_epoch_and_index(data: Path) -> None:
    def make():
        return VolumeDataset(data, "train", (16, 16, 8), augment=None, seed=7, samples_per_case=4)

    a, b = make(), make()
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["image"].numpy(), b[i]["image"].numpy())
    b.set_epoch(1)
    assert any(not np.array_equal(a[i]["image"].numpy(), b[i]["image"].numpy()) for i in range(len(a)))


def test_resident_memory_is_bounded_by_the_centre_cap(tmp_path: Path) -> None:
    big = _head_with_lesion((96, 96, 40), (40, 40, 20), r=12)  # ~7,000 lesion and ~150,000 head voxels
    ds = VolumeDataset(_preprocess_dir(tmp_path, [big]), "train", (32, 32, 16), augment=None)
    fg, bg = ds.centres[0]
    assert fg.size == bg.size == MAX_CENTRES
    assert ds.resident_bytes() == 2 * MAX_CENTRES * 8
    # every kept centre is of its kind
    labels, image = np.asarray(ds.cases[0].labels), np.asarray(ds.cases[0].image)
    assert (
        (labels.reshape(-1)[fg] > 0).all()
        and (labels.reshape(-1)[bg] == 0).all()
        and (image.reshape(-1)[bg] > 0).all()
    )
