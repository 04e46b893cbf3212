"""Running kernel tools: the only place commands are executed on behalf of the backends."""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import select
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

log = logging.getLogger(__name__)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc.wait(timeout)`` that returns as soon as the process exits: Popen polls with
    sleeps of up to 50 ms, which was a fifth of a 1,000-Service full sync. A pidfd
    (Linux 5.3) becomes readable when the process exits."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # already reaped, or an old kernel
        return proc.wait(timeout=timeout)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


class KernelError(RuntimeError):
    """A kernel tool refused a transaction; the message carries its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, stdin: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdin = stdin
        detail = stderr.strip() or f"exit status {returncode}"
        super().__init__(f"{' '.join(self.argv)}: {detail}")

    committed: tuple[str, ...] = ()
    """Tables (iptables) the tool had committed before it failed: they were restored to
    what they held before (``rolled_back``), or are changed (``rollback_error`` says why)."""
    rolled_back: bool = False
    rollback_error: str | None = None

    def failing_line_number(self) -> int | None:
        """The input line the tool complained about, when it says which."""
        m = re.search(r"line:? (\d{1,9})", self.stderr)
        return int(m.group(1)) if m is not None else None

    def failing_line(self) -> str | None:
        """The input line the tool complained about, when it says which."""
        n = self.failing_line_number()
        if n is None or not self.stdin:
            return None
        lines = self.stdin.splitlines()
        return lines[n - 1] if 0 < n <= len(lines) else None

    def outcome(self) -> str:
        """What the failure did to the kernel, in words (the truth, for messages)."""
        if not self.committed:
            return "nothing was changed"
        tables = " and ".join(self.committed)
        if self.rolled_back:
            return (
                f"the {tables} table had already been committed and was restored to what it "
                "held before: nothing is changed"
            )
        return (
            f"the {tables} table WAS changed and could not be restored "
            f"({self.rollback_error}); run the command again or `kube-proxy-py cleanup`"
        )


DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")
"""Every tool runs with the kernel's parent-death signal set to SIGKILL (util-linux
``setpriv`` sets it and execs the tool, in the same process). If the agent dies while a
tool is reading its input (SIGKILL, the OOM killer, the SIGTERM deadline), the tool would
see end-of-input at a line boundary and commit a truncated transaction: ``nft -f`` a
script whose chains are flushed and half refilled, ``iptables-restore`` the tables whose
COMMIT it reached. Killed with its parent, it commits nothing."""


@functools.cache
def _die_with_parent() -> tuple[str, ...]:
    return DIE_WITH_PARENT if shutil.which("setpriv") else ()


BASE_TIMEOUT = 120.0
TIMEOUT_BYTES_PER_SECOND = 20_000.0
"""Extra second of timeout per this many bytes of input (a slow restore rate)."""


def default_timeout(input_bytes: int) -> float:
    """Seconds a tool may take for this much input."""
    return BASE_TIMEOUT + input_bytes / TIMEOUT_BYTES_PER_SECOND


def _memory_file(name: str) -> IO[bytes]:
    """An anonymous in-memory file (memfd): a dump of tens of MB never reaches a disk."""
    return open(os.memfd_create(f"kube-proxy-py-{name}"), "w+b")


FEED_SLICE = 1 << 20
"""Characters encoded and written at a time by :meth:`Executor.feed`."""
_BATCH_BYTES = 1 << 18


def _batches(lines: Iterable[str]) -> Iterator[str]:
    """Lines joined into newline-terminated batches of about 256 KiB."""
    batch: list[str] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line) + 1
        if size >= _BATCH_BYTES:
            yield "\n".join(batch) + "\n"
            batch, size = [], 0
    if batch:
        yield "\n".join(batch) + "\n"


@dataclass
class Started:
    """A tool started by :meth:`Executor.start`, still running or done."""

    cmd: list[str]
    proc: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]

    def output(self, timeout: float = BASE_TIMEOUT) -> bytes:
        """Wait for the tool; its stdout (undecoded), or :class:`KernelError` if it failed
        or ran past ``timeout`` (then it is killed)."""
        try:
            try:
                returncode = wait_exit(self.proc, timeout)
            except subprocess.TimeoutExpired as exc:
                self.proc.kill()
                self.proc.wait()
                raise KernelError(self.cmd, -1, f"timed out after {timeout:.0f}s") from exc
            if returncode != 0:
                self.err.seek(0)
                raise KernelError(self.cmd, returncode, self.err.read().decode(errors="replace"))
            self.out.seek(0)
            return self.out.read()
        finally:
            self.out.close()
            self.err.close()


@dataclass(frozen=True)
class Executor:
    """Runs a tool in the current network namespace, or in ``netns`` via ``ip netns exec``."""

    netns: str | None = None

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` as run: in ``netns`` if set, and bound to this process's life (see
        :data:`DIE_WITH_PARENT`)."""
        wrapper = _die_with_parent()
        if wrapper and shutil.which(cmd[0]) is None:
            # as without the wrapper: a missing tool is FileNotFoundError, not a refusal
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", cmd[0])
        full = [*wrapper, *cmd]
        if self.netns:
            return ["ip", "netns", "exec", self.netns, *full]
        return full

    def run(
        self,
        cmd: Sequence[str],
        *,
        stdin: str | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd``; a failure or a timeout raises :class:`KernelError`. The default
        timeout grows with the input: restoring 10,000 services through iptables-nft
        takes minutes on a small machine."""
        full = self.argv(cmd)
        if timeout is None:
            timeout = default_timeout(len(stdin or ""))
        try:
            proc = subprocess.run(
                full, input=stdin, capture_output=True, text=True, check=False, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise KernelError(cmd, -1, f"timed out after {timeout:.0f}s", stdin or "") from exc
        if check and proc.returncode != 0:
            raise KernelError(cmd, proc.returncode, proc.stderr, stdin or "")
        return proc

    def run_lines(
        self, cmd: Sequence[str], lines: Iterable[str], *, timeout: float | None = None
    ) -> None:
        """Run ``cmd`` with ``lines`` written to its stdin as they come, in batches (the
        whole input is never held as one string); a failure or timeout raises
        :class:`KernelError` (without the input: the caller knows how to rebuild it)."""
        self.feed(cmd, _batches(lines), timeout=timeout)

    def feed(
        self, cmd: Sequence[str], pieces: Iterable[str], *, timeout: float | None = None
    ) -> None:
        """Run ``cmd`` with ``pieces`` written to its stdin one after another, each
        encoded a slice at a time (so a large piece is never copied whole); a failure or
        timeout raises :class:`KernelError` (without the input)."""
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                self.argv(cmd), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err
            )
            assert proc.stdin is not None
            written = 0
            try:
                for piece in pieces:
                    for at in range(0, len(piece), FEED_SLICE):
                        written += proc.stdin.write(piece[at : at + FEED_SLICE].encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the tool stopped reading: its status and stderr say why
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            limit = default_timeout(written) if timeout is None else timeout
            try:
                returncode = wait_exit(proc, limit)
            except subprocess.TimeoutExpired as exc:
                proc.kill()
                proc.wait()
                raise KernelError(cmd, -1, f"timed out after {limit:.0f}s") from exc
            if returncode != 0:
                err.seek(0)
                raise KernelError(cmd, returncode, err.read().decode(errors="replace"))

    def start(self, cmd: Sequence[str]) -> Started:
        """Start ``cmd`` and return at once; :meth:`Started.output` waits for it. Its
        output goes to an in-memory file, so a large dump never blocks on a full pipe
        while the caller does other work."""
        out, err = _memory_file("stdout"), _memory_file("stderr")
        try:
            proc = subprocess.Popen(
                self.argv(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        except BaseException:
            out.close()
            err.close()
            raise
        return Started(list(cmd), proc, out, err)

    @staticmethod
    def available(tool: str) -> bool:
        return shutil.which(tool) is not None

    def read_sysctl(self, key: str) -> str | None:
        proc = self.run(["sysctl", "-n", key], check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def write_sysctl(self, key: str, value: str) -> None:
        if self.read_sysctl(key) == value:
            return
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])
        log.info("sysctl set", extra={"key": key, "value": value})
