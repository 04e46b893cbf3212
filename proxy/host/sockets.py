"""Sockets and commands inside a named network namespace, from a process in another one.

A socket belongs to the network namespace of the thread that created it, for its whole
life, whichever thread uses it later. So to talk to a server inside ``/run/netns/NAME``
without moving the caller anywhere, we create the socket on a *throwaway thread* that
has entered the namespace with ``setns(2)`` (Python 3.11 has no ``os.setns``: ctypes),
hand it back, and let the thread die. The calling thread never changes namespace, so
there is nothing to restore and nothing to forget to restore on an error path.

    sock = connect_in_netns("kpp-1a2b3c-control-plane", "192.168.50.2", 6443, timeout=5)
    conn = NetnsHTTPSConnection("kpp-1a2b3c-control-plane", "192.168.50.2", 6443,
                                context=tls)

Entering a network namespace needs CAP_SYS_ADMIN (root).
"""

from __future__ import annotations

import ctypes
import errno
import http.client
import os
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc_lock = threading.Lock()
_libc: ctypes.CDLL | None = None


class NetnsError(OSError):
    """A network namespace could not be found or entered; the message says which and why."""


def _setns_func() -> Callable[[int, int], int]:
    global _libc
    with _libc_lock:
        if _libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.setns.restype = ctypes.c_int
            _libc = libc
        func: Callable[[int, int], int] = _libc.setns
        return func


def netns_path(netns: str) -> Path:
    """The bind mount of a named namespace (``ip netns add NAME``); checks the name only."""
    if not netns or "/" in netns or netns in (".", ".."):
        raise ValueError(f"{netns!r} is not a network namespace name")
    return NETNS_DIR / netns


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv running a command inside a named namespace.

    ``ip netns exec`` (iproute2, outside ``-batch``) enters the namespace and then execs
    the command in place: the child's pid is the command's own pid.
    """
    netns_path(netns)
    return ["ip", "netns", "exec", netns, *argv]


def _enter(netns: str) -> None:
    """Move the *calling thread* into the named namespace (throwaway threads only)."""
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(errno.ENOENT, f"no network namespace {netns!r} (no {path})") from None
    try:
        if _setns_func()(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            hint = " (entering a network namespace needs root)" if err == errno.EPERM else ""
            raise NetnsError(err, f"setns({path}, CLONE_NEWNET): {os.strerror(err)}{hint}")
    finally:
        os.close(fd)


def run_in_netns(netns: str, func: Callable[[], T]) -> T:
    """Call func on a throwaway thread inside the named namespace; return what it returns.

    Exceptions raised by func (or by entering the namespace) are re-raised here. The
    calling thread stays where it is. Sockets func creates keep the namespace; files and
    subprocesses do not care. Keep func short: the caller blocks until it returns.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            _enter(netns)
            result.append(func())
        except BaseException as e:  # handed to the caller
            error.append(e)

    thread = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


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


class NetnsHTTPSConnection(http.client.HTTPSConnection):
    """``http.client.HTTPSConnection`` whose socket is created inside a named namespace.

    The server certificate is checked against ``host`` (an IP address must be an IP SAN)
    with the given context (default: the system's default context). No proxy tunnels.
    """

    def __init__(
        self,
        netns: str,
        host: str,
        port: int | None = None,
        timeout: float | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        tls = context if context is not None else ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=tls)
        netns_path(netns)
        self.netns = netns
        self._netns_tls = tls

    def connect(self) -> None:
        sock = connect_in_netns(self.netns, self.host, self.port, self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self._netns_tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


NetnsId = tuple[int, int]
"""(st_dev, st_ino) of a network namespace: equal ids mean the same namespace."""


def _stat_id(path: str | Path) -> NetnsId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def netns_id(netns: str) -> NetnsId:
    """The identity of a named namespace (NetnsError if there is none of that name)."""
    path = netns_path(netns)
    found = _stat_id(path)
    if found is None:
        raise NetnsError(errno.ENOENT, f"no network namespace {netns!r} (no {path})")
    return found


def pid_netns_id(pid: int) -> NetnsId | None:
    """The network namespace of a process (None if it is gone)."""
    return _stat_id(f"/proc/{pid}/ns/net")


def thread_netns_id() -> NetnsId:
    """The network namespace of the calling thread."""
    found = _stat_id("/proc/thread-self/ns/net")
    if found is None:
        raise NetnsError(errno.ENOENT, "cannot stat /proc/thread-self/ns/net")
    return found


def pid_in_netns(pid: int, netns: str) -> bool:
    """True if the process runs in the named namespace."""
    return pid_netns_id(pid) == netns_id(netns)


def pids_in_netns(netns: str) -> list[int]:
    """Every process in the named namespace (what ``ip netns pids`` prints), ours excluded."""
    wanted = netns_id(netns)
    me = os.getpid()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        pid = int(entry.name) if entry.name.isdigit() else me
        if pid != me and pid_netns_id(pid) == wanted:
            found.append(pid)
    return sorted(found)


__all__ = [
    "CLONE_NEWNET",
    "NETNS_DIR",
    "NetnsError",
    "NetnsHTTPConnection",
    "NetnsHTTPSConnection",
    "NetnsId",
    "connect_in_netns",
    "exec_argv",
    "netns_id",
    "netns_path",
    "pid_in_netns",
    "pid_netns_id",
    "pids_in_netns",
    "run_in_netns",
    "socket_in_netns",
    "thread_netns_id",
]
