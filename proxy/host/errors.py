"""Exceptions raised by the host layer."""

from __future__ import annotations

from collections.abc import Sequence


class HostError(RuntimeError):
    """Namespaces, links or processes could not be created, driven or removed."""


class CommandError(HostError):
    """A command exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        output = (stderr.strip() or stdout.strip() or "(no output)")[-2000:]
        super().__init__(f"command {' '.join(self.argv)!r} exited with {returncode}: {output}")
