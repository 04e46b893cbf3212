"""proxy.server (and proxy.httpserve beneath it) under abuse: floods of idle and slow
connections, oversized heads, bodies, clients that never read; bounded threads,
connections and memory; prompt stop.

No root needed: every server binds 127.0.0.x; the flood comes from a child process so
that this process's threads and file descriptors are the server's alone. No assertion
is about time: waits are bounded, and the bounds are generous.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import proxy.httpserve as httpserve
from proxy.httpserve import event_loop_thread, open_connections, raise_nofile_limit
from proxy.metrics import ProxyMetrics
from proxy.server import (
    HealthCheckNodePorts,
    HealthServer,
    MetricsServer,
    ProxyHealth,
    go_time,
    service_health_body,
)
from tests.unit.test_server import TIMEOUT, FakeClock, free_port, get, refused

LOOP_THREAD = "kube-proxy-py http"


def proc_threads() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line in /proc/self/status")


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with_target = f"/proc/self/fd/{fd}"
        try:
            if os.readlink(with_target).startswith("socket:"):
                count += 1
        except OSError:
            pass  # closed meanwhile (the listdir's own fd)
    return count


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until true or ``timeout`` (a bound, never asserted on)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Read (and drop) until the peer closes: True on EOF or reset, False if still open
    after ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def raw_exchange(address: tuple[str, int], data: bytes) -> tuple[bytes, bool]:
    """Send ``data``, read until the server closes (bounded): (what came back, closed)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        sock.settimeout(10)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            return out, False
        except ConnectionError:
            pass
        return out, True


@pytest.fixture(autouse=True)
def _no_loop_left_behind() -> Iterator[None]:
    assert wait_for(lambda: event_loop_thread() is None and not loop_threads()), (
        "a previous test left a server running"
    )
    yield
    assert wait_for(lambda: event_loop_thread() is None and not loop_threads())


@pytest.fixture
def health() -> ProxyHealth:
    clock = FakeClock()
    h = ProxyHealth(TIMEOUT, clock=clock)
    h.updated()
    return h


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short deadlines and a fine sweep, so the tests need not wait seconds."""
    monkeypatch.setattr(httpserve, "SWEEP_INTERVAL", 0.02)
    monkeypatch.setattr(httpserve, "HEAD_TIMEOUT", 0.5)
    monkeypatch.setattr(httpserve, "IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(httpserve, "WRITE_TIMEOUT", 0.5)


# ---------------------------------------------------------------------------------------
# the flood

ATTACKER = r"""
import resource, select, socket, sys

host = sys.argv[1]
ports = [int(p) for p in sys.argv[2].split(",")]
n_idle, n_slow = int(sys.argv[3]), int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
# a head that never ends, sent one byte at a time
HEAD = b"GET /livez HTTP/1.1\r\nHost: flood\r\nX-Slow: " + b"a" * 100000

def connect(port):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((host, port))
    except OSError:
        s.close()
        return None
    s.setblocking(False)
    return s

slow = [[connect(ports[i % len(ports)]), ports[i % len(ports)], 0] for i in range(n_slow)]
reconnects = 0

def tick():
    # one more byte on every slow connection; a closed one connects again
    global reconnects
    for entry in slow:
        s, port, offset = entry
        try:
            if s is None:
                raise OSError("not connected")
            s.send(HEAD[offset : offset + 1])
            entry[2] = offset + 1
        except OSError:
            if s is not None:
                s.close()
            entry[0], entry[2] = connect(port), 0
            reconnects += 1

print("flooding", flush=True)
idle, failed = [], 0
for i in range(n_idle):
    s = connect(ports[i % len(ports)])
    if s is None:
        failed += 1
    else:
        idle.append(s)
    if i % 100 == 0:
        tick()
print("ready", len(idle), failed, flush=True)
while not select.select([sys.stdin], [], [], 0.05)[0]:
    tick()
print("done", reconnects, flush=True)
"""


def read_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
    assert proc.stdout is not None
    if select.select([proc.stdout], [], [], timeout)[0]:
        return proc.stdout.readline().strip()
    return None


def test_flood_of_idle_and_slow_connections_never_starves_the_probes(
    health: ProxyHealth, caplog: pytest.LogCaptureFixture
) -> None:
    n_idle, n_slow = 10_000, 200
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n_idle + n_slow + 100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for the flood")
    raise_nofile_limit()
    caplog.set_level(logging.INFO, logger="proxy.httpserve")
    cap = httpserve.MAX_CONNECTIONS_PER_LISTENER
    threads0, proc_threads0, sockets0, rss0 = (
        threading.active_count(),
        proc_threads(),
        open_sockets(),
        rss_bytes(),
    )

    healthz = HealthServer(health, address="127.0.0.1:0")
    healthz.start()
    hc = HealthCheckNodePorts(health, addresses=("127.0.0.1",))
    hc_port = free_port()
    assert hc.update({"ns1/web": (hc_port, 3)}) == {}
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ATTACKER,
            "127.0.0.1",
            f"{healthz.address[1]},{hc_port}",
            str(n_idle),
            str(n_slow),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def probe() -> None:
        for path, with_node in (("/livez", False), ("/healthz", True)):
            status, headers, body = get(healthz.address, path)
            assert status == 200, (path, status, body)
            assert headers["Content-Type"] == "application/json"
            doc = json.loads(body)
            assert doc["healthy"] is True and ("nodeEligible" in doc) == with_node
            assert doc["currentTime"] == go_time(health.report().current_time)
        status, _, body = get(("127.0.0.1", hc_port), "/")
        assert (status, body) == (200, service_health_body("ns1/web", 3, True))
        # one loop thread, whatever the number of connections
        assert threading.active_count() <= threads0 + 1
        assert proc_threads() <= proc_threads0 + 1
        assert len(loop_threads()) == 1
        # never more than the caps (the probes' own client sockets: at most 2 more)
        assert healthz.connections <= cap and hc.connections <= cap
        assert open_connections() <= min(2 * cap, httpserve.MAX_CONNECTIONS)
        assert open_sockets() <= sockets0 + 2 * cap + 2 + 2 + 2  # + listeners, wake pair

    try:
        assert read_line(proc, 30) == "flooding"
        during = 0
        ready: str | None = None
        while ready is None:
            probe()
            during += 1
            ready = read_line(proc, 0.05)
        word, opened, _failed = ready.split()
        assert word == "ready" and int(opened) >= n_idle * 0.9, ready
        # the slow clients keep trickling (and reconnecting) meanwhile
        for _ in range(20):
            probe()
            time.sleep(0.05)
        assert rss_bytes() - rss0 < 64 * 2**20  # no per-connection buffers piling up
        assert proc.stdin is not None
        proc.stdin.close()
        done = read_line(proc, 30)
        assert done is not None and done.startswith("done"), done
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        hc.stop()
        healthz.stop()
    elapsed = time.monotonic() - started

    # stopped: nothing listens, every connection is closed, the loop thread has ended
    assert refused(healthz.address[1]) and refused(hc_port)
    assert healthz.connections == 0 and hc.connections == 0 and open_connections() == 0
    assert event_loop_thread() is None and not loop_threads()
    assert threading.active_count() == threads0
    assert open_sockets() <= sockets0

    # the flood did reach the server, which said so at most once per LOG_INTERVAL per
    # listener and kind (never a line per connection)
    records = [r for r in caplog.records if r.name == "proxy.httpserve"]
    evictions = [r for r in records if r.getMessage().startswith("connection limit reached")]
    closed = sum(
        int(r.__dict__["count"])
        for r in records
        if r.getMessage().startswith(("connection limit reached", "closed connections"))
    )
    assert closed >= int(opened) // 2
    per_listener = 2 + elapsed / httpserve.LOG_INTERVAL  # the first, then one an interval, + stop
    for address in {r.__dict__["address"] for r in evictions}:
        assert sum(r.__dict__["address"] == address for r in evictions) <= per_listener
    assert len(records) < 100, [r.getMessage() for r in records][:20]
    assert during >= 1


def test_sigterm_ends_a_flooded_agent(tmp_path: Any) -> None:
    """A process serving healthz under a flood ends on SIGTERM (its handler stops the
    server, as the agent's does)."""
    script = tmp_path / "agent.py"
    script.write_text(
        "import signal, sys, threading\n"
        "from proxy.server import HealthServer, ProxyHealth\n"
        "server = HealthServer(ProxyHealth(60.0), address='127.0.0.1:0')\n"
        "server.start()\n"
        "stop = threading.Event()\n"
        "signal.signal(signal.SIGTERM, lambda *_: stop.set())\n"
        "print(server.address[1], flush=True)\n"
        "stop.wait()\n"
        "server.stop()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    clients: list[socket.socket] = []
    try:
        line = read_line(proc, 30)
        assert line is not None and line.isdigit(), line
        port = int(line)
        for i in range(2_000):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 4 == 0:
                s.sendall(b"GET /livez HTTP/1.1\r\nHost")  # unfinished heads as well
            clients.append(s)
        assert get(("127.0.0.1", port), "/livez")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        for s in clients:
            s.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------
# eviction order and caps


def test_full_listener_evicts_the_connection_idle_or_unfinished_the_longest(
    health: ProxyHealth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpserve, "MAX_CONNECTIONS_PER_LISTENER", 4)
    server = HealthServer(health, address="127.0.0.1:0")
    server.start()
    socks: list[socket.socket] = []
    try:
        for _ in range(4):
            socks.append(socket.create_connection(server.address, timeout=10))
            assert wait_for(lambda: server.connections == len(socks))
        a, b, c, d = socks
        c.sendall(b"GET /livez HTTP/1.1\r\nHo")  # unfinished: counts from its accept
        # a completes a request: it is the youngest now
        a.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        a.settimeout(10)
        assert a.recv(65536).startswith(b"HTTP/1.1 200 OK")
        newcomers = [socket.create_connection(server.address, timeout=10) for _ in range(3)]
        socks += newcomers
        # b, c and d were the oldest: closed, in that order; a and the newcomers live
        assert closed_by_peer(b) and closed_by_peer(c) and closed_by_peer(d)
        assert wait_for(lambda: server.connections == 4)
        for alive in (a, *newcomers):
            alive.setblocking(False)
            with pytest.raises(BlockingIOError):
                alive.recv(1)
        # and a fresh probe is still answered
        assert get(server.address, "/livez")[0] == 200
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_total_cap_evicts_across_listeners(
    health: ProxyHealth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpserve, "MAX_CONNECTIONS_PER_LISTENER", 8)
    monkeypatch.setattr(httpserve, "MAX_CONNECTIONS", 12)
    first = HealthServer(health, address="127.0.0.1:0")
    second = MetricsServer(ProxyMetrics(), address="127.0.0.1:0")
    first.start()
    second.start()
    socks: list[socket.socket] = []
    try:
        for server in (first, second):
            for i in range(1, 9):
                socks.append(socket.create_connection(server.address, timeout=10))
                assert wait_for(lambda: server.connections == i)  # noqa: B023
                assert open_connections() <= 12
        assert (first.connections, second.connections) == (4, 8)
        # the four oldest of all (the first listener's first four) were closed
        assert all(closed_by_peer(s) for s in socks[:4])
        for alive in socks[4:]:
            alive.setblocking(False)
            with pytest.raises(BlockingIOError):
                alive.recv(1)
    finally:
        for s in socks:
            s.close()
        first.stop()
        second.stop()


# ---------------------------------------------------------------------------------------
# deadlines


def test_slowloris_head_is_closed_at_its_deadline(health: ProxyHealth, fast: None) -> None:
    server = HealthServer(health, address="127.0.0.1:0")
    server.start()
    try:
        with socket.create_connection(server.address, timeout=10) as slow:
            slow.settimeout(0.1)
            head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
            closed = False
            for byte in head:  # trickle until the server gives up (bounded)
                try:
                    slow.send(bytes([byte]))
                    if slow.recv(1) == b"":
                        closed = True
                        break
                except TimeoutError:
                    continue
                except ConnectionError:
                    closed = True
                    break
            assert closed
        assert get(server.address, "/livez")[0] == 200
    finally:
        server.stop()


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    health: ProxyHealth, fast: None
) -> None:
    server = HealthServer(health, address="127.0.0.1:0")
    server.start()
    try:
        conn = http.client.HTTPConnection(*server.address, timeout=10)
        conn.request("GET", "/livez")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.getheader("Connection") is None  # kept alive
        assert conn.sock is not None
        assert closed_by_peer(conn.sock)
        conn.close()
        assert wait_for(lambda: server.connections == 0)
    finally:
        server.stop()


class HugeMetrics(ProxyMetrics):
    def render(self) -> bytes:
        return b"# " + b"x" * (32 * 2**20) + b"\n"


def test_client_that_never_reads_is_closed_without_blocking_others(fast: None) -> None:
    metrics = HugeMetrics()
    server = MetricsServer(metrics, address="127.0.0.1:0")
    server.start()
    try:
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(server.address)
        stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # the response cannot be written out, yet others are answered meanwhile
        for _ in range(5):
            assert get(server.address, "/healthz")[::2] == (200, b"ok")
        # and the stuck client is closed once its write deadline passes
        assert wait_for(lambda: server.connections == 0)
        received = 0
        stuck.settimeout(10)
        try:
            while chunk := stuck.recv(2**20):
                received += len(chunk)
        except ConnectionError:
            pass
        stuck.close()
        assert received < 32 * 2**20  # cut off, not delivered
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------
# a minimal, strict HTTP/1.1


@pytest.fixture
def healthz(health: ProxyHealth) -> Iterator[HealthServer]:
    server = HealthServer(health, address="127.0.0.1:0")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_100_kib_header_gets_431_and_the_connection_closed(healthz: HealthServer) -> None:
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
    out, closed = raw_exchange(healthz.address, head)
    assert out.startswith(b"HTTP/1.1 431 ") and b"\r\nConnection: close\r\n" in out
    assert closed


def test_too_many_header_lines_get_431(healthz: HealthServer) -> None:
    head = b"GET /livez HTTP/1.1\r\n" + b"X-A: b\r\n" * (httpserve.MAX_HEADER_LINES + 1) + b"\r\n"
    out, closed = raw_exchange(healthz.address, head)
    assert out.startswith(b"HTTP/1.1 431 ") and closed
    at_limit = b"GET /livez HTTP/1.1\r\n" + b"X-A: b\r\n" * (httpserve.MAX_HEADER_LINES - 1)
    at_limit += b"Connection: close\r\n\r\n"
    assert raw_exchange(healthz.address, at_limit)[0].startswith(b"HTTP/1.1 200 ")


def test_post_with_a_body_is_405_with_allow_and_closed(healthz: HealthServer) -> None:
    out, closed = raw_exchange(
        healthz.address,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    assert out.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET, HEAD\r\n" in out
    assert closed


def test_other_methods_get_405_and_keep_the_connection(healthz: HealthServer) -> None:
    conn = http.client.HTTPConnection(*healthz.address, timeout=10)
    try:
        for method in ("PUT", "DELETE", "OPTIONS", "BREW"):
            conn.request(method, "/livez")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
        conn.request("GET", "/livez")  # the same connection
        assert conn.getresponse().status == 200
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /livez HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 413),
        (b"GET /livez HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /livez HTTP/2.0\r\n\r\n", 505),
        (b"GET /livez\r\n\r\n", 400),
        (b"GET  /livez HTTP/1.1\r\n\r\n", 400),
        (b"GET livez HTTP/1.1\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nX-A: b\r\n folded\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nBad Name: b\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", 400),
        (b"GET /livez HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"G\x01T /livez HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_malformed_requests_are_refused_and_closed(
    healthz: HealthServer, request_bytes: bytes, status: int
) -> None:
    out, closed = raw_exchange(healthz.address, request_bytes)
    assert out.startswith(f"HTTP/1.1 {status} ".encode()), out[:80]
    assert b"\r\nConnection: close\r\n" in out and closed


def test_keep_alive_rules(healthz: HealthServer) -> None:
    # HTTP/1.0 closes unless asked to keep alive; HTTP/1.1 keeps alive unless told to close
    out, closed = raw_exchange(healthz.address, b"GET /livez HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in out and closed
    with socket.create_connection(healthz.address, timeout=10) as sock:
        sock.sendall(b"GET /livez HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = sock.recv(65536)
        assert b"\r\nConnection: keep-alive\r\n" in first
        sock.sendall(b"GET /livez HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert closed_by_peer(sock)
    out, closed = raw_exchange(
        healthz.address, b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 200 ") and closed


def test_pipelined_requests_are_answered_in_order(healthz: HealthServer) -> None:
    out, closed = raw_exchange(
        healthz.address,
        b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"\r\nHEAD /healthz HTTP/1.1\nHost: x\n\n"  # a stray CRLF and bare LFs: tolerated
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert closed
    parts = out.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200", b"404", b"200", b"200"]
    assert b'"healthy":true}' in parts[0] and "nodeEligible" not in parts[0].decode()
    assert parts[1].endswith(b"404 page not found\n")
    assert parts[2].endswith(b"\r\n\r\n")  # HEAD: no body
    assert b'"nodeEligible":true' in parts[3]


def test_a_head_sent_byte_by_byte_is_answered(healthz: HealthServer) -> None:
    with socket.create_connection(healthz.address, timeout=10) as sock:
        for byte in b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n":
            sock.sendall(bytes([byte]))
        sock.settimeout(10)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 200 ")


# ---------------------------------------------------------------------------------------
# one loop thread, thread-safe start and stop


def test_every_listener_shares_one_loop_thread_that_ends_with_the_last(
    health: ProxyHealth,
) -> None:
    threads0 = threading.active_count()
    healthz = HealthServer(health, address="127.0.0.1:0")
    metrics = MetricsServer(ProxyMetrics(), address="127.0.0.1:0")
    # one health check port on two addresses (both on loopback)
    hc = HealthCheckNodePorts(health, addresses=("127.0.0.1", "127.0.0.2"))
    port = free_port()
    healthz.start()
    metrics.start()
    try:
        assert hc.update({"ns1/a": (port, 1)}) == {}
        for host in ("127.0.0.1", "127.0.0.2"):
            assert get((host, port))[0] == 200
        assert get(healthz.address, "/livez")[0] == 200
        assert get(metrics.address, "/healthz")[0] == 200
        assert threading.active_count() == threads0 + 1 and len(loop_threads()) == 1
        loop = event_loop_thread()
        hc.stop()
        healthz.stop()
        assert event_loop_thread() is loop and loop is not None and loop.is_alive()
        assert get(metrics.address, "/healthz")[0] == 200
        metrics.stop()
        assert event_loop_thread() is None and not loop.is_alive()
        assert threading.active_count() == threads0
        # and it comes back with the next listener
        healthz.start()
        assert get(healthz.address, "/livez")[0] == 200
        assert len(loop_threads()) == 1
    finally:
        hc.stop()
        healthz.stop()
        metrics.stop()


def test_start_and_stop_from_many_threads(health: ProxyHealth) -> None:
    errors: list[BaseException] = []
    servers = [HealthServer(health, address="127.0.0.1:0") for _ in range(6)]

    def churn(server: HealthServer) -> None:
        try:
            for _ in range(15):
                server.start()
                assert get(server.address, "/livez")[0] == 200
                server.stop()
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=churn, args=(s,)) for s in servers]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not errors, errors
    assert not any(w.is_alive() for w in workers)
    assert all(s.connections == 0 for s in servers)


def test_stop_closes_every_connection_of_a_full_listener(
    health: ProxyHealth, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(httpserve, "MAX_CONNECTIONS_PER_LISTENER", 32)
    server = HealthServer(health, address="127.0.0.1:0")
    server.start()
    socks = [socket.create_connection(server.address, timeout=10) for _ in range(40)]
    try:
        assert wait_for(lambda: server.connections == 32)
        port = server.address[1]
        server.stop()
        assert refused(port)
        assert all(closed_by_peer(s) for s in socks)
        assert event_loop_thread() is None
    finally:
        for s in socks:
            s.close()
        server.stop()


# ---------------------------------------------------------------------------------------
# RLIMIT_NOFILE


def test_raise_nofile_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"hard limit {hard}")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_nofile_limit() == (256, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert raise_nofile_limit() == (hard, hard)  # nothing left to raise
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
