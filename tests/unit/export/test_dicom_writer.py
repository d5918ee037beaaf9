"""The synthetic DICOM writer: deterministic bytes and UIDs, synthetic markers, geometry, int16 rescale."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipeline.export.dicom_writer import (
    DICOM_SCALE,
    Provenance,
    dicom_files,
    dicom_uid,
    image_dataset,
    seg_dataset,
    to_bytes,
)
from pipeline.export.samples import sample_affine


def _prov(sample_id: str = "mask2image_0001") -> Provenance:
    return Provenance(sample_id, "mask2image", 123, "a" * 64, "b" * 64, "abc123", "0.1.0")


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((48, 40)).astype(np.float32)


def test_uids_are_deterministic_valid_and_distinct() -> None:
    a, b = dicom_uid("s1", "g", "image"), dicom_uid("s1", "g", "seg")
    assert a == dicom_uid("s1", "g", "image") and a != b and a != dicom_uid("s2", "g", "image")
    for uid in (a, b):
        assert uid.startswith("2.25.") and len(uid) <= 64 and pydicom.uid.UID(uid).is_valid


def test_image_and_seg_bytes_are_identical_when_rebuilt() -> None:
    affine = sample_affine((2.0, 2.0, 5.0), (48, 40))
    lesion = np.zeros((48, 40), bool)
    lesion[20:26, 10:15] = True
    first = image_dataset(_image(), affine, _prov())
    second = image_dataset(_image(), affine, _prov())
    assert to_bytes(first) == to_bytes(second)
    assert to_bytes(seg_dataset(lesion, first, _prov())) == to_bytes(seg_dataset(lesion, second, _prov()))


@pytest.mark.parametrize("mask_source", ["condition", "segmenter"])
@pytest.mark.parametrize("shape", [(48, 40), (96, 96), (30, 22)])
def test_cached_templates_give_the_bytes_of_a_fresh_highdicom_build(shape, mask_source) -> None:
    """dicom_files refills one highdicom-built template per export; every sample must come out exactly as
    if highdicom had built it, whatever its id, seed, pixels or lesion (empty or not)."""
    affine = sample_affine((2.0, 2.0, 5.0), shape)
    rng = np.random.default_rng(1)
    for k, sid in enumerate(["mask2image_0000", "mask2image_0001", "mask2image_0002"]):
        prov = Provenance(sid, "mask2image", 1000 + k, "a" * 64, "b" * 64, "abc123", "0.1.0")
        image = rng.random(shape).astype(np.float32)
        lesion = np.zeros(shape, bool)
        if k != 1:
            lesion[5 : 5 + 3 * k + 2, 4:9] = True
        got_image, got_seg = dicom_files(image, lesion, affine, prov, mask_source)
        ds = image_dataset(image, affine, prov)
        assert got_image == to_bytes(ds)
        want_seg = to_bytes(seg_dataset(lesion, ds, prov, mask_source))
        if (shape[0] * shape[1]) % 16 == 0:
            assert got_seg == want_seg
        else:  # same object; only the pad byte of odd-length bit-packed pixels differs (see dicom_files)
            assert got_seg is not None and len(got_seg) == len(want_seg)
            a, b = (
                pydicom.dcmread(pydicom.filebase.DicomBytesIO(got_seg)),
                pydicom.dcmread(pydicom.filebase.DicomBytesIO(want_seg)),
            )
            assert np.array_equal(a.pixel_array, b.pixel_array) and a.SOPInstanceUID == b.SOPInstanceUID
        assert dicom_files(image, None, affine, prov) == (got_image, None)


def test_image_says_synthetic_and_round_trips_the_intensities(tmp_path) -> None:
    affine = sample_affine((2.0, 3.0, 5.0), (48, 40))
    path = tmp_path / "image.dcm"
    path.write_bytes(to_bytes(image_dataset(_image(), affine, _prov())))
    ds = pydicom.dcmread(path)
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.ConversionType == "SYN"
    assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
    assert str(ds.PatientName).startswith("SYNTHETIC^") and "seed 123" in ds.DerivationDescription
    assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    values = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.abs(values.T - _image()).max() <= 0.5 / DICOM_SCALE + 1e-9
    # geometry: columns run along i (towards R = -x in LPS), rows along j (towards A = -y in LPS)
    assert [float(v) for v in ds.ImageOrientationPatient] == [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    assert [float(v) for v in ds.PixelSpacing] == [3.0, 2.0]
    assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx([47.0, 58.5, 0.0])


def test_seg_names_its_algorithm() -> None:
    """A conditioning mask is what the image was drawn from (MANUAL, no algorithm); a segmenter mask is an
    AUTOMATIC segmentation that names the U-Net, so a reader can tell a pseudo-label from a condition."""
    affine = sample_affine((2.0, 2.0, 5.0), (48, 40))
    lesion = np.zeros((48, 40), bool)
    lesion[20:26, 10:15] = True
    image = image_dataset(_image(), affine, _prov())
    cond = seg_dataset(lesion, image, _prov(), "condition").SegmentSequence[0]
    auto = seg_dataset(lesion, image, _prov(), "segmenter")
    item = auto.SegmentSequence[0]
    assert cond.SegmentAlgorithmType == "MANUAL" and "SegmentAlgorithmName" not in cond
    assert (
        item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "medsynth train_seg U-Net"
    )
    assert "U-Net prediction" in auto.DerivationDescription
    with pytest.raises(ValueError, match="mask source"):
        seg_dataset(lesion, image, _prov(), "guess")


def test_image_dataset_rejects_a_volume() -> None:
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        image_dataset(np.zeros((4, 4, 4), np.float32), np.eye(4), _prov())
