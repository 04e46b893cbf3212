"""The agent runs on its own dependencies; the lab, tour and lab benchmarks name the
extra they need when it is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from proxy.cli import LAB_EXTRA, LAB_EXTRA_HINT

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my-nginx.yaml"

WITHOUT_LAB_EXTRA = f"""
import sys
for name in {LAB_EXTRA!r}:
    sys.modules[name] = None  # import raises ImportError, find_spec returns None
import proxy.agent.main  # everything `run` runs
from proxy.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
leaked = sorted(m for m in sys.modules if m.startswith(("proxy.lab", "proxy.harness", "proxy.demo")))
print("tool modules:", leaked, file=sys.stderr)
sys.exit(code)
"""


def without_lab_extra(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_LAB_EXTRA, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_render_needs_only_the_agents_dependencies() -> None:
    proc = without_lab_extra(
        "render", "--state", str(EXAMPLE), "--mode", "nftables", "--hostname-override", "node-a"
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 service ports, 4 endpoints" in proc.stdout
    assert "tool modules: []" in proc.stderr


def test_the_agent_imports_without_the_lab_extra() -> None:
    proc = without_lab_extra("run", "--version")
    assert proc.returncode == 0, proc.stderr
    assert "tool modules: []" in proc.stderr


def test_lab_commands_name_the_missing_extra(tmp_path: Path) -> None:
    for args in (
        ("lab", "status", "--state-dir", str(tmp_path)),
        ("tour",),
        ("bench", "latency"),
    ):
        proc = without_lab_extra(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert (
            f"needs scapy and cryptography, which the agent does not: install the lab extra ({LAB_EXTRA_HINT})"
            in proc.stderr
        )
        assert "Traceback" not in proc.stderr
