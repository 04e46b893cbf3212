"""Probes made with ordinary sockets (they cross the sender's own netfilter hooks).

Runs inside the probe worker, in the namespace being probed from.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time
from http.client import HTTPConnection, HTTPException

from proxy.harness.result import Outcome, ProbeResult

UDP_PAYLOAD = b"probe\n"
# Linux values; the socket module does not export them.
IP_RECVERR = 11
IPV6_RECVERR = 25
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")

_UNREACHABLE_ERRNOS = {
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EHOSTDOWN,
    errno.ENONET,
    errno.ENOPROTOOPT,  # icmp protocol unreachable
    errno.EACCES,
}


def family_of(address: str) -> socket.AddressFamily:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ValueError(f"{address!r} is not an IP address") from exc
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _enable_recverr(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)


def _queued_icmp(sock: socket.socket) -> str | None:
    """'icmp TYPE/CODE from OFFENDER' for a queued ICMP error (IP_RECVERR), else None."""
    try:
        sock.setblocking(False)  # with a timeout set, Python would poll() for it first
        _, ancdata, _, _ = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
    except OSError:
        return None
    for level, kind, data in ancdata:
        if (level, kind) not in (
            (socket.IPPROTO_IP, IP_RECVERR),
            (socket.IPPROTO_IPV6, IPV6_RECVERR),
        ):
            continue
        if len(data) < _EXTENDED_ERR.size:
            continue
        _, origin, icmp_type, code, _, _, _ = _EXTENDED_ERR.unpack_from(data)
        if origin not in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6):
            continue
        offender = _offender(data[_EXTENDED_ERR.size :])
        label = "icmp" if origin == _SO_EE_ORIGIN_ICMP else "icmp6"
        return f"{label} {icmp_type}/{code} from {offender}"
    return None


def _offender(raw: bytes) -> str:
    if len(raw) >= 8 and struct.unpack_from("=H", raw)[0] == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if len(raw) >= 24 and struct.unpack_from("=H", raw)[0] == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return "?"


def _icmp_outcome(detail: str) -> Outcome:
    """REFUSED for port unreachable (icmp 3/3, icmp6 1/4), else UNREACHABLE."""
    kind, _, rest = detail.partition(" ")
    type_code = rest.split(" ", 1)[0]
    refused = (kind == "icmp" and type_code == "3/3") or (kind == "icmp6" and type_code == "1/4")
    return Outcome.REFUSED if refused else Outcome.UNREACHABLE


def failure(
    exc: OSError, sock: socket.socket | None, timeout: float, *, tcp: bool = False
) -> ProbeResult:
    """Classify a socket error; errors that say nothing about the network propagate."""
    if isinstance(exc, TimeoutError):
        return ProbeResult(Outcome.SILENT, None, None, f"no answer within {timeout:g}s")
    icmp = _queued_icmp(sock) if sock is not None else None
    if icmp is not None:
        return ProbeResult(_icmp_outcome(icmp), None, None, icmp)
    if isinstance(exc, ConnectionRefusedError):
        # Without a queued ICMP error, a refused TCP connection means a RST came back.
        detail = "connection refused (RST)" if tcp else "connection refused"
        return ProbeResult(Outcome.REFUSED, None, None, detail)
    if exc.errno in _UNREACHABLE_ERRNOS:
        return ProbeResult(Outcome.UNREACHABLE, None, None, f"{errno.errorcode[exc.errno]}")
    if exc.errno == errno.EPERM:
        return ProbeResult(Outcome.SILENT, None, None, "EPERM: dropped by local netfilter")
    raise exc


def _connect(dst: str, port: int, timeout: float) -> socket.socket | ProbeResult:
    """A connected TCP socket, or the result explaining why there is none."""
    sock = socket.socket(family_of(dst), socket.SOCK_STREAM)
    try:
        _enable_recverr(sock)  # so an ICMP error's type, code and sender can be read
        sock.settimeout(timeout)
        sock.connect((dst, port))
    except OSError as exc:
        try:
            return failure(exc, sock, timeout, tcp=True)
        finally:
            sock.close()
    except BaseException:
        sock.close()
        raise
    return sock


def tcp(dst: str, port: int, *, timeout: float = 1.0) -> ProbeResult:
    """Connect, read the workload's line, close."""
    deadline = time.monotonic() + timeout
    connected = _connect(dst, port, timeout)
    if isinstance(connected, ProbeResult):
        return connected
    with connected as sock:
        detail = f"connected to {dst}:{port} from port {sock.getsockname()[1]}"
        data = b""
        try:
            while b"\n" not in data and len(data) < 4096:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return ProbeResult(Outcome.ANSWERED, None, None, f"{detail}, no data in time")
        except OSError as exc:
            return ProbeResult(Outcome.ANSWERED, None, None, f"{detail}, then {exc}")
        if not data:
            return ProbeResult(Outcome.ANSWERED, None, None, f"{detail}, closed without data")
        return ProbeResult.from_banner(data.decode(errors="replace"), detail)


def tcp_many(dst: str, port: int, count: int, *, timeout: float = 1.0) -> list[ProbeResult]:
    """`count` new connections, one after the other."""
    return [tcp(dst, port, timeout=timeout) for _ in range(count)]


def udp(dst: str, port: int, *, timeout: float = 1.0, sport: int | None = None) -> ProbeResult:
    """One datagram on a connected socket (so ICMP errors are reported), one reply."""
    with socket.socket(family_of(dst), socket.SOCK_DGRAM) as sock:
        _enable_recverr(sock)
        if sport is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("", sport))
        sock.settimeout(timeout)
        try:
            sock.connect((dst, port))
            sport = sock.getsockname()[1]
            sock.send(UDP_PAYLOAD)
            data = sock.recv(65535)
        except OSError as exc:
            return failure(exc, sock, timeout)
        return ProbeResult.from_banner(
            data.decode(errors="replace"), f"udp reply from {dst}:{port} to port {sport}"
        )


def http(
    dst: str, port: int, *, requests: int = 1, keepalive: bool = True, timeout: float = 1.0
) -> list[ProbeResult]:
    """`requests` GETs of /, on one keep-alive connection or one connection each."""
    results: list[ProbeResult] = []
    conn: HTTPConnection | None = None
    header = "keep-alive" if keepalive else "close"
    try:
        for _ in range(requests):
            if conn is None:
                connected = _connect(dst, port, timeout)
                if isinstance(connected, ProbeResult):
                    results.append(connected)
                    continue
                conn = HTTPConnection(dst, port, timeout=timeout)
                conn.sock = connected
            sport = conn.sock.getsockname()[1]
            try:
                conn.request("GET", "/", headers={"Connection": header})
                response = conn.getresponse()
                body = response.read().decode(errors="replace")
            except (OSError, HTTPException) as exc:
                detail = f"connected from port {sport}, then {type(exc).__name__}: {exc}"
                results.append(ProbeResult(Outcome.ANSWERED, None, None, detail))
                conn.close()
                conn = None
                continue
            detail = f"HTTP {response.status} on connection from port {sport}"
            results.append(ProbeResult.from_banner(body, detail))
            if not keepalive or response.will_close:
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()
    return results
