"""The one in-memory volume type: a 3D array, its voxel→world affine, and PHI-free metadata.

Convention (the same as nibabel): ``array[i, j, k]`` is the voxel whose centre lies at
``affine @ [i, j, k, 1]`` in RAS+ world millimetres. Readers convert from the file's convention
(DICOM and ITK use LPS) at the file boundary; nothing inside the pipeline sees LPS.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

#: DICOM/ITK LPS world → RAS world (and back: the matrix is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Default for the most bytes a reader may take in for one image: its raw voxels plus the float32 volume.
#: A header can declare any size (and a compressed file can inflate to it), so readers check the limit
#: before they allocate. The default bounds memory and time together: the fuzzing contract (tests/fuzz) is
#: a peak below 1 GiB and at most 5 s per file on a 2-core machine with two files read at once, and a
#: 512^3 uint8 volume (640 MiB by this count) already took 5 s there. 512 MiB is e.g. 512 x 512 x 341 int16
#: voxels; the preprocess stage sets its own limit, ``preprocess.max_read_mib`` (512 x 512 x 800 int16 CT
#: needs 1.2 GiB).
MAX_READ_BYTES = 512 * 2**20

_read_limit: ContextVar[int] = ContextVar("medsynth_read_limit", default=MAX_READ_BYTES)


def read_limit() -> int:
    """The byte limit the readers apply now (MAX_READ_BYTES unless changed by ``read_limit_set``)."""
    return _read_limit.get()


@contextmanager
def read_limit_set(limit_bytes: int) -> Iterator[None]:
    """Apply another read limit inside the block (per thread and task, restored on exit)."""
    if limit_bytes <= 0:
        raise ValueError(f"read limit must be positive, got {limit_bytes}")
    token = _read_limit.set(int(limit_bytes))
    try:
        yield
    finally:
        _read_limit.reset(token)


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
