"""Fuzz worker process: ``python -m tests.fuzz.worker MEM_BUDGET_BYTES``.

Protocol: the worker writes one JSON line ``{"ready": ...}`` once imported and limited, then answers each
JSON request line on stdin with one JSON result line. Only the parent enforces the wall-clock limit (it
kills the worker); the worker enforces memory itself with RLIMIT_AS, set after the imports to the address
space it then holds plus the budget, so the budget is what one case may add, not what numpy and the pixel
codecs cost to load.

A case FAILS when the reader raises anything but ``InputDataError``, returns something that is not a correct
result (a Volume with non-finite values, a wrong shape, a ScanResult that loses a file), runs into the memory
limit (MemoryError anywhere, even when the reader then reports it as a rejection: without the limit the
same request would take the memory), or leaks the canary text into a message, log record or warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

_STATUS_KEYS = ("VmSize", "VmRSS", "VmHWM")


def _status() -> dict[str, int]:
    """VmSize, VmRSS, VmHWM of this process in bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":", 1)[0]
            if key in _STATUS_KEYS:
                out[key] = int(line.split()[1]) * 1024
    return out


def _reset_peak() -> None:
    """Reset VmHWM so that each case reports its own peak (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class _Failure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class _Capture(logging.Handler):
    """Keeps every log record of the current case, formatted, to look for the canary."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # a record whose arguments do not format is not our concern here
            self.messages.append(str(record.msg))


def _has_memory_error(exc: BaseException | None, reason: str = "") -> bool:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, MemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return "MemoryError" in reason


class Targets:
    """What a request can ask for. Imports happen here, before the memory limit is set."""

    def __init__(self) -> None:
        import nibabel as nib
        import numpy as np

        from pipeline.config import GeometryConfig
        from pipeline.errors import InputDataError
        from pipeline.io import dicom, nifti
        from pipeline.io.volume import Volume
        from tests.fuzz.dicom_mutators import CANARY

        self.np = np
        self.nib = nib
        self.dicom = dicom
        self.nifti = nifti
        self.Volume = Volume
        self.InputDataError = InputDataError
        self.canary = CANARY
        self.reasons: list[str] = []  # "code: reason" of every rejection of the current case
        self.geometry = {
            n: GeometryConfig(min_slices=n, spacing_rtol=0.05, orientation_atol=0.001, max_tilt_deg=0.5)
            for n in (1, 3)
        }
        self._warm_up()

    def _warm_up(self) -> None:
        """Load the pixel codecs now, so that their libraries count in the baseline and not in a case."""
        import importlib

        for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle", "pydicom.pixels", "nibabel.nifti2", "gzip"):
            with contextlib.suppress(ImportError):
                importlib.import_module(name)

    # -- checks ---------------------------------------------------------------------------------

    def check_rejection(self, err: BaseException, codes: set[str] | None, problems: list[str]) -> str:
        if not isinstance(err, self.InputDataError):
            problems.append(f"rejection of type {type(err).__name__}")
            return "?"
        if _has_memory_error(err, err.reason):
            raise _Failure("memory", f"the reader hit the memory limit: {err.code}: {err.reason}")
        if codes is not None and err.code not in codes:
            problems.append(f"unknown rejection code {err.code!r}")
        if not isinstance(err.reason, str) or not err.reason.strip():
            problems.append("rejection without a reason")
        if not isinstance(err.file, str) or not err.file or os.path.isabs(err.file):
            problems.append(f"rejection does not name the file relative to the root ({err.file!r})")
        if self.canary in str(err):
            problems.append(f"rejection echoes a header value: {err.code}")
        self.reasons.append(f"{err.code}: {err.reason}"[:300])
        return err.code

    def check_volume(self, vol: Any, ij: tuple[int, int] | None, problems: list[str]) -> None:
        np = self.np
        if not isinstance(vol, self.Volume):
            problems.append(f"returned {type(vol).__name__}, not a Volume")
            return
        arr = vol.array
        if not isinstance(arr, np.ndarray) or arr.ndim != 3 or arr.dtype != np.float32:
            problems.append(f"volume array is {getattr(arr, 'dtype', '?')} {getattr(arr, 'shape', '?')}")
            return
        if arr.size == 0:
            problems.append(f"empty volume {arr.shape}")
        if not np.all(np.isfinite(arr)):
            problems.append("volume holds NaN or Inf")
        if ij is not None and tuple(arr.shape[:2]) != ij:
            problems.append(f"volume shape {arr.shape} does not match Columns × Rows {ij}")
        aff = np.asarray(vol.affine)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            problems.append("volume affine is not a finite, invertible 4x4 matrix")

    # -- targets --------------------------------------------------------------------------------

    def dicom_target(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        root = Path(req["root"])
        files = [Path(f) for f in req["files"]]
        codes = set(self.dicom.REJECTION_CODES)
        problems: list[str] = []
        seen: list[str] = []
        scan = self.dicom.scan_dicom(files, root)
        if not isinstance(scan, self.dicom.ScanResult):
            raise _Failure("wrong_result", f"scan_dicom returned {type(scan).__name__}")
        accounted = sum(len(s.files) for s in scan.series) + len(scan.rejected)
        if accounted != len(files):
            problems.append(f"scan accounts for {accounted} of {len(files)} files")
        for err in scan.rejected:
            seen.append(self.check_rejection(err, codes, problems))
        for info in scan.series:
            try:
                vol = self.dicom.read_series(info, root, self.geometry[req["min_slices"]])
            except self.InputDataError as err:
                seen.append(self.check_rejection(err, codes, problems))
                continue
            self.check_volume(vol, (info.columns, info.rows), problems)
        return ("rejected" if seen else "read"), seen, problems

    def nifti_target(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        problems: list[str] = []
        try:
            vol = self.nifti.read_nifti(Path(req["path"]), req["file"], "MR")
        except self.InputDataError as err:
            code = self.check_rejection(err, None, problems)
            if err.file != req["file"]:
                problems.append(f"rejection names {err.file!r}, not the file")
            return "rejected", [code], problems
        self.check_volume(vol, None, problems)
        dtype = self.nib.load(req["path"]).get_data_dtype()
        if dtype.fields is not None or dtype.kind == "c":
            problems.append(f"{dtype} voxels read as one real channel")
        return "read", [], problems

    # Deliberately broken targets: the harness must report each of them as a failure.

    def selftest_ok(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        return "read", [], []

    def selftest_raise(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        raise ValueError("deliberate")

    def selftest_hang(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        while True:
            time.sleep(0.05)

    def selftest_crash(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        os.abort()

    def selftest_memory(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        block = bytearray(int(req.get("bytes", 2 << 30)))
        block[::4096] = b"\1" * len(block[::4096])  # touch every page: resident, not just reserved
        return "read", [], []

    def selftest_swallowed_memory(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        """A reader that turns a MemoryError into its own rejection is still a memory failure."""
        problems: list[str] = []
        try:
            try:
                bytearray(int(req.get("bytes", 2 << 30)))
            except MemoryError:
                raise self.InputDataError("x", "cannot read", "pixel_decode") from None
        except self.InputDataError as err:
            return "rejected", [self.check_rejection(err, None, problems)], problems
        return "read", [], problems

    def selftest_nan(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        """A reader that returns NaN voxels as a successful read."""
        problems: list[str] = []
        vol = self.Volume(self.np.full((2, 2, 2), self.np.nan, dtype=self.np.float32), self.np.eye(4))
        self.check_volume(vol, None, problems)
        return "read", [], problems

    def selftest_leak(self, req: dict[str, Any]) -> tuple[str, list[str], list[str]]:
        logging.getLogger("pipeline.io.dicom").info("rejected x: value %s", self.canary)
        return "read", [], []


def run_one(targets: Targets, req: dict[str, Any], capture: _Capture, rss_limit: int) -> dict[str, Any]:
    """Run one request; never raises (a worker that dies is reported by the parent as a crash).

    ``rss_limit``: a peak resident size above it fails the case (file mappings count, RLIMIT_AS may not
    catch everything a C library does)."""
    capture.messages.clear()
    targets.reasons = []
    _reset_peak()
    start = time.perf_counter()
    outcome, codes, problems, failure = "failure", [], [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn = getattr(targets, f"{req['target']}_target", None) or getattr(targets, req["target"])
            outcome, codes, problems = fn(req)
        except _Failure as exc:
            failure = (exc.kind, exc.detail)
        except MemoryError:
            failure = ("memory", "MemoryError escaped the reader")
        except RecursionError:
            failure = ("exception", "RecursionError escaped the reader")
        except Exception as exc:
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
            failure = ("exception", f"{type(exc).__name__}: {exc}\n{''.join(tb[-6:])}")
        except BaseException as exc:  # SystemExit and the like: the reader must never end the process
            failure = ("exception", f"{type(exc).__name__} raised by the reader")
    elapsed = time.perf_counter() - start
    texts = capture.messages + [str(w.message) for w in caught]
    if failure is None and any(targets.canary in t for t in texts):
        failure = ("phi_leak", "a log record or warning holds a header value (canary)")
    if failure is None and problems:
        failure = ("wrong_result", "; ".join(problems))
    peak = _status().get("VmHWM", 0)
    if failure is None and peak > rss_limit:
        failure = ("memory", f"peak resident size {peak >> 20} MiB over the {rss_limit >> 20} MiB limit")
    result: dict[str, Any] = {
        "id": req["id"],
        "elapsed": elapsed,
        "peak_rss": peak,
        "codes": codes,
        "reasons": targets.reasons,
    }
    if failure is not None:
        result.update(outcome="failure", failure=failure[0], detail=failure[1][:4000])
    else:
        result.update(outcome=outcome)
    return result


def main(argv: list[str]) -> int:
    budget = int(argv[0]) if argv else 1 << 30
    # The protocol owns the original stdout; anything else writing to fd 1 (a C library, a print) goes
    # to stderr instead of corrupting a result line.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    targets = Targets()
    capture = _Capture()
    root_logger = logging.getLogger()
    root_logger.addHandler(capture)
    root_logger.setLevel(logging.DEBUG)
    base = _status()
    limit = base["VmSize"] + budget
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ready = {
        "ready": True,
        "pid": os.getpid(),
        "rss": base["VmRSS"],
        "vm": base["VmSize"],
        "rlimit_as": limit,
    }
    proto.write(json.dumps(ready) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        proto.write(json.dumps(run_one(targets, req, capture, base["VmRSS"] + budget)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
