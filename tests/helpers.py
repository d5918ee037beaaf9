"""Helpers shared by tests (not collected: the name does not start with test_)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pipeline.config import PreprocessConfig, load_params, parse_section
from tests.conftest import REPO_ROOT


def preprocess_config(**overrides: Any) -> PreprocessConfig:
    """The repository's `preprocess` section with top-level keys (or nested dicts) replaced."""
    params = copy.deepcopy(load_params(REPO_ROOT / "params.yaml"))
    section = params["preprocess"]
    for key, value in overrides.items():
        if isinstance(value, dict):
            section[key] = {**section[key], **value}
        else:
            section[key] = value
    return parse_section(params, "preprocess")


def lineage_stub() -> dict[str, Any]:
    return {"stage": "preprocess", "params": {}, "seeds": {}, "code": {"git_commit": None, "git_dirty": None}}


def all_text_of(folder: Path) -> bytes:
    """Every byte of every file under ``folder`` (for leak checks)."""
    return b"\n".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
