"""A small HTTP/1.1 server with bounded resources: one event-loop thread for every listener
of the process, and every resource a client can hold bounded.

Every listener of the process (in kube-proxy-py: healthz, metrics, each health check
node port on each address) is served by ONE event-loop thread (``kube-proxy-py http``),
a ``selectors`` loop (epoll on Linux, so file descriptors above 1024 are fine). The
healthz port listens on every node address, so anyone who can reach the node can open
connections to it; a thread per connection (the old ``ThreadingHTTPServer``) let 15,000
connection attempts create ~14,500 threads and starve the process, SIGTERM included.
Here a connection is a small object, never a thread, and every resource it can hold is
bounded by the module constants below:

* at most :data:`MAX_CONNECTIONS_PER_LISTENER` connections per listener and
  :data:`MAX_CONNECTIONS` in all; a new connection beyond a cap is accepted and the
  connection that has been idle or unfinished the longest is closed instead, so a flood
  of idle or slow sockets can never lock out the kubelet's probe, which always opens a
  fresh connection and sends its request at once;
* a request head (request line + headers) of at most :data:`MAX_HEAD_BYTES` and
  :data:`MAX_HEADER_LINES` lines (431 beyond), complete within :data:`HEAD_TIMEOUT`
  (slowloris); a kept-alive connection may idle :data:`IDLE_TIMEOUT` between requests;
* no request bodies (GET and HEAD only, 405 with ``Allow`` otherwise; a declared body is
  413/400 and the connection is closed), one request answered at a time: pipelined
  requests wait in the bounded read buffer and are answered in order, and nothing is
  read while a response is being written, so a connection holds at most one response;
  a client that does not take its response within :data:`WRITE_TIMEOUT` is closed;
* accepting never blocks (non-blocking sockets, at most :data:`ACCEPT_BATCH` accepts per
  listener per turn, so established connections are served between accept bursts).

Why ``selectors`` rather than ``asyncio``: the whole server is one small state machine
per connection, and with raw non-blocking sockets every buffer and every deadline is
explicit and visible in this file. asyncio's transports buffer writes without bound
unless the protocol implements flow control, ``StreamReader`` limits lines rather than
a request head, and ``Server.close()``/``wait_closed()`` semantics around open
connections have changed between Python releases; starting and stopping a listener from
another thread would need ``run_coroutine_threadsafe`` around all of that. Here a
thread-safe start or stop is a function queued to the loop plus one byte written to a
wake-up socket; the caller waits (at most :data:`LOOP_CALL_TIMEOUT`) until the loop has
run it, so once ``stop()`` returns the port refuses connections and every connection of
that listener is closed. The loop thread starts with the first listener and ends as
soon as nothing listens; it is a daemon thread, so it never holds up process exit.

Using it: an :class:`App` answers a path with a :data:`Route` (a function returning the
status, content type, body and extra headers), else its default route, else 404; an
:class:`HTTPService` serves an App on one address and is started and stopped from any
thread; :class:`Served` is the base of a server made of one HTTPService.
:class:`ServerError` says why a listener cannot start (and which flag to change);
:func:`parse_address` reads a ``host:port`` flag and :func:`raise_nofile_limit` lifts
the soft open-files limit.

Route functions run on the loop thread: they must not block (a lock held only briefly is
fine, as long as it is never held while waiting for the loop, e.g. around
:meth:`HTTPService.start` or :meth:`HTTPService.stop`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import re
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"

# ---------------------------------------------------------------------------------------
# bounds of the HTTP plumbing (read at run time, so tests may lower them here)

MAX_CONNECTIONS_PER_LISTENER = 256
"""Open connections one listener keeps. A new connection beyond it is accepted and the
listener's connection idle or unfinished the longest is closed. A probe needs one; 256
leaves room for every load balancer health checker and Prometheus scraper there is."""

MAX_CONNECTIONS = 1024
"""Open connections of all listeners together (the same eviction, across listeners);
with the listeners' sockets and the rest of the agent, well under the 1024 file
descriptors of a default soft RLIMIT_NOFILE (which :func:`raise_nofile_limit` lifts)."""

MAX_HEAD_BYTES = 8 * 1024
"""A request line and its headers, CRLFs included: beyond it, 431 and the connection is
closed. The read buffer of a connection never holds more than this (plus one byte)."""

MAX_HEADER_LINES = 100
"""Header lines of one request (as ``http.client`` accepts in a response): beyond, 431."""

HEAD_TIMEOUT = 5.0
"""Seconds a request head may take to arrive: from accept for the first request, from
its first byte for later ones (Go's ``ReadHeaderTimeout``). Slowloris clients that
trickle a head byte by byte are closed after it."""

IDLE_TIMEOUT = 30.0
"""Seconds a kept-alive connection may wait for the first byte of its next request
(Go's ``IdleTimeout``); probes and health checkers poll more often than that."""

WRITE_TIMEOUT = 10.0
"""Seconds a client has to take a whole response; one that does not read is closed."""

LINGER_TIMEOUT = 1.0
"""After a response that closes the connection, our side is shut down for writing and
what the client still sends is read and dropped for up to this long (or
:data:`LINGER_BYTES`), so that closing does not turn into a reset that could destroy
the response before the client has read it (Go's ``closeWriteAndWait`` does the same)."""

LINGER_BYTES = 256 * 1024
"""Bytes read and dropped at most while lingering (see :data:`LINGER_TIMEOUT`)."""

ACCEPT_BATCH = 64
"""Connections accepted from one listener per loop turn before serving others."""

LISTEN_BACKLOG = 4096
"""``listen()`` backlog (the kernel caps it at net.core.somaxconn): a burst of connection
attempts waits in the kernel instead of having SYNs dropped, the probe's included."""

LOOP_CALL_TIMEOUT = 1.0
"""Seconds ``start()``/``stop()`` wait for the loop thread to open or close a listener."""

SWEEP_INTERVAL = 0.25
"""Seconds between two checks of the connections' deadlines (a timeout is enforced
within this much of its value; the check is O(open connections) ≤ 1024)."""

LOG_INTERVAL = 5.0
"""Seconds between two log lines about the same kind of event on the same listener
(connection floods, evictions, timeouts, malformed requests): never one per connection."""


class ServerError(RuntimeError):
    """A server could not start (the message says what to change)."""


# --- addresses, the open files limit, routes -------------------------------------------


def parse_address(address: str, flag: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``:port`` → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServerError(f"{flag}: {address!r} is not host:port (e.g. 0.0.0.0:10256)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as the Go runtime does at the start
    of every Go program (upstream kube-proxy included) since Go 1.19; returns the soft
    limit before and after. A limit that cannot be raised is logged and left alone.
    Commands the agent runs (iptables-restore, nft) inherit the raised limit, which they
    do not mind: they open few files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        # Linux refuses an infinite RLIMIT_NOFILE: the most it takes is fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning(
            "cannot raise the open files limit",
            extra={"soft": soft, "hard": hard, "error": str(exc)},
        )
        return soft, soft
    return soft, target


Route = Callable[[], tuple[int, str, bytes, Mapping[str, str]]]


class App:
    """What a listener answers: a route per path, else ``default``, else 404."""

    def __init__(self, routes: Mapping[str, Route] | None, default: Route | None) -> None:
        self.routes = routes
        self.default = default

    def respond(self, path: str) -> tuple[int, str, bytes, Mapping[str, str]]:
        route = self.routes.get(path) if self.routes is not None else None
        if route is None:
            route = self.default
        if route is None:
            return 404, TEXT, b"404 page not found\n", {}
        return route()


# --- request heads ---------------------------------------------------------------------

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_METHODS = ("GET", "HEAD")
_ALLOW = {"Allow": ", ".join(_METHODS)}


class _Reject(Exception):
    """A request answered with an error ``status``; ``close``: the connection is closed
    after the answer (always, unless the request was well-formed and had no body)."""

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = True,
        http10: bool = False,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.headers: Mapping[str, str] = headers or {}
        self.close = close
        self.http10 = http10


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    keep_alive: bool
    http10: bool


def _parse_head(head: bytes) -> _Request:
    """A request line and its header lines (without the blank line that ends them).

    Strict where it matters for framing (one request line of three parts, token method,
    HTTP/1.x, well-formed header lines, no obsolete line folding, no control characters,
    one Content-Length value, one Host), lenient where probes differ (bare LF line ends,
    no Host header). Raises :class:`_Reject`."""
    lines = _LINE_END.split(head)
    if len(lines) - 1 > MAX_HEADER_LINES:
        raise _Reject(431)
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _Reject(400)
    method_b, target_b, version_b = parts
    version = _VERSION.fullmatch(version_b)
    if (
        version is None
        or not _TOKEN.fullmatch(method_b)
        or not target_b
        or _BAD_TARGET.search(target_b)
    ):
        raise _Reject(400)
    if version[1] != b"1":
        raise _Reject(505)
    http10 = version[2] == b"0"
    lengths: set[int] = set()
    chunked = False
    hosts = 0
    connection: list[str] = []
    for line in lines[1:]:
        name, sep, raw = line.partition(b":")
        # a folded line starts with SP/HTAB: not a token, so rejected here as well
        if not sep or not _TOKEN.fullmatch(name):
            raise _Reject(400)
        value = raw.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise _Reject(400)
        key = name.lower()
        if key == b"content-length":
            for item in value.split(b","):
                item = item.strip(b" \t")
                if not item.isdigit() or len(item) > 18:
                    raise _Reject(400)
                lengths.add(int(item))
        elif key == b"transfer-encoding":
            chunked = True
        elif key == b"host":
            hosts += 1
        elif key == b"connection":
            connection += [t.strip().lower() for t in value.decode("latin-1").split(",")]
    if len(lengths) > 1 or hosts > 1:
        raise _Reject(400)
    has_body = chunked or any(lengths)
    keep_alive = "close" not in connection and (not http10 or "keep-alive" in connection)
    method = method_b.decode("ascii")
    if method not in _METHODS:
        # without a body the connection stays usable; with one we would have to read it
        raise _Reject(405, _ALLOW, close=has_body or not keep_alive, http10=http10)
    if chunked:
        raise _Reject(400)
    if has_body:
        raise _Reject(413)
    if not (target_b.startswith(b"/") or target_b.lower().startswith((b"http://", b"https://"))):
        raise _Reject(400)
    return _Request(
        method=method,
        target=target_b.decode("latin-1"),
        version=version_b.decode("ascii"),
        keep_alive=keep_alive,
        http10=http10,
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _response_head(
    status: int,
    ctype: str,
    length: int,
    headers: Mapping[str, str],
    *,
    close: bool,
    http10: bool,
) -> bytes:
    """Status line and headers, like Go's net/http: a Date header, no Server header."""
    lines = [f"HTTP/1.1 {status} {_phrase(status)}", f"Content-Type: {ctype}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    lines.append(f"Content-Length: {length}")
    lines.append(f"Date: {formatdate(usegmt=True)}")
    if close:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- rate-limited logs -----------------------------------------------------------------

_EVENTS: dict[str, tuple[int, str]] = {
    "evicted": (
        logging.WARNING,
        "connection limit reached: closed the connections idle or unfinished the longest",
    ),
    "head_timeout": (logging.INFO, "closed connections that sent no complete request in time"),
    "write_timeout": (logging.INFO, "closed connections that did not read their response in time"),
    "rejected": (logging.INFO, "rejected malformed or unsupported requests"),
    "accept_failed": (logging.WARNING, "cannot accept connections"),
    "route_failed": (logging.ERROR, "http handler failed"),
    "failed": (logging.ERROR, "http connection failed"),
}


class _Throttle:
    """Counts events of one listener by kind: the first of a kind is logged at once, the
    rest at most once per :data:`LOG_INTERVAL`, with their count (never one line per
    connection at INFO)."""

    def __init__(self, server: str, address: str) -> None:
        self.server = server
        self.address = address
        self._pending: dict[str, int] = {}
        self._detail: dict[str, str] = {}
        self._last: dict[str, float] = {}

    def note(
        self,
        kind: str,
        now: float,
        count: int = 1,
        detail: str = "",
        exc: BaseException | None = None,
    ) -> None:
        self._pending[kind] = self._pending.get(kind, 0) + count
        if detail:
            self._detail[kind] = detail
        if now - self._last.get(kind, float("-inf")) >= LOG_INTERVAL:
            self._emit(kind, now, exc)

    def flush(self, now: float, *, force: bool = False) -> None:
        for kind in list(self._pending):
            if force or now - self._last.get(kind, float("-inf")) >= LOG_INTERVAL:
                self._emit(kind, now, None)

    def _emit(self, kind: str, now: float, exc: BaseException | None) -> None:
        count = self._pending.pop(kind, 0)
        detail = self._detail.pop(kind, "")
        if not count:
            return
        self._last[kind] = now
        level, message = _EVENTS[kind]
        extra: dict[str, Any] = {"server": self.server, "address": self.address, "count": count}
        if detail:
            extra["detail"] = detail
        log.log(level, message, extra=extra, exc_info=exc)


# --- the event loop --------------------------------------------------------------------

_READ, _WRITE, _LINGER = "read", "write", "linger"


class _Listener:
    """A listening socket, what it answers, and its open connections (oldest first)."""

    def __init__(self, name: str, sock: socket.socket, app: App) -> None:
        self.name = name
        self.sock = sock
        self.app = app
        host, port = sock.getsockname()[:2]
        self.address = (str(host), int(port))
        self.shown = _show(*self.address)
        self.conns: collections.OrderedDict[_Conn, None] = collections.OrderedDict()
        self.throttle = _Throttle(name, self.shown)


class _Conn:
    """One client connection: a small state machine, never a thread.

    ``read``: collecting a request head in ``buf`` (≤ MAX_HEAD_BYTES + 1); ``write``:
    sending ``out`` (one response; nothing is read meanwhile); ``linger``: our side shut
    down, reading and dropping what the client still sends. ``deadline`` (monotonic) is
    the end of the current state; the sweep closes connections past it."""

    __slots__ = (
        "buf",
        "close_after",
        "closed",
        "deadline",
        "dropped",
        "events",
        "idle",
        "listener",
        "out",
        "peer",
        "scanned",
        "sock",
        "state",
    )

    def __init__(self, sock: socket.socket, peer: str, listener: _Listener, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.listener = listener
        self.state = _READ
        self.buf = bytearray()
        self.scanned = 0  # bytes of buf already searched for the end of the head
        self.out: list[memoryview] = []
        self.close_after = False
        self.closed = False
        self.deadline = now + HEAD_TIMEOUT
        self.idle = False  # kept alive, waiting for the first byte of the next request
        self.events = selectors.EVENT_READ
        self.dropped = 0


def _peer(addr: Any) -> str:
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)


class _Call:
    """A function queued to the loop thread by another thread."""

    __slots__ = ("done", "error", "fn", "retired")

    def __init__(self, fn: Callable[[_Reactor], None]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.retired: threading.Thread | None = None


class _Reactor:
    """The selector, the listeners and the connections of one run of the loop thread.

    Everything here is touched by the loop thread only, except ``calls`` (appended by
    :class:`_EventLoop` under its lock) and :meth:`wake`."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        except BaseException:
            self._close_resources()
            raise
        self.calls: collections.deque[_Call] = collections.deque()
        self.listeners: set[_Listener] = set()
        self.paused: set[_Listener] = set()
        self.conns: collections.OrderedDict[_Conn, None] = collections.OrderedDict()
        self.ready: dict[_Conn, None] = {}  # a buffered (pipelined) request to serve
        self.next_sweep = 0.0

    # -- thread plumbing

    def wake(self) -> None:
        # a full socket buffer means a wake-up is pending already
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _close_resources(self) -> None:
        with contextlib.suppress(OSError):
            self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def run(self, owner: _EventLoop) -> None:
        try:
            while True:
                try:
                    self._turn()
                except Exception:  # a bug: log it, keep serving the others
                    log.exception("http event loop error")
                    time.sleep(0.01)
                calls: list[_Call] = []
                while self.calls:
                    call = self.calls.popleft()
                    try:
                        call.fn(self)
                    except BaseException as exc:
                        call.error = exc
                    calls.append(call)
                retired = not self.listeners and owner._retire(self)
                for call in calls:
                    if retired:
                        call.retired = threading.current_thread()
                    call.done.set()
                if retired:
                    return
        finally:
            for listener in list(self.listeners):
                self.remove(listener)
            self._close_resources()

    # -- listeners (run on the loop thread through _EventLoop.call)

    def add(self, listener: _Listener) -> None:
        self.selector.register(listener.sock, selectors.EVENT_READ, listener)
        self.listeners.add(listener)

    def remove(self, listener: _Listener) -> None:
        self.listeners.discard(listener)
        self.paused.discard(listener)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(listener.sock)
        listener.sock.close()
        for conn in list(listener.conns):
            self._close(conn)
        listener.throttle.flush(time.monotonic(), force=True)

    # -- one turn

    def _turn(self) -> None:
        now = time.monotonic()
        if self.ready:
            timeout = 0.0
        elif self.conns or self.paused:
            timeout = max(0.0, self.next_sweep - now)
        else:
            timeout = LOG_INTERVAL
        for key, mask in self.selector.select(timeout):
            target = key.data
            if target is None:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            elif isinstance(target, _Listener):
                self._accept(target)
            else:
                self._guarded(target, mask)
        if self.ready:
            ready = list(self.ready)
            self.ready.clear()
            for conn in ready:
                if not conn.closed and conn.state == _READ:
                    self._guarded(conn, 0)
        now = time.monotonic()
        if now >= self.next_sweep:
            self._sweep(now)
            self.next_sweep = now + SWEEP_INTERVAL

    def _guarded(self, conn: _Conn, mask: int) -> None:
        now = time.monotonic()
        try:
            if conn.state == _WRITE:
                self._write(conn, now)
            elif mask:
                self._read(conn, now)
            else:
                self._serve(conn, now)
        except Exception as exc:
            conn.listener.throttle.note("failed", now, detail=repr(exc), exc=exc)
            self._close(conn)

    def _sweep(self, now: float) -> None:
        for conn in list(self.conns):
            if now < conn.deadline:
                continue
            if conn.state == _WRITE:
                conn.listener.throttle.note("write_timeout", now, detail=f"{WRITE_TIMEOUT}s")
            elif conn.state == _READ and not conn.idle:
                conn.listener.throttle.note("head_timeout", now, detail=f"{HEAD_TIMEOUT}s")
            self._close(conn)
        for listener in list(self.paused):
            self.paused.discard(listener)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.register(listener.sock, selectors.EVENT_READ, listener)
        for listener in self.listeners:
            listener.throttle.flush(now)

    # -- connections

    def _accept(self, listener: _Listener) -> None:
        now = time.monotonic()
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that one connection is gone
                listener.throttle.note("accept_failed", now, detail=str(exc))
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self.conns:
                    # out of descriptors: free the one idle or unfinished the longest
                    self._close(next(iter(self.conns)))
                    continue
                # wait a sweep rather than spin on a listener that stays readable
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.selector.unregister(listener.sock)
                self.paused.add(listener)
                return
            self._admit(listener, sock, addr, now)

    def _admit(self, listener: _Listener, sock: socket.socket, addr: Any, now: float) -> None:
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, _peer(addr), listener, now)
            self.selector.register(sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError, KeyError):
            sock.close()
            return
        # make room first: the counts never exceed the caps, even for a moment
        evicted = 0
        while listener.conns and len(listener.conns) >= MAX_CONNECTIONS_PER_LISTENER:
            self._close(next(iter(listener.conns)))
            evicted += 1
        while self.conns and len(self.conns) >= MAX_CONNECTIONS:
            self._close(next(iter(self.conns)))
            evicted += 1
        listener.conns[conn] = None
        self.conns[conn] = None
        if evicted:
            listener.throttle.note(
                "evicted",
                now,
                count=evicted,
                detail=f"{MAX_CONNECTIONS_PER_LISTENER} per listener, {MAX_CONNECTIONS} in all",
            )
        # a probe sends its request right after connecting: it is often here already
        self._guarded(conn, selectors.EVENT_READ)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.selector.unregister(conn.sock)
        conn.sock.close()
        conn.listener.conns.pop(conn, None)
        self.conns.pop(conn, None)
        self.ready.pop(conn, None)
        conn.out = []
        conn.buf = bytearray()

    def _want(self, conn: _Conn, events: int) -> None:
        if conn.events != events:
            self.selector.modify(conn.sock, events, conn)
            conn.events = events

    def _touch(self, conn: _Conn) -> None:
        """Activity (accept, a complete request, a response taken): youngest again."""
        conn.listener.conns.move_to_end(conn)
        self.conns.move_to_end(conn)

    def _read(self, conn: _Conn, now: float) -> None:
        if conn.state == _LINGER:
            self._drain(conn)
            return
        room = MAX_HEAD_BYTES + 1 - len(conn.buf)
        if room <= 0:  # cannot happen: a full buffer is answered at once
            self._serve(conn, now)
            return
        try:
            data = conn.sock.recv(room)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        if conn.idle:
            conn.idle = False
            conn.deadline = now + HEAD_TIMEOUT
        conn.buf += data
        self._serve(conn, now)

    def _serve(self, conn: _Conn, now: float) -> None:
        """Answer the first request in ``buf`` if its head is complete."""
        buf = conn.buf
        if buf.startswith((b"\r", b"\n")):  # empty lines before a request line are ignored
            del buf[: len(buf) - len(buf.lstrip(b"\r\n"))]
            conn.scanned = 0
        # search only what is new (and the 3 bytes before it): a head sent byte by byte
        # costs linear time, not quadratic
        end = _HEAD_END.search(buf, max(0, conn.scanned - 3))
        if end is None:
            conn.scanned = len(buf)
            if len(buf) > MAX_HEAD_BYTES:
                self._reject(conn, _Reject(431), now)
            return
        if end.end() > MAX_HEAD_BYTES:
            self._reject(conn, _Reject(431), now)
            return
        head = bytes(buf[: end.start()])
        del buf[: end.end()]
        conn.scanned = 0
        try:
            request = _parse_head(head)
            path = urlsplit(request.target).path
        except _Reject as rejected:
            self._reject(conn, rejected, now)
            return
        except ValueError:  # urlsplit: e.g. an unclosed [ in an absolute URL
            self._reject(conn, _Reject(400), now)
            return
        listener = conn.listener
        close = not request.keep_alive
        try:
            status, ctype, body, headers = listener.app.respond(path)
        except Exception as exc:
            listener.throttle.note("route_failed", now, detail=repr(exc), exc=exc)
            status, ctype, body, headers = 500, TEXT, b"500 Internal Server Error\n", {}
            close = True
        log.debug(
            "http request",
            extra={
                "server": listener.name,
                "client": conn.peer,
                "line": f'"{request.method} {request.target} {request.version}" {status}',
            },
        )
        self._respond(
            conn,
            now,
            _response_head(status, ctype, len(body), headers, close=close, http10=request.http10),
            b"" if request.method == "HEAD" else body,
            close,
        )

    def _reject(self, conn: _Conn, rejected: _Reject, now: float) -> None:
        status = rejected.status
        conn.listener.throttle.note("rejected", now, detail=f"{status} to {conn.peer}")
        body = f"{status} {_phrase(status)}\n".encode()
        head = _response_head(
            status, TEXT, len(body), rejected.headers, close=rejected.close, http10=rejected.http10
        )
        self._respond(conn, now, head, body, rejected.close)

    def _respond(self, conn: _Conn, now: float, head: bytes, body: bytes, close: bool) -> None:
        conn.out = [memoryview(head), memoryview(body)] if body else [memoryview(head)]
        conn.close_after = close
        conn.state = _WRITE
        conn.deadline = now + WRITE_TIMEOUT
        self._touch(conn)
        self._write(conn, now)

    def _write(self, conn: _Conn, now: float) -> None:
        out = conn.out
        while out:
            try:
                sent = conn.sock.sendmsg(out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            while sent and out:
                if sent >= len(out[0]):
                    sent -= len(out[0])
                    del out[0]
                else:
                    out[0] = out[0][sent:]
                    sent = 0
        if out:
            self._want(conn, selectors.EVENT_WRITE)
            return
        if conn.close_after:
            self._linger(conn, now)
            return
        conn.state = _READ
        self._touch(conn)
        if conn.buf:  # the next (pipelined) request has begun: its head timeout runs
            conn.idle = False
            conn.deadline = now + HEAD_TIMEOUT
            self.ready[conn] = None
        else:
            conn.idle = True
            conn.deadline = now + IDLE_TIMEOUT
        self._want(conn, selectors.EVENT_READ)

    def _linger(self, conn: _Conn, now: float) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state = _LINGER
        conn.buf = bytearray()
        conn.scanned = 0
        conn.deadline = now + LINGER_TIMEOUT
        self.ready.pop(conn, None)
        self._want(conn, selectors.EVENT_READ)
        self._drain(conn)

    def _drain(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            conn.dropped += len(data)
            if not data or conn.dropped > LINGER_BYTES:
                self._close(conn)
                return


class _EventLoop:
    """Owner of the one loop thread: starts it with the first listener, lets it end when
    nothing listens, and runs functions on it for other threads (:meth:`call`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reactor: _Reactor | None = None
        self._thread: threading.Thread | None = None
        self._stalled: _Call | None = None  # a call that timed out and has not run yet

    @property
    def thread(self) -> threading.Thread | None:
        with self._lock:
            return self._thread

    def call(self, fn: Callable[[_Reactor], None]) -> None:
        """Run ``fn`` on the loop thread and wait for it (at most LOOP_CALL_TIMEOUT;
        TimeoutError then, and ``fn`` still runs later, in order). Called on the loop
        thread itself (from a route), ``fn`` runs at once."""
        call = _Call(fn)
        with self._lock:
            reactor = self._reactor
            here = reactor is not None and threading.current_thread() is self._thread
            if reactor is None:
                reactor = _Reactor()
                thread = threading.Thread(
                    target=reactor.run, args=(self,), name="kube-proxy-py http", daemon=True
                )
                self._reactor, self._thread = reactor, thread
                thread.start()
            if not here:
                reactor.calls.append(call)
                reactor.wake()
            # a loop that missed a call's deadline is not waited for again until it has
            # run that call: stopping N listeners must not take N timeouts
            stalled = self._stalled
            wait = 0.0 if stalled is not None and not stalled.done.is_set() else LOOP_CALL_TIMEOUT
        if here:
            fn(reactor)
            return
        if not call.done.wait(wait):
            with self._lock:
                if self._stalled is None or self._stalled.done.is_set():
                    self._stalled = call
            raise TimeoutError(f"the HTTP event loop did not answer within {LOOP_CALL_TIMEOUT}s")
        if call.retired is not None:
            call.retired.join(LOOP_CALL_TIMEOUT)
        if call.error is not None:
            raise call.error

    def _retire(self, reactor: _Reactor) -> bool:
        """The loop thread of ``reactor`` asks to end (nothing listens)."""
        with self._lock:
            if reactor.calls or reactor.listeners:
                return False
            if self._reactor is reactor:
                self._reactor = self._thread = None
            return True

    def open_connections(self) -> int:
        with self._lock:
            reactor = self._reactor
        return len(reactor.conns) if reactor is not None else 0


_LOOP = _EventLoop()


def event_loop_thread() -> threading.Thread | None:
    """The thread serving every listener, while one listens (None otherwise)."""
    return _LOOP.thread


def open_connections() -> int:
    """Open client connections of all listeners together."""
    return _LOOP.open_connections()


def _listen(address: tuple[str, int], name: str, flag: str, v6only: bool = False) -> socket.socket:
    """A listening socket; ``v6only``: an IPv6 wildcard takes IPv6 connections only
    (one listener per family, as upstream's health check node ports)."""
    host, port = address
    shown = _show(host, port)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise ServerError(f"cannot listen on {shown} for {name}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if v6only and sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(
                f"address {shown} in use: is another kube-proxy running? set {flag}"
            ) from exc
        raise ServerError(
            f"cannot listen on {shown} for {name}: {exc.strerror or exc}; set {flag}"
        ) from exc
    return sock


class HTTPService:
    """One listener on the shared loop thread, started and stopped explicitly (from any
    thread)."""

    def __init__(
        self, name: str, address: tuple[str, int], app: App, flag: str, v6only: bool = False
    ) -> None:
        self.name = name
        self._v6only = v6only
        self._address = address
        self._app = app
        self._flag = flag
        self._lock = threading.Lock()
        self._listener: _Listener | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), once started (port 0 resolved)."""
        listener = self._listener
        return self._address if listener is None else listener.address

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def connections(self) -> int:
        """Open client connections of this listener."""
        listener = self._listener
        return len(listener.conns) if listener is not None else 0

    def start(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            sock = _listen(self._address, self.name, self._flag, self._v6only)
            listener = _Listener(self.name, sock, self._app)
            try:
                _LOOP.call(lambda reactor: reactor.add(listener))
            except TimeoutError as exc:
                # the add still runs when the loop gets to it: the remove runs after it
                with contextlib.suppress(TimeoutError):
                    _LOOP.call(lambda reactor: reactor.remove(listener))
                raise ServerError(f"cannot serve {listener.shown} for {self.name}: {exc}") from exc
            except OSError as exc:  # no loop thread (e.g. out of file descriptors)
                sock.close()
                raise ServerError(
                    f"cannot serve {listener.shown} for {self.name}: {exc.strerror or exc}"
                ) from exc
            except BaseException:
                sock.close()
                raise
            self._listener = listener
        log.info("serving", extra={"server": self.name, "address": listener.shown})

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            if listener is None:
                return
            try:
                _LOOP.call(lambda reactor: reactor.remove(listener))
            except TimeoutError as exc:
                log.error(
                    "http server did not stop in time",
                    extra={"server": self.name, "address": listener.shown, "error": str(exc)},
                )
                return
        log.info("stopped", extra={"server": self.name, "address": listener.shown})


class Served:
    """A server whose HTTP plumbing is one HTTPService (set by the subclass)."""

    _service: HTTPService

    @property
    def address(self) -> tuple[str, int]:
        return self._service.address

    @property
    def connections(self) -> int:
        """Open client connections (at most :data:`MAX_CONNECTIONS_PER_LISTENER`)."""
        return self._service.connections

    def start(self) -> None:
        self._service.start()

    def stop(self) -> None:
        self._service.stop()
