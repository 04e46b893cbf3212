"""Probes crafted with scapy and sent through a packet socket.

Packet sockets bypass the sender's own netfilter hooks, so send these from a client
(or pod) namespace, not from a node whose rules are under test. Runs inside the probe
worker; scapy is imported when the first `ScapyProbes` is made.

Scapy reads interfaces and routes once; a netlink subscription tells us when they
change (a pod added, a route added) so they are re-read only then.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from typing import Any

from proxy.harness.result import Outcome, ProbeResult

UDP_PAYLOAD = b"probe\n"

_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_IFADDR = 0x100
_RTMGRP_IPV6_ROUTE = 0x400


class RouteWatcher:
    """Says whether links, addresses or routes changed since the last call."""

    def __init__(self) -> None:
        groups = _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV4_ROUTE
        groups |= _RTMGRP_IPV6_IFADDR | _RTMGRP_IPV6_ROUTE
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, groups))
        self._sock.setblocking(False)

    def changed(self) -> bool:
        changed = False
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return changed
            except OSError:  # ENOBUFS: we missed messages, so something changed
                changed = True
                continue
            if not data:
                return changed
            changed = True

    def close(self) -> None:
        self._sock.close()


def _version(dst: str) -> int:
    try:
        return ipaddress.ip_address(dst).version
    except ValueError as exc:
        raise ValueError(f"{dst!r} is not an IP address") from exc


class _PortHolder:
    """Holds a local port with an ordinary socket while scapy uses it as source port:
    no other socket takes it, and (for UDP) replies are absorbed instead of drawing
    ICMP port-unreachable errors from our kernel."""

    def __init__(self, kind: socket.SocketKind, port: int | None, version: int = 4) -> None:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        self.sock = socket.socket(family, kind)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if version == 6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            self.sock.bind(("0.0.0.0" if version == 4 else "::", port or 0))
            self.port: int = self.sock.getsockname()[1]
        except OSError:
            if port is None:
                self.sock.close()
                raise
            self.port = port  # a requested port that is busy: send from it anyway

    def __enter__(self) -> _PortHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


class ScapyProbes:
    """tcp_syn / udp / icmp_echo with one long-lived scapy packet socket, to IPv4 or
    IPv6 destinations.

    ICMP errors are reported as ``icmp TYPE/CODE from SRC`` (IPv4) or ``icmp6 TYPE/CODE
    from SRC`` (IPv6); port unreachable (icmp 3/3, icmp6 1/4) is REFUSED, any other
    destination unreachable (admin prohibited: icmp 3/13, icmp6 1/1) UNREACHABLE."""

    def __init__(self) -> None:
        self._watcher = RouteWatcher()  # before scapy reads the tables: no change is missed
        from scapy.config import conf
        from scapy.layers.inet import ICMP, IP, TCP, UDP
        from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

        conf.verb = 0
        # Promiscuous mode is not needed (replies are addressed to us) and toggling it
        # sends link notifications, which would look like topology changes.
        conf.sniff_promisc = False
        self._conf: Any = conf
        self._IP: Any = IP
        self._TCP: Any = TCP
        self._UDP: Any = UDP
        self._ICMP: Any = ICMP
        self._IPv6: Any = IPv6
        self._ICMPv6EchoRequest: Any = ICMPv6EchoRequest
        self._sock: Any = conf.L3socket()
        self._icmp_seq = 0

    def close(self) -> None:
        self._sock.close()
        self._watcher.close()

    def _prepare(self) -> None:
        if self._watcher.changed():
            self._conf.ifaces.reload()
            self._conf.route.resync()
            self._conf.route6.resync()
            self._conf.netcache.flush()  # MACs behind re-created interfaces change
            # Per-interface send sockets may be bound to interfaces that are gone.
            self._sock.close()
            self._sock = self._conf.L3socket()
        # Drop whatever the packet socket queued since the last probe.
        raw: socket.socket = self._sock.ins
        while True:
            try:
                raw.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return

    def _send(self, packet: Any, timeout: float) -> Any:
        self._prepare()
        return self._sock.sr1(packet, timeout=timeout, verbose=0)

    def _ip(self, dst: str) -> Any:
        return self._IP(dst=dst) if _version(dst) == 4 else self._IPv6(dst=dst)

    def tcp_syn(self, dst: str, port: int, *, timeout: float = 1.0) -> ProbeResult:
        with _PortHolder(socket.SOCK_STREAM, None, _version(dst)) as holder:
            syn = self._ip(dst) / self._TCP(
                sport=holder.port, dport=port, flags="S", seq=random.getrandbits(32)
            )
            return self._classify(self._send(syn, timeout), timeout)

    def udp(
        self, dst: str, port: int, *, timeout: float = 1.0, sport: int | None = None
    ) -> ProbeResult:
        with _PortHolder(socket.SOCK_DGRAM, sport, _version(dst)) as holder:
            datagram = self._ip(dst) / self._UDP(sport=holder.port, dport=port) / UDP_PAYLOAD
            return self._classify(self._send(datagram, timeout), timeout)

    def icmp_echo(self, dst: str, *, timeout: float = 1.0) -> ProbeResult:
        self._icmp_seq = (self._icmp_seq + 1) & 0xFFFF
        ident = random.getrandbits(16)
        data = b"kube-proxy-py"
        if _version(dst) == 4:
            echo = self._IP(dst=dst) / self._ICMP(type=8, id=ident, seq=self._icmp_seq) / data
        else:
            # The data is a field here: scapy matches the reply's against it.
            echo = self._IPv6(dst=dst) / self._ICMPv6EchoRequest(
                id=ident, seq=self._icmp_seq, data=data
            )
        return self._classify(self._send(echo, timeout), timeout)

    def _classify(self, reply: Any, timeout: float) -> ProbeResult:
        if reply is None:
            return ProbeResult(Outcome.SILENT, None, None, f"no answer within {timeout:g}s")
        v6 = reply.haslayer(self._IPv6)
        ip = reply[self._IPv6] if v6 else reply[self._IP]
        src = str(ipaddress.ip_address(ip.src))
        # The ICMP(v6) message right after the outer header (not one quoted in an error).
        message = ip.payload
        if not v6 and isinstance(message, self._ICMP):
            return _icmp_result("icmp", int(message.type), int(message.code), src)
        if v6 and int(ip.nh) == _IPPROTO_ICMPV6:
            return _icmp_result("icmp6", int(message.type), int(message.code), src)
        if reply.haslayer(self._TCP):
            tcp = reply[self._TCP]
            flags = str(tcp.flags)
            where = f"{src}:{int(tcp.sport)}"
            if "R" in flags:
                return ProbeResult(Outcome.REFUSED, None, None, f"RST from {where}")
            if "S" in flags and "A" in flags:
                return ProbeResult(Outcome.ANSWERED, None, None, f"SYN-ACK from {where}")
            return ProbeResult(Outcome.ANSWERED, None, None, f"TCP {flags} from {where}")
        if reply.haslayer(self._UDP):
            udp = reply[self._UDP]
            payload = bytes(udp.payload).decode(errors="replace")
            detail = f"udp reply from {src}:{int(udp.sport)}"
            return ProbeResult.from_banner(payload, detail)
        return ProbeResult(Outcome.ANSWERED, None, None, f"unexpected reply {reply.summary()}")


_IPPROTO_ICMPV6 = 58
_ECHO_REPLY = {"icmp": 0, "icmp6": 129}
_PORT_UNREACHABLE = {"icmp": (3, 3), "icmp6": (1, 4)}


def _icmp_result(label: str, kind: int, code: int, src: str) -> ProbeResult:
    """An ICMP (``label`` "icmp") or ICMPv6 ("icmp6") message that answered a probe."""
    if kind == _ECHO_REPLY[label]:
        return ProbeResult(Outcome.ANSWERED, None, None, f"echo-reply from {src}")
    detail = f"{label} {kind}/{code} from {src}"
    if (kind, code) == _PORT_UNREACHABLE[label]:
        return ProbeResult(Outcome.REFUSED, None, None, detail)
    return ProbeResult(Outcome.UNREACHABLE, None, None, detail)
