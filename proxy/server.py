"""The proxy's HTTP servers: /healthz and /livez, /metrics, and healthCheckNodePorts.

Behaviour follows upstream kube-proxy (``pkg/proxy/healthcheck`` and
``cmd/kube-proxy/app/server.go``, v1.3x):

* :class:`ProxyHealth` is the state: per IP family, when the rules were last synced and
  the oldest change still waiting for a sync. A family is unhealthy once a change has
  waited ``timeout`` (upstream: 2 × the sync period) without a sync. A family that has
  never synced (and whose sync loop has not started) is healthy: "healthy while starting
  up". The sync loop calls :meth:`ProxyHealth.started` when it starts, as upstream's
  ``SyncLoop`` marks itself updated, so that a proxy whose syncs never succeed does turn
  unhealthy once a change has waited too long.
* :class:`HealthServer` serves ``/healthz`` (200, or 503 when unhealthy or when the Node
  is being deleted) and ``/livez`` (ignores the Node) on ``--healthz-bind-address``
  (default ``0.0.0.0:10256``), with upstream's JSON bodies.
* :class:`MetricsServer` serves ``/metrics``, a plain ``/healthz`` ("ok") and
  ``/proxyMode`` on ``--metrics-bind-address`` (default ``127.0.0.1:10249``).
* :class:`HealthCheckNodePorts` runs one server per Service with
  ``externalTrafficPolicy: Local`` on its ``healthCheckNodePort``: 200 when the node has
  local endpoints and the proxy is healthy, else 503.

Servers are ``ThreadingHTTPServer`` in daemon threads; ``stop()`` also closes kept-alive
connections, so a stopped health check really stops answering.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.metrics import ProxyMetrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]

DEFAULT_HEALTHZ_ADDRESS = "0.0.0.0:10256"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:10249"
#: Taint the cluster autoscaler puts on a node it is about to delete.
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
DEFAULT_FAMILY = "IPv4"

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class ServerError(RuntimeError):
    """A server could not start (the message says what to change)."""


# ---------------------------------------------------------------------------------------
# health state


def node_eligible(node: Mapping[str, Any] | None) -> bool:
    """Whether a Node (API dict) may receive new traffic: not being deleted and not
    tainted ``ToBeDeletedByClusterAutoscaler`` (upstream ``NodeEligible``)."""
    if node is None:
        return True
    meta = node.get("metadata") or {}
    if isinstance(meta, Mapping) and meta.get("deletionTimestamp"):
        return False
    spec = node.get("spec") or {}
    taints = spec.get("taints") if isinstance(spec, Mapping) else None
    for taint in taints or ():
        if isinstance(taint, Mapping) and taint.get("key") == TO_BE_DELETED_TAINT:
            return False
    return True


def go_time(t: float | None) -> str:
    """A Unix time as Go's JSON encoding of time.Time spells it (RFC 3339, nanosecond
    precision with trailing zeros dropped, UTC); None is Go's zero time."""
    if t is None:
        return "0001-01-01T00:00:00Z"
    dt = datetime.fromtimestamp(t, UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        text += f".{dt.microsecond:06d}".rstrip("0")
    return text + "Z"


@dataclass(frozen=True)
class FamilyHealth:
    last_updated: float
    healthy: bool


@dataclass(frozen=True)
class HealthReport:
    """One consistent reading of :class:`ProxyHealth`."""

    healthy: bool
    """Every family that has synced is within its timeout (node eligibility not included)."""
    current_time: float
    last_updated: float | None
    """The most recent sync of any family (None: never)."""
    node_eligible: bool
    families: Mapping[str, FamilyHealth] = field(default_factory=dict)

    def body(self, *, with_node: bool) -> bytes:
        """Upstream's JSON: /healthz (``with_node``) adds nodeEligible and is healthy only
        if the node is eligible too; when healthy, lastUpdated reads "now" (upstream keeps
        this for compatibility with releases that bumped it on every loop)."""
        ok = self.healthy and (self.node_eligible or not with_node)
        out: dict[str, Any] = {
            "lastUpdated": go_time(self.current_time if ok else self.last_updated),
            "currentTime": go_time(self.current_time),
        }
        if with_node:
            out["nodeEligible"] = self.node_eligible
        out["healthy"] = self.healthy
        if self.families:
            out["status"] = {
                fam: {"lastUpdated": go_time(h.last_updated), "healthy": h.healthy}
                for fam, h in sorted(self.families.items())
            }
        return json.dumps(out, separators=(",", ":")).encode()


class ProxyHealth:
    """Thread-safe sync-health tracker (upstream ``ProxyHealthServer`` state)."""

    def __init__(self, timeout: float, *, clock: Clock = time.time) -> None:
        if timeout <= 0:
            raise ValueError(f"health timeout must be positive, got {timeout}")
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._last_updated: dict[str, float] = {}
        self._oldest_queued: dict[str, float] = {}
        self._node_eligible = True

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def started(self, now: float | None = None, family: str = DEFAULT_FAMILY) -> None:
        """The sync loop of ``family`` started (counts as an update, as upstream)."""
        with self._lock:
            self._last_updated[str(family)] = self._now(now)

    def queued_update(self, now: float | None = None, family: str = DEFAULT_FAMILY) -> None:
        """A change arrived that needs a sync; only the oldest pending one counts."""
        with self._lock:
            self._oldest_queued.setdefault(str(family), self._now(now))

    def synced(self, now: float | None = None, family: str = DEFAULT_FAMILY) -> None:
        """A sync of ``family`` completed: everything queued so far is applied."""
        with self._lock:
            self._oldest_queued.pop(str(family), None)
            self._last_updated[str(family)] = self._now(now)

    def set_node_eligible(self, eligible: bool) -> None:
        """False while the Node is being deleted (see :func:`node_eligible`)."""
        with self._lock:
            self._node_eligible = bool(eligible)

    @property
    def node_eligible(self) -> bool:
        with self._lock:
            return self._node_eligible

    def report(self, now: float | None = None) -> HealthReport:
        with self._lock:
            current = self._now(now)
            families: dict[str, FamilyHealth] = {}
            for fam, updated in self._last_updated.items():
                queued = self._oldest_queued.get(fam)
                ok = queued is None or current - queued < self.timeout
                families[fam] = FamilyHealth(updated, ok)
            return HealthReport(
                healthy=all(h.healthy for h in families.values()),
                current_time=current,
                last_updated=max(self._last_updated.values(), default=None),
                node_eligible=self._node_eligible,
                families=families,
            )

    def healthy(self, now: float | None = None) -> bool:
        """Sync health only (what /livez and the health check node ports use)."""
        return self.report(now).healthy


# ---------------------------------------------------------------------------------------
# HTTP plumbing


def parse_address(address: str, flag: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``:port`` → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServerError(f"{flag}: {address!r} is not host:port (e.g. 0.0.0.0:10256)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr; a client that hangs up is routine
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug(
                "http connection error", extra={"client": str(client_address), "error": str(exc)}
            )
        else:
            log.exception("http handler failed", extra={"client": str(client_address)})

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


Route = Callable[[], tuple[int, str, bytes, Mapping[str, str]]]


def _handler(name: str, routes: Mapping[str, Route] | None, default: Route | None) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30  # idle keep-alive connections

        def _serve(self, body_wanted: bool) -> None:
            path = urlsplit(self.path).path
            route = routes.get(path) if routes is not None else None
            if route is None:
                route = default
            headers: Mapping[str, str] = {}
            if route is None:
                status, ctype, body = 404, _TEXT, b"404 page not found\n"
            else:
                status, ctype, body, headers = route()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body_wanted:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._serve(True)

        def do_HEAD(self) -> None:
            self._serve(False)

        def send_response(self, code: int, message: str | None = None) -> None:
            # like Go's net/http: a Date header, no Server header
            self.log_request(code)
            self.send_response_only(code, message)
            self.send_header("Date", self.date_time_string())

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(
                "http request",
                extra={"server": name, "client": self.client_address[0], "line": format % args},
            )

    return Handler


class _HTTPService:
    """One ThreadingHTTPServer in a daemon thread, started and stopped explicitly."""

    def __init__(
        self,
        name: str,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        flag: str,
    ) -> None:
        self.name = name
        self._address = address
        self._handler = handler
        self._flag = flag
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port), once started (port 0 resolved)."""
        if self._server is None:
            return self._address
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        shown = _show(*self._address)
        try:
            server = _Server(self._address, self._handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(
                    f"address {shown} in use: is another kube-proxy running? set {self._flag}"
                ) from exc
            raise ServerError(
                f"cannot listen on {shown} for {self.name}: {exc.strerror or exc}; set {self._flag}"
            ) from exc
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{self.name} {shown}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        log.info("serving", extra={"server": self.name, "address": _show(*self.address)})

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        log.info("stopped", extra={"server": self.name, "address": _show(*self._address)})


class _Served:
    """A server whose HTTP plumbing is one _HTTPService (set by the subclass)."""

    _service: _HTTPService

    @property
    def address(self) -> tuple[str, int]:
        return self._service.address

    def start(self) -> None:
        self._service.start()

    def stop(self) -> None:
        self._service.stop()


# ---------------------------------------------------------------------------------------
# /healthz and /livez


class HealthServer(_Served):
    """``/healthz`` and ``/livez`` on the healthz bind address."""

    def __init__(
        self,
        health: ProxyHealth,
        metrics: ProxyMetrics | None = None,
        address: str = DEFAULT_HEALTHZ_ADDRESS,
    ) -> None:
        self.health = health
        self.metrics = metrics
        routes: dict[str, Route] = {"/healthz": self._healthz, "/livez": self._livez}
        self._service = _HTTPService(
            "healthz",
            parse_address(address, "--healthz-bind-address"),
            _handler("healthz", routes, None),
            "--healthz-bind-address",
        )

    def _healthz(self) -> tuple[int, str, bytes, Mapping[str, str]]:
        report = self.health.report()
        code = 200 if report.healthy and report.node_eligible else 503
        if self.metrics is not None:
            self.metrics.count_healthz(code)
        return code, _JSON, report.body(with_node=True), {"X-Content-Type-Options": "nosniff"}

    def _livez(self) -> tuple[int, str, bytes, Mapping[str, str]]:
        report = self.health.report()
        code = 200 if report.healthy else 503
        if self.metrics is not None:
            self.metrics.count_livez(code)
        return code, _JSON, report.body(with_node=False), {"X-Content-Type-Options": "nosniff"}


# ---------------------------------------------------------------------------------------
# /metrics


class MetricsServer(_Served):
    """``/metrics``, ``/healthz`` ("ok", as upstream's generic healthz handler) and
    ``/proxyMode`` on the metrics bind address."""

    def __init__(
        self,
        metrics: ProxyMetrics,
        address: str = DEFAULT_METRICS_ADDRESS,
        mode: str = "",
    ) -> None:
        self.metrics = metrics
        self.mode = str(mode or (metrics.mode or ""))
        nosniff = {"X-Content-Type-Options": "nosniff"}
        routes: dict[str, Route] = {
            "/metrics": lambda: (200, METRICS_CONTENT_TYPE, self.metrics.render(), {}),
            "/healthz": lambda: (200, _TEXT, b"ok", nosniff),
            "/proxyMode": lambda: (200, _TEXT, self.mode.encode(), nosniff),
        }
        self._service = _HTTPService(
            "metrics",
            parse_address(address, "--metrics-bind-address"),
            _handler("metrics", routes, None),
            "--metrics-bind-address",
        )


# ---------------------------------------------------------------------------------------
# healthCheckNodePort


def service_health_body(service: str, local_endpoints: int, proxy_healthy: bool) -> bytes:
    """Upstream's response body, byte for byte (tab-indented, no trailing newline)."""
    namespace, _, name = service.partition("/")
    return (
        "{\n"
        '\t"service": {\n'
        f'\t\t"namespace": {json.dumps(namespace)},\n'
        f'\t\t"name": {json.dumps(name)}\n'
        "\t},\n"
        f'\t"localEndpoints": {local_endpoints},\n'
        f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
        "}"
    ).encode()


@dataclass
class _HealthCheck:
    port: int
    services: list[_HTTPService]
    endpoints: int = 0


class HealthCheckNodePorts:
    """One HTTP server per ``externalTrafficPolicy: Local`` Service, on its
    healthCheckNodePort, answering every path.

    ``addresses``: where to listen (upstream: all addresses, or each address selected by
    ``--nodeport-addresses``).
    """

    def __init__(self, health: ProxyHealth, addresses: Iterable[str] = ("0.0.0.0",)) -> None:
        self.health = health
        self.addresses = tuple(addresses)
        self._lock = threading.Lock()
        self._checks: dict[str, _HealthCheck] = {}

    @property
    def ports(self) -> dict[str, int]:
        """Services with a running health check → port."""
        with self._lock:
            return {svc: hc.port for svc, hc in self._checks.items()}

    def update(self, services: Mapping[str, tuple[int, int]]) -> dict[str, str]:
        """Make the running set match ``services`` ("ns/name" → (port, local endpoints)).

        New services start a server, removed ones (or a changed port) stop theirs, and
        every count is updated. A port that cannot be opened is logged and returned
        ("ns/name" → reason); it is tried again on the next update.
        """
        failures: dict[str, str] = {}
        with self._lock:
            for svc, hc in list(self._checks.items()):
                wanted = services.get(svc)
                if wanted is None or wanted[0] != hc.port:
                    self._stop(svc, hc)
                    del self._checks[svc]
            for svc, (port, count) in sorted(services.items()):
                if svc not in self._checks:
                    try:
                        self._checks[svc] = self._start(svc, port)
                    except ServerError as exc:
                        failures[svc] = str(exc)
                        log.error(
                            "failed to start health check node port",
                            extra={"object": svc, "port": port, "error": str(exc)},
                        )
                        continue
                self._checks[svc].endpoints = max(0, int(count))
        return failures

    def stop(self) -> None:
        with self._lock:
            for svc, hc in self._checks.items():
                self._stop(svc, hc)
            self._checks.clear()

    def _start(self, svc: str, port: int) -> _HealthCheck:
        if not 0 < port <= 65535:
            raise ServerError(f"healthCheckNodePort {port} is outside 1-65535")
        hc = _HealthCheck(port, [])
        handler = _handler(f"healthcheck {svc}", None, lambda: self._answer(svc))
        try:
            for host in self.addresses:
                service = _HTTPService(
                    f"healthcheck {svc}", (host, port), handler, "the Service's healthCheckNodePort"
                )
                service.start()
                hc.services.append(service)
        except ServerError:
            for service in hc.services:
                service.stop()
            raise
        log.info("opened health check node port", extra={"object": svc, "port": port})
        return hc

    def _stop(self, svc: str, hc: _HealthCheck) -> None:
        for service in hc.services:
            service.stop()
        log.info("closed health check node port", extra={"object": svc, "port": hc.port})

    def _answer(self, svc: str) -> tuple[int, str, bytes, Mapping[str, str]]:
        with self._lock:
            hc = self._checks.get(svc)
            count = hc.endpoints if hc is not None else 0
        healthy = self.health.healthy()
        code = 200 if count and healthy else 503
        headers = {
            "X-Content-Type-Options": "nosniff",
            "X-Load-Balancing-Endpoint-Weight": str(count),
        }
        return code, _JSON, service_health_body(svc, count, healthy), headers
