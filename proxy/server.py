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

HTTP plumbing
-------------
Every server here is a listener of :mod:`proxy.httpserve`: one event-loop thread serves
them all and bounds every resource a client can hold (the bounds are that module's
constants). ``ServerError``, ``parse_address``, ``raise_nofile_limit``,
``event_loop_thread`` and ``open_connections`` are re-exported from it.

Route functions run on the loop thread: they must not block (they take the health
state's lock, the metrics' lock, or the health check counts' lock, each held only
briefly and never while waiting for the loop).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from proxy.httpserve import (
    TEXT,
    App,
    HTTPService,
    Route,
    Served,
    ServerError,
    event_loop_thread,
    open_connections,
    parse_address,
    raise_nofile_limit,
)
from proxy.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from proxy.metrics import ProxyMetrics
from proxy.model import IPFamily

__all__ = [
    "DEFAULT_FAMILY",
    "DEFAULT_HEALTHZ_ADDRESS",
    "DEFAULT_METRICS_ADDRESS",
    "TO_BE_DELETED_TAINT",
    "Clock",
    "FamilyHealth",
    "HealthCheckNodePorts",
    "HealthReport",
    "HealthServer",
    "MetricsServer",
    "ProxyHealth",
    "ServerError",
    "event_loop_thread",
    "go_time",
    "node_eligible",
    "open_connections",
    "parse_address",
    "raise_nofile_limit",
    "service_health_body",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]

DEFAULT_HEALTHZ_ADDRESS = "0.0.0.0:10256"
DEFAULT_METRICS_ADDRESS = "127.0.0.1:10249"
#: Taint the cluster autoscaler puts on a node it is about to delete.
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
DEFAULT_FAMILY = IPFamily.V4

_JSON = "application/json"


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
    families: Mapping[IPFamily, FamilyHealth] = field(default_factory=dict)

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
        self._last_updated: dict[IPFamily, float] = {}
        self._oldest_queued: dict[IPFamily, float] = {}
        self._node_eligible = True

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def started(self, now: float | None = None, family: IPFamily = DEFAULT_FAMILY) -> None:
        """The sync loop of ``family`` started (counts as an update, as upstream)."""
        with self._lock:
            self._last_updated[family] = self._now(now)

    def queued_update(self, now: float | None = None, family: IPFamily = DEFAULT_FAMILY) -> None:
        """A change arrived that needs a sync; only the oldest pending one counts."""
        with self._lock:
            self._oldest_queued.setdefault(family, self._now(now))

    def updated(self, now: float | None = None, family: IPFamily = DEFAULT_FAMILY) -> None:
        """A sync of ``family`` completed: everything queued so far is applied (upstream's
        ``Updated``)."""
        with self._lock:
            self._oldest_queued.pop(family, None)
            self._last_updated[family] = self._now(now)

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
            families: dict[IPFamily, FamilyHealth] = {}
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
# /healthz and /livez


class HealthServer(Served):
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
        self._service = HTTPService(
            "healthz",
            parse_address(address, "--healthz-bind-address"),
            App(routes, None),
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


class MetricsServer(Served):
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
            "/healthz": lambda: (200, TEXT, b"ok", nosniff),
            "/proxyMode": lambda: (200, TEXT, self.mode.encode(), nosniff),
        }
        self._service = HTTPService(
            "metrics",
            parse_address(address, "--metrics-bind-address"),
            App(routes, None),
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
    services: list[HTTPService]


class HealthCheckNodePorts:
    """One HTTP server per ``externalTrafficPolicy: Local`` Service, on its
    healthCheckNodePort, answering every path.

    ``addresses``: where to listen (upstream: all addresses, or each address selected by
    ``--nodeport-addresses``).

    ``_lock`` serialises :meth:`update` and :meth:`stop`, which wait for the loop thread
    to open and close ports; the local endpoint counts the loop thread reads to answer
    have their own lock, never held while waiting, so the two cannot deadlock.
    """

    def __init__(self, health: ProxyHealth, addresses: Iterable[str] = ("0.0.0.0",)) -> None:
        self.health = health
        self.addresses = tuple(addresses)
        self._lock = threading.Lock()
        self._checks: dict[str, _HealthCheck] = {}
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {}

    @property
    def ports(self) -> dict[str, int]:
        """Services with a running health check → port."""
        with self._lock:
            return {svc: hc.port for svc, hc in self._checks.items()}

    @property
    def connections(self) -> int:
        """Open client connections of all health check node ports together."""
        with self._lock:
            return sum(s.connections for hc in self._checks.values() for s in hc.services)

    def update(
        self, services: Mapping[str, tuple[int, int]], addresses: Iterable[str] | None = None
    ) -> dict[str, str]:
        """Make the running set match ``services`` ("ns/name" → (port, local endpoints)).

        New services start a server, removed ones (or a changed port) stop theirs, and
        every count is updated. A port that cannot be opened is logged and returned
        ("ns/name" → reason); it is tried again on the next update. ``addresses``, when
        given and different from the current ones, moves every server there.
        """
        failures: dict[str, str] = {}
        with self._lock:
            if addresses is not None and tuple(addresses) != self.addresses:
                for svc, hc in self._checks.items():
                    self._stop(svc, hc)
                self._checks.clear()
                self.addresses = tuple(addresses)
                log.info(
                    "health check node ports listen on",
                    extra={"addresses": ",".join(self.addresses) or "none"},
                )
            for svc, hc in list(self._checks.items()):
                wanted = services.get(svc)
                if wanted is None or wanted[0] != hc.port:
                    self._stop(svc, hc)
                    del self._checks[svc]
                    with self._counts_lock:
                        self._counts.pop(svc, None)
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
                with self._counts_lock:
                    self._counts[svc] = max(0, int(count))
        return failures

    def stop(self) -> None:
        with self._lock:
            for svc, hc in self._checks.items():
                self._stop(svc, hc)
            self._checks.clear()
            with self._counts_lock:
                self._counts.clear()

    def _start(self, svc: str, port: int) -> _HealthCheck:
        if not 0 < port <= 65535:
            raise ServerError(f"healthCheckNodePort {port} is outside 1-65535")
        if not self.addresses:
            raise ServerError(
                "no address to listen on: NodePorts are accepted on none of the node's "
                "addresses (is its primary IP known? check --nodeport-addresses)"
            )
        hc = _HealthCheck(port, [])
        app = App(None, lambda: self._answer(svc))
        try:
            for host in self.addresses:
                service = HTTPService(
                    f"healthcheck {svc}",
                    (host, port),
                    app,
                    "the Service's healthCheckNodePort",
                    v6only=True,  # the IPv4 proxier's listener serves IPv4
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
        with self._counts_lock:
            count = self._counts.get(svc, 0)
        healthy = self.health.healthy()
        code = 200 if count and healthy else 503
        headers = {
            "X-Content-Type-Options": "nosniff",
            "X-Load-Balancing-Endpoint-Weight": str(count),
        }
        return code, _JSON, service_health_body(svc, count, healthy), headers
