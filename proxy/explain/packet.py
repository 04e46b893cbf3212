"""The packet ``explain`` is asked about: a new connection's first packet and where it
meets this node's rules."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from proxy.model import IPAddress, IPFamily, Protocol


class Entry(StrEnum):
    """Where the packet enters this node's rules."""

    POD = "pod"
    """From a pod on this node (prerouting, then forwarded)."""
    NODE = "node"
    """Sent by the node itself: a host-network process (the output hook)."""
    EXTERNAL = "external"
    """From outside the node: another machine on its network (prerouting)."""


ENTRY_MEANING = {
    Entry.POD: "from a pod on this node",
    Entry.NODE: "from the node itself",
    Entry.EXTERNAL: "from outside the node",
}

ICMP = "icmp"
PROTOCOLS = ("tcp", "udp", "sctp", ICMP)


class PacketError(ValueError):
    """A packet description that cannot be explained; the message says which part and
    how to fix it."""


@dataclass(frozen=True)
class Packet:
    """The first packet of a new connection (or an ICMP echo request)."""

    src: IPAddress
    dst: IPAddress
    protocol: Protocol | None
    """None: ICMP (ICMPv6 in IPv6), which carries no port."""
    dport: int | None
    entry: Entry

    @property
    def family(self) -> IPFamily:
        return IPFamily.of(self.dst)

    @property
    def protocol_name(self) -> str:
        """``tcp``, ``udp``, ``sctp``, ``icmp`` or ``icmpv6``."""
        if self.protocol is None:
            return "icmp" if self.family is IPFamily.V4 else "icmpv6"
        return self.protocol.lowercase

    def __str__(self) -> str:
        where = f"{_host(self.dst)}:{self.dport}" if self.dport is not None else str(self.dst)
        return f"{self.protocol_name} {self.src} -> {where}, {ENTRY_MEANING[self.entry]}"


def _host(ip: IPAddress) -> str:
    return f"[{ip}]" if ip.version == 6 else str(ip)


def parse_address(text: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise PacketError(
            f"{what}: {text!r} is not an IP address (e.g. 10.244.1.5 or fd00:10:244:1::5)"
        ) from None


def make_packet(src: str, dst: str, proto: str, dport: int | None, entry: Entry) -> Packet:
    """A :class:`Packet` from command line words, checked: the families agree, TCP, UDP
    and SCTP carry a port in 1-65535, ICMP none."""
    s, d = parse_address(src, "--src"), parse_address(dst, "--dst")
    if s.version != d.version:
        raise PacketError(f"--src {s} and --dst {d} are of different IP families; a packet has one")
    p = proto.strip().lower()
    if p == "icmpv6":
        p = ICMP
    if p not in PROTOCOLS:
        raise PacketError(f"--proto: {proto!r} is not one of {', '.join(PROTOCOLS)}")
    if p == ICMP:
        if dport is not None:
            raise PacketError("--dport: ICMP carries no port; leave --dport out for --proto icmp")
        return Packet(s, d, None, None, entry)
    if dport is None or not 1 <= dport <= 65535:
        raise PacketError(f"--dport: {p} needs a destination port in 1-65535 (got {dport})")
    return Packet(s, d, Protocol(p.upper()), dport, entry)
