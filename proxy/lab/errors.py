"""What every lab command reports: :class:`LabError` and the exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class LabError(RuntimeError):
    """The lab could not do what was asked; the message says why and what to do."""
