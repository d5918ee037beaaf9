"""The determinism audit's comparison rules: what counts as identical, as timing-only and as different."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.audit import (
    SMALL_PARAMS,
    audit_params,
    compare_file,
    format_report,
    recorded_verdict,
    set_dotted,
    strip_timing,
    verdict_of,
    write_report,
)
from pipeline.errors import ConfigError
from pipeline.training.common import code_fingerprint
from tests.conftest import REPO_ROOT


def _pair(tmp_path: Path, name: str, a: bytes, b: bytes) -> tuple[Path, Path]:
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "b").mkdir(exist_ok=True)
    pa, pb = tmp_path / "a" / name, tmp_path / "b" / name
    pa.write_bytes(a)
    pb.write_bytes(b)
    return pa, pb


def test_same_bytes_are_identical_and_other_bytes_different(tmp_path: Path) -> None:
    assert compare_file(*_pair(tmp_path, "x.nii", b"abc", b"abc")) == "identical"
    assert compare_file(*_pair(tmp_path, "y.nii", b"abc", b"abd")) == "different"


def test_json_differing_only_in_wall_clock_keys_is_timing_only(tmp_path: Path) -> None:
    a = {"dice": 0.5, "perf": {"images_per_second": 100.0}, "seconds": {"total": 3.0}}
    b = {"dice": 0.5, "perf": {"images_per_second": 120.0}, "seconds": {"total": 4.0}}
    c = {**b, "dice": 0.5000001}
    assert compare_file(*_pair(tmp_path, "m.json", json.dumps(a).encode(), json.dumps(b).encode())) == (
        "timing_only"
    )
    assert compare_file(*_pair(tmp_path, "n.json", json.dumps(a).encode(), json.dumps(c).encode())) == (
        "different"
    )


def _pt(obj: object) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_checkpoints_compare_tensors_bitwise_and_ignore_history_timings(tmp_path: Path) -> None:
    w = torch.arange(6, dtype=torch.float32)
    a = {"net": {"w": w}, "history": [{"val/dice": 0.4, "perf/epoch_seconds": 1.0}]}
    b = {"net": {"w": w.clone()}, "history": [{"val/dice": 0.4, "perf/epoch_seconds": 2.5}]}
    nudged = w.clone()
    nudged[0] = torch.nextafter(nudged[0], torch.tensor(1.0))  # one ulp
    c = {"net": {"w": nudged}, "history": b["history"]}
    assert compare_file(*_pair(tmp_path, "last.pt", _pt(a), _pt(b))) == "timing_only"
    assert compare_file(*_pair(tmp_path, "best.pt", _pt(a), _pt(c))) == "different"
    d = {"net": {"w": w.double()}, "history": b["history"]}
    assert compare_file(*_pair(tmp_path, "model.pt", _pt(a), _pt(d))) == "different"


def test_perf_tsv_is_timing_only_other_tsv_is_compared(tmp_path: Path) -> None:
    perf = tmp_path / "p" / "plots" / "metrics" / "perf"
    val = tmp_path / "q" / "plots" / "metrics" / "val"
    for folder in (perf, val):
        (folder / "a").mkdir(parents=True)
        (folder / "b").mkdir(parents=True)
        (folder / "a" / "x.tsv").write_text("step\tv\n0\t1.0\n")
        (folder / "b" / "x.tsv").write_text("step\tv\n0\t2.0\n")
    assert compare_file(perf / "a" / "x.tsv", perf / "b" / "x.tsv") == "timing_only"
    assert compare_file(val / "a" / "x.tsv", val / "b" / "x.tsv") == "different"


def test_unreadable_json_is_different_not_a_crash(tmp_path: Path) -> None:
    assert compare_file(*_pair(tmp_path, "bad.json", b"{", b"{}")) == "different"


def test_strip_timing_keeps_everything_else() -> None:
    value = {"a": [{"seconds": 1, "b": 2}], "perf/data_wait_fraction": 0.1, "c": {"epoch_seconds": 3}}
    assert strip_timing(value) == {"a": [{"b": 2}], "c": {}}


def test_set_dotted_refuses_unknown_keys() -> None:
    params = {"common": {"device": "auto"}}
    set_dotted(params, "common.device", "cpu")
    assert params["common"]["device"] == "cpu"
    with pytest.raises(ConfigError, match="common.devcie"):
        set_dotted(params, "common.devcie", "cpu")
    with pytest.raises(ConfigError, match="no section"):
        set_dotted(params, "nothing.device", "cpu")


def test_small_params_exist_in_params_yaml_and_load_as_typed_config() -> None:
    from pipeline.config import SECTIONS, parse_section

    params = audit_params(REPO_ROOT, SMALL_PARAMS)
    for section in SECTIONS:
        parse_section(params, section)  # every override is a valid value of its typed config
    assert params["common"]["device"] == "cpu"
    assert params["preprocess"]["data_root"] == "data/raw/demo"  # produced by demo_data: stays relative


def test_external_data_root_is_made_absolute(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "scans").mkdir(parents=True)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {"cmd": "true", "outs": ["out"]}}}))
    (repo / "params.yaml").write_text(yaml.safe_dump({"preprocess": {"data_root": "scans"}}))
    params = audit_params(repo, {})
    assert params["preprocess"]["data_root"] == str((repo / "scans").resolve())


def _report(different: list[str]) -> dict[str, object]:
    stage = {"files": 3, "identical": 2, "timing_only": ["m.json"], "different": different, "missing": []}
    return {
        "stages": {"train_seg": stage},
        "verdict": verdict_of({"train_seg": stage}),
        "runs": [{"seconds": 1.0}, {"seconds": 2.0}],
        "cuda": {"checked": False, "reason": "no CUDA device on this machine"},
        "code": {"git_commit": "abc"},
        "code_fingerprint": code_fingerprint(),
    }


def test_report_verdicts_and_lineage_lookup(tmp_path: Path) -> None:
    good, bad = _report([]), _report(["models/train_seg/model.pt"])
    assert good["verdict"] == "identical" and bad["verdict"] == "different"
    assert "DIFFERENT train_seg" in format_report(
        bad
    ) and "differs: models/train_seg/model.pt" in format_report(bad)
    assert recorded_verdict(tmp_path, "train_seg") is None  # no audit yet
    write_report(tmp_path, good)
    found = recorded_verdict(tmp_path, "train_seg")
    assert found == {
        "verdict": "identical",
        "timing_only": 1,
        "files": 3,
        "git_commit": "abc",
        "current_code": True,
    }
    assert recorded_verdict(tmp_path, "preprocess") is None  # not audited
    stale = {**good, "code_fingerprint": "0" * 64}
    write_report(tmp_path, stale)
    assert recorded_verdict(tmp_path, "train_seg")["current_code"] is False
