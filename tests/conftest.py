"""Shared fixtures: root detection and throwaway network namespaces owned by one test."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: creates network namespaces and kernel rules")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@contextmanager
def throwaway_netns(suffix: str = "t") -> Iterator[str]:
    """A fresh, unlinked network namespace ``kpp-<hex>-<suffix>`` with loopback up,
    deleted (with its processes) afterwards."""
    name = f"kpp-{uuid.uuid4().hex[:6]}-{suffix}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            subprocess.run(["kill", "-9", pid], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, unlinked network namespace, deleted (with its processes) afterwards."""
    with throwaway_netns() as name:
        yield name


@contextmanager
def netns_pair(first: str, second: str) -> Iterator[tuple[str, str]]:
    """Two fresh, unlinked namespaces (names ending ``-first``/``-second``), deleted
    afterwards: one written one way, the other a reference."""
    names = (f"kpp-{uuid.uuid4().hex[:6]}-{first}", f"kpp-{uuid.uuid4().hex[:6]}-{second}")
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        yield names
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False)
