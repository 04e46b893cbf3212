"""The quick start's guided tour runs end to end and checks itself, in both modes."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_tour_runs_and_every_step_checks_out(mode: str) -> None:
    before = _namespaces()
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "tour", "--mode", mode, "--no-color"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("[ok]") == 5
    assert "UNEXPECTED" not in proc.stdout and "\033[" not in proc.stdout
    assert "tour: all 5 steps behaved as expected" in proc.stdout
    assert _namespaces() <= before, "the tour left namespaces behind"


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}
