"""iptables mode's object model: our chains and their rules per table, the jumps from
the built-in chains, and what ``iptables-save`` shows of the tables we touch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.iptables.names import (
    KUBE_EXTERNAL_SERVICES,
    KUBE_FIREWALL,
    KUBE_FORWARD,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICE_TRAFFIC,
    KUBE_SERVICES,
    OUR_GUARD_JUMP,
    is_owned_chain,
)
from proxy.model import IPFamily


@dataclass(frozen=True, order=True)
class JumpRule:
    """A rule we keep in a built-in chain, jumping to one of ours."""

    table: str
    chain: str
    spec: str
    """The rule after ``-A CHAIN``, exactly as iptables-save prints it."""


def _jump(table: str, chain: str, target: str, comment: str, match: str = "") -> JumpRule:
    pre = f"{match} " if match else ""
    return JumpRule(table, chain, f'{pre}-m comment --comment "{comment}" -j {target}')


_NEW = "-m conntrack --ctstate NEW"


TRAFFIC_JUMP = "kubernetes service traffic counters"


def jump_rules(localhost_guard: bool, counters: bool = False) -> tuple[JumpRule, ...]:
    """Upstream's jumps from the built-in chains, in insertion order (``counters``: ours
    to the traffic counters first, before anything accepts the packet)."""
    dnat = "-m conntrack --ctstate DNAT"
    rules = [
        _jump("filter", chain, KUBE_SERVICE_TRAFFIC, TRAFFIC_JUMP, dnat)
        for chain in ("INPUT", "FORWARD", "OUTPUT")
        if counters
    ]
    rules += [
        _jump("filter", "INPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
        _jump("filter", "INPUT", KUBE_NODEPORTS, "kubernetes health check service ports"),
        _jump(
            "filter",
            "INPUT",
            KUBE_EXTERNAL_SERVICES,
            "kubernetes externally-visible service portals",
            _NEW,
        ),
        _jump("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
        _jump("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
        _jump("filter", "FORWARD", KUBE_SERVICES, "kubernetes service portals", _NEW),
        _jump(
            "filter",
            "FORWARD",
            KUBE_EXTERNAL_SERVICES,
            "kubernetes externally-visible service portals",
            _NEW,
        ),
        _jump("filter", "OUTPUT", KUBE_PROXY_FIREWALL, "kubernetes load balancer firewall", _NEW),
        _jump("filter", "OUTPUT", KUBE_SERVICES, "kubernetes service portals", _NEW),
        _jump("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
        _jump("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
        _jump("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    ]
    if localhost_guard:
        rules += [
            _jump("filter", "INPUT", KUBE_FIREWALL, OUR_GUARD_JUMP),
            _jump("filter", "OUTPUT", KUBE_FIREWALL, OUR_GUARD_JUMP),
        ]
    return tuple(rules)


@dataclass(frozen=True)
class IptablesRuleset:
    """Our chains with their rules (rule text after ``-A CHAIN``), per table."""

    family: IPFamily
    nat: Mapping[str, tuple[str, ...]]
    filter: Mapping[str, tuple[str, ...]]
    jumps: tuple[JumpRule, ...]
    route_localnet: bool = False
    """iptables localhost NodePorts need ``net.ipv4.conf.all.route_localnet=1``."""

    def tables(self) -> dict[str, Mapping[str, tuple[str, ...]]]:
        return {"filter": self.filter, "nat": self.nat}

    @property
    def rule_count(self) -> int:
        return sum(len(r) for t in (self.nat, self.filter) for r in t.values())


@dataclass(frozen=True)
class ExistingIptables:
    """What ``iptables-save`` shows in the tables we touch (from :func:`parse_save`)."""

    chains: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """table → every chain name (built-in and user)."""
    builtin_rules: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """(table, built-in chain) → rule specs (after ``-A CHAIN``)."""
    rules: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """(table, chain) → rule specs for every chain."""

    def owned_chains(self, table: str) -> frozenset[str]:
        return frozenset(c for c in self.chains.get(table, ()) if is_owned_chain(c))
