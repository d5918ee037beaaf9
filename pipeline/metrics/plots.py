"""Small, stable writers for DVC metrics and plots files.

Floats are written with 6 significant digits (``-0`` as ``0``) so that a rerun with the same numbers gives
byte-identical files and noise in the last bits does not show up as a change in ``dvc metrics diff``. NaN
and infinity are never written: they raise ``PipelineStateError`` naming the file and the field. Writes are
atomic.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineStateError
from pipeline.io.atomic import atomic_write_text

SIGNIFICANT_DIGITS = 6


def _round(x: float, where: str, path: Path) -> float:
    if not math.isfinite(x):
        raise PipelineStateError(f"{path}: refusing to write non-finite value {x!r} at {where}")
    r = float(f"{x:.{SIGNIFICANT_DIGITS}g}")
    return 0.0 if r == 0 else r


def _clean(obj: Any, where: str, path: Path) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, floats rounded and checked, tuples to lists."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return _round(obj, where, path)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{path}: key {key!r} at {where} is not a string")
            out[str(key)] = _clean(value, f"{where}.{key}", path)
        return out
    if isinstance(obj, list | tuple):
        return [_clean(value, f"{where}[{i}]", path) for i, value in enumerate(obj)]
    raise TypeError(f"{path}: cannot write {type(obj).__name__} at {where}")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` (dicts, lists, numbers, strings, None; numpy values accepted) as indented JSON, keys in
    the given order, floats to 6 significant digits, atomically."""
    path = Path(path)
    text = json.dumps(_clean(obj, "$", path), indent=2, allow_nan=False, ensure_ascii=False)
    atomic_write_text(path, text + "\n")


def _cell(value: Any, where: str, path: Path) -> str:
    value = _clean(value, where, path)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    if isinstance(value, int | str):
        return str(value)
    raise TypeError(f"{path}: cannot write {type(value).__name__} in a CSV cell at {where}")


def write_curve_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    """Write ``rows`` as CSV with header ``fields`` (in that order), atomically. Every row must have exactly
    those keys; ``None`` becomes an empty cell; floats get 6 significant digits."""
    path = Path(path)
    fields = list(fields)
    if not fields or len(set(fields)) != len(fields):
        raise ValueError(f"{path}: fields must be distinct and non-empty, got {fields}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for i, row in enumerate(rows):
        if set(row) != set(fields):
            raise ValueError(f"{path}: row {i} has keys {sorted(row)}, expected {sorted(fields)}")
        writer.writerow([_cell(row[f], f"rows[{i}].{f}", path) for f in fields])
    atomic_write_text(path, buf.getvalue())
