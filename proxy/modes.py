"""A proxy mode is one object behind one protocol, and :func:`mode_for` finds it.

Each mode's package (:mod:`proxy.nftables`, :mod:`proxy.iptables`) holds its names,
object model, renderer, transactions and kernel writer; its ``mode`` module puts them
behind :class:`Mode` (pure: render, the full sync's text, the difference between two
rulesets; and where the kernel comes in, a :class:`ModeWriter` per network namespace and
IP family, and the cleanup). Like upstream kube-proxy's one package per mode, each a
Provider with the same Sync; the proxier, ``render``/``apply``/``cleanup`` and the agent
only go through this protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from proxy.config import ProxyMode
from proxy.iptables.mode import IptablesMode
from proxy.kernel.executor import Executor
from proxy.model import IPFamily
from proxy.nftables.mode import NftablesMode
from proxy.plan import Plan, UpdatedServicePorts
from proxy.traffic import TrafficSample

R = TypeVar("R")
"""A mode's ruleset (what it renders a plan into)."""
C = TypeVar("C")
"""A mode's change between two rulesets (what an incremental sync writes); false when
there is nothing to write."""
R_in = TypeVar("R_in", contravariant=True)
C_in = TypeVar("C_in", contravariant=True)


class ModeWriter(Protocol[R_in, C_in]):
    """One mode's rules in one network namespace and IP family, in the kernel."""

    @property
    def description(self) -> str:
        """What writes the rules, e.g. ``nftables`` or ``iptables (legacy)``."""
        ...

    def full_sync(self, ruleset: R_in) -> None:
        """Full sync: make our rules exactly ``ruleset`` in one transaction."""
        ...

    def apply(self, change: C_in) -> None:
        """Incremental sync: write a change from :meth:`Mode.diff`."""
        ...

    def generation(self, now: float, period: float) -> int | None:
        """Drift check: a value that changes when someone else changed the rules since
        our last write (None: unknown, so every sync is full). ``now`` and the sync
        ``period`` pace checks that cost time (legacy iptables' canaries)."""
        ...

    @property
    def text_fallbacks(self) -> int:
        """Incremental changes written as text (``nft -f``) because the netlink encoding
        did not cover them, since the writer was made."""
        ...

    def traffic(self, plan: Plan) -> list[TrafficSample]:
        """The service traffic counters in the rules (``--metrics-service-counters``),
        per service port of ``plan``, the rules' latest; empty when there are none."""
        ...

    def take_own_writes(self) -> list[tuple[int | None, int | None]]:
        """Transactions :meth:`traffic` committed since last asked (nftables deletes the
        counters of deleted Services), as (generation before, generation after): the
        proxier's drift check must not take them for someone else's."""
        ...


class Mode(Protocol[R, C]):
    """A proxy mode: how a plan becomes rules, and how rules reach the kernel."""

    @property
    def proxy_mode(self) -> ProxyMode: ...

    def renderer(self) -> Callable[[Plan, UpdatedServicePorts | None], R]:
        """A render function (pure) with a cache of its own: told which service ports
        may differ from the plan it rendered last (:class:`proxy.tracker.PlanUpdate`), it
        renders only those again; told None, everything."""
        ...

    def full_sync_text(self, ruleset: R) -> str:
        """The text of a full sync onto empty tables (what ``render`` prints)."""
        ...

    def diff(self, old: R, new: R) -> C:
        """What turns the rules from ``old`` (applied last) into ``new``. When ``new``
        was rendered right after ``old`` by the same renderer (as the proxier does), a mode
        may compare only what that render rendered again (nftables does)."""
        ...

    def periodic_full_sync(self, last: Plan) -> bool:
        """Whether a full sync is still made every sync period/hour at ``last``'s size
        while drift can be seen (upstream skips them for iptables in large clusters)."""
        ...

    def writer(self, executor: Executor, family: IPFamily) -> ModeWriter[R, C]:
        """The kernel writer for ``executor``'s network namespace and ``family``."""
        ...

    def cleanup(self, executor: Executor, family: IPFamily) -> list[str]:
        """Remove this mode's rules, every variant whose tools are installed; returns
        what held rules (e.g. ``["iptables (legacy)"]``)."""
        ...

    def unsupported(self, executor: Executor, family: IPFamily) -> str | None:
        """Why this mode cannot program ``family`` here (None: it can). Upstream's
        check: iptables needs a working ``ip6tables`` for IPv6; the nft tool always
        handles both families."""
        ...


MODES: Mapping[ProxyMode, Mode[Any, Any]] = {
    ProxyMode.IPTABLES: IptablesMode(),
    ProxyMode.NFTABLES: NftablesMode(),
}


def mode_for(mode: ProxyMode) -> Mode[Any, Any]:
    return MODES[mode]


ALL_FAMILIES = (IPFamily.V4, IPFamily.V6)


def remove_rules(
    executor: Executor, modes: Iterable[ProxyMode], families: Iterable[IPFamily] = ALL_FAMILIES
) -> list[str]:
    """Remove our rules of ``modes`` (used by ``kube-proxy-py cleanup``, ``run --cleanup``,
    ``apply`` and the agent, which like upstream removes the other modes' rules when it
    starts: a node switched from iptables to nftables must not keep DNAT rules nobody
    updates); returns what held rules, e.g. ``["iptables (legacy)", "nftables"]``. A
    refusal raises :class:`~proxy.kernel.executor.KernelError` (what was removed before
    stays removed)."""
    return [
        what
        for mode in modes
        for family in families
        for what in mode_for(mode).cleanup(executor, family)
    ]


def supported_families(executor: Executor, mode: ProxyMode) -> dict[IPFamily, str | None]:
    """Each IP family, and why ``mode`` cannot program it on this node (None: it can).
    As upstream: IPv6 also needs the kernel's IPv6 (``/proc/net/if_inet6``) not
    disabled (``net.ipv6.conf.all.disable_ipv6=1``)."""
    out: dict[IPFamily, str | None] = {}
    for family in ALL_FAMILIES:
        why = mode_for(mode).unsupported(executor, family)
        if why is None and family is IPFamily.V6:
            why = ipv6_unavailable(executor)
        out[family] = why
    return out


def ipv6_unavailable(executor: Executor) -> str | None:
    """Why the kernel has no IPv6 in ``executor``'s network namespace (None: it has).
    Read from /proc (in the namespace when it is another), not with the sysctl tool,
    which a minimal image may lack."""
    path = "/proc/sys/net/ipv6/conf/all/disable_ipv6"
    value: str | None
    if executor.netns is None:
        try:
            value = Path(path).read_text().strip()
        except OSError:
            value = None
    else:
        proc = executor.run(["cat", path], check=False)
        value = proc.stdout.strip() if proc.returncode == 0 else None
    if value is None:
        return "the kernel has no IPv6 (no net.ipv6 sysctls)"
    if value == "1":
        return "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6=1)"
    return None


def other_modes(mode: ProxyMode) -> tuple[ProxyMode, ...]:
    return tuple(m for m in ProxyMode if m is not mode)
