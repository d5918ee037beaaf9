"""The header scan in a process pool gives exactly the serial result (series, files, order, rejections),
and passes the caller's read limit on to the spawned workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.io import dicom
from pipeline.io.volume import read_limit_set
from tests.unit.io import dicom_factory as fac


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for s in range(4):
        fac.write_series(tmp_path / f"p{s}" / "series", [(0.0, 0.0, float(z)) for z in range(3)])
    fac.write_series(tmp_path / "big", [(0.0, 0.0, 0.0)], rows=300, cols=300)
    (tmp_path / "p0" / "junk.dcm").write_bytes(b"not dicom at all" * 10)
    return tmp_path


def test_pool_scan_equals_serial_scan(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = [p for p in root.rglob("*") if p.is_file()]
    serial = dicom.scan_dicom(files, root)
    monkeypatch.setattr(dicom, "_PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(dicom, "_SCAN_CHUNK", 3)  # 15 files in 5 chunks over 2 processes
    pooled = dicom.scan_dicom(files, root, workers=2)
    assert pooled.series == serial.series and len(serial.series) == 5
    assert [(e.file, e.code) for e in pooled.rejected] == [(e.file, e.code) for e in serial.rejected]
    assert [e.code for e in serial.rejected] == ["not_dicom"]
    # the limit set here reaches the workers: 300 x 300 x (2 + 4) bytes is over 256 KiB
    with read_limit_set(256 << 10):
        limited = dicom.scan_dicom(files, root, workers=2)
    assert sorted(e.code for e in limited.rejected) == ["not_dicom", "too_large"]
