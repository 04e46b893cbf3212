"""Sockets and HTTP connections inside a named network namespace, from a process in
another one (see :func:`proxy.host.netns.run_in_netns` for how).

    sock = connect_in_netns("kpp-1a2b3c-control-plane", "192.168.50.2", 6443, timeout=5)
    conn = NetnsHTTPSConnection("kpp-1a2b3c-control-plane", "192.168.50.2", 6443,
                                context=tls)
"""

from __future__ import annotations

import http.client
import socket

from proxy.host.netns import netns_path, run_in_netns


def socket_in_netns(
    netns: str,
    family: socket.AddressFamily = socket.AF_INET,
    type: socket.SocketKind = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """A new socket that lives in the named namespace (usable from any thread)."""
    return run_in_netns(netns, lambda: socket.socket(family, type, proto))


def connect_in_netns(
    netns: str,
    host: str,
    port: int,
    timeout: float | None = None,
    source_address: tuple[str, int] | None = None,
) -> socket.socket:
    """Like ``socket.create_connection``, with the socket created inside netns.

    Name resolution happens here (in our namespace); pass IP addresses. The returned
    socket has ``timeout`` set (None: blocking).
    """
    errors: list[OSError] = []
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    for family, kind, proto, _, address in infos:
        sock = socket_in_netns(netns, family, kind, proto)
        try:
            sock.settimeout(timeout)
            if source_address is not None:
                sock.bind(source_address)
            sock.connect(address)
            return sock
        except OSError as e:
            sock.close()
            errors.append(e)
    if not errors:
        raise OSError(f"getaddrinfo({host!r}, {port}) returned nothing")
    first = errors[0]
    raise OSError(
        first.errno, f"connect to {host}:{port} in netns {netns}: {first.strerror or first}"
    ) from first


class NetnsHTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` whose socket is created inside a named namespace."""

    def __init__(
        self,
        netns: str,
        host: str,
        port: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        netns_path(netns)
        self.netns = netns

    def connect(self) -> None:
        self.sock = connect_in_netns(self.netns, self.host, self.port, self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
