"""Shard archives: members come back byte for byte, NIfTI members memory-map with the right orientation,
the archives are deterministic, and bad references are typed errors that name the reference."""

from __future__ import annotations

import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import InputDataError
from pipeline.io.nifti import nifti_bytes
from pipeline.io.shards import ShardWriter, locate, read_member, read_nifti


def _volume(seed: int, shape=(5, 4, 3), dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(dtype)


def _write(root: Path, n: int, per_shard: int) -> list[list[str]]:
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    with ShardWriter(root, "volumes", per_shard) as w:
        return [
            w.add(
                [
                    (f"c{i}_image.nii", nifti_bytes(_volume(i), affine)),
                    (f"c{i}_mask.nii", nifti_bytes((_volume(i) > 0.5).astype(np.uint8), affine)),
                ]
            )
            for i in range(n)
        ]


def test_groups_fill_archives_and_members_read_back(tmp_path: Path) -> None:
    refs = _write(tmp_path, 5, per_shard=2)
    assert sorted(p.name for p in (tmp_path / "volumes").iterdir()) == [
        "volumes-0000.tar",
        "volumes-0001.tar",
        "volumes-0002.tar",
    ]
    assert refs[2] == ["volumes/volumes-0001.tar::c2_image.nii", "volumes/volumes-0001.tar::c2_mask.nii"]
    for i, (image_ref, mask_ref) in enumerate(refs):
        array, affine = read_nifti(tmp_path, image_ref)
        assert isinstance(array, np.memmap) and not array.flags.writeable
        np.testing.assert_array_equal(array, _volume(i))
        np.testing.assert_array_equal(affine, np.diag([2.0, 2.0, 5.0, 1.0]))
        mask, _ = read_nifti(tmp_path, mask_ref)
        np.testing.assert_array_equal(mask, (_volume(i) > 0.5).astype(np.uint8))
        in_memory, _ = read_nifti(tmp_path, image_ref, mmap=False)
        np.testing.assert_array_equal(in_memory, array)
    # the archive is a plain tar: a member is the NIfTI file byte for byte
    with tarfile.open(tmp_path / "volumes" / "volumes-0000.tar") as tar:
        data = tar.extractfile("c1_image.nii").read()
    assert data == read_member(tmp_path, refs[1][0])
    np.testing.assert_array_equal(nib.Nifti1Image.from_bytes(data).get_fdata(), _volume(1))


def test_archives_are_deterministic(tmp_path: Path) -> None:
    _write(tmp_path / "a", 3, per_shard=8)
    _write(tmp_path / "b", 3, per_shard=8)
    a = (tmp_path / "a" / "volumes" / "volumes-0000.tar").read_bytes()
    assert a == (tmp_path / "b" / "volumes" / "volumes-0000.tar").read_bytes()


def test_bad_references_are_typed_errors(tmp_path: Path) -> None:
    (refs,) = _write(tmp_path, 1, per_shard=1)
    cases = {
        "volumes/volumes-0000.tar::nope.nii": "missing",
        "volumes/volumes-0009.tar::c0_image.nii": "missing",
        "../outside.tar::c0_image.nii": "bad_path",
        "/etc/passwd": "bad_path",
    }
    for ref, code in cases.items():
        with pytest.raises(InputDataError) as err:
            locate(tmp_path, ref)
        assert err.value.code == code and err.value.file == ref
    (tmp_path / "junk.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(InputDataError) as err:
        read_nifti(tmp_path, "junk.tar::x.nii")
    assert err.value.code == "unreadable"
    with pytest.raises(ValueError), ShardWriter(tmp_path, "x", 1) as w:
        w.add([("a/b.nii", b"")])
