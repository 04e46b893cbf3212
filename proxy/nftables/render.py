"""nftables mode's renderer (pure): a :class:`Plan` becomes our table (:class:`NftRuleset`).

Layout (upstream kube-proxy's, table ``kube-proxy`` in family ``ip``/``ip6``): base chains
hook prerouting/input/forward/output/postrouting; ``services`` dispatches through the
``service-ips`` verdict map keyed ``daddr . l4proto . dport`` and the
``service-nodeports`` map keyed ``l4proto . dport``; per service port ``service-*`` /
``local-*`` chains DNAT through ``numgen random mod n offset b`` into a shared endpoint
map (:mod:`proxy.nftables.endpointmaps`; ``endpoint-*`` chains only with session
affinity);
``no-endpoint-*`` maps reject or drop; ``cluster-ips-check`` rejects new traffic to a
ClusterIP on a port no service uses.

The installed nft (1.0.6) wants numeric hook priorities for ``output``, a protocol match
before ``dnat to ip:port``, and ``;`` or a newline before ``}``: the text is written so.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.model import IPFamily
from proxy.nftables import endpointmaps, names
from proxy.nftables.endpointmaps import Slot
from proxy.nftables.model import (
    BaseHook,
    Fragment,
    NftRuleset,
    NftSet,
    PortKey,
    TableBuilder,
    shared_keys,
)
from proxy.nftables.names import (
    CLUSTER_IPS,
    CLUSTER_IPS_CHECK,
    DROP_CHAIN,
    DSTNAT,
    FILTER_FORWARD,
    FILTER_INPUT,
    FILTER_OUTPUT,
    FILTER_OUTPUT_PRE_DNAT,
    FILTER_PREROUTING_PRE_DNAT,
    FIREWALL_CHECK,
    FIREWALL_IPS,
    HAIRPIN_CONNECTIONS,
    MASQUERADING,
    NAT_OUTPUT,
    NAT_POSTROUTING,
    NAT_PREROUTING,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    NODEPORT_ENDPOINTS_CHECK,
    NODEPORT_IPS,
    REJECT_CHAIN,
    SERVICE_ENDPOINTS_CHECK,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    SERVICES,
    SRCNAT,
    TRAFFIC_DNAT,
    TRAFFIC_DROP,
    TRAFFIC_REJECT,
)
from proxy.nftables.statements import (
    DROP,
    FIB_LOCAL_SOURCE,
    MASQUERADE,
    REJECT,
    AddressInSet,
    AddressMatch,
    AddressNotInPrefixes,
    ConcatLookup,
    CountInSet,
    CtMatch,
    DnatMap,
    DnatTo,
    ElementKey,
    EndpointMapTypeof,
    FibLocal,
    L4ProtoIn,
    MarkTest,
    NumgenMatch,
    SetMark,
    SetType,
    Statement,
    UpdateSet,
    Verdict,
    goto,
    jump,
    l4proto,
    rule,
)
from proxy.plan import (
    EndpointCandidate,
    Filter,
    Plan,
    ServicePortPlan,
    UpdatedServicePorts,
)

FILTER = 0

# Upstream v1.37.2's base chains, names and priorities, so that a node moving from
# upstream kube-proxy's nftables mode can be taken over in place (nft cannot change an
# existing base chain's priority; see ``full_sync_text``).
BASE_CHAINS: Mapping[str, BaseHook] = {
    # LoadBalancerSourceRanges look at pre-DNAT destinations
    FILTER_PREROUTING_PRE_DNAT: BaseHook("filter", "prerouting", DSTNAT - 10),
    FILTER_OUTPUT_PRE_DNAT: BaseHook("filter", "output", DSTNAT - 10),
    # no-endpoint and unknown-port checks: DNATed traffic no longer has a service IP
    FILTER_INPUT: BaseHook("filter", "input", FILTER),
    FILTER_FORWARD: BaseHook("filter", "forward", FILTER),
    FILTER_OUTPUT: BaseHook("filter", "output", FILTER),
    NAT_PREROUTING: BaseHook("nat", "prerouting", DSTNAT),
    NAT_OUTPUT: BaseHook("nat", "output", DSTNAT),
    NAT_POSTROUTING: BaseHook("nat", "postrouting", SRCNAT),
}


ADDRESS_SETS = {f: SetType(("ipv4_addr" if f is IPFamily.V4 else "ipv6_addr",)) for f in IPFamily}
"""A set of addresses of each family (the affinity sets' type)."""


def _addr_type(family: IPFamily) -> str:
    return "ipv4_addr" if family is IPFamily.V4 else "ipv6_addr"


def _ipx(family: IPFamily) -> str:
    return "ip" if family is IPFamily.V4 else "ip6"


def _dport_vmap(fam: IPFamily, map_name: str, *, daddr: bool = True) -> ConcatLookup:
    """``[ip daddr .] meta l4proto . th dport vmap @map``."""
    fields: tuple[str, ...] = ("meta l4proto", "th dport")
    if daddr:
        fields = (f"{_ipx(fam)} daddr", *fields)
    return ConcatLookup(fields, map_name, vmap=True)


Demands = dict[str, dict[str, tuple[int, PortKey]]]
"""endpoint map → chain → (windows it needs, the service port it belongs to)."""


@dataclass(frozen=True)
class _Rendered:
    """What the last render left for the next: its fragments, each with the port plan it
    was rendered from, and the endpoint maps' layout."""

    fragments: dict[PortKey, Fragment]
    shared: dict[str, dict[ElementKey, int]]
    ports: dict[PortKey, ServicePortPlan]
    demands: Demands
    slots: dict[str, Slot]
    updated: frozenset[PortKey] | None = None
    """The service ports rendered again (None: all)."""

    @property
    def endpoint_maps(self) -> list[str]:
        return sorted(name for name, chains in self.demands.items() if chains)


def _count(shared: dict[str, dict[ElementKey, int]], frag: Fragment, step: int) -> None:
    for set_name, keys in shared_keys(frag):
        counts = shared[set_name]
        for key in keys:
            n = counts.get(key, 0) + step
            if n:
                counts[key] = n
            else:
                del counts[key]


@dataclass
class RenderCache:
    """The last render's fragments by service port: a render told which service ports
    changed since renders only those again (and those whose endpoint map slots moved)."""

    params: object = None
    last: _Rendered | None = None
    renders: int = 0
    """Fragments rendered (not reused) so far."""

    def fragment(
        self, plan: Plan, sp: ServicePortPlan, local_cidr: str | None, slots: Mapping[str, Slot]
    ) -> Fragment:
        """``sp``'s fragment, rendered (and counted in :attr:`renders`)."""
        b = TableBuilder(plan.family)
        _render_port(plan, sp, b, local_cidr, slots)
        proto = sp.protocol.lowercase
        self.renders += 1
        return dataclasses.replace(
            b.fragment(),
            cluster_ip=str(sp.cluster_ip),
            hairpins=tuple(
                (str(ep.ip), str(ep.ip), proto, ep.port)
                for ep in sp.reachable_endpoints
                if ep.is_local
            ),
        )

    def start(self, params: object) -> _Rendered | None:
        """The last render, taken out of the cache until this one is done (a render cut
        short leaves none: the next renders everything); none when plan-wide settings
        changed."""
        last, self.last = self.last, None
        if params != self.params:
            self.params = params
            return None
        return last


def render(
    plan: Plan, cache: RenderCache | None = None, updated: UpdatedServicePorts | None = None
) -> NftRuleset:
    """Render a plan into our nftables table (pure; ``cache`` only saves work).

    ``updated`` names the service ports that may differ from the last plan rendered with
    ``cache``, with their plans (:class:`proxy.tracker.PlanUpdate`); the others' fragments
    are taken from the cache. None: render every service port. The ruleset says which
    fragments were rendered again (:attr:`NftRuleset.updated`)."""
    fam = plan.family
    ipx = _ipx(fam)
    addr = _addr_type(fam)
    b = TableBuilder(fam)
    for name, hook in BASE_CHAINS.items():
        b.chain(name, hook)
    for name in (
        SERVICES,
        MASQUERADING,
        SERVICE_ENDPOINTS_CHECK,
        NODEPORT_ENDPOINTS_CHECK,
        CLUSTER_IPS_CHECK,
        FIREWALL_CHECK,
        REJECT_CHAIN,
    ):
        b.chain(name)

    vmap_ip_key = SetType((addr, "inet_proto", "inet_service"), ("verdict",))
    vmap_port_key = SetType(("inet_proto", "inet_service"), ("verdict",))
    b.declare(NftSet(CLUSTER_IPS, SetType((addr,)), comment="Active ClusterIPs"))
    b.declare(
        NftSet(
            HAIRPIN_CONNECTIONS,
            SetType((addr, addr, "inet_proto", "inet_service")),
            comment="service hairpin connections",
        )
    )
    b.declare(
        NftSet(
            SERVICE_IPS, vmap_ip_key, comment="ClusterIP, ExternalIP and LoadBalancer IP traffic"
        )
    )
    b.declare(NftSet(SERVICE_NODEPORTS, vmap_port_key, comment="NodePort traffic"))
    b.declare(
        NftSet(
            NO_ENDPOINT_SERVICES,
            vmap_ip_key,
            comment="vmap to drop or reject packets to services with no endpoints",
        )
    )
    b.declare(
        NftSet(
            NO_ENDPOINT_NODEPORTS,
            vmap_port_key,
            comment="vmap to drop or reject packets to service nodeports with no endpoints",
        )
    )
    b.declare(
        NftSet(
            FIREWALL_IPS,
            vmap_ip_key,
            comment="destinations that are subject to LoadBalancerSourceRanges",
        )
    )

    if plan.service_counters:
        _count_traffic(b, fam)

    # -- fixed rules
    new = CtMatch("state", "new")
    b.rule(FILTER_PREROUTING_PRE_DNAT, rule(new, jump(FIREWALL_CHECK)))
    b.rule(FILTER_OUTPUT_PRE_DNAT, rule(new, jump(FIREWALL_CHECK)))
    b.rule(FILTER_INPUT, rule(new, jump(NODEPORT_ENDPOINTS_CHECK)))
    b.rule(FILTER_INPUT, rule(new, jump(SERVICE_ENDPOINTS_CHECK)))
    b.rule(FILTER_FORWARD, rule(new, jump(SERVICE_ENDPOINTS_CHECK)))
    b.rule(FILTER_FORWARD, rule(new, jump(CLUSTER_IPS_CHECK)))
    b.rule(FILTER_OUTPUT, rule(new, jump(SERVICE_ENDPOINTS_CHECK)))
    b.rule(FILTER_OUTPUT, rule(new, jump(CLUSTER_IPS_CHECK)))
    b.rule(NAT_PREROUTING, rule(jump(SERVICES)))
    b.rule(NAT_OUTPUT, rule(jump(SERVICES)))
    b.rule(NAT_POSTROUTING, rule(jump(MASQUERADING)))

    mark = plan.masquerade_mark
    b.rule(MASQUERADING, rule(MarkTest(mark), SetMark(mark, toggle=True), MASQUERADE))
    # a pod reaching itself through a service: its reply would never leave the pod
    # without SNAT (upstream's hairpin set of local endpoint ip . ip . proto . port)
    hairpin = (f"{ipx} saddr", f"{ipx} daddr", "meta l4proto", "th dport")
    b.rule(
        MASQUERADING,
        rule(CtMatch("status", "dnat"), ConcatLookup(hairpin, HAIRPIN_CONNECTIONS), MASQUERADE),
    )
    b.rule(
        REJECT_CHAIN,
        rule(REJECT, comment="helper for @no-endpoint-services / @no-endpoint-nodeports"),
    )

    cluster_ips = AddressInSet(fam, "daddr", CLUSTER_IPS)
    b.rule(
        CLUSTER_IPS_CHECK,
        rule(cluster_ips, REJECT, comment="Reject traffic to invalid ports of ClusterIPs"),
    )
    b.rule(FIREWALL_CHECK, rule(_dport_vmap(fam, FIREWALL_IPS)))
    b.rule(SERVICE_ENDPOINTS_CHECK, rule(_dport_vmap(fam, NO_ENDPOINT_SERVICES)))
    masquerade = masquerade_rule(plan)
    local_cidr = str(plan.cluster_cidr) if plan.cluster_cidr is not None else None
    if plan.masquerade_all:
        b.rule(SERVICES, rule(cluster_ips, masquerade, comment="masquerade all clusterIP traffic"))
    elif local_cidr is not None:
        # off-cluster clients may route a service CIDR to any node, which may send it on
        # to another node: SNAT so that replies come back the same way
        b.rule(
            SERVICES,
            rule(
                cluster_ips,
                AddressMatch(fam, "saddr", local_cidr, negate=True),
                masquerade,
                comment="masquerade clusterIP traffic from outside cluster",
            ),
        )
    b.rule(SERVICES, rule(_dport_vmap(fam, SERVICE_IPS)))

    loopback = "127.0.0.0/8" if fam is IPFamily.V4 else "::1"
    no_localhost = AddressMatch(fam, "daddr", loopback, negate=True)
    if plan.nodeports.match_all_local:
        b.rule(
            NODEPORT_ENDPOINTS_CHECK,
            rule(no_localhost, _dport_vmap(fam, NO_ENDPOINT_NODEPORTS, daddr=False)),
        )
        b.rule(
            SERVICES,
            rule(
                FibLocal("daddr"),
                no_localhost,
                _dport_vmap(fam, SERVICE_NODEPORTS, daddr=False),
                comment="NodePort traffic",
            ),
        )
    else:
        b.declare(
            NftSet(NODEPORT_IPS, SetType((addr,)), comment="IPs that accept NodePort traffic")
        )
        for ip in plan.nodeports.addresses:
            if not ip.is_loopback:
                b.element(NODEPORT_IPS, (str(ip),))
        nodeport_ips = AddressInSet(fam, "daddr", NODEPORT_IPS)
        b.rule(
            NODEPORT_ENDPOINTS_CHECK,
            rule(nodeport_ips, _dport_vmap(fam, NO_ENDPOINT_NODEPORTS, daddr=False)),
        )
        b.rule(
            SERVICES,
            rule(
                nodeport_ips,
                _dport_vmap(fam, SERVICE_NODEPORTS, daddr=False),
                comment="NodePort traffic",
            ),
        )

    cache = cache if cache is not None else RenderCache()
    last = cache.start(
        (fam, plan.masquerade_mark, plan.masquerade_all, local_cidr, plan.service_counters)
    )
    if last is not None and updated is not None:
        rendered = _render_delta(plan, updated, last, cache, local_cidr)
    else:
        rendered = _render_all(plan, cache, local_cidr)
    cache.last = rendered
    emap_type = SetType(("mark",), (addr, "inet_service"))
    typeofs: dict[str, EndpointMapTypeof] = {}
    for name in rendered.endpoint_maps:
        proto = endpointmaps.protocol_of(name)
        typeof = typeofs.get(proto) or typeofs.setdefault(proto, EndpointMapTypeof(fam, proto))
        b.declare(NftSet(name, emap_type, typeof=typeof))
    return NftRuleset(fam, b.fragment(), rendered.fragments, rendered.shared, rendered.updated)


TRAFFIC_SIZE = 65536
"""The most service destinations a traffic set counts (a bound; a cluster has one per
ClusterIP, ExternalIP and LoadBalancer IP port, and one per NodePort and node address)."""
TRAFFIC_TIMEOUT = 3600
"""Seconds a destination's counter outlives its last packet."""


def _count_traffic(b: TableBuilder, fam: IPFamily) -> None:
    """``--metrics-service-counters``: every packet of a DNATed connection (both ways) is
    counted under the service destination it was sent to (conntrack's original
    destination); a rejected or dropped one under its destination, in the chain that
    rejects or drops it. Elements are made by the packets themselves (dynamic sets): a
    full sync keeps them, and with them the counts."""
    ipx = _ipx(fam)
    key = SetType((_addr_type(fam), "inet_proto", "inet_service"))
    for name, what in ((TRAFFIC_DNAT, "DNATed"), (TRAFFIC_REJECT, "rejected"),
                       (TRAFFIC_DROP, "dropped")):  # fmt: skip
        b.declare(
            NftSet(
                name,
                key,
                flags=("dynamic", "timeout"),
                timeout=TRAFFIC_TIMEOUT,
                size=TRAFFIC_SIZE,
                comment=f"packets and bytes {what}, per service destination",
            )
        )
    original = (f"ct original {ipx} daddr", "meta l4proto", "ct original proto-dst")
    dnat = rule(CtMatch("status", "dnat"), L4ProtoIn(), CountInSet(original, TRAFFIC_DNAT))
    for chain in (FILTER_FORWARD, FILTER_INPUT, FILTER_OUTPUT):
        b.rule(chain, dnat)
    here = (f"{ipx} daddr", "meta l4proto", "th dport")
    b.rule(REJECT_CHAIN, rule(L4ProtoIn(), CountInSet(here, TRAFFIC_REJECT)))
    b.chain(DROP_CHAIN)
    b.rule(DROP_CHAIN, rule(L4ProtoIn(), CountInSet(here, TRAFFIC_DROP)))
    b.rule(DROP_CHAIN, rule(DROP))


def _render_all(plan: Plan, cache: RenderCache, local_cidr: str | None) -> _Rendered:
    fragments: dict[PortKey, Fragment] = {}
    shared: dict[str, dict[ElementKey, int]] = {CLUSTER_IPS: {}, HAIRPIN_CONNECTIONS: {}}
    ports: dict[PortKey, ServicePortPlan] = {}
    demands: Demands = {}
    for sp in plan.service_ports:
        _demand(demands, sp, 1)
    slots: dict[str, Slot] = {}
    for name in demands:
        _place(demands, name, slots)
    for sp in plan.service_ports:
        frag = cache.fragment(plan, sp, local_cidr, slots)
        fragments[sp.key] = frag
        _count(shared, frag, 1)
        ports[sp.key] = sp
    return _Rendered(fragments, shared, ports, demands, slots)


def endpoint_map_chains(sp: ServicePortPlan) -> list[tuple[str, int]]:
    """The service port's policy chains that pick from an endpoint map, with their
    endpoint counts (two or more endpoints, no session affinity)."""
    if sp.affinity_seconds is not None:
        return []
    out = []
    if sp.uses_cluster_chain and len(sp.cluster_endpoints) > 1:
        out.append((names.service_chain(sp), len(sp.cluster_endpoints)))
    if sp.uses_local_chain and len(sp.local_endpoints) > 1:
        out.append((names.local_chain(sp), len(sp.local_endpoints)))
    return out


def _demand(
    demands: Demands, sp: ServicePortPlan, step: int, before: Callable[[str], None] | None = None
) -> None:
    """Add (step 1) or take back (step -1) a service port's endpoint map demands;
    ``before`` is told each map's name before that map changes."""
    for chain, n in endpoint_map_chains(sp):
        name = endpointmaps.map_name(chain, sp.protocol.lowercase)
        if before is not None:
            before(name)
        if step > 0:
            demands.setdefault(name, {})[chain] = (endpointmaps.windows_for(n), sp.key)
        else:
            demands[name].pop(chain, None)


def _place(demands: Demands, name: str, slots: dict[str, Slot]) -> dict[str, Slot]:
    """Lay out one endpoint map's chains into ``slots``; the slots of that map."""
    chains = demands.get(name, {})
    out = endpointmaps.map_slots(name, {chain: w for chain, (w, _) in chains.items()})
    slots.update(out)
    return out


def _render_delta(
    plan: Plan,
    updated: UpdatedServicePorts,
    last: _Rendered,
    cache: RenderCache,
    local_cidr: str | None,
) -> _Rendered:
    """The last rendering with only the ``updated`` service ports rendered again (nothing
    else differs from the plan behind ``last``), and those whose endpoint map slots
    moved."""
    fragments = dict(last.fragments)
    shared = {name: dict(counts) for name, counts in last.shared.items()}
    ports = dict(last.ports)
    demands = dict(last.demands)  # the maps touched are copied before they change
    slots = dict(last.slots)
    maps: set[str] = set()

    def own(name: str) -> None:
        if name not in maps:
            maps.add(name)
            demands[name] = dict(demands.get(name, {}))

    for key, sp in updated.items():
        if (old := last.ports.get(key)) is not None:
            for chain, _n in endpoint_map_chains(old):
                slots.pop(chain, None)
            _demand(demands, old, -1, own)
        if sp is not None:
            _demand(demands, sp, 1, own)
    # a chain whose place moved (a colliding chain came or grew) is rendered again too
    moved: set[PortKey] = set()
    for name in maps:
        for chain, slot in _place(demands, name, slots).items():
            if last.slots.get(chain) != slot:
                moved.add(demands[name][chain][1])
        if not demands[name]:
            del demands[name]
    again = frozenset(updated.keys() | moved)
    for key in again:
        if (frag := fragments.pop(key, None)) is not None:
            _count(shared, frag, -1)
            del ports[key]
        sp = updated[key] if key in updated else last.ports[key]
        if sp is not None:
            frag = cache.fragment(plan, sp, local_cidr, slots)
            fragments[key] = frag
            _count(shared, frag, 1)
            ports[key] = sp
    return _Rendered(fragments, shared, ports, demands, slots, again)


def masquerade_rule(plan: Plan) -> SetMark:
    """The statement that marks a packet for masquerading in postrouting."""
    return _set_mark(plan.masquerade_mark)


@functools.lru_cache(maxsize=4)
def _set_mark(mark: int) -> SetMark:
    return SetMark(mark)


def _verdict(f: Filter, counted: bool) -> Verdict:
    if f is Filter.REJECT:
        return goto(REJECT_CHAIN)
    return goto(DROP_CHAIN) if counted else DROP


def _render_port(
    plan: Plan,
    sp: ServicePortPlan,
    b: TableBuilder,
    local_cidr: str | None,
    slots: Mapping[str, Slot],
) -> None:
    fam = plan.family
    proto = sp.protocol.lowercase
    spn = sp.service_port_name
    cluster_chain = names.service_chain(sp)
    local_chain = names.local_chain(sp)
    ext = names.external_chain(sp)
    fw = names.firewall_chain(sp)
    internal_chain = local_chain if sp.internal_policy_local else cluster_chain
    external_policy_chain = local_chain if sp.external_policy_local else cluster_chain
    counted = plan.service_counters

    if sp.uses_cluster_chain:
        b.chain(cluster_chain)
    if sp.uses_local_chain:
        b.chain(local_chain)
    if sp.uses_external_chain:
        b.chain(ext)
    if sp.uses_firewall:
        b.chain(fw)
    # per-endpoint chains only with session affinity (they hold the affinity update);
    # otherwise the policy chain DNATs through a map: far fewer chains at scale
    if sp.affinity_seconds is not None:
        for ep in sp.reachable_endpoints:
            b.chain(names.endpoint_chain(sp, ep.address))
            b.declare(
                NftSet(
                    names.affinity_set(sp, ep.address),
                    ADDRESS_SETS[fam],
                    flags=("dynamic", "timeout"),
                    timeout=sp.affinity_seconds,
                )
            )

    def key(ip: object, port: int) -> ElementKey:
        return (str(ip), proto, port)

    # -- cluster IP (its masquerading is one rule for all cluster IPs, in "services")
    to_ext = goto(ext)
    if sp.has_internal_endpoints:
        b.element(SERVICE_IPS, key(sp.cluster_ip, sp.port), goto(internal_chain), spn)
    else:
        f = sp.internal_filter or Filter.REJECT
        b.element(
            NO_ENDPOINT_SERVICES,
            key(sp.cluster_ip, sp.port),
            _verdict(f, counted),
            sp.filter_reason(f),
        )

    ext_filter = sp.external_filter
    # -- external and load balancer IPs
    for ip in (*sp.external_ips, *sp.load_balancer_ips):
        if sp.has_endpoints:
            b.element(SERVICE_IPS, key(ip, sp.port), to_ext, spn)
        if ext_filter is not None:
            b.element(
                NO_ENDPOINT_SERVICES,
                key(ip, sp.port),
                _verdict(ext_filter, counted),
                sp.filter_reason(ext_filter),
            )
    if sp.uses_firewall:
        for ip in sp.load_balancer_ips:
            b.element(FIREWALL_IPS, key(ip, sp.port), goto(fw), spn)
        sources = tuple(str(s) for s in sp.firewall_allowed_sources)
        b.rule(
            fw, rule(AddressNotInPrefixes(fam, "saddr", sources), _verdict(Filter.DROP, counted))
        )
    # -- node port
    if sp.node_port:
        np_key = (proto, sp.node_port)
        if sp.has_endpoints:
            b.element(SERVICE_NODEPORTS, np_key, to_ext, spn)
        if ext_filter is not None:
            b.element(
                NO_ENDPOINT_NODEPORTS,
                np_key,
                _verdict(ext_filter, counted),
                sp.filter_reason(ext_filter),
            )

    # -- external chain
    masquerade = masquerade_rule(plan)
    if sp.uses_external_chain:
        if not sp.external_policy_local:
            b.rule(ext, rule(masquerade))
        else:
            if local_cidr is not None and sp.uses_cluster_chain:
                b.rule(
                    ext,
                    rule(
                        AddressMatch(fam, "saddr", local_cidr),
                        goto(cluster_chain),
                        comment="short-circuit pod traffic",
                    ),
                )
            local = FIB_LOCAL_SOURCE
            b.rule(ext, rule(local, masquerade, comment="masquerade local traffic"))
            if sp.uses_cluster_chain:
                b.rule(ext, rule(local, goto(cluster_chain), comment="short-circuit local traffic"))
        if sp.has_external_endpoints:
            b.rule(ext, rule(goto(external_policy_chain)))

    # -- policy chains
    if sp.uses_cluster_chain:
        _balance(b, sp, cluster_chain, sp.cluster_endpoints, slots.get(cluster_chain))
    if sp.uses_local_chain:
        _balance(b, sp, local_chain, sp.local_endpoints, slots.get(local_chain))

    # -- endpoint chains (session affinity only)
    if sp.affinity_seconds is not None:
        for ep in sp.reachable_endpoints:
            chain = names.endpoint_chain(sp, ep.address)
            b.rule(chain, rule(UpdateSet(fam, names.affinity_set(sp, ep.address))))
            b.rule(chain, rule(l4proto(proto), DnatTo(str(ep.ip), ep.port)))


def cascade(n: int) -> list[tuple[Statement, ...]]:
    """Conditions that pick one of ``n`` targets uniformly per new connection: target i is
    taken with probability 1/(n-i) if none before it was, like iptables' statistic cascade.

    Used after the affinity lookups of a session-affinity service; other services pick
    through an endpoint map.
    """
    return [(NumgenMatch(n - i, 0),) if i < n - 1 else () for i in range(n)]


def _balance(
    b: TableBuilder,
    sp: ServicePortPlan,
    chain: str,
    endpoints: tuple[EndpointCandidate, ...],
    slot: Slot | None,
) -> None:
    """Pick an endpoint: the client's affinity entry first if configured (per-endpoint
    chains refresh it), else a uniform random choice per new connection: ``numgen``
    into the chain's keys of an endpoint map (see :mod:`proxy.nftables.endpointmaps`)."""
    fam = sp.family
    proto = l4proto(sp.protocol.lowercase)
    picks = cascade(len(endpoints))
    if slot is not None:
        spn = sp.service_port_name
        for i, ep in enumerate(endpoints):
            b.endpoint(slot.map_name, slot.offset + i, str(ep.ip), ep.port, spn)
        b.rule(chain, rule(proto, DnatMap(len(endpoints), slot.offset, slot.map_name)))
    elif sp.affinity_seconds is not None:
        for ep in endpoints:
            b.rule(
                chain,
                rule(
                    AddressInSet(fam, "saddr", names.affinity_set(sp, ep.address)),
                    goto(names.endpoint_chain(sp, ep.address)),
                ),
            )
        for pick, ep in zip(picks, endpoints, strict=True):
            b.rule(chain, rule(*pick, goto(names.endpoint_chain(sp, ep.address))))
    else:
        for pick, ep in zip(picks, endpoints, strict=True):
            b.rule(chain, rule(*pick, proto, DnatTo(str(ep.ip), ep.port)))
