"""NRRD/MetaImage (and other ITK formats) through SimpleITK, converted to the pipeline's RAS convention.

SimpleITK is imported here only: the training stages never import this module, so a GPU machine needs no
SimpleITK wheel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputDataError
from pipeline.io.nifti import check_affine, check_read_size
from pipeline.io.volume import LPS_TO_RAS, SafeMeta, Volume

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def is_itk(path: Path) -> bool:
    return path.name.lower().endswith(ITK_SUFFIXES)


def _pixel_bytes(sitk: Any, pixel_id: int) -> int:
    sizes = {
        sitk.sitkUInt8: 1,
        sitk.sitkInt8: 1,
        sitk.sitkUInt16: 2,
        sitk.sitkInt16: 2,
        sitk.sitkUInt32: 4,
        sitk.sitkInt32: 4,
        sitk.sitkFloat32: 4,
    }
    return sizes.get(pixel_id, 8)


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
        # SimpleITK's buffer and its numpy copy are both alive when the float32 volume is made
        check_read_size(file, tuple(int(s) for s in size), 2 * _pixel_bytes(sitk, reader.GetPixelID()))
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
