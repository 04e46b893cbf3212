"""The kernel tool runner: failures and timeouts become KernelError (never escape)."""

from __future__ import annotations

import pytest

from proxy.kernel import runner
from proxy.kernel.runner import KernelError, Runner


def test_timeout_is_a_kernel_error() -> None:
    with pytest.raises(KernelError, match="timed out after"):
        Runner().run(["sleep", "5"], timeout=0.2)


def test_failure_is_a_kernel_error_with_stderr() -> None:
    with pytest.raises(KernelError, match="boom"):
        Runner().run(["sh", "-c", "echo boom >&2; exit 3"])


def test_default_timeout_grows_with_the_input(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def fake_run(*args: object, timeout: float, **kw: object) -> object:
        seen.append(timeout)
        raise runner.subprocess.TimeoutExpired("x", timeout)

    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    for size in (0, 10_000_000):
        with pytest.raises(KernelError):
            Runner().run(["true"], stdin="x" * size)
    assert seen[0] == runner.BASE_TIMEOUT
    assert seen[1] == runner.BASE_TIMEOUT + 10_000_000 / runner.TIMEOUT_BYTES_PER_SECOND
