"""Scan benchmark: preprocess's discovery (header-only DICOM scan, grouping into series, case pairing) over a
data root of many series, against a naive scan that reads every file whole with pydicom, side by side.

    python benchmarks/scan.py                         # 10,000 series of 3 slices (30,000 files, ~40 MB)
    python benchmarks/scan.py --series 1000 --slices 20

The series are generated into a temporary folder first (small 32x32 MR slices with distinct UIDs and
positions, one folder per patient and series, as a PACS export lays them out). Prints files/s of each, the
ratio, the number of series and cases found (must equal what was written) and the peak memory of the process.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage  # noqa: E402

from pipeline.preprocess.discover import discover  # noqa: E402

ROOT_UID = "2.25."


def _uid(*parts: int) -> str:
    # Distinct, valid UIDs without a random source: the data is the same on every run.
    state = np.random.SeedSequence(list(parts)).generate_state(3)
    return ROOT_UID + str(int.from_bytes(state.tobytes(), "big"))


def write_series(root: Path, n_series: int, n_slices: int, size: int) -> int:
    pixels = (np.arange(size * size, dtype=np.uint16).reshape(size, size) % 1000).tobytes()
    written = 0
    for s in range(n_series):
        folder = root / f"P{s:05d}" / "MR"
        folder.mkdir(parents=True)
        for k in range(n_slices):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = _uid(s, k, 2)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID = _uid(s, 0)
            ds.SeriesInstanceUID = _uid(s, 1)
            ds.PatientID = f"BENCH{s:05d}"
            ds.Modality = "MR"
            ds.SeriesDescription = "T1 AX bench"
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [0.0, 0.0, 5.0 * k]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = [1.0, 1.0]
            ds.SliceThickness = 5.0
            ds.Rows = ds.Columns = size
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.PixelData = pixels
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            (folder / f"IM{k + 1:04d}.dcm").write_bytes(buf.getvalue())
            written += 1
    return written


def naive_scan(root: Path) -> int:
    """What a scanner that does not care does: read every file whole (pixels included), group by series."""
    series: dict[str, int] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            ds = pydicom.dcmread(Path(dirpath) / name)
            _ = ds.PixelData
            series[str(ds.SeriesInstanceUID)] = series.get(str(ds.SeriesInstanceUID), 0) + 1
    return len(series)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--slices", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the header scan")
    args = ap.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        n_files = write_series(root, args.series, args.slices, args.size)
        mb = sum(p.stat().st_size for p in root.rglob("*.dcm")) / 2**20
        print(f"wrote {args.series} series, {n_files} files ({mb:.0f} MB) in {time.perf_counter() - t:.1f} s")

        timings: dict[int, float] = {}
        results = {}
        for workers in sorted({1, args.workers}):
            t = time.perf_counter()
            results[workers] = discover(
                root,
                mask_series_pattern="(?i)mask|seg",
                mask_file_suffixes=["_mask"],
                default_modality="MR",
                salt="bench",
                workers=workers,
            )
            timings[workers] = time.perf_counter() - t
        found = results[args.workers]
        same = all(
            r.cases == found.cases and len(r.rejected) == len(found.rejected) for r in results.values()
        )
        ours = timings[args.workers]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = time.perf_counter()
        naive_series = naive_scan(root)
        naive = time.perf_counter() - t
    for workers, seconds in timings.items():
        label = f"medsynth discover, {workers} process{'es' if workers > 1 else ''}:"
        print(f"  {label:<34s}{n_files / seconds:9.0f} files/s  ({seconds:.1f} s)")
    print(f"  pydicom full read of every file:  {n_files / naive:9.0f} files/s  ({naive:.1f} s)")
    print(f"  ratio medsynth ({args.workers} processes) / full read: {naive / ours:.2f}x")
    if len(timings) > 1:
        print(f"  ratio {args.workers} processes / 1 process: {timings[1] / ours:.2f}x; same cases: {same}")
    print(
        f"  series found {len(found.cases)} cases, {len(found.rejected)} rejected "
        f"(naive: {naive_series} series); peak memory of this process {peak:.0f} MB"
    )
    ok = len(found.cases) == args.series and not found.rejected and same
    if not ok:
        print("  MISMATCH: discovery did not find every written series", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
