"""The one in-memory volume type: a 3D array, its voxel→world affine, and PHI-free metadata.

Convention (the same as nibabel): ``array[i, j, k]`` is the voxel whose centre lies at
``affine @ [i, j, k, 1]`` in RAS+ world millimetres. Readers convert from the file's convention
(DICOM and ITK use LPS) at the file boundary; nothing inside the pipeline sees LPS.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

#: DICOM/ITK LPS world → RAS world (and back: the matrix is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SafeMeta:
    """Metadata that may travel into outputs: nothing here can identify a patient."""

    modality: str = "MR"
    source_kind: str = "nifti"  # dicom | nifti | nrrd | demo
    n_files: int = 1


@dataclass(frozen=True)
class Volume:
    """A 3D scalar volume. ``array`` has shape (I, J, K); ``affine`` is 4×4, voxel index → RAS mm."""

    array: np.ndarray
    affine: np.ndarray
    meta: SafeMeta = field(default_factory=SafeMeta)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D array, got shape {self.array.shape}")
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise ValueError("Volume affine must be a finite 4×4 matrix")
        object.__setattr__(self, "affine", aff)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k (column norms of the affine)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, affine: np.ndarray | None = None) -> Volume:
        return replace(self, array=array, affine=self.affine if affine is None else affine)

    def same_grid(self, other: Volume, atol_mm: float = 1e-3) -> bool:
        """True when both volumes sample the same voxel centres (shape and affine within ``atol_mm``)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol_mm))


def to_canonical(vol: Volume) -> Volume:
    """Reorient to the closest RAS+ axis order by flips and permutations only (no resampling).

    An oblique volume stays oblique: its affine keeps the rotation, the axes merely point closest to R, A, S.
    """
    current = ornt.io_orientation(vol.affine)
    target = ornt.axcodes2ornt(("R", "A", "S"))
    transform = ornt.ornt_transform(current, target)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return vol
    array = np.ascontiguousarray(ornt.apply_orientation(vol.array, transform))
    affine = vol.affine @ ornt.inv_ornt_aff(transform, vol.array.shape)
    return vol.with_array(array, affine)
