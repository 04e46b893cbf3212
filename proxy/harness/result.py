"""What a probe observed, and how it travels between worker and client as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    """How the network treated a probe."""

    ANSWERED = "answered"
    """The destination (or whoever it was translated to) answered."""
    REFUSED = "refused"
    """TCP RST / ECONNREFUSED / ICMP port unreachable (type 3 code 3, ICMPv6 type 1 code
    4): a REJECT."""
    UNREACHABLE = "unreachable"
    """Any other ICMP or ICMPv6 destination-unreachable (host, net, admin-prohibited, ...);
    the detail names type and code ("icmp6 1/1 from ...")."""
    SILENT = "silent"
    """Nothing before the timeout: a DROP (or a black hole)."""


@dataclass(frozen=True)
class ProbeResult:
    """One probe's result.

    endpoint: the pod name that answered (from the workload's line), if any.
    seen_source / seen_port: the client address and port that endpoint saw.
    detail: human readable, e.g. "SYN-ACK from 10.96.0.10:80", "icmp 3/3 from 10.96.0.10",
    "icmp6 1/4 from fd00:10:96::10".
    """

    outcome: Outcome
    endpoint: str | None
    seen_source: str | None
    detail: str
    seen_port: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "endpoint": self.endpoint,
            "seen_source": self.seen_source,
            "seen_port": self.seen_port,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProbeResult:
        port = data.get("seen_port")
        return cls(
            outcome=Outcome(data["outcome"]),
            endpoint=_opt_str(data.get("endpoint")),
            seen_source=_opt_str(data.get("seen_source")),
            detail=str(data.get("detail", "")),
            seen_port=int(port) if port is not None else None,
        )

    @classmethod
    def from_banner(cls, text: str, detail: str) -> ProbeResult:
        """An ANSWERED result from a workload line ("<name> <ip>:<port>")."""
        parsed = parse_banner(text)
        if parsed is None:
            return cls(Outcome.ANSWERED, None, None, f"{detail}, unrecognised reply {text!r}")
        name, ip, port = parsed
        return cls(Outcome.ANSWERED, name, ip, detail, port)


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def parse_banner(text: str) -> tuple[str, str, int] | None:
    """("a1", "10.244.1.11", 40000) from "a1 10.244.1.11:40000\\n"; None if malformed."""
    parts = text.strip().split()
    if len(parts) != 2:
        return None
    name, peer = parts
    host, sep, port = peer.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return name, host, int(port)
