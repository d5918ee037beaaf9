"""Shared fixtures. Real scans come from ../shared/data: absent → skip with the reason, unless
MEDSYNTH_REQUIRE_SHARED=1 (set by CI), where absent → fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip (fail in CI) when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"real scans not found at {path} (../shared/data is absent)"
        if os.environ.get("MEDSYNTH_REQUIRE_SHARED") == "1":
            pytest.fail(reason + "; MEDSYNTH_REQUIRE_SHARED=1 makes this a failure")
        pytest.skip(reason)
    return path


@pytest.fixture
def shared_data() -> Path:
    return shared_path()
