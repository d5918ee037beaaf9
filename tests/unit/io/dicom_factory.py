"""Builders of tiny DICOM files for the reader tests (helpers, not tests: nothing here is named test_*).

Every slice carries a known pixel pattern, ``pattern(rows, cols, k)``, so a test can check voxel placement.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def pattern(rows: int, cols: int, k: int) -> np.ndarray:
    """Stored values of slice ``k``: unique per (row, column, slice), shape (rows, cols), int16."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (r * 37 + c * 3 + k * 500 + 7).astype(np.int16)


def oblique_orientation(
    yaw_deg: float = 25.0, pitch_deg: float = 12.0, roll_deg: float = -7.0
) -> tuple[float, ...]:
    """Row and column cosines of an oblique plane (axial plane rotated about z, y, x)."""
    a, b, g = np.radians([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(g), -np.sin(g)], [0, np.sin(g), np.cos(g)]])
    rot = rx @ ry @ rz
    return tuple(float(v) for v in (*rot[:, 0], *rot[:, 1]))


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    return meta


def make_slice(
    *,
    pixels: np.ndarray,
    position: Sequence[float],
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: Sequence[float] = (0.5, 0.8),
    series_uid: str,
    study_uid: str,
    frame_uid: str,
    instance: int = 1,
    slice_thickness: float | None = 2.5,
    spacing_between_slices: float | None = None,
    rescale: tuple[float, float] | None = None,
    modality: str = "MR",
    description: str = "T1 test",
    phi: dict[str, str] | None = None,
) -> Dataset:
    """One classic single-frame grayscale image (MR Image Storage) with the given geometry and pixels."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(MR_IMAGE_STORAGE, sop_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientName = "Anon^Test"
    ds.PatientID = "TEST-0001"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    for key, value in (phi or {}).items():
        setattr(ds, key, value)
    if position is not None:
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    if pixel_spacing is not None:
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    if slice_thickness is not None:
        ds.SliceThickness = f"{slice_thickness:g}"
    if spacing_between_slices is not None:
        ds.SpacingBetweenSlices = f"{spacing_between_slices:g}"
    if rescale is not None:
        ds.RescaleSlope = f"{rescale[0]:g}"
        ds.RescaleIntercept = f"{rescale[1]:g}"
    _set_pixels(ds, pixels)
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    pixels = np.ascontiguousarray(pixels)
    ds.Rows, ds.Columns = int(pixels.shape[-2]), int(pixels.shape[-1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.astype("<i2" if pixels.dtype.kind == "i" else "<u2").tobytes()


def write_series(
    folder: Path,
    positions: Sequence[Sequence[float]],
    *,
    orientation: Sequence[float] | Sequence[Sequence[float]] = AXIAL,
    rows: int = 6,
    cols: int = 5,
    names: Sequence[str] | None = None,
    **kwargs: object,
) -> tuple[list[Path], list[np.ndarray]]:
    """Write one series, slice ``k`` at ``positions[k]`` holding ``pattern(rows, cols, k)``.

    ``orientation`` is one IOP for all slices or one per slice. Returns the paths and the stored pixels.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    per_slice = isinstance(orientation[0], (list, tuple))
    paths, pixels = [], []
    for k, pos in enumerate(positions):
        pix = pattern(rows, cols, k)
        iop = orientation[k] if per_slice else orientation
        ds = make_slice(
            pixels=pix,
            position=pos,
            orientation=iop,  # type: ignore[arg-type]
            series_uid=series_uid,
            study_uid=study_uid,
            frame_uid=frame_uid,
            instance=k + 1,
            **kwargs,  # type: ignore[arg-type]
        )
        path = folder / (names[k] if names else f"IM{k:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        pixels.append(pix)
    return paths, pixels


def write_dataset(ds: Dataset, path: Path, *, file_format: bool = True) -> Path:
    """Save ``ds``; ``file_format=False`` writes a bare dataset without preamble and file meta."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_format:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.file_meta = FileMetaDataset()
        ds.preamble = None
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return path


def set_raw(ds: Dataset, tag: int, vr: str, text: str) -> None:
    """Store ``text`` as the raw value of ``tag`` without any conversion or validation (malformed values)."""
    value = text.encode("ascii")
    if len(value) % 2:
        value += b" "
    ds[tag] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)


def rle_compress(ds: Dataset) -> Dataset:
    """Re-encode the pixel data of ``ds`` as RLE Lossless (pydicom's own encoder)."""
    ds.compress(RLELossless)
    return ds


def implicit_little(ds: Dataset) -> Dataset:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def make_enhanced(
    *,
    positions: Sequence[Sequence[float]],
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: Sequence[float] = (0.5, 0.8),
    rows: int = 6,
    cols: int = 5,
    rescale: Sequence[tuple[float, float]] | None = None,
    temporal: Sequence[int] | None = None,
) -> tuple[Dataset, np.ndarray]:
    """An Enhanced MR multi-frame object: per-frame plane positions (and rescale), shared orientation/spacing.

    Returns the dataset and its stored frames, shape (frames, rows, cols).
    """
    n = len(positions)
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(ENHANCED_MR_STORAGE, sop_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID = ENHANCED_MR_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.PatientID = "TEST-0002"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.SeriesDescription = "enhanced test"
    ds.NumberOfFrames = n

    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    shared.PlaneOrientationSequence = DicomSequence([orient])
    measures = Dataset()
    measures.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
    measures.SliceThickness = "2"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    frames = []
    per_frame = []
    for k, pos in enumerate(positions):
        fg = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        fg.PlanePositionSequence = DicomSequence([plane])
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        if temporal is not None:
            content.TemporalPositionIndex = temporal[k]
        fg.FrameContentSequence = DicomSequence([content])
        if rescale is not None:
            pvt = Dataset()
            pvt.RescaleSlope = f"{rescale[k][0]:g}"
            pvt.RescaleIntercept = f"{rescale[k][1]:g}"
            pvt.RescaleType = "US"
            fg.PixelValueTransformationSequence = DicomSequence([pvt])
        per_frame.append(fg)
        frames.append(pattern(rows, cols, k))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    stack = np.stack(frames)
    _set_pixels(ds, stack)
    return ds, stack


def nested_sequence_bytes(depth: int) -> bytes:
    """Implicit VR LE bytes of a sequence nested ``depth`` levels deep (undefined lengths throughout)."""
    seq_tag = b"\x08\x00\x15\x11"  # (0008,1115) Referenced Series Sequence, SQ
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    opening = (seq_tag + b"\xff\xff\xff\xff" + item) * depth
    closing = (item_end + seq_end) * depth
    return opening + closing
