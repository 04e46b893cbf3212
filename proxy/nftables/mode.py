"""nftables mode behind :class:`proxy.modes.Mode`: render, the full sync's nft script,
incremental transactions, and a writer that sees drift through the nf_tables
generation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.config import ProxyMode
from proxy.kernel.executor import Executor
from proxy.model import IPFamily
from proxy.nftables.diff import full_sync_text, incremental
from proxy.nftables.model import NftRuleset, NftTransaction
from proxy.nftables.render import RenderCache, render
from proxy.plan import Plan, UpdatedServicePorts
from proxy.traffic import Destination, Monotonic, TrafficSample, attribute, owners

if TYPE_CHECKING:  # the kernel side is imported when used: `render` needs none of it
    from proxy.kernel.generation import GenerationReader
    from proxy.nftables.kernel import NftKernel


@dataclass
class NftablesWriter:
    """Our nftables table in one namespace and family (:class:`proxy.modes.ModeWriter`)."""

    kernel: NftKernel
    generations: GenerationReader
    description: str = "nftables"
    counted: Monotonic[tuple[str, Destination]] = field(default_factory=Monotonic)
    stale: frozenset[tuple[str, Destination]] = frozenset()
    """Counting elements the last reading found without a service port."""
    own_writes: list[tuple[int | None, int | None]] = field(default_factory=list)

    def full_sync(self, ruleset: NftRuleset) -> None:
        self.kernel.full_sync(ruleset)

    def apply(self, change: NftTransaction) -> None:
        self.kernel.apply_transaction(change)

    def generation(self, now: float, period: float) -> int | None:
        return self.generations.read()

    @property
    def text_fallbacks(self) -> int:
        return self.kernel.text_fallbacks

    def traffic(self, plan: Plan) -> list[TrafficSample]:
        """The service traffic counters, per service port of ``plan`` (kept growing when
        an element expires and comes back: :class:`proxy.traffic.Monotonic`)."""
        flat = {(v, d): c for v, per in self.kernel.traffic().items() for d, c in per.items()}
        owner = owners(plan)
        totals = self.counted.update(flat, lambda key: owner(key[1]) is not None)
        self._forget_stale({key for key in flat if owner(key[1]) is None})
        counts: dict[str, dict[Destination, tuple[int, int]]] = {}
        for (verdict, destination), pair in totals.items():
            counts.setdefault(verdict, {})[destination] = pair
        return attribute(owner, counts)

    def _forget_stale(self, unowned: set[tuple[str, Destination]]) -> None:
        """Delete the counting elements of service ports that are gone, once two readings
        in a row found them without one: a Service deleted now leaves neither a counter
        nor its old ClusterIP in the ruleset (the element would otherwise stay until its
        hour-long timeout), and a new Service reusing the address starts from zero. Two
        readings, because a Service created between the kernel's change and the agent's
        plan update is unowned for that instant only."""
        gone = unowned & self.stale
        self.stale = frozenset(unowned - gone)
        by_verdict: dict[str, list[Destination]] = {}
        for verdict, destination in sorted(gone, key=str):
            by_verdict.setdefault(verdict, []).append(destination)
        if not by_verdict:
            return
        before = self.generations.read()
        if self.kernel.forget_traffic(by_verdict):
            self.own_writes.append((before, self.generations.read()))

    def take_own_writes(self) -> list[tuple[int | None, int | None]]:
        taken, self.own_writes = self.own_writes, []
        return taken


class NftablesMode:
    """The nftables proxy mode (:class:`proxy.modes.Mode`)."""

    proxy_mode = ProxyMode.NFTABLES

    def renderer(self) -> Callable[[Plan, UpdatedServicePorts | None], NftRuleset]:
        cache = RenderCache()
        return lambda plan, updated: render(plan, cache, updated)

    def full_sync_text(self, ruleset: NftRuleset) -> str:
        return full_sync_text(ruleset)

    def diff(self, old: NftRuleset, new: NftRuleset) -> NftTransaction:
        return incremental(old, new)

    def periodic_full_sync(self, last: Plan) -> bool:
        return True

    def writer(self, executor: Executor, family: IPFamily) -> NftablesWriter:
        from proxy.kernel.generation import GenerationReader
        from proxy.nftables.kernel import NftKernel

        return NftablesWriter(NftKernel(executor, family), GenerationReader(executor.netns))

    def unsupported(self, executor: Executor, family: IPFamily) -> str | None:
        """Never: nf_tables has both families (upstream: "the nft CLI always supports
        both"). A missing nft tool is no reason to program one family less: the syncs
        that need it fail, are logged and counted, and succeed once it is back."""
        return None

    def cleanup(self, executor: Executor, family: IPFamily) -> list[str]:
        from proxy.nftables.kernel import NftKernel

        if Executor.available("nft") and NftKernel(executor, family).cleanup():
            return ["nftables" if family is IPFamily.V4 else "nftables (ip6 table)"]
        return []
