"""Processes: commands run to completion, children started and stopped by their own pid,
pids killed by id, and what /proc says about a pid.

Every child is stopped by its pid (SIGTERM, a grace period, SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from proxy.host.errors import CommandError, HostError

#: The directory holding the `proxy` package, so children import this very code.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


def run_command(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run argv, capturing text output; raise CommandError on failure when check."""
    try:
        done = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise HostError(f"command not found: {argv[0]!r}") from exc
    except subprocess.TimeoutExpired as exc:
        raise HostError(f"command {' '.join(argv)!r} timed out after {timeout}s") from exc
    if check and done.returncode != 0:
        raise CommandError(argv, done.returncode, done.stdout, done.stderr)
    return done


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for our Python children: ours, with the source root on PYTHONPATH."""
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


def spawn_logged(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str],
    deathsig: int | None,
    new_session: bool,
    cwd: str | os.PathLike[str] | None = None,
    banner: str | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a long-running child whose stdout and stderr are appended to its log file.

    stdin is /dev/null; with ``banner`` a line ``--- <time> <banner>: <argv>`` comes
    first; with ``deathsig`` the child gets that signal when the thread that forked it
    exits (:func:`die_with_parent`). Returns the child and the offset in the log file
    where this run's output starts.
    """
    with open(log_path, "ab") as log_file:
        offset = log_file.tell()
        if banner is not None:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log_file.write(f"--- {stamp} {banner}: {' '.join(argv)}\n".encode())
            log_file.flush()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=new_session,
            preexec_fn=None if deathsig is None else die_with_parent(deathsig),
        )
    return popen, offset


def log_tail_lines(path: Path, lines: int = 30, offset: int = 0) -> str:
    """The last lines of a child's log file from byte offset on ("(no log at …)" if none)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` giving the child a parent-death signal (``PR_SET_PDEATHSIG``).

    It fires when the *thread* that forked exits: use it from the main thread, or from a
    thread that lives as long as the child should.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


class ManagedProcess:
    """A child whose stderr goes to a log; always stopped by its own pid."""

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
            raise HostError(f"cannot start {label}: {exc}") from exc
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
            raise HostError(f"{self.label}: started without a stdout pipe")
        reader = LineReader(self.popen.stdout.fileno())
        try:
            while True:
                line = reader.readline(timeout)
                if line is None:
                    code = self.popen.wait(timeout=5)
                    raise HostError(
                        f"{self.label} exited with {code} before it was ready: "
                        f"{log_tail(self.log) or '(no stderr)'}"
                    )
                if line.startswith(prefix):
                    return line
        except TimeoutError as exc:
            raise HostError(
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


# -- pids ---------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first); [] if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie is dead: its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def kill_pids(
    pids: Iterable[int], *, grace: float = 2.0, running: Callable[[int], bool] = alive
) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns pids still alive.

    ``running`` says whether a pid is still the process to stop (default: alive); a pid
    for which it is false is not signalled again.
    """
    pending = [p for p in pids if p != os.getpid()]
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if running(p)]
        if pending:
            time.sleep(0.02)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if running(p)]
        if pending:
            time.sleep(0.02)
    return pending


def proc_starttime(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if it is gone."""
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def proc_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
