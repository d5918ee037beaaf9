"""Real multi-vendor DICOM series against independent reference conversions (dicom2nifti's ground truth
NIfTI), plus the series every converter must reject, plus the TCIA oblique series against SimpleITK.

Tolerances (both sides brought to the closest canonical RAS orientation first):
* voxels: integer references must match exactly; float references (rescaled data) within
  ``|ours - ref| <= 1e-4 + 1e-5 * |ref|`` (float32 rounding of ``stored * slope + intercept``);
* affine: direction/zoom part within 1e-4, translation within 1e-3 mm.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.config import GeometryConfig
from pipeline.errors import InputDataError
from pipeline.io.dicom import read_series, scan_dicom
from pipeline.io.volume import to_canonical
from tests.conftest import SHARED_DATA, shared_path

pytestmark = pytest.mark.shared

# The values params.yaml ships with (written out so that a params change does not change these tests).
GEOM = GeometryConfig(min_slices=3, spacing_rtol=0.05, orientation_atol=0.001, max_tilt_deg=0.5)
GEOM_1 = GeometryConfig(min_slices=1, spacing_rtol=0.05, orientation_atol=0.001, max_tilt_deg=0.5)

REF_DIR = "dicom2nifti_reference"
GT_SUFFIX = "_ground_truth.nii.gz"
NOT_DICOM = {".gz", ".md", ".nii", ".bval", ".bvec", ".json"}

# Series that cannot match their reference, with the rejection we give instead (and why):
EXPECTED_REJECTION: dict[str, tuple[str, GeometryConfig]] = {
    # RGB secondary capture (reference is an RGBA NIfTI): we only read single-channel volumes.
    "generic/rgb/001": ("not_grayscale", GEOM),
    # One slice with neither SliceThickness nor SpacingBetweenSlices: the reference assumes 1 mm; we do not
    # guess (with the default min_slices=3 it is too short anyway: test_single_slice_default_is_slice_count).
    "ge/anatomical/001_single_slice": ("missing_geometry", GEOM_1),
    # Magnitude and phase images (ImageType M / P) of the same slices in one series: two stacks, not a volume.
    # Its reference NIfTI is not in the shared copy (upstream file too large) either.
    "philips/anatomical/002": ("not_a_volume", GEOM),
}

FAILING = {
    "failing/gantrytilting/001": "gantry_tilt",
    "failing/notavolume/001": "not_a_volume",
    "failing/slicecount/001": "slice_count",
    "failing/sliceincrement/001": "slice_increment",
    "failing/sliceincrement/002": "slice_increment",
    "failing/sliceorientation/001": "orientation",
}


def _series_dirs() -> list[str]:
    """Every folder under the reference root that directly holds DICOM files (any vendor folder layout)."""
    root = SHARED_DATA / REF_DIR
    if not root.is_dir():
        return []
    dirs = set()
    for path in root.rglob("*"):
        if path.is_file() and path.suffix.lower() not in NOT_DICOM and path.parent != root:
            dirs.add(path.parent.relative_to(root).as_posix())
    return sorted(dirs)


def _params(selector) -> list:
    found = [d for d in _series_dirs() if selector(d)]
    return found or [pytest.param("<absent>", id="shared-data-absent")]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


@pytest.mark.parametrize("rel", _params(lambda d: not d.startswith("failing/")))
def test_series_matches_reference(rel: str) -> None:
    root = shared_path(REF_DIR)
    folder = root / rel
    reference = folder.parent / (folder.name + GT_SUFFIX)

    if rel in EXPECTED_REJECTION:
        code, geometry = EXPECTED_REJECTION[rel]
        scan = scan_dicom(_files(folder), root)
        codes = [e.code for e in scan.rejected]
        for info in scan.series:
            with pytest.raises(InputDataError) as exc_info:
                read_series(info, root, geometry)
            codes.append(exc_info.value.code)
        assert codes and set(codes) == {code}, codes
        return

    assert reference.is_file(), f"{rel}: no reference NIfTI and no expected rejection listed"
    scan = scan_dicom(_files(folder), root)
    assert scan.rejected == []
    assert len(scan.series) == 1
    info = scan.series[0]
    vol = to_canonical(read_series(info, root, GEOM))
    assert vol.array.dtype == np.float32
    assert vol.meta.source_kind == "dicom" and vol.meta.n_files == len(info.files)

    original = nib.load(reference)
    raw_ints = np.issubdtype(original.get_data_dtype(), np.integer) and (
        float(original.dataobj.slope),
        float(original.dataobj.inter),
    ) == (1.0, 0.0)
    img = nib.as_closest_canonical(original)
    ref = np.asanyarray(img.dataobj)
    # some references are 4D with one volume (X, Y, Z, 1)
    while ref.ndim > 3 and ref.shape[-1] == 1:
        ref = ref[..., 0]
    assert ref.shape == vol.shape
    if raw_ints:
        # raw stored values in the reference: ours must equal them (these series have no rescale, or slope 1)
        np.testing.assert_array_equal(vol.array, ref.astype(np.float32))
    else:
        np.testing.assert_allclose(
            vol.array, img.get_fdata(dtype=np.float64).reshape(ref.shape), rtol=1e-5, atol=1e-4
        )
    np.testing.assert_allclose(vol.affine[:3, :3], img.affine[:3, :3], atol=1e-4)
    np.testing.assert_allclose(vol.affine[:3, 3], img.affine[:3, 3], atol=1e-3)


def test_single_slice_default_is_slice_count() -> None:
    root = shared_path(REF_DIR)
    scan = scan_dicom(_files(root / "ge/anatomical/001_single_slice"), root)
    assert len(scan.series) == 1
    with pytest.raises(InputDataError) as exc_info:
        read_series(scan.series[0], root, GEOM)
    assert exc_info.value.code == "slice_count"


@pytest.mark.parametrize("rel", _params(lambda d: d.startswith("failing/")))
def test_failing_series_rejected_with_right_code(rel: str) -> None:
    root = shared_path(REF_DIR)
    assert rel in FAILING, f"{rel}: unexpected failing series, add its expected code"
    scan = scan_dicom(_files(root / rel), root)
    assert scan.rejected == []
    assert len(scan.series) == 1
    with pytest.raises(InputDataError) as exc_info:
        read_series(scan.series[0], root, GEOM)
    err = exc_info.value
    assert err.code == FAILING[rel], err
    assert err.file == rel


def test_every_failing_case_present() -> None:
    shared_path(REF_DIR)
    assert {d for d in _series_dirs() if d.startswith("failing/")} == set(FAILING)


def test_tcia_oblique_series_match_simpleitk() -> None:
    """TCIA Brain-Tumor-Progression: oblique MR with 6.5 mm slice spacing; SimpleITK/GDCM as the reference."""
    import SimpleITK as sitk

    root = shared_path("tcia_pgbm001")
    scan = scan_dicom(sorted(root.rglob("*.dcm")), root)
    assert scan.rejected == []
    assert len(scan.series) == 6
    for info in scan.series:
        vol = read_series(info, root, GEOM)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(info.files[0].parent)))
        image = reader.Execute()
        arr = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)  # (x, y, z) = (i, j, k)
        lps = np.eye(4)
        lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
        lps[:3, 3] = image.GetOrigin()
        ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
        if np.allclose(ras[:3, 2], -vol.affine[:3, 2], atol=1e-4):  # SimpleITK stacked the other way
            arr = arr[:, :, ::-1]
            ras[:3, 3] += ras[:3, 2] * (arr.shape[2] - 1)
            ras[:3, 2] *= -1
        assert vol.shape == arr.shape
        np.testing.assert_array_equal(vol.array, arr)
        np.testing.assert_allclose(vol.affine, ras, atol=1e-4)
        # oblique: the direction cosines are not axis-aligned
        assert np.count_nonzero(np.abs(vol.affine[:3, :3]) > 1e-3) > 3
        np.testing.assert_allclose(vol.spacing, [0.6875, 0.6875, 6.5], atol=1e-3)
