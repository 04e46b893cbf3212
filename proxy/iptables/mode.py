"""iptables mode behind :class:`proxy.modes.Mode`: render, restore text, partial restores,
and a writer that sees drift through the nf_tables generation (iptables-nft) or, for
legacy iptables, which has none, through canary chains."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.config import ProxyMode
from proxy.iptables.kernel import (
    CANARY_TABLES,
    VARIANTS,
    IptablesKernel,
    detect_variant,
    tool_name,
)
from proxy.iptables.model import IptablesRuleset
from proxy.iptables.render import RenderCache, large_cluster, render
from proxy.iptables.restore import PartialRestore, partial_restore, restore_text
from proxy.kernel.executor import Executor
from proxy.model import IPFamily
from proxy.plan import Plan, UpdatedServicePorts
from proxy.traffic import Monotonic, TrafficSample, port_label

if TYPE_CHECKING:  # imported when used: `render` needs no netlink
    from proxy.kernel.generation import GenerationReader

CANARY_BUDGET = 60.0
"""Legacy canary checks take at most 1/60 of the time: a table whose listing took t
seconds is listed again after max(sync period, 60 t)."""


@dataclass
class IptablesWriter:
    """Our iptables rules in one namespace and family (:class:`proxy.modes.ModeWriter`)."""

    kernel: IptablesKernel
    generations: GenerationReader
    _canary_due: dict[str, float] = field(default_factory=dict)
    _canary: dict[str, bool] = field(default_factory=dict)
    text_fallbacks: int = 0
    """Always 0: iptables-restore input is the only way in."""
    counted: Monotonic[tuple[str, str, str, str]] = field(default_factory=Monotonic)

    @property
    def description(self) -> str:
        return f"iptables ({self.kernel.variant})"

    def full_sync(self, ruleset: IptablesRuleset) -> None:
        self.kernel.full_sync(ruleset)
        self._canary = dict.fromkeys(CANARY_TABLES, True)  # a legacy full sync declared them

    def apply(self, change: PartialRestore) -> None:
        self.kernel.apply_partial(change)

    def traffic(self, plan: Plan) -> list[TrafficSample]:
        """The service traffic counters of ``plan``'s service ports (the rules' comments
        name them), kept growing when a sync rewrites a counting chain
        (:class:`proxy.traffic.Monotonic`)."""
        ports = {(sp.namespace, sp.name, port_label(sp)) for sp in plan.service_ports}
        readings = {
            (s.namespace, s.service, s.port, s.verdict): (s.packets, s.bytes)
            for s in self.kernel.traffic()
        }
        totals = self.counted.update(readings, lambda key: key[:3] in ports)
        return sorted(TrafficSample(*key, p, b) for key, (p, b) in totals.items())

    def take_own_writes(self) -> list[tuple[int | None, int | None]]:
        return []  # reading rule counters writes nothing

    def generation(self, now: float, period: float) -> int | None:
        """The nf_tables generation, or for legacy iptables whether our canaries all
        stand (1 or 0), each table's listed at most once a sync period, like upstream's
        canary monitor, and the nat table's less often when listing it is slow (it copies
        the whole table out of the kernel: 0.8 s at 10,000 Services): at most
        1/:data:`CANARY_BUDGET` of the time goes to these checks."""
        if self.kernel.variant != "legacy":
            return self.generations.read()
        for table in CANARY_TABLES:
            if now < self._canary_due.get(table, now):
                continue
            began = time.monotonic()
            present = self.kernel.canary_present(table)
            cost = time.monotonic() - began
            if present is not None:  # unknown (xtables lock held): as it was
                self._canary[table] = present
            self._canary_due[table] = now + max(period, CANARY_BUDGET * cost)
        return int(all(self._canary.get(t, False) for t in CANARY_TABLES))


class IptablesMode:
    """The iptables proxy mode (:class:`proxy.modes.Mode`)."""

    proxy_mode = ProxyMode.IPTABLES

    def renderer(self) -> Callable[[Plan, UpdatedServicePorts | None], IptablesRuleset]:
        cache = RenderCache()
        return lambda plan, updated: render(plan, cache, updated)

    def full_sync_text(self, ruleset: IptablesRuleset) -> str:
        return restore_text(ruleset)

    def diff(self, old: IptablesRuleset, new: IptablesRuleset) -> PartialRestore:
        return partial_restore(old, new)

    def periodic_full_sync(self, last: Plan) -> bool:
        """Like upstream, no periodic full sync in a large cluster (at 10,000 Services
        one takes over ten seconds)."""
        return not large_cluster(last)

    def writer(self, executor: Executor, family: IPFamily) -> IptablesWriter:
        from proxy.kernel.generation import GenerationReader

        return IptablesWriter(IptablesKernel(executor, family), GenerationReader(executor.netns))

    def unsupported(self, executor: Executor, family: IPFamily) -> str | None:
        base = tool_name(family)
        installed = [v for v in VARIANTS if Executor.available(f"{base}-{v}-restore")]
        if not installed:
            return f"{base}-restore is not installed ({' or '.join(VARIANTS)})"
        variant = detect_variant(executor, family)
        if variant not in installed:
            variant = installed[0]
        proc = executor.run(
            [f"{base}-{variant}", "-w", "5", "-t", "nat", "-S", "POSTROUTING"], check=False
        )
        if proc.returncode != 0 and "xtables lock" not in proc.stderr:
            # (a held lock says nothing about support: the syncs wait for it)
            return f"{base}-{variant} cannot read the nat table: {proc.stderr.strip()[:200]}"
        return None

    def cleanup(self, executor: Executor, family: IPFamily) -> list[str]:
        removed: list[str] = []
        base = tool_name(family)
        for variant in VARIANTS:
            if not Executor.available(f"{base}-{variant}-restore"):
                continue
            if IptablesKernel(executor, family, variant).cleanup():
                removed.append(f"{base} ({variant})")
        return removed
