"""Ingest benchmark: medsynth's DICOM read path (header scan + validation + decode + rescale) against
SimpleITK's ImageSeriesReader alone and against dcm2niix, on the same real series, side by side.

    python benchmarks/ingest.py [--repeat 5] [--data ../shared/data]

Prints slices/s for each reader and the ratios (>1 means medsynth is faster). dcm2niix comes from
`pip install dcm2niix` (the `bench` extra). dcm2niix writes uncompressed NIfTI (-z n); for a like-for-like
comparison medsynth is also timed with an uncompressed NIfTI write of each volume.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import GeometryConfig  # noqa: E402
from pipeline.errors import InputDataError  # noqa: E402
from pipeline.io.dicom import read_series, scan_dicom  # noqa: E402
from pipeline.io.nifti import nifti_bytes  # noqa: E402
from pipeline.io.volume import to_canonical  # noqa: E402
from pipeline.preprocess.discover import list_files  # noqa: E402

GEOMETRY = GeometryConfig(min_slices=3, spacing_rtol=0.05, orientation_atol=1e-3, max_tilt_deg=0.5)


def series_folders(data: Path) -> list[Path]:
    """Real single-series folders: the TCIA exams and the dicom2nifti anatomical series."""
    tcia = sorted(p for p in (data / "tcia_pgbm001" / "PGBM-001").glob("*/*") if p.is_dir())
    ref = sorted(p for p in (data / "dicom2nifti_reference").glob("*/anatomical/*") if p.is_dir())
    return tcia + ref


def run_medsynth(folders: list[Path], write_to: Path | None) -> int:
    slices = 0
    for folder in folders:
        scan = scan_dicom(list_files(folder), folder)
        for info in scan.series:
            vol = to_canonical(read_series(info, folder, GEOMETRY))
            slices += vol.shape[2]
            if write_to is not None:
                (write_to / f"{slices}.nii").write_bytes(nifti_bytes(vol.array, vol.affine))
    return slices


def run_sitk(folders: list[Path]) -> int:
    import SimpleITK as sitk

    slices = 0
    for folder in folders:
        reader = sitk.ImageSeriesReader()
        for uid in reader.GetGDCMSeriesIDs(str(folder)):
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
            slices += reader.Execute().GetSize()[2]
    return slices


def run_dcm2niix(folders: list[Path], out: Path, exe: str) -> None:
    for folder in folders:
        subprocess.run(
            [exe, "-z", "n", "-b", "n", "-f", "%s", "-o", str(out), str(folder)],
            check=True,
            capture_output=True,
        )


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    folders = series_folders(args.data)
    if not folders:
        print(f"no series under {args.data}", file=sys.stderr)
        return 2
    # Only folders medsynth accepts whole (not e.g. a single slice), so every reader reads the same slices.
    accepted = []
    for folder in folders:
        try:
            run_medsynth([folder], None)
            accepted.append(folder)
        except InputDataError as err:
            print(f"  (left out {folder.name}: {err.code})")
    folders = accepted
    n_slices = run_medsynth(folders, None)
    exe = shutil.which("dcm2niix")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        results = {
            "medsynth read": timed(lambda: run_medsynth(folders, None), args.repeat),
            "medsynth read+write nii": timed(lambda: run_medsynth(folders, out), args.repeat),
            "SimpleITK ImageSeriesReader": timed(lambda: run_sitk(folders), args.repeat),
        }
        if exe:
            results["dcm2niix (-z n)"] = timed(lambda: run_dcm2niix(folders, out, exe), args.repeat)
    print(f"{len(folders)} series, {n_slices} slices, best of {args.repeat} runs")
    for name, secs in results.items():
        print(f"  {name:30s} {n_slices / secs:9.1f} slices/s  ({secs * 1000:.0f} ms)")
    ours = results["medsynth read"]
    print(f"ratio medsynth read / SimpleITK: {results['SimpleITK ImageSeriesReader'] / ours:.2f}x")
    if exe:
        d = results["dcm2niix (-z n)"]
        print(f"ratio medsynth read / dcm2niix: {d / ours:.2f}x")
        print(f"ratio medsynth read+write nii / dcm2niix: {d / results['medsynth read+write nii']:.2f}x")
    else:
        print("dcm2niix not installed (pip install dcm2niix): ratio against it not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
