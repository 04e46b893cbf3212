"""``kube-proxy-py run``: the node agent.

Start-up: servers (healthz, metrics) → API client → reflectors for Services,
EndpointSlices and our Node → wait for all three initial lists (no rules before that) →
remove the other mode's rules → sync loop. Each change requests a sync; the
bounded-frequency runner coalesces bursts. SIGTERM/SIGINT stop promptly and leave the
rules in place, so established flows keep working across a restart and the next start
adopts them with a full sync in one transaction.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from proxy import logs
from proxy.agent.boundedfrequency import BoundedFrequencyRunner
from proxy.agent.families import (
    FamilyError,
    choose_families,
    config_warnings,
    primary_family,
)
from proxy.agent.metaproxier import MetaProxier
from proxy.agent.options.settings import AgentOptions
from proxy.agent.proxier import Proxier, SyncResult
from proxy.agent.state import ClusterState
from proxy.apiclient.client import ApiClient, ApiError
from proxy.config import ProxyMode
from proxy.conntrack import ConntrackCleaner, ConntrackError, UdpTarget, udp_targets
from proxy.kernel.executor import Executor, KernelError
from proxy.metrics import ProxyMetrics
from proxy.model import IPFamily
from proxy.modes import ALL_FAMILIES, remove_rules, supported_families
from proxy.plan import Filter, Plan, SkippedService, unserved_family_notes
from proxy.server import (
    HealthCheckNodePorts,
    HealthServer,
    MetricsServer,
    ProxyHealth,
    ServerError,
    node_eligible,
    raise_nofile_limit,
)
from proxy.source.reflector import (
    Reflector,
    endpointslices_spec,
    node_spec,
    services_spec,
)
from proxy.traffic import TrafficSample

log = logging.getLogger("kube-proxy-py")
KINDS = ("Service", "EndpointSlice", "Node")


def health_check_addresses(p: Plan) -> tuple[str, ...]:
    """Where health check node ports listen: every address of the plan's family when
    NodePorts match every local address, else exactly the addresses NodePorts accept
    (upstream: each IP that --nodeport-addresses selects, the primary IPs by default in
    nftables mode; one listener per family)."""
    if p.nodeports.match_all_local:
        return ("0.0.0.0",) if p.family is IPFamily.V4 else ("::",)
    return tuple(str(ip) for ip in p.nodeports.addresses)


@dataclass
class Observer:
    """Turns each family's sync results into metrics, health, conntrack cleanup and
    health-check node ports (one set of listeners per family, as upstream)."""

    mode: ProxyMode
    metrics: ProxyMetrics
    health: ProxyHealth
    state: ClusterState
    hc_ports: Mapping[IPFamily, HealthCheckNodePorts]
    conntrack: ConntrackCleaner
    families: tuple[IPFamily, ...] = ()
    """The families this node programs (known once the Node is)."""
    unserved_why: str = ""
    """Why the node programs a single family only (empty: it programs both). The
    Services (or halves) of the other family are then said not to be programmed
    (:func:`proxy.plan.unserved_family_notes`): no plan covers them."""
    _last_udp: dict[IPFamily, dict[str, UdpTarget]] = field(default_factory=dict)
    _skipped: dict[IPFamily, frozenset[SkippedService]] = field(default_factory=dict)
    _reported: frozenset[SkippedService] | None = None

    def sync_done(self, result: SyncResult) -> None:
        now = time.time()
        p = result.plan
        family = p.family
        if result.drift:
            self.metrics.drift_repaired()
        if result.text_fallbacks:
            self.metrics.nft_text_fallbacks(result.text_fallbacks, family)
        self.health.updated(now, family)
        self.metrics.observe_sync(result.full, result.seconds, family=family, now=now)
        self.metrics.changes(result.service_changes, result.endpoint_changes)
        self.metrics.set_pending(*self.state.pending_counts())
        for t in result.trigger_times:
            self.metrics.observe_programming(now - t, family)
        self.metrics.set_no_local_endpoints(
            sum(1 for sp in p.service_ports if sp.internal_filter is Filter.DROP),
            sum(1 for sp in p.service_ports if sp.external_filter is Filter.DROP),
            family,
        )
        for kind, count in self.state.invalid_counts().items():
            self.metrics.set_invalid(kind, count)
        self._report_skipped(p)
        self._health_check_ports(p)
        self._conntrack(p)

    def _report_skipped(self, p: Plan) -> None:
        """Say once per object (and again when it changes) what is not programmed and
        why, over every family: headless, ExternalName and other proxies' Services (debug:
        that is normal), and Services of a family this node cannot program (info)."""
        self._skipped[p.family] = frozenset(p.skipped)
        unserved: frozenset[SkippedService] = frozenset()
        if self.unserved_why:
            services = self.state.services()
            unserved = frozenset(unserved_family_notes(services, self.families, self.unserved_why))
        now = unserved.union(*self._skipped.values())
        before = self._reported or frozenset()
        if now == self._reported:
            return
        for s in sorted(now - before, key=str):
            log.log(
                logging.INFO if s in unserved else logging.DEBUG,
                "service partly programmed" if s.partial else "service not programmed",
                extra={"object": str(s.ref), "reason": s.code or "other", "detail": s.reason},
            )
        self._reported = now
        counts: dict[str, int] = {}
        for s in now:
            counts[s.code] = counts.get(s.code, 0) + 1
        self.metrics.set_skipped_services(counts)

    def sync_failed(self, mode: ProxyMode, full: bool, error: str, family: IPFamily) -> None:
        self.metrics.sync_failed(mode, partial=not full, family=family)

    def _health_check_ports(self, p: Plan) -> None:
        hc_ports = self.hc_ports.get(p.family)
        if hc_ports is None:
            return
        wanted: dict[str, tuple[int, int]] = {}
        for sp in p.service_ports:
            if sp.health_check_node_port:
                key = f"{sp.namespace}/{sp.name}"
                count = len(sp.local_endpoints) + wanted.get(key, (0, 0))[1]
                wanted[key] = (sp.health_check_node_port, count)
        for svc, err in hc_ports.update(wanted, health_check_addresses(p)).items():
            log.warning(
                "health check node port not served",
                extra={"object": svc, "ip_family": str(p.family), "error": err},
            )

    def _conntrack(self, p: Plan) -> None:
        targets = {t.service: t for t in udp_targets(p)}
        last = self._last_udp.get(p.family, {})
        if targets == last:
            return
        changed = [t for key, t in targets.items() if last.get(key) != t]
        self._last_udp[p.family] = targets
        if not changed:
            return
        start = time.monotonic()
        try:
            deleted = self.conntrack.cleanup(changed)
        except ConntrackError as exc:
            log.warning(
                "stale UDP conntrack cleanup failed",
                extra={"ip_family": str(p.family), "error": str(exc)},
            )
            self._last_udp[p.family] = {}  # try again after the next sync
            return
        self.metrics.conntrack_reconciled(time.monotonic() - start, deleted, p.family)


class Agent:
    def __init__(self, opts: AgentOptions, executor: Executor | None = None) -> None:
        self.opts = opts
        self.executor = executor or Executor()
        self.stop_event = threading.Event()
        self.config = opts.proxy_config()
        self.metrics = ProxyMetrics(mode=opts.mode)
        self.health = ProxyHealth(timeout=2 * opts.sync_period)
        # an empty bind address turns a server off (upstream: --healthz-port=0)
        self.health_server = (
            HealthServer(self.health, self.metrics, opts.healthz_bind_address)
            if opts.healthz_bind_address
            else None
        )
        self.metrics_server = (
            MetricsServer(self.metrics, opts.metrics_bind_address, opts.mode)
            if opts.metrics_bind_address
            else None
        )
        self.hc_ports = {f: HealthCheckNodePorts(self.health) for f in ALL_FAMILIES}
        self.sync_runner: BoundedFrequencyRunner | None = None
        self.state = ClusterState(opts.node_name, on_change=self._changed, on_invalid=self._invalid)
        self.observer = Observer(
            opts.mode, self.metrics, self.health, self.state, self.hc_ports, ConntrackCleaner()
        )
        self.proxier: MetaProxier | None = None
        self.families: tuple[IPFamily, ...] = ()
        self.reflectors: list[Reflector] = []

    def build_proxier(self) -> MetaProxier:
        """One proxier per IP family this node can program (primary first), once the
        Node is known (its first address gives the primary family)."""
        support = supported_families(self.executor, self.opts.mode)
        node = self.state.node
        primary = primary_family(node)
        families, why = choose_families(primary, support)
        for warning in config_warnings(
            primary,
            families,
            self.config.cluster_cidrs,
            self.config.nodeport_addresses.cidrs,
            node.pod_cidrs if node is not None else (),
        ):
            log.warning(warning, extra={"node": self.opts.node_name})
        self.observer.families, self.observer.unserved_why = families, why
        log.info(
            "programming IP families",
            extra={
                "node": self.opts.node_name,
                "families": ",".join(families),
                "stack": "dual-stack" if len(families) > 1 else "single-stack",
                "not_programmed": why,
            },
        )
        for family in families:
            self.metrics.add_family(family)
        self.families = families
        if self.config.service_counters:
            self.metrics.count_service_traffic(self._traffic)
        self.proxier = MetaProxier(
            self.state,
            [
                Proxier(
                    self.config,
                    self.state,
                    self.opts.sync_period,
                    self.observer,
                    executor=self.executor,
                    family=family,
                )
                for family in families
            ],
        )
        return self.proxier

    def _traffic(self) -> list[TrafficSample]:
        return self.proxier.traffic() if self.proxier is not None else []

    def _changed(self) -> None:
        now = time.time()
        for family in self.families or (IPFamily.V4,):
            self.health.queued_update(now, family)
            self.metrics.queued(family)
        if self.sync_runner is not None:
            self.sync_runner.request()

    def _invalid(self, kind: str, skipped: int) -> None:
        self.metrics.set_invalid(kind, skipped)
        if skipped:
            self.metrics.record_invalid(kind)

    def _on_event(self, kind: str, event: str, obj: Mapping[str, Any]) -> None:
        if kind == "Node":
            self.health.set_node_eligible(event != "DELETED" and node_eligible(dict(obj)))
        self.state.handle(kind, event, obj)

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_event.is_set():
            return
        log.info("signal received; stopping without touching the rules", extra={"signal": signum})
        self.stop_event.set()
        threading.Thread(target=_exit_after, args=(SHUTDOWN_DEADLINE,), daemon=True).start()
        if self.sync_runner is not None:
            self.sync_runner.stop()

    def run(self) -> int:
        opts = self.opts
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        old_limit, new_limit = raise_nofile_limit()
        if new_limit != old_limit:
            log.debug("open files limit raised", extra={"from": old_limit, "to": new_limit})
        servers = [s for s in (self.health_server, self.metrics_server) if s is not None]
        try:
            for server in servers:
                server.start()
        except ServerError as exc:
            log.error("cannot serve", extra={"error": str(exc)})
            return 1
        try:
            client = ApiClient.from_config(opts.kubeconfig, opts.master)
        except (ApiError, OSError, ValueError) as exc:
            log.error("cannot build an API client", extra={"error": str(exc)})
            return 1
        log.info(
            "starting",
            extra={"node": opts.node_name, "mode": str(opts.mode), "server": client.server},
        )
        specs = (
            ("Service", services_spec()),
            ("EndpointSlice", endpointslices_spec()),
            ("Node", node_spec(opts.node_name)),
        )
        for kind, spec in specs:
            r = Reflector(
                client,
                spec,
                functools.partial(self._on_event, kind),
                on_synced=functools.partial(self.state.mark_synced, kind),
                name=kind,
                on_error=functools.partial(self.metrics.api_error, kind),
            )
            self.reflectors.append(r)
            r.start()
        try:
            while not self.state.has_synced(*KINDS):
                if self.stop_event.wait(0.1):
                    return 0
            log.info("initial lists received; programming rules", extra={"node": opts.node_name})
            if self.state.node is None:
                log.warning(
                    "node not found: endpoints are never local, topology hints and "
                    "primary-IP NodePorts are unavailable until it appears",
                    extra={"node": opts.node_name},
                )
            try:
                proxier = self.build_proxier()
            except FamilyError as exc:
                log.error("cannot start", extra={"error": str(exc)})
                return 1
            try:
                proxier.cleanup_other_mode()
            except KernelError as exc:
                log.warning("could not remove the other mode's rules", extra={"error": str(exc)})
            self.sync_runner = BoundedFrequencyRunner(
                proxier.sync_proxy_rules,
                min_interval=opts.min_sync_period,
                max_interval=opts.sync_period,
                name=str(opts.mode),
            )
            if self.stop_event.is_set():
                return 0
            for family in self.families:
                self.health.started(time.time(), family)
            self.sync_runner.request()
            self.sync_runner.loop()
            return 0
        finally:
            for r in self.reflectors:
                r.request_stop()  # all at once: each closes its connection
            for r in self.reflectors:
                r.stop(timeout=0.5)
            for hc_ports in self.hc_ports.values():
                hc_ports.stop()
            for server in servers:
                server.stop()
            client.close()
            log.info("stopped", extra={"node": opts.node_name})


SHUTDOWN_DEADLINE = 1.5
"""Seconds an orderly stop may take after SIGTERM before the process exits anyway: a sync
in progress (a restore at 10,000 Services takes seconds) is abandoned. A transaction the
kernel was given commits whole or not at all, and the next start adopts what is there
with one full sync, as after a SIGKILL."""


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)
    # the main thread may hold the logging lock: write directly
    os.write(2, b'level=warning msg="orderly stop took too long; exiting now"\n')
    os._exit(0)


def run(opts: AgentOptions) -> int:
    logs.setup(opts.verbosity)
    for warning in opts.warnings:
        log.warning(warning)
    if opts.cleanup:
        removed = remove_rules(Executor(), ProxyMode)
        log.info("cleanup done", extra={"removed": ", ".join(removed) or "nothing"})
        return 0
    return Agent(opts).run()
