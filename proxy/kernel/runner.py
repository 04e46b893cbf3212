"""Running kernel tools: the only place commands are executed on behalf of the backends."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


class KernelError(RuntimeError):
    """A kernel tool refused a transaction; the message carries its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str, stdin: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdin = stdin
        detail = stderr.strip() or f"exit status {returncode}"
        super().__init__(f"{' '.join(self.argv)}: {detail}")

    def failing_line(self) -> str | None:
        """The input line the tool complained about, when it says which."""
        m = re.search(r"line:? (\d+)", self.stderr)
        if m is None or not self.stdin:
            return None
        lines = self.stdin.splitlines()
        n = int(m.group(1))
        return lines[n - 1] if 0 < n <= len(lines) else None


BASE_TIMEOUT = 120.0
TIMEOUT_BYTES_PER_SECOND = 20_000.0
"""Extra second of timeout per this many bytes of input (a slow restore rate)."""


@dataclass(frozen=True)
class Runner:
    """Runs a tool in the current network namespace, or in ``netns`` via ``ip netns exec``."""

    netns: str | None = None

    def argv(self, cmd: Sequence[str]) -> list[str]:
        if self.netns:
            return ["ip", "netns", "exec", self.netns, *cmd]
        return list(cmd)

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
            timeout = BASE_TIMEOUT + len(stdin or "") / TIMEOUT_BYTES_PER_SECOND
        try:
            proc = subprocess.run(
                full, input=stdin, capture_output=True, text=True, check=False, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise KernelError(cmd, -1, f"timed out after {timeout:.0f}s", stdin or "") from exc
        if check and proc.returncode != 0:
            raise KernelError(cmd, proc.returncode, proc.stderr, stdin or "")
        return proc

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
