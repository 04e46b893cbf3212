"""The kernel tool executor: failures and timeouts become KernelError (never escape)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from proxy.kernel import executor
from proxy.kernel.executor import Executor, KernelError


def test_timeout_is_a_kernel_error() -> None:
    with pytest.raises(KernelError, match="timed out after"):
        Executor().run(["sleep", "5"], timeout=0.2)


def test_failure_is_a_kernel_error_with_stderr() -> None:
    with pytest.raises(KernelError, match="boom"):
        Executor().run(["sh", "-c", "echo boom >&2; exit 3"])


def test_default_timeout_grows_with_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def fake_run(*args: object, timeout: float, **kw: object) -> object:
        seen.append(timeout)
        raise subprocess.TimeoutExpired("x", timeout)

    monkeypatch.setattr(subprocess, "run", fake_run)
    for size in (0, 10_000_000):
        with pytest.raises(KernelError):
            Executor().run(["true"], stdin="x" * size)
    assert seen[0] == executor.BASE_TIMEOUT
    assert seen[1] == executor.BASE_TIMEOUT + 10_000_000 / executor.TIMEOUT_BYTES_PER_SECOND


def test_run_lines_streams_everything_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    lines = [f"line {i} " + "x" * 50 for i in range(20_000)]  # > one 256 KiB batch
    Executor().run_lines(["sh", "-c", f"cat > {out}"], iter(lines))
    assert out.read_text().splitlines() == lines


def test_run_lines_failure_carries_stderr() -> None:
    with pytest.raises(KernelError, match="bad input") as info:
        Executor().run_lines(["sh", "-c", "cat >/dev/null; echo bad input >&2; exit 2"], ["a"])
    assert info.value.returncode == 2


def test_run_lines_tool_that_stops_reading_early() -> None:
    lines = ("y" * 100 for _ in range(100_000))  # ~10 MB the tool never reads
    with pytest.raises(KernelError) as info:
        Executor().run_lines(["sh", "-c", "echo refused >&2; exit 3"], lines)
    assert info.value.returncode == 3 and "refused" in info.value.stderr


def test_run_lines_timeout() -> None:
    with pytest.raises(KernelError, match="timed out after"):
        Executor().run_lines(["sleep", "5"], [], timeout=0.2)


def test_wait_exit_returns_the_status_and_times_out_on_a_running_process() -> None:
    import subprocess

    from proxy.kernel.executor import wait_exit

    assert wait_exit(subprocess.Popen(["true"]), 10) == 0
    assert wait_exit(subprocess.Popen(["sh", "-c", "exit 3"]), 10) == 3
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exit(sleeper, 0.2)
    finally:
        sleeper.kill()
    assert wait_exit(sleeper, 10) == -9  # reaped once it is gone


def test_start_keeps_a_large_output_without_blocking_the_tool() -> None:
    # 4 MB: far more than a pipe holds, so a tool writing to a pipe nobody reads would
    # block; started tools write to a file and finish on their own.
    started = Executor().start(["sh", "-c", "yes line | head -c 4000000; echo; echo end"])
    assert executor.wait_exit(started.proc, 30) == 0
    out = started.output().decode()
    assert len(out) == 4_000_000 + len("\nend\n") and out.endswith("line\n\nend\n")
    assert started.out.closed and started.err.closed


def test_start_failure_and_timeout_are_kernel_errors() -> None:
    with pytest.raises(KernelError, match="no such table") as info:
        Executor().start(["sh", "-c", "echo no such table >&2; exit 1"]).output()
    assert info.value.returncode == 1
    sleeper = Executor().start(["sleep", "30"])
    with pytest.raises(KernelError, match="timed out after"):
        sleeper.output(timeout=0.2)
    assert sleeper.proc.returncode == -9


def test_feed_writes_large_pieces_in_slices_and_in_order(tmp_path: Path) -> None:
    out = tmp_path / "out"
    big = "".join(f"{i:07d}\n" for i in range(300_000))  # 2.4 MB: more than one slice
    assert len(big) > executor.FEED_SLICE
    Executor().feed(["sh", "-c", f"cat > {out}"], iter(["head\n", big, "tail\n"]))
    assert out.read_text() == "head\n" + big + "tail\n"
