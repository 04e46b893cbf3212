"""Exceptions raised by the netns harness."""

from __future__ import annotations

from collections.abc import Sequence


class HarnessError(RuntimeError):
    """The harness could not build, drive or tear down its topology."""


class CommandError(HarnessError):
    """A command run by the harness exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        output = (stderr.strip() or stdout.strip() or "(no output)")[-2000:]
        super().__init__(f"command {' '.join(self.argv)!r} exited with {returncode}: {output}")


class ProbeError(HarnessError):
    """A probe worker failed (crashed, hung, or rejected a request)."""
