"""Loopback port helpers: pick free ports, check that a port is free, list listeners.

Ports are picked by binding to port 0 on 127.0.0.1 and releasing the socket. Another
process can take the port before our child binds it, so callers retry on a collision;
inside one Python process a port handed out recently is never handed out again.

Everything here works on the network namespace of the *calling thread* (so it can be
run inside a lab namespace with ``proxy.host.netns.run_in_netns``), except where a
``pid`` says to look at that process's namespace instead.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"

_lock = threading.Lock()
_recent: deque[int] = deque(maxlen=4096)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on host that is free right now and not handed out recently."""
    with _lock:
        for _ in range(100):
            with socket.socket(_family(host), socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if port not in _recent:
                _recent.append(port)
                return port
    raise OSError(f"could not find a free TCP port on {host} after 100 tries")


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    return [free_port(host) for _ in range(count)]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True if a listener could be opened on host:port now.

    SO_REUSEADDR is set, as servers do, so sockets left in TIME_WAIT by past
    connections do not count; a socket still listening there does.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket as seen in /proc/net/tcp{,6}."""

    address: str
    port: int
    inode: int


def _parse_hex_address(text: str) -> tuple[str, int]:
    addr_hex, port_hex = text.split(":")
    raw = bytes.fromhex(addr_hex)
    if len(raw) == 4:
        addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        # /proc prints IPv6 as four host-order 32-bit words.
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        addr = socket.inet_ntop(socket.AF_INET6, words)
    return addr, int(port_hex, 16)


def tcp_listeners(pid: int | None = None) -> list[Listener]:
    """Every listening TCP socket of the calling thread's network namespace.

    With pid: of that process's network namespace (empty if the process is gone).
    """
    # /proc/net is /proc/self/net: the namespace of the main thread, not of this one.
    base = Path("/proc/thread-self/net") if pid is None else Path(f"/proc/{pid}/net")
    out: list[Listener] = []
    for table in (base / "tcp", base / "tcp6"):
        try:
            lines = table.read_text().splitlines()[1:]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = LISTEN
                continue
            addr, port = _parse_hex_address(fields[1])
            out.append(Listener(addr, port, int(fields[9])))
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process holds open (empty if it is gone)."""
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return inodes
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listeners_of(pid: int, *, own_namespace: bool = False) -> list[Listener]:
    """The listening TCP sockets a process owns in the calling thread's network namespace.

    With own_namespace: in the process's own network namespace instead (for a process
    started with ``ip netns exec``; in ours it listens on nothing).
    """
    inodes = socket_inodes(pid)
    table = tcp_listeners(pid if own_namespace else None)
    return [lst for lst in table if lst.inode in inodes]
