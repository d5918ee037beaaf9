"""dvc.yaml ↔ params.yaml ↔ code: DVC does not follow imports, so every module a stage imports must be
covered by one of its deps, and its params must be exactly the sections it reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline.config import SECTIONS
from tests.conftest import REPO_ROOT

DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _module_file(name: str) -> Path | None:
    base = REPO_ROOT.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _local_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in ("pipeline", "stages")}


def transitive_files(module: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(_local_imports(path))
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(2, len(parts)))  # parent packages run too
    return {p for p in seen if p.name != "__init__.py" or p.stat().st_size > 0}


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO_ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def test_params_sections_have_typed_configs() -> None:
    assert set(PARAMS) == set(SECTIONS), "every params.yaml section has a config class and vice versa"


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_contract(stage: str) -> None:
    spec = DVC[stage].get("do", DVC[stage])  # a foreach stage (one per variant) keeps its body under `do`
    assert spec["cmd"].startswith(f"python -m stages.{stage}"), "cmd runs the stage module of the same name"
    deps = [d for d in spec["deps"] if not d.startswith("${")]
    if "foreach" in DVC[stage]:
        assert "--variant ${key}" in spec["cmd"], "each variant's stage passes its variant"
    assert f"stages/{stage}.py" in deps
    missing = sorted(
        p.relative_to(REPO_ROOT).as_posix()
        for p in transitive_files(f"stages.{stage}")
        if not _covered(p, deps)
    )
    assert not missing, f"{stage} imports modules its deps do not list: {missing}"

    # the sections a stage reads are named in its own file or the stages/ helpers it imports
    stage_files = [p for p in transitive_files(f"stages.{stage}") if p.parent.name == "stages"]
    literals = {
        n.value
        for f in stage_files
        for n in ast.walk(ast.parse(f.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    read = {s for s in SECTIONS if s in literals}
    listed = spec.get("params", [])
    sections = {p.split(".")[0] for p in listed}
    assert sections == read, f"{stage}: params in dvc.yaml must be the sections it reads"
    # A per-variant stage may list its section key by key (its own variant, not the others'); then every
    # other key of the section must be listed too, or changing it would not rerun the stage.
    for section in sections - set(listed):
        keys = {p.split(".")[1] for p in listed if p.startswith(f"{section}.")}
        assert f"{section}.variants.${{key}}" in listed, (
            f"{stage}: {section} listed in part, but not per variant"
        )
        assert keys == set(PARAMS[section]), (
            f"{stage}: {section} keys missing from params: {set(PARAMS[section]) - keys}"
        )
    assert stage in SECTIONS, "the stage's own params section exists"
