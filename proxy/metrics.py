"""Prometheus metrics with upstream kube-proxy's names, labels and buckets.

Every upstream metric keeps its exact name (``kubeproxy_`` prefix), type, label names
and histogram buckets, as of Kubernetes v1.33+ (where most of them gained an
``ip_family`` label, "IPv4" / "IPv6"), so dashboards and alerts written for kube-proxy
keep working. Metrics of our own are prefixed ``kubeproxy_py_``.

Each :class:`ProxyMetrics` owns its registry, so several agents can live in one process
(tests). Upstream registers the iptables-only and nftables-only metrics only in that
mode; ``mode`` does the same (None registers both, for tools and tests).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from proxy.config import ProxyMode
from proxy.model import IPFamily
from proxy.traffic import TrafficSample

log = logging.getLogger(__name__)

#: The text exposition format render() produces.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: upstream ``metrics.ExponentialBuckets(0.001, 2, 15)``: 1ms … 16.384s
SYNC_BUCKETS: tuple[float, ...] = tuple(round(0.001 * 2**i, 6) for i in range(15))

#: upstream ``metrics.MergeBuckets(...)``, which starts with a 0 bucket, then 0.25s,
#: 0.5s, 1s … 59s, 60s … 115s every 5s, 120s … 300s every 30s
PROGRAMMING_BUCKETS: tuple[float, ...] = (
    0.0,
    0.25,
    0.5,
    *(float(s) for s in range(1, 60)),
    *(float(s) for s in range(60, 120, 5)),
    *(float(s) for s in range(120, 301, 30)),
)

TRAFFIC_POLICIES = ("internal", "external")


class _WithoutCreated:
    """The registry's metrics minus the ``*_created`` samples prometheus_client adds
    (client_golang, and so upstream, has none); without touching the library's global
    switch, which other code in the process may rely on."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s for s in family.samples if s.name != family.name + "_created"]
            yield out


TRAFFIC_LABELS = ("namespace", "service", "port", "verdict")
TRAFFIC_INTERVAL = 2.0
"""Seconds between readings of the traffic counters (each costs ``nft`` or
``iptables-save`` runs); a scrape gets the latest."""


class ServiceTrafficCollector:
    """``--metrics-service-counters``: packets and bytes per Service port and verdict.

    A thread of its own reads them from the rules every :data:`TRAFFIC_INTERVAL`
    seconds; a scrape (on the servers' event loop, which must not block) takes the
    latest reading."""

    def __init__(
        self, read: Callable[[], list[TrafficSample]], interval: float = TRAFFIC_INTERVAL
    ) -> None:
        self._read = read
        self._interval = interval
        self._lock = threading.Lock()
        self._samples: list[TrafficSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Read the counters now (a failed reading keeps the last one)."""
        try:
            got = self._read()
        except Exception as exc:  # the next reading may work; scrapes keep answering
            log.warning("reading the service traffic counters failed", extra={"error": str(exc)})
            return
        with self._lock:
            self._samples = got

    def start(self) -> None:
        """A first reading, then one every interval in a daemon thread."""
        self.refresh()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="traffic-counters", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh()

    def samples(self) -> list[TrafficSample]:
        with self._lock:
            return list(self._samples)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily(
            "kubeproxy_py_service_packets",
            "Packets to each Service port by verdict (dnat: of its connections, both "
            "ways; reject, drop: refused by its rules)",
            labels=TRAFFIC_LABELS,
        )
        octets = CounterMetricFamily(
            "kubeproxy_py_service_bytes",
            "Bytes to each Service port by verdict, as the packets",
            labels=TRAFFIC_LABELS,
        )
        for s in self.samples():
            labels = [s.namespace, s.service, s.port, s.verdict]
            packets.add_metric(labels, s.packets)
            octets.add_metric(labels, s.bytes)
        yield packets
        yield octets


class ProxyMetrics:
    """kube-proxy's metrics for one agent.

    ``families`` are pre-created for the per-family counters, failure counters and
    gauges so they read 0 rather than being absent before the first event (a small
    departure from upstream, where they appear on first use; it makes ``rate()`` and
    ``absent()`` alerts behave from the start).
    """

    def __init__(
        self,
        mode: ProxyMode | str | None = None,
        *,
        families: Iterable[IPFamily] = (IPFamily.V4,),
        process_metrics: bool = True,
    ) -> None:
        self.mode = ProxyMode(mode) if mode is not None else None
        self.registry = CollectorRegistry(auto_describe=True)
        self.traffic: ServiceTrafficCollector | None = None
        self._exposed = _WithoutCreated(self.registry)
        r = self.registry
        iptables = self.mode in (None, ProxyMode.IPTABLES)
        nftables = self.mode in (None, ProxyMode.NFTABLES)
        fam = ["ip_family"]

        # -- sync timing (all modes) ---------------------------------------------------
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "Time taken by one sync of the proxy rules, full or partial, in seconds",
            fam,
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.sync_full_duration = Histogram(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "Time taken by one full resync of the proxy rules, in seconds",
            fam,
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.sync_partial_duration = Histogram(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "Time taken by one partial sync of the proxy rules, in seconds",
            fam,
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.last_sync = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "Unix time of the last successful sync of the proxy rules",
            fam,
            registry=r,
        )
        self.last_queued = Gauge(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "Unix time a sync of the proxy rules was last requested",
            fam,
            registry=r,
        )
        self.programming = Histogram(
            "kubeproxy_network_programming_duration_seconds",
            "Time from a Service or endpoint change to the rules that carry it, in seconds",
            fam,
            buckets=PROGRAMMING_BUCKETS,
            registry=r,
        )

        # -- change tracking (no family label upstream) -------------------------------
        self.service_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Service changes not yet carried into the proxy rules",
            registry=r,
        )
        self.service_changes_total = Counter(
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "Service changes seen",
            registry=r,
        )
        self.endpoint_changes_pending = Gauge(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Endpoint changes not yet carried into the proxy rules",
            registry=r,
        )
        self.endpoint_changes_total = Counter(
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "Endpoint changes seen",
            registry=r,
        )
        self.no_local_endpoints = Gauge(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Service ports with a Local traffic policy and no local endpoint",
            ["traffic_policy", "ip_family"],
            registry=r,
        )

        # -- health endpoints ----------------------------------------------------------
        self.healthz_total = Counter(
            "kubeproxy_proxy_healthz_total",
            "Responses of /healthz by HTTP status code",
            ["code"],
            registry=r,
        )
        self.livez_total = Counter(
            "kubeproxy_proxy_livez_total",
            "Responses of /livez by HTTP status code",
            ["code"],
            registry=r,
        )

        # -- conntrack reconciler (upstream v1.33+) ------------------------------------
        self.conntrack_duration = Histogram(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "Time taken by one stale UDP conntrack cleanup, in seconds",
            fam,
            buckets=SYNC_BUCKETS,
            registry=r,
        )
        self.conntrack_deleted = Counter(
            "kubeproxy_conntrack_reconciler_deleted_entries_total",
            "Stale UDP conntrack entries deleted",
            fam,
            registry=r,
        )

        # -- backend specific ----------------------------------------------------------
        self.iptables_restore_failures: Counter | None = None
        self.iptables_partial_restore_failures: Counter | None = None
        self.iptables_rules: Gauge | None = None
        self.iptables_rules_last: Gauge | None = None
        if iptables:
            self.iptables_restore_failures = Counter(
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                "iptables-restore transactions that failed",
                fam,
                registry=r,
            )
            self.iptables_partial_restore_failures = Counter(
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
                "Partial iptables-restore transactions that failed (then retried in full)",
                fam,
                registry=r,
            )
            self.iptables_rules = Gauge(
                "kubeproxy_sync_proxy_rules_iptables_total",
                "iptables rules owned by the proxy, per table",
                ["table", "ip_family"],
                registry=r,
            )
            self.iptables_rules_last = Gauge(
                "kubeproxy_sync_proxy_rules_iptables_last",
                "iptables rules written by the last sync, per table",
                ["table", "ip_family"],
                registry=r,
            )
        self.nftables_sync_failures: Counter | None = None
        self.nftables_cleanup_failures: Counter | None = None
        self.nft_text_fallbacks_total: Counter | None = None
        if nftables:
            self.nftables_sync_failures = Counter(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
                "nft transactions that failed",
                fam,
                registry=r,
            )
            self.nftables_cleanup_failures = Counter(
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
                "Stale nftables chain cleanups that failed",
                fam,
                registry=r,
            )
            self.nft_text_fallbacks_total = Counter(
                "kubeproxy_py_nft_text_fallbacks_total",
                "Incremental nftables transactions written with nft -f because their "
                "netlink encoding does not cover a statement",
                fam,
                registry=r,
            )

        # -- ours ------------------------------------------------------------------------
        self.invalid_objects = Gauge(
            "kubeproxy_py_invalid_objects",
            "API objects currently skipped because they are invalid, by kind",
            ["kind"],
            registry=r,
        )
        # not "kubeproxy_py_invalid_objects_total": a counter foo_total and a gauge foo
        # are one metric family in OpenMetrics (prometheus_client refuses the pair)
        self.invalid_objects_total = Counter(
            "kubeproxy_py_invalid_objects_skipped_total",
            "Invalid API objects seen and skipped, by kind",
            ["kind"],
            registry=r,
        )

        self.api_errors_total = Counter(
            "kubeproxy_py_api_errors_total",
            "Failed list/watch requests and skipped events, by kind and cause (connection, "
            "bad-response, http-<code>, expired, silent, malformed, unexpected)",
            ["kind", "reason"],
            registry=r,
        )
        self.skipped_services = Gauge(
            "kubeproxy_py_services_not_programmed",
            "Services left out (or partly out) of the rules, by reason (headless, "
            "external-name, other-proxy; ipv4-only, ipv6-only and dual-stack when the node "
            "cannot program an IP family)",
            ["reason"],
            registry=r,
        )
        self.drift_repairs_total = Counter(
            "kubeproxy_py_ruleset_drift_repairs_total",
            "Full syncs made because someone else changed the ruleset",
            registry=r,
        )

        if process_metrics:
            ProcessCollector(registry=r)  # process_cpu_seconds_total & co, as upstream

        for family in families:
            self._init_family(family)

    def add_family(self, family: IPFamily) -> None:
        """Pre-create ``family``'s series (the agent knows its families once the Node is
        known; IPv4's exist from the start)."""
        self._init_family(family)

    def _init_family(self, family: IPFamily) -> None:
        for counter in (
            self.conntrack_deleted,
            self.iptables_restore_failures,
            self.iptables_partial_restore_failures,
            self.nftables_sync_failures,
            self.nftables_cleanup_failures,
            self.nft_text_fallbacks_total,
        ):
            if counter is not None:
                counter.labels(family)
        for policy in TRAFFIC_POLICIES:
            self.no_local_endpoints.labels(policy, family)

    # -- sync loop ---------------------------------------------------------------------

    def queued(self, family: IPFamily = IPFamily.V4, *, now: float | None = None) -> None:
        """A sync was requested (a change arrived)."""
        self.last_queued.labels(family).set(time.time() if now is None else now)

    def observe_sync(
        self,
        full: bool,
        seconds: float,
        *,
        success: bool = True,
        family: IPFamily = IPFamily.V4,
        now: float | None = None,
    ) -> None:
        """One sync attempt took ``seconds``. Durations are recorded for failed syncs
        too (as upstream); the last-sync timestamp only moves on success."""
        self.sync_duration.labels(family).observe(seconds)
        (self.sync_full_duration if full else self.sync_partial_duration).labels(family).observe(
            seconds
        )
        if success:
            self.last_sync.labels(family).set(time.time() if now is None else now)

    def sync_failed(
        self, mode: ProxyMode | str, *, partial: bool = False, family: IPFamily = IPFamily.V4
    ) -> None:
        """The kernel refused a transaction: iptables-restore (``partial``: a partial
        restore, after which a full one is tried) or nft."""
        mode = ProxyMode(mode)
        if mode is ProxyMode.IPTABLES:
            counter = (
                self.iptables_partial_restore_failures
                if partial
                else self.iptables_restore_failures
            )
        else:
            counter = self.nftables_sync_failures
        if counter is None:
            raise ValueError(f"{mode} metrics are not registered (this agent runs {self.mode})")
        counter.labels(family).inc()

    def cleanup_failed(self, family: IPFamily = IPFamily.V4) -> None:
        """nftables: deleting stale chains failed."""
        if self.nftables_cleanup_failures is None:
            raise ValueError(f"nftables metrics are not registered (this agent runs {self.mode})")
        self.nftables_cleanup_failures.labels(family).inc()

    def set_pending(self, services: int, endpoints: int) -> None:
        """Changes received and not yet synced."""
        self.service_changes_pending.set(services)
        self.endpoint_changes_pending.set(endpoints)

    def changes(self, services: int = 0, endpoints: int = 0) -> None:
        """Count changes as they arrive."""
        if services:
            self.service_changes_total.inc(services)
        if endpoints:
            self.endpoint_changes_total.inc(endpoints)

    def observe_programming(self, seconds: float, family: IPFamily = IPFamily.V4) -> None:
        """Network programming latency of one endpoint change (from the slice's
        ``endpoints.kubernetes.io/last-change-trigger-time`` to the synced rules)."""
        self.programming.labels(family).observe(max(0.0, seconds))

    def set_rule_counts(
        self,
        total: Mapping[str, int],
        last: Mapping[str, int] | None = None,
        *,
        family: IPFamily = IPFamily.V4,
    ) -> None:
        """iptables: rules per table ("nat", "filter") owned now, and written last sync."""
        if self.iptables_rules is None or self.iptables_rules_last is None:
            raise ValueError(f"iptables metrics are not registered (this agent runs {self.mode})")
        for table, n in total.items():
            self.iptables_rules.labels(table, family).set(n)
        for table, n in (last if last is not None else total).items():
            self.iptables_rules_last.labels(table, family).set(n)

    def set_no_local_endpoints(
        self, internal: int, external: int, family: IPFamily = IPFamily.V4
    ) -> None:
        """Service ports with iTP / eTP Local and no local endpoint, after a sync."""
        self.no_local_endpoints.labels("internal", family).set(internal)
        self.no_local_endpoints.labels("external", family).set(external)

    def conntrack_reconciled(
        self, seconds: float, deleted: int, family: IPFamily = IPFamily.V4
    ) -> None:
        """One stale UDP conntrack cleanup of one family."""
        self.conntrack_duration.labels(family).observe(seconds)
        self.conntrack_deleted.labels(family).inc(max(0, deleted))

    # -- health endpoints --------------------------------------------------------------

    def count_healthz(self, code: int) -> None:
        self.healthz_total.labels(str(code)).inc()

    def count_livez(self, code: int) -> None:
        self.livez_total.labels(str(code)).inc()

    # -- ours ----------------------------------------------------------------------------

    def set_invalid(self, kind: str, count: int) -> None:
        """How many objects of ``kind`` are skipped right now (gauge)."""
        self.invalid_objects.labels(kind).set(count)

    def record_invalid(self, kind: str, n: int = 1) -> None:
        """``n`` invalid objects (or object versions) of ``kind`` were seen and skipped."""
        if n > 0:
            self.invalid_objects_total.labels(kind).inc(n)

    def api_error(self, kind: str, reason: str) -> None:
        self.api_errors_total.labels(kind, reason).inc()

    def set_skipped_services(self, counts: dict[str, int]) -> None:
        """Services not (fully) programmed now, by reason; reasons not given are 0."""
        for reason in (
            "headless",
            "external-name",
            "other-proxy",
            "ipv4-only",
            "ipv6-only",
            "dual-stack",
        ):
            self.skipped_services.labels(reason).set(counts.get(reason, 0))

    def nft_text_fallbacks(self, n: int, family: IPFamily = IPFamily.V4) -> None:
        """``n`` incremental transactions went through ``nft -f`` instead of netlink."""
        if self.nft_text_fallbacks_total is None:
            raise ValueError(f"nftables metrics are not registered (this agent runs {self.mode})")
        self.nft_text_fallbacks_total.labels(family).inc(n)

    def drift_repaired(self) -> None:
        self.drift_repairs_total.inc()

    def count_service_traffic(self, read: Callable[[], list[TrafficSample]]) -> None:
        """Export the service traffic counters ``read`` returns
        (``--metrics-service-counters``); once."""
        if self.traffic is None:
            self.traffic = ServiceTrafficCollector(read)
            self.registry.register(self.traffic)
            self.traffic.start()

    # -- exposition ----------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition (``CONTENT_TYPE``)."""
        return generate_latest(self._exposed)
