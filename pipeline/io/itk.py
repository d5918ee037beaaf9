"""NRRD/MetaImage (and other ITK formats) through SimpleITK, converted to the pipeline's RAS convention.

SimpleITK is imported here only: the training stages never import this module, so a GPU machine needs no
SimpleITK wheel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputDataError
from pipeline.io.nifti import MAX_VOXELS, check_affine
from pipeline.io.volume import LPS_TO_RAS, SafeMeta, Volume

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def is_itk(path: Path) -> bool:
    return path.name.lower().endswith(ITK_SUFFIXES)


def read_itk(path: Path, file: str, modality: str) -> Volume:
    """Read a scalar 3D image. ITK's world frame is LPS; the affine returned maps to RAS."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = reader.GetSize()
        if reader.GetDimension() != 3:
            raise InputDataError(file, f"expected a 3D image, got {reader.GetDimension()}D", "not_3d")
        if reader.GetNumberOfComponents() != 1:
            raise InputDataError(
                file, "image has several components per voxel (not grayscale)", "not_grayscale"
            )
        if int(np.prod(size, dtype=np.int64)) > MAX_VOXELS:
            raise InputDataError(file, f"image of {size} voxels exceeds the voxel limit", "too_large")
        image = reader.Execute()
    except InputDataError:
        raise
    except Exception as err:  # SimpleITK raises RuntimeError with C++ text; keep only the type
        raise InputDataError(file, f"not a readable ITK image ({type(err).__name__})", "unreadable") from None
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    affine = LPS_TO_RAS @ lps
    check_affine(affine, file)
    # GetArrayFromImage is (k, j, i); the pipeline indexes (i, j, k).
    data = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise InputDataError(file, "voxel data contains NaN or Inf", "non_finite")
    return Volume(data, affine, SafeMeta(modality=modality, source_kind="nrrd", n_files=1))
