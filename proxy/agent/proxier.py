"""One sync of the node agent: snapshot → plan → render → (full or incremental) apply.

A full sync reads what our table/chains hold now and rewrites all of it in one
transaction: at start (this also adopts rules a previous run left, without a gap), after
any failure, when the Node changed, when someone else committed to nf_tables since our
last commit (the kernel's ruleset generation moved: whatever they did to our rules is
repaired within one sync period), and at least hourly as upstream does. Legacy iptables
has no generation to watch, so there every sync period brings a full sync. Between full
syncs only what changed since the last applied ruleset is written: changed chains and
map elements in nftables mode, changed chains in iptables mode (upstream's partial sync).

The plan tracker (:mod:`proxy.tracker`) plans only the Services that changed and says
which service ports may differ from its last plan; the mode's renderer renders only those
again. After a failure the tracker is reset: the next sync plans and renders everything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from proxy.agent.state import Changes, ClusterState
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables.kernel import RouteLocalnetError
from proxy.kernel.addresses import local_addresses
from proxy.kernel.executor import Executor, KernelError
from proxy.model import IPFamily, Problem
from proxy.modes import mode_for, other_modes, remove_rules
from proxy.plan import Plan, Snapshot
from proxy.tracker import PlanTracker
from proxy.traffic import TrafficSample

log = logging.getLogger(__name__)

FULL_SYNC_PERIOD = 3600.0
"""Seconds between unconditional full syncs (upstream's FullSyncPeriod)."""


class SyncObserver(Protocol):
    """What the proxier reports to (metrics, health, conntrack, health-check ports)."""

    def sync_done(self, result: SyncResult) -> None: ...

    def sync_failed(self, mode: ProxyMode, full: bool, error: str, family: IPFamily) -> None: ...


@dataclass(frozen=True)
class SyncResult:
    plan: Plan
    previous: Plan | None
    full: bool
    seconds: float
    service_changes: int
    endpoint_changes: int
    trigger_times: tuple[float, ...]
    first_queued: float | None
    changed: bool
    """False when an incremental sync found nothing to write."""
    drift: bool = False
    """A full sync made because someone else changed the ruleset (it was repaired)."""
    text_fallbacks: int = 0
    """Incremental changes written with ``nft -f`` because netlink encoding did not cover
    them, since the last sync reported (failed syncs' included)."""


@dataclass
class Proxier:
    config: ProxyConfig
    state: ClusterState
    sync_period: float
    observer: SyncObserver | None = None
    executor: Executor = field(default_factory=Executor)
    family: IPFamily = IPFamily.V4
    clock: Callable[[], float] = time.monotonic
    on_wrote: Callable[[int | None, int | None], None] | None = None
    """Told (generation before, generation after) when this proxier wrote the kernel:
    the meta-proxier passes it on to the other families' proxiers, which share the
    network namespace's nf_tables generation (:meth:`ours_moved_generation`)."""

    def __post_init__(self) -> None:
        self._mode = mode_for(self.config.mode)
        self._writer = self._mode.writer(self.executor, self.family)
        self._render = self._mode.renderer()
        self._tracker = PlanTracker()
        self._last_ruleset: object = None
        self._last_plan: Plan | None = None
        self._last_full: float | None = None
        self._need_full = True
        self._last_gen: int | None = None
        self._fallbacks_reported = 0
        self.syncs = 0

    def _generation(self) -> int | None:
        """Something that changes when someone else changes the ruleset (the mode's
        drift check)."""
        return self._writer.generation(self.clock(), self.sync_period)

    def ours_moved_generation(self, before: int | None, after: int | None) -> None:
        """Another of our proxiers (the other IP family's) moved the generation from
        ``before`` to ``after``: if this one had seen ``before`` as its own, it was not
        someone else's change. nf_tables has one generation counter per network
        namespace for every table of every family, so without this each family would
        take the other's commits for drift and make every sync a full one."""
        if self._last_gen is not None and self._last_gen == before:
            self._last_gen = after

    def _skips_periodic_full(self, generation: int | None) -> bool:
        """Like upstream, iptables mode in a large cluster makes no periodic full sync
        (at 10,000 Services one takes over ten seconds) while drift can still be seen."""
        return (
            generation is not None
            and self._last_plan is not None
            and not self._mode.periodic_full_sync(self._last_plan)
        )

    @property
    def last_plan(self) -> Plan | None:
        return self._last_plan

    def request_full_sync(self) -> None:
        self._need_full = True

    def traffic(self) -> list[TrafficSample]:
        """The service traffic counters of this family's rules (none before the first
        sync, or without ``--metrics-service-counters``)."""
        plan = self._last_plan
        if plan is None or not plan.service_counters:
            return []
        samples = self._writer.traffic(plan)
        for before, after in self._writer.take_own_writes():
            # Called from the counters' thread: a sync committing in between leaves the
            # generation unexplained, and the next sync is a full one (harmless, rare).
            self.ours_moved_generation(before, after)
            if self.on_wrote is not None:
                self.on_wrote(before, after)
        return samples

    def cleanup_other_mode(self) -> None:
        """Switching modes: remove the rules the other modes left behind."""
        for what in remove_rules(self.executor, other_modes(self.config.mode), (self.family,)):
            log.info(
                "removed rules of a previous run in the other mode",
                extra={"rules": what, "ip_family": str(self.family)},
            )

    def _text_fallbacks(self) -> int:
        """Fallbacks to ``nft -f`` not reported yet."""
        total = self._writer.text_fallbacks
        new, self._fallbacks_reported = total - self._fallbacks_reported, total
        return new

    def _config(self) -> ProxyConfig:
        if not self.config.nodeport_addresses.cidrs:
            return self.config
        return replace(self.config, host_addresses=local_addresses(self.executor))

    def _write(self, ruleset: object, full: bool) -> bool:
        """Write ``ruleset``: whole, or only its difference from the last one applied.
        Returns whether anything was written."""
        last = self._last_ruleset
        if full or last is None:
            self._writer.full_sync(ruleset)
            written = True
        else:
            change = self._mode.diff(last, ruleset)
            written = bool(change)
            if change:
                self._writer.apply(change)
        self._last_ruleset = ruleset
        return written

    def sync_proxy_rules(self) -> bool:
        """One sync (upstream's syncProxyRules) of what changed since the last; True on
        success (the bounded-frequency runner retries on False). After a failure the
        changes are put back, so health and metrics still see them pending."""
        snapshot, changes, problems = self.state.take()
        if self.sync(snapshot, changes.for_family(self.family), problems):
            return True
        self.state.requeue(changes)
        return False

    def sync(self, snapshot: Snapshot, changes: Changes, problems: tuple[Problem, ...]) -> bool:
        """Sync this family's rules to ``snapshot``; ``changes`` are those of this family
        since the last successful sync. The caller puts them back after a failure."""
        start = self.clock()
        now = self.clock()
        generation = self._generation()
        drift = generation is None or generation != self._last_gen
        repaired = drift and self._last_gen is not None and generation is not None
        if repaired:
            log.warning(
                "the ruleset was changed by someone else; full sync to repair ours",
                extra={"mode": str(self.config.mode), "ip_family": str(self.family)},
            )
        full_every = FULL_SYNC_PERIOD if generation is not None else self.sync_period
        full = (
            self._need_full
            or self._last_ruleset is None
            or changes.node_changed
            or self._last_full is None
            or (now - self._last_full >= full_every and not self._skips_periodic_full(generation))
            or (drift and generation is not None)
        )
        update = self._tracker.update(
            snapshot, self._config(), self.family, problems, changes.services
        )
        p = update.plan
        mode = self.config.mode
        try:
            changed = self._write(self._render(p, update.updated), full)
        except RouteLocalnetError as exc:
            # One feature must not stop every Service: without the sysctl, program the
            # rules without localhost NodePorts (upstream would exit instead).
            log.error(
                "cannot set net.ipv4.conf.all.route_localnet=1, so NodePorts on 127.0.0.1 "
                "are turned off; every other rule is programmed. To keep them, set the "
                "sysctl on the node beforehand or run the container privileged; or set "
                "iptables.localhostNodePorts: false to silence this (docs/deploy.md)",
                extra={"error": exc.stderr.strip()[:300]},
            )
            self.config = replace(self.config, localhost_nodeports=False)
            self._need_full = True
            self._tracker.reset()
            if self.observer is not None:
                self.observer.sync_failed(mode, full, str(exc), self.family)
            return False
        except (KernelError, OSError) as exc:
            self._need_full = True
            self._tracker.reset()
            log.error(
                "sync failed; the next attempt is a full sync",
                extra={
                    "mode": str(mode),
                    "ip_family": str(self.family),
                    "full": full,
                    "error": str(exc)[:500],
                },
            )
            if self.observer is not None:
                self.observer.sync_failed(mode, full, str(exc), self.family)
            return False
        self._last_gen = self._generation()
        if changed and self.on_wrote is not None:
            self.on_wrote(generation, self._last_gen)
        elapsed = self.clock() - start
        if full:
            self._last_full = now
            self._need_full = False
        previous, self._last_plan = self._last_plan, p
        self.syncs += 1
        log.log(
            logging.INFO if (full or changes.services) else logging.DEBUG,
            "synced",
            extra={
                "mode": str(mode),
                "ip_family": str(self.family),
                "full": full,
                "service_ports": len(p.service_ports),
                "endpoints": p.endpoint_count,
                "changed_services": len(changes.services),
                "seconds": round(elapsed, 4),
            },
        )
        if self.observer is not None:
            self.observer.sync_done(
                SyncResult(
                    plan=p,
                    previous=previous,
                    full=full,
                    seconds=elapsed,
                    service_changes=changes.service_events,
                    endpoint_changes=changes.endpoint_events,
                    trigger_times=tuple(changes.trigger_times),
                    first_queued=changes.first_queued,
                    changed=changed,
                    drift=repaired,
                    text_fallbacks=self._text_fallbacks(),
                )
            )
        return True
