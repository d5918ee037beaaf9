"""`audit_determinism` end to end on a two-stage DVC project: one stage deterministic, one whose output
depends on Python's string hashing (set order), which the audit's two PYTHONHASHSEEDs must expose. The real
pipeline's audit (minutes) is run by hand: `medsynth audit-determinism` (README, Determinism)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.audit import audit_determinism, format_report

pytestmark = pytest.mark.slow

STEADY = (
    "import pathlib; pathlib.Path('steady').mkdir(exist_ok=True); "
    "pathlib.Path('steady/out.txt').write_text('42')"
)
SHAKY = (
    "import pathlib; "
    "pathlib.Path('shaky.txt').write_text(' '.join({'alpha', 'beta', 'gamma', 'delta', 'eps'}))"
)


def _project(root: Path) -> Path:
    root.mkdir()
    stages = {
        "steady": {"cmd": f'python -c "{STEADY}"', "outs": ["steady"]},
        "shaky": {"cmd": f'python -c "{SHAKY}"', "outs": [{"shaky.txt": {"cache": False}}]},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "params.yaml").write_text(yaml.safe_dump({"common": {"device": "cpu"}}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def test_audit_finds_the_hash_order_dependence_and_passes_the_steady_stage(tmp_path: Path) -> None:
    repo = _project(tmp_path / "project")
    report = audit_determinism(repo, overrides={}, cuda=False, work=tmp_path / "work", timeout=300)
    assert report["verdict"] == "different", format_report(report)
    assert report["stages"]["shaky"]["different"] == ["shaky.txt"]
    assert report["stages"]["steady"] == {
        "files": 1,
        "identical": 1,
        "timing_only": [],
        "different": [],
        "missing": [],
    }
    assert [r["pythonhashseed"] for r in report["runs"]] == ["1", "2"]
    assert report["cuda"] == {"checked": False, "reason": "no CUDA device on this machine"}

    only = audit_determinism(
        repo, overrides={}, cuda=False, work=tmp_path / "work2", timeout=300, targets=("steady",)
    )
    assert only["verdict"] == "identical" and set(only["stages"]) == {"steady"}
