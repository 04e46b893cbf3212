"""A TCP proxy between an agent and the API server, living in the agent's namespace.

The listening socket and the upstream connections are created inside the node's network
namespace (``proxy.host.sockets``); the relaying threads run in the test process. The agent
is pointed at ``https://127.0.0.1:<port>`` (the API server's certificate names
127.0.0.1). Three commands:

- ``stall()``: the connections open now stop relaying (neither direction; bytes the agent
  sends are read and dropped, the server's are left unread), but stay open: a watch that
  goes silent without closing, as behind a hung middlebox. New connections are relayed
  normally. The proxy records when the agent closes a stalled connection.
- ``stall(new=True)``: the same, and every connection accepted from now on is stalled from
  its first byte (a hung API server: TCP and TLS never answer) until ``heal()``.
- ``cut()``: every open connection is closed (RST) and new ones are refused (accepted and
  reset at once) until ``heal()``.
- ``close()``: stop everything.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from proxy.host.sockets import connect_in_netns, socket_in_netns


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    opened: float
    stalled: bool = False
    closed_by_client: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


class StallingProxy:
    def __init__(self, netns: str, upstream: tuple[str, int]) -> None:
        self.netns = netns
        self.upstream = upstream
        self._listener = socket_in_netns(netns)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._refusing = False
        self._stall_new = False
        self._closing = threading.Event()
        self.accepted = 0
        self.refused = 0
        self.stalled_at: float | None = None
        self.stall_closes: list[float] = []
        """When the agent closed a stalled connection (seconds since the epoch)."""
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    # -- commands -----------------------------------------------------------------------
    def stall(self, new: bool = False) -> int:
        """Stall every open connection (``new``: and every one accepted until ``heal()``);
        returns how many were open."""
        with self._lock:
            self._stall_new = new
            self.stalled_at = time.time()
            live = [p for p in self._pairs if not p.done.is_set()]
            for p in live:
                p.stalled = True
            return len(live)

    def cut(self) -> int:
        with self._lock:
            self._refusing = True
            live = [p for p in self._pairs if not p.done.is_set()]
        for p in live:
            _reset(p.client)
            _reset(p.server)
            p.done.set()
        return len(live)

    def heal(self) -> None:
        with self._lock:
            self._refusing = False
            self._stall_new = False

    def stalled_open(self) -> int:
        with self._lock:
            return sum(1 for p in self._pairs if p.stalled and not p.done.is_set())

    def close(self) -> None:
        self._closing.set()
        _reset(self._listener)
        with self._lock:
            pairs = list(self._pairs)
        for p in pairs:
            _reset(p.client)
            _reset(p.server)
            p.done.set()
        self._thread.join(5)

    # -- relaying -----------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.2)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = connect_in_netns(self.netns, *self.upstream, timeout=5.0)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            client.settimeout(None)
            pair = _Pair(client, server, time.time())
            with self._lock:
                pair.stalled = self._stall_new
                self.accepted += 1
                self._pairs.append(pair)
            threading.Thread(target=self._relay, args=(pair,), daemon=True).start()

    def _relay(self, pair: _Pair) -> None:
        peers = {pair.client: pair.server, pair.server: pair.client}
        try:
            while not pair.done.is_set() and not self._closing.is_set():
                # stalled: read (and drop) what the agent sends, to see it close;
                # leave the server's bytes unread
                watched = [pair.client] if pair.stalled else [pair.client, pair.server]
                ready, _, _ = select.select(watched, [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        if sock is pair.client and pair.stalled:
                            pair.closed_by_client = time.time()
                            with self._lock:
                                self.stall_closes.append(pair.closed_by_client)
                        return
                    if pair.stalled:
                        continue
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            pair.done.set()
            _reset(pair.client)
            _reset(pair.server)
