"""Every environment variable is declared once (settings/), read only through it, with one boolean
rule, and the README's table says the same."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import settings
from request.catalog import MODELS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("service", "startup", "adetailer", "pipeline", "request", "hardware", "presets")


def environment_reads(source: str) -> list[int]:
    """Lines where ``source`` reads ``os.environ``/``os.getenv``. Writes for third-party libraries
    (``os.environ[...] = ...``, ``setdefault``) are not reads."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "getenv" and getattr(node.value, "id", None) == "os":
            found.append(node.lineno)
        if isinstance(node, ast.Attribute) and node.attr == "environ" and getattr(node.value, "id", None) == "os":
            parent = parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.attr == "setdefault":
                continue
            if isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store):
                continue
            found.append(node.lineno)
    return sorted(found)


def test_nothing_but_settings_reads_the_environment() -> None:
    files = [ROOT / "predict.py"] + [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    reads = [f"{path.relative_to(ROOT)}:{line}" for path in files for line in environment_reads(path.read_text())]
    assert reads == []


def test_the_scan_would_see_a_read() -> None:
    source = "import os\na = os.environ.get('X')\nb = os.getenv('Y')\nos.environ['Z'] = '1'\nos.environ.setdefault('W', '1')\n"
    assert sorted(environment_reads(source)) == [2, 3]


def test_each_models_weights_variable_is_declared() -> None:
    for spec in MODELS.values():
        assert spec.weights_env in settings.SETTINGS, spec.name


def test_the_readme_table_is_the_declarations() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `([A-Z0-9_<>]+)` \|", section, re.M)
    expected = list(settings.SETTINGS) + [f"{family.prefix}<NAME>" for family in settings.FAMILIES.values()]
    assert names == expected


@pytest.mark.parametrize("raw, value", [("1", True), ("TRUE", True), (" yes ", True), ("On", True),
                                        ("0", False), ("false", False), ("No", False), ("off", False)])
def test_one_boolean_rule(raw: str, value: bool) -> None:
    assert settings.get("FAST_LOAD", {"FAST_LOAD": raw}) is value


def test_values_are_typed_defaults_apply_and_bad_ones_name_the_variable() -> None:
    assert settings.get("FAST_LOAD", {}) is None and settings.get("FAST_LOAD", {"FAST_LOAD": ""}) is None
    assert settings.get("WEIGHT_STREAM_WORKERS", {"WEIGHT_STREAM_WORKERS": "8"}) == 8
    assert settings.get("MODEL_MEMORY_BUDGET_GB", {"MODEL_MEMORY_BUDGET_GB": "1.5"}) == 1.5
    assert settings.get("WEIGHTS_CACHE", {"WEIGHTS_CACHE": "/data/cache"}) == Path("/data/cache")
    assert settings.get("DEFAULT_MODEL", {}) == "sdxl"
    with pytest.raises(settings.SettingError, match=r"\$FAST_LOAD='maybe': allowed 1/true/yes/on or 0/false/no/off"):
        settings.get("FAST_LOAD", {"FAST_LOAD": "maybe"})
    with pytest.raises(settings.SettingError, match=r"\$WEIGHT_STREAM_WORKERS='many': expected an integer"):
        settings.get("WEIGHT_STREAM_WORKERS", {"WEIGHT_STREAM_WORKERS": "many"})


def test_family_members_are_read_raw_for_their_owner() -> None:
    assert settings.member("SPEED_", "cuda_graphs", {"SPEED_CUDA_GRAPHS": "0"}) == "0"
    assert settings.member("HW_", "offload", {}) is None
    with pytest.raises(KeyError):
        settings.member("TURBO_", "x", {})


def test_values_are_read_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFAULT_MODEL", "flux-dev")
    assert settings.get("DEFAULT_MODEL") == "flux-dev"
    monkeypatch.delenv("DEFAULT_MODEL")
    assert settings.get("DEFAULT_MODEL") == "sdxl"
