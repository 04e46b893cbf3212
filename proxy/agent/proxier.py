"""One sync of the node agent: snapshot → plan → render → (full or incremental) apply.

A full sync reads what our table/chains hold now and rewrites all of it in one
transaction: at start (this also adopts rules a previous run left, without a gap), after
any failure, when the Node changed, when someone else committed to nf_tables since our
last commit (the kernel's ruleset generation moved: whatever they did to our rules is
repaired within one sync period), and at least hourly as upstream does. Legacy iptables
has no generation to watch, so there every sync period brings a full sync. Between full
syncs only what changed since the last applied ruleset is written: changed chains and
map elements in nftables mode, changed chains in iptables mode (upstream's partial sync).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from proxy.agent.state import ClusterState
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import model as ipt_model
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.iptables.kernel import CANARY_TABLES, IptablesKernel, RouteLocalnetError
from proxy.kernel.addresses import local_addresses
from proxy.kernel.cleanup import other_modes, remove_rules
from proxy.kernel.generation import GenerationReader
from proxy.kernel.runner import KernelError, Runner
from proxy.model import IPFamily
from proxy.nftables import diff as nft_diff
from proxy.nftables import model as nft_model
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
from proxy.plan import Plan, plan

log = logging.getLogger(__name__)
R = TypeVar("R", ipt_model.IptablesRuleset, nft_model.NftRuleset)
D = TypeVar("D", ipt_restore.PartialRestore, nft_model.NftTransaction)

CANARY_BUDGET = 60.0
"""Legacy canary checks take at most 1/60 of the time: a table whose listing took t
seconds is listed again after max(sync period, 60 t)."""
FULL_SYNC_PERIOD = 3600.0
"""Seconds between unconditional full syncs (upstream's FullSyncPeriod)."""


class SyncObserver(Protocol):
    """What the proxier reports to (metrics, health, conntrack, health-check ports)."""

    def sync_done(self, result: SyncResult) -> None: ...

    def sync_failed(self, mode: ProxyMode, full: bool, error: str) -> None: ...


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


@dataclass
class Proxier:
    config: ProxyConfig
    state: ClusterState
    sync_period: float
    observer: SyncObserver | None = None
    runner: Runner = field(default_factory=Runner)
    family: IPFamily = IPFamily.V4
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._kernel: IptablesKernel | NftKernel = (
            IptablesKernel(self.runner, self.family)
            if self.config.mode is ProxyMode.IPTABLES
            else NftKernel(self.runner, self.family)
        )
        self._last_ruleset: ipt_model.IptablesRuleset | nft_model.NftRuleset | None = None
        self._last_plan: Plan | None = None
        self._last_full: float | None = None
        self._need_full = True
        self._last_gen: int | None = None
        self._generations = GenerationReader(self.runner.netns)
        self._canary_due: dict[str, float] = {}
        self._canary: dict[str, bool] = {}
        self._ipt_cache = ipt_render.RenderCache()
        self._nft_cache = nft_render.RenderCache()
        self.syncs = 0

    def _generation(self) -> int | None:
        """Something that changes when someone else changes the ruleset: the nf_tables
        generation, or for legacy iptables whether our canaries all stand (1 or 0), each
        table's listed at most once a sync period, like upstream's canary monitor, and
        the nat table's less often when listing it is slow (it copies the whole table out
        of the kernel: 0.8 s at 10,000 Services): at most 1/:data:`CANARY_BUDGET` of the
        time goes to these checks."""
        if not (isinstance(self._kernel, IptablesKernel) and self._kernel.variant == "legacy"):
            return self._generations.read()
        now = self.clock()
        for table in CANARY_TABLES:
            if now < self._canary_due.get(table, now):
                continue
            began = time.monotonic()
            present = self._kernel.canary_present(table)
            cost = time.monotonic() - began
            if present is not None:  # unknown (xtables lock held): as it was
                self._canary[table] = present
            self._canary_due[table] = now + max(self.sync_period, CANARY_BUDGET * cost)
        return int(all(self._canary.get(t, False) for t in CANARY_TABLES))

    def _skips_periodic_full(self, generation: int | None) -> bool:
        """Like upstream, iptables mode in a large cluster makes no periodic full sync
        (at 10,000 Services one takes over ten seconds) while drift can still be seen."""
        return (
            generation is not None
            and isinstance(self._kernel, IptablesKernel)
            and self._last_plan is not None
            and ipt_render.large_cluster(self._last_plan)
        )

    @property
    def last_plan(self) -> Plan | None:
        return self._last_plan

    def request_full_sync(self) -> None:
        self._need_full = True

    def cleanup_other_mode(self) -> None:
        """Switching modes: remove the rules the other backend left behind."""
        for what in remove_rules(self.runner, other_modes(self.config.mode), self.family):
            log.info("removed rules of a previous run in the other mode", extra={"rules": what})

    def _config(self) -> ProxyConfig:
        if not self.config.nodeport_addresses.cidrs:
            return self.config
        return replace(self.config, host_addresses=local_addresses(self.runner))

    def _write(
        self,
        ruleset: R,
        full: bool,
        full_sync: Callable[[R], object],
        diff: Callable[[R, R], D],
        apply: Callable[[D], None],
    ) -> bool:
        """Write ``ruleset``: whole, or only its difference from the last one applied.
        Returns whether anything was written."""
        last = self._last_ruleset
        if full or not isinstance(last, type(ruleset)):
            full_sync(ruleset)
            written = True
        else:
            change = diff(last, ruleset)
            written = bool(change)
            if change:
                apply(change)
        self._last_ruleset = ruleset
        return written

    def sync(self) -> bool:
        """One sync; True on success (the runner retries on False)."""
        start = self.clock()
        snapshot, changes, problems = self.state.take()
        now = self.clock()
        generation = self._generation()
        drift = generation is None or generation != self._last_gen
        repaired = drift and self._last_gen is not None and generation is not None
        if repaired:
            log.warning(
                "the ruleset was changed by someone else; full sync to repair ours",
                extra={"mode": str(self.config.mode)},
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
        p = plan(
            snapshot,
            self._config(),
            self.family,
            problems,
            previous=self._last_plan,
            changed=changes.services,
        )
        mode = self.config.mode
        try:
            if isinstance(self._kernel, IptablesKernel):
                rendered = ipt_render.render(p, self._ipt_cache)
                changed = self._write(
                    rendered, full, self._kernel.sync, ipt_restore.partial_restore,
                    self._kernel.apply_partial,
                )  # fmt: skip
            else:
                changed = self._write(
                    nft_render.render(p, self._nft_cache), full, self._kernel.sync,
                    nft_diff.incremental, self._kernel.apply_transaction,
                )  # fmt: skip
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
            self.state.requeue(changes)
            if self.observer is not None:
                self.observer.sync_failed(mode, full, str(exc))
            return False
        except (KernelError, OSError) as exc:
            self._need_full = True
            # the changes were not applied: put them back so health and metrics see them
            self.state.requeue(changes)
            log.error(
                "sync failed; the next attempt is a full sync",
                extra={"mode": str(mode), "full": full, "error": str(exc)[:500]},
            )
            if self.observer is not None:
                self.observer.sync_failed(mode, full, str(exc))
            return False
        if full:
            self._canary = dict.fromkeys(CANARY_TABLES, True)  # a legacy full sync declared them
        self._last_gen = self._generation()
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
                )
            )
        return True
