from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.io.atomic import atomic_dir, atomic_write_text


def test_atomic_dir_replaces_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"

    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")
    assert (final / "a.txt").read_text() == "one", "a failed run must leave the last good output"
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no temporary left behind"

    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]


def test_atomic_dir_recovers_from_a_kill_between_renames(tmp_path: Path) -> None:
    final = tmp_path / "out"
    old = tmp_path / ".out.old-999"
    old.mkdir()
    (old / "a.txt").write_text("good")
    (tmp_path / ".out.tmp-x").mkdir()
    with atomic_dir(final) as tmp:
        assert (final / "a.txt").read_text() == "good"
        (tmp / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_text(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
