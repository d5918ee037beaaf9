from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pipeline.config import SECTIONS, ConfigError, load_params, parse_section
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def params() -> dict:
    return load_params(REPO_ROOT / "params.yaml")


def test_every_section_of_params_yaml_loads(params: dict) -> None:
    for name in SECTIONS:
        section = parse_section(params, name)
        assert type(section) is SECTIONS[name]


def test_sections_are_frozen(params: dict) -> None:
    cfg = parse_section(params, "preprocess")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        cfg.workers = 3  # type: ignore[misc]


def test_unknown_key_is_named(params: dict) -> None:
    bad = copy.deepcopy(params)
    bad["preprocess"]["geometry"]["min_slcies"] = 3
    with pytest.raises(ConfigError, match=r"preprocess\.geometry\.min_slcies: unknown key"):
        parse_section(bad, "preprocess")


def test_missing_key_is_named(params: dict) -> None:
    bad = copy.deepcopy(params)
    del bad["demo_data"]["n_cases"]
    with pytest.raises(ConfigError, match=r"demo_data\.n_cases: missing key"):
        parse_section(bad, "demo_data")


@pytest.mark.parametrize(
    ("section", "path", "value"),
    [
        ("preprocess", ("geometry", "min_slices"), "3"),  # a string is not an int, even if it looks like one
        ("preprocess", ("target_spacing",), [1.0, 1.0]),  # wrong length
        ("common", ("device",), "tpu"),  # not one of the choices
        ("common", ("deterministic",), "yes"),
        ("demo_data", ("lesion_fraction",), 1.5),  # out of range
    ],
)
def test_ill_typed_value_is_named(params: dict, section: str, path: tuple[str, ...], value: object) -> None:
    bad = copy.deepcopy(params)
    node = bad[section]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=".".join((section, *path))):
        parse_section(bad, section)


def test_missing_section_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing section 'preprocess'"):
        parse_section({"common": {}}, "preprocess")
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "p.yaml"
    broken.write_text("common: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(broken)
