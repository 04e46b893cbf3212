"""Connections to an API server: TLS from a :class:`ClientConfig`, timeouts, sockets.

Every connection's socket comes from a :data:`Connector` — ``(host, port, timeout)`` to
a connected socket. The default connects from the caller's network namespace; the lab
passes one that creates the socket inside the control plane's namespace (the process
itself never changes namespace), so one client serves both.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import socket
import ssl
import tempfile
import urllib.parse
from collections.abc import Callable

from proxy.apiclient.config import ClientConfig
from proxy.config import ConfigError

CONNECT_TIMEOUT = 10.0
"""TCP connect + TLS handshake bound for every request."""

Connector = Callable[[str, int, float | None], socket.socket]
"""(host, port, timeout) → a connected socket (e.g. one created in another namespace)."""


def direct_connect(host: str, port: int, timeout: float | None) -> socket.socket:
    """``socket.create_connection`` from this process's namespace."""
    return socket.create_connection((host, port), timeout)


def _load_cert_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes, where: str) -> None:
    """ssl wants files: use an anonymous memory file (memfd), else a 0600 temp file."""
    data = cert_pem.rstrip(b"\n") + b"\n" + key_pem
    fd: int | None = None
    path: str | None = None
    try:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("kpp-client-cert", os.MFD_CLOEXEC)
            os.write(fd, data)
            path = f"/proc/self/fd/{fd}"
        else:  # pragma: no cover - not Linux
            handle, path = tempfile.mkstemp(prefix="kpp-client-cert-")
            os.write(handle, data)
            os.close(handle)
        ctx.load_cert_chain(path)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{where}: client certificate/key do not load: {e}") from e
    finally:
        if fd is not None:
            os.close(fd)
        elif path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


def build_ssl_context(
    config: ClientConfig, client_cert: tuple[bytes, bytes] | None = None
) -> ssl.SSLContext | None:
    """The TLS context for ``config`` (``None`` for an http:// server).

    ``client_cert`` (PEM certificate, key), e.g. from an exec plugin, replaces the
    kubeconfig's."""
    if urllib.parse.urlsplit(config.server).scheme != "https":
        return None
    if config.insecure_skip_tls_verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif config.ca_pem is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_verify_locations(cadata=config.ca_pem.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError, TypeError) as e:
            raise ConfigError(
                f"{config.source}: certificate authority: not a PEM certificate ({e})"
            ) from e
    else:
        ctx = ssl.create_default_context()
    if client_cert is None and config.client_cert_pem and config.client_key_pem:
        client_cert = (config.client_cert_pem, config.client_key_pem)
    if client_cert is not None:
        _load_cert_chain(ctx, client_cert[0], client_cert[1], config.source)
    return ctx


class HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS with a separate TLS server name (kubeconfig ``tls-server-name``) whose
    socket comes from ``connector``."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        context: ssl.SSLContext,
        server_hostname: str,
        timeout: float,
        connector: Connector = direct_connect,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._kpp_context = context
        self.server_hostname = server_hostname
        self._kpp_connector = connector

    def connect(self) -> None:
        sock = self._kpp_connector(self.host, self.port, self.timeout)
        _tune(sock)
        try:
            self.sock = self._kpp_context.wrap_socket(sock, server_hostname=self.server_hostname)
        except BaseException:
            sock.close()
            raise


class HTTPConnection(http.client.HTTPConnection):
    """Plain HTTP whose socket comes from ``connector``."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        timeout: float,
        connector: Connector = direct_connect,
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._kpp_connector = connector

    def connect(self) -> None:
        self.sock = self._kpp_connector(self.host, self.port, self.timeout)
        _tune(self.sock)


def _tune(sock: socket.socket) -> None:
    """No Nagle; TCP keepalive so a dead peer under a long watch is noticed."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def new_connection(
    config: ClientConfig,
    tls: ssl.SSLContext | None,
    *,
    timeout: float = CONNECT_TIMEOUT,
    connector: Connector = direct_connect,
) -> http.client.HTTPConnection:
    """An unconnected keep-alive connection to ``config.server`` (connects on first use)."""
    parts = urllib.parse.urlsplit(config.server)
    host = parts.hostname or ""
    if tls is not None:
        return HTTPSConnection(
            host,
            parts.port,
            context=tls,
            server_hostname=config.tls_server_name or host,
            timeout=timeout,
            connector=connector,
        )
    return HTTPConnection(host, parts.port, timeout=timeout, connector=connector)


def abort(conn: http.client.HTTPConnection) -> None:
    """Close ``conn`` now; a read blocked on it in another thread returns at once."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        conn.close()


def closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection the server closed (or wrote to unasked): readable."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
