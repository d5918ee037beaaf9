"""NIfTI read/write through nibabel, with the checks nibabel leaves to the caller."""

from __future__ import annotations

import gzip
import io
import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.errors import GeometryError, InputDataError
from pipeline.io.volume import SafeMeta, Volume

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Refuse volumes above this many voxels before reading them (a hostile header can claim terabytes).
MAX_VOXELS = 1024**3


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def check_affine(affine: np.ndarray, file: str) -> None:
    """Reject affines that do not describe a 3D grid (non-finite, singular, zero spacing)."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise GeometryError(file, "affine is not a finite 4x4 matrix", "missing_geometry")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise GeometryError(file, "affine is singular (zero or collinear voxel axes)", "missing_geometry")


def read_nifti(path: Path, file: str, modality: str) -> Volume:
    """Read a 3D NIfTI volume (a trailing singleton 4th dimension is dropped). ``file`` is the name used
    in errors (relative to the data root)."""
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types on corrupt headers
        raise InputDataError(
            file, f"not a readable NIfTI file ({type(err).__name__})", "unreadable"
        ) from None
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputDataError(file, f"expected a 3D volume, got {len(img.shape)}D shape {img.shape}", "not_3d")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InputDataError(
            file, f"volume of {shape} voxels exceeds the {MAX_VOXELS} voxel limit", "too_large"
        )
    if img.header.get("qform_code", 0) == 0 and img.header.get("sform_code", 0) == 0:
        # nibabel then falls back to a pixdim-only affine: orientation is unknown, so we do not guess.
        raise GeometryError(file, "neither qform nor sform is set: orientation unknown", "missing_geometry")
    affine = np.asarray(img.affine, dtype=np.float64)
    check_affine(affine, file)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as err:
        raise InputDataError(
            file, f"voxel data cannot be read ({type(err).__name__})", "pixel_decode"
        ) from None
    if not np.all(np.isfinite(data)):
        raise InputDataError(file, "voxel data contains NaN or Inf", "non_finite")
    return Volume(data, affine, SafeMeta(modality=modality, source_kind="nifti", n_files=1))


def nifti_bytes(array: np.ndarray, affine: np.ndarray, compress: bool = False) -> bytes:
    """Serialise a NIfTI-1 image deterministically (qform and sform both set, code 1 = scanner; gzip mtime 0).

    Returned as bytes so callers can hash it and write it atomically.
    """
    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header["descrip"] = b"medsynth"
    raw = img.to_bytes()
    if not compress:
        return raw
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return buf.getvalue()
