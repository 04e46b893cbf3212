"""Exceptions raised by the netns harness."""

from __future__ import annotations

from proxy.host.errors import HostError


class HarnessError(HostError):
    """The harness could not build, drive or tear down its topology."""


class ProbeError(HarnessError):
    """A probe worker failed (crashed, hung, or rejected a request)."""
