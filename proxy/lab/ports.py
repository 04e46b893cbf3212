"""Loopback port helpers: pick free ports, check that a port is free, list listeners.

Ports are picked by binding to port 0 on 127.0.0.1 and releasing the socket. Another
process can take the port before our child binds it, so callers retry on a collision;
inside one Python process a port handed out recently is never handed out again.
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


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on host that is free right now and not handed out recently."""
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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


def tcp_listeners() -> list[Listener]:
    """Every listening TCP socket of this network namespace."""
    out: list[Listener] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
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


def listeners_of(pid: int) -> list[Listener]:
    """The listening TCP sockets owned by a process."""
    inodes = socket_inodes(pid)
    return [lst for lst in tcp_listeners() if lst.inode in inodes]
