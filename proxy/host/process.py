"""Child processes the harness starts: environment, readiness lines, stopping by pid."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from proxy.harness.errors import HarnessError

#: The directory holding the `proxy` package, so children import this very code.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for harness children: ours, with the source root on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(SOURCE_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def python_argv(module: str, *args: str) -> list[str]:
    """argv running `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


class LineReader:
    """Reads newline-terminated lines from a pipe with a deadline (no threads)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def readline(self, timeout: float) -> bytes | None:
        """One line without its newline; None on EOF; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete line within {timeout:.1f}s")
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk


def log_tail(path: Path | None, limit: int = 2000) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:].strip()


class ManagedProcess:
    """A child started by the harness; always stopped by its own pid."""

    def __init__(self, popen: subprocess.Popen[bytes], label: str, log: Path | None) -> None:
        self.popen = popen
        self.label = label
        self.log = log

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        *,
        label: str,
        log: Path | None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = subprocess.DEVNULL,
    ) -> ManagedProcess:
        """Start argv with stderr going to `log` (or discarded)."""
        err: IO[bytes] | int
        err = log.open("ab") if log is not None else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=stdin,
                stdout=stdout,
                stderr=err,
                env=child_env(),
                start_new_session=True,  # our Ctrl-C must not hit it before cleanup runs
            )
        except OSError as exc:
            raise HarnessError(f"cannot start {label}: {exc}") from exc
        finally:
            if not isinstance(err, int):
                err.close()
        return cls(popen, label, log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, prefix: bytes, timeout: float) -> bytes:
        """Wait for a stdout line starting with prefix, then close our end of stdout."""
        if self.popen.stdout is None:
            raise HarnessError(f"{self.label}: started without a stdout pipe")
        reader = LineReader(self.popen.stdout.fileno())
        try:
            while True:
                line = reader.readline(timeout)
                if line is None:
                    code = self.popen.wait(timeout=5)
                    raise HarnessError(
                        f"{self.label} exited with {code} before it was ready: "
                        f"{log_tail(self.log) or '(no stderr)'}"
                    )
                if line.startswith(prefix):
                    return line
        except TimeoutError as exc:
            raise HarnessError(
                f"{self.label} not ready after {timeout}s: {log_tail(self.log) or '(no stderr)'}"
            ) from exc
        finally:
            self.popen.stdout.close()

    def signal_stop(self) -> None:
        """Send SIGTERM (no wait): used to stop many processes in parallel."""
        signal_stop(self.popen)

    def stop(self, grace: float = 3.0) -> int:
        """SIGTERM, wait, SIGKILL; reaps the child and returns its exit status."""
        return stop(self.popen, grace)


def signal_stop(popen: subprocess.Popen[Any]) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)


def stop(popen: subprocess.Popen[Any], grace: float = 3.0) -> int:
    """SIGTERM, wait up to grace seconds, SIGKILL; reaps the child, returns its status."""
    signal_stop(popen)
    try:
        return popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        popen.kill()
        return popen.wait(timeout=5)


def stop_all(popens: Sequence[subprocess.Popen[Any]], grace: float = 3.0) -> None:
    """Stop several processes concurrently (one shared grace period)."""
    for popen in popens:
        signal_stop(popen)
    deadline = time.monotonic() + grace
    for popen in popens:
        stop(popen, max(0.0, deadline - time.monotonic()))
