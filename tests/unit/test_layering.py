"""The layering contract (pyproject.toml, checked by ``lint-imports`` in CI) covers every
part of ``proxy``: a new top-level module or package must be placed in a layer, or it
would escape the contract silently."""

from __future__ import annotations

import pkgutil
import re
import tomllib
from pathlib import Path
from typing import Any

import proxy

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
TOOLS = {
    "proxy.cli",
    "proxy.bench",
    "proxy.demo",
    "proxy.explain",
    "proxy.lab",
    "proxy.harness",
    "proxy.host",
}
ENTRY = {"proxy.__main__"}


def _contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def _top_level() -> set[str]:
    return {f"proxy.{m.name}" for m in pkgutil.iter_modules(proxy.__path__)} - ENTRY


def test_every_top_level_module_is_data_plane_or_a_named_tool_layer() -> None:
    contracts = _contracts()
    data_plane = set(contracts["data-plane"]["source_modules"])
    top = _top_level()
    assert top - data_plane - TOOLS == set(), "place the new module in pyproject's contracts"
    assert data_plane - top == set(), "a contract names a module that no longer exists"
    assert data_plane.isdisjoint(TOOLS)


def test_host_is_forbidden_everything_above_it_and_the_tools_are_layered() -> None:
    contracts = _contracts()
    forbidden = set(contracts["host-bottom"]["forbidden_modules"])
    assert forbidden == _top_level() - {"proxy.host", "proxy.logs"}
    layered = {
        name for layer in contracts["tools"]["layers"] for name in re.split(r"\s*\|\s*", layer)
    }
    assert layered == TOOLS
