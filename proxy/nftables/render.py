"""nftables backend, pure part: a :class:`Plan` becomes one ``nft -f`` transaction.

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from proxy import comments, naming
from proxy.model import IPFamily, Protocol
from proxy.nftables import endpointmaps
from proxy.nftables.endpointmaps import Slot
from proxy.plan import EndpointCandidate, Filter, Plan, ServicePortPlan

PortKey = tuple[str, str, str, Protocol]
"""A service port: namespace, Service name, port name, protocol."""

TABLE = "kube-proxy"
TABLE_COMMENT = "rules for kube-proxy"

# nft priority keywords as numbers (dstnat = -100, srcnat = 100)
DSTNAT = -100
SRCNAT = 100

FILTER_PREROUTING_PRE_DNAT = "filter-prerouting-pre-dnat"
FILTER_OUTPUT_PRE_DNAT = "filter-output-pre-dnat"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"

SERVICES = "services"
MASQUERADING = "masquerading"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
CLUSTER_IPS_CHECK = "cluster-ips-check"
FIREWALL_CHECK = "firewall-check"
REJECT_CHAIN = "reject-chain"

SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
CLUSTER_IPS = "cluster-ips"
HAIRPIN_CONNECTIONS = "hairpin-connections"
NODEPORT_IPS = "nodeport-ips"


@dataclass(frozen=True)
class BaseHook:
    type: str
    hook: str
    priority: int

    def spec(self) -> str:
        return f"type {self.type} hook {self.hook} priority {self.priority}"


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


@dataclass(frozen=True)
class NftChain:
    name: str
    rules: tuple[str, ...] = ()
    hook: BaseHook | None = None


@dataclass(frozen=True)
class NftElement:
    key: str
    value: str = ""
    """Verdict for maps; empty for sets."""
    comment: str = ""

    def text(self) -> str:
        out = self.key
        if self.comment:
            out += f' comment "{safe_comment(self.comment)}"'
        if self.value:
            out += f" : {self.value}"
        return out


@dataclass(frozen=True)
class NftSet:
    """A set or verdict map. ``dynamic`` sets (affinity) keep their elements across syncs."""

    name: str
    type: str
    is_map: bool = False
    elements: tuple[NftElement, ...] = ()
    flags: tuple[str, ...] = ()
    timeout: int | None = None
    comment: str = ""
    typeof: str = ""
    """Declared by expressions (``typeof numgen random mod 1 : ip daddr . tcp dport``)
    when no type name fits; ``type`` still names the key and data types."""

    @property
    def dynamic(self) -> bool:
        return "dynamic" in self.flags

    def spec(self) -> str:
        parts = [f"typeof {self.typeof}" if self.typeof else f"type {self.type}"]
        if self.flags:
            parts.append("flags " + ",".join(self.flags))
        if self.timeout is not None:
            parts.append(f"timeout {self.timeout}s")
        if self.comment:
            parts.append(f'comment "{safe_comment(self.comment)}"')
        return " ; ".join(parts) + " ;"


@dataclass(frozen=True, eq=False)
class NftRuleset:
    """Our table: plan-wide chains and sets (``core``), one fragment per service port,
    and the elements of the sets service ports share (counted: two ports of one Service
    share its ClusterIP). ``chains`` and ``sets`` are the table merged, built on first
    use: an incremental sync only compares fragments, by identity."""

    family: IPFamily
    core: _Fragment
    fragments: Mapping[PortKey, _Fragment]
    shared: Mapping[str, Mapping[str, int]]
    serial: int = 0
    """The serial of the plan it was rendered from."""
    delta: tuple[int, frozenset[PortKey]] | None = None
    """(serial of the plan behind the ruleset this one was derived from, the service
    ports whose fragments may differ from that one's)."""

    @cached_property
    def _merged(self) -> tuple[Mapping[str, NftChain], Mapping[str, NftSet]]:
        return self.merged()

    def merged(self) -> tuple[Mapping[str, NftChain], Mapping[str, NftSet]]:
        """Chains and sets of the whole table, built anew (``chains``/``sets`` keep theirs;
        a full sync uses this so the agent does not hold a second copy of the table)."""
        b = _Builder(self.family)
        b.merge(self.core)
        for frag in self.fragments.values():
            b.merge(frag)
        for set_name, counts in self.shared.items():
            for key in counts:
                b.element(set_name, key)
        return b.build_parts()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NftRuleset):
            return NotImplemented
        return (self.family, self.chains, self._set_contents) == (
            other.family,
            other.chains,
            other._set_contents,
        )

    @property
    def _set_contents(self) -> dict[str, tuple[NftSet, frozenset[NftElement]]]:
        """Sets compared as sets: element order is not part of the table."""
        return {
            n: (dataclasses.replace(s, elements=()), frozenset(s.elements))
            for n, s in self.sets.items()
        }

    __hash__ = None  # type: ignore[assignment]

    @property
    def chains(self) -> Mapping[str, NftChain]:
        return self._merged[0]

    @property
    def sets(self) -> Mapping[str, NftSet]:
        return self._merged[1]

    @property
    def nft_family(self) -> str:
        return "ip" if self.family is IPFamily.V4 else "ip6"

    @property
    def rule_count(self) -> int:
        return sum(len(c.rules) for c in self.chains.values())

    @property
    def element_count(self) -> int:
        return sum(len(s.elements) for s in self.sets.values())


@dataclass(frozen=True)
class ExistingNft:
    """What our table holds now: names of chains and sets/maps, and set timeouts."""

    table_exists: bool = False
    chains: frozenset[str] = frozenset()
    base_chains: Mapping[str, BaseHook] = field(default_factory=dict)
    """Existing base chains' hooks (type, hook, priority)."""
    sets: Mapping[str, int | None] = field(default_factory=dict)
    """set name → timeout in seconds (None when it has none)."""
    maps: frozenset[str] = frozenset()


NFT_COMMENT_MAX = 128
"""nft refuses a comment longer than this many characters, and with it the whole
transaction (upstream had the same bug: kubernetes/kubernetes#139515)."""


def safe_comment(text: str) -> str:
    """``text`` fit for a double-quoted nft comment (:func:`comments.quotable`)."""
    return comments.quotable(text, NFT_COMMENT_MAX)


def _addr_type(family: IPFamily) -> str:
    return "ipv4_addr" if family is IPFamily.V4 else "ipv6_addr"


def _ipx(family: IPFamily) -> str:
    return "ip" if family is IPFamily.V4 else "ip6"


# ---------------------------------------------------------------------------------------
# rendering


class _Builder:
    def __init__(self, family: IPFamily) -> None:
        self.family = family
        self.chains: dict[str, list[str] | tuple[str, ...]] = {}
        self.hooks: dict[str, BaseHook] = {}
        self.sets: dict[str, NftSet] = {}
        self.elements: dict[str, list[NftElement]] = {}

    def chain(self, name: str, hook: BaseHook | None = None) -> None:
        self.chains.setdefault(name, [])
        if hook is not None:
            self.hooks[name] = hook

    def rule(self, chain: str, rule: str, comment: str = "") -> None:
        if comment:
            rule += f' comment "{safe_comment(comment)}"'
        rules = self.chains.setdefault(chain, [])
        assert isinstance(rules, list), f"chain {chain} is from a cached fragment"
        rules.append(rule)

    def declare(self, s: NftSet) -> None:
        self.sets.setdefault(s.name, s)
        self.elements.setdefault(s.name, [])

    def element(self, set_name: str, key: str, value: str = "", comment: str = "") -> None:
        self.elements.setdefault(set_name, []).append(NftElement(key, value, comment))

    def fragment(self) -> _Fragment:
        """What this builder holds, frozen (a service port's share of the ruleset)."""
        return _Fragment(
            chains=tuple((n, tuple(r)) for n, r in self.chains.items()),
            sets=tuple(self.sets.values()),
            elements=tuple((n, tuple(e)) for n, e in self.elements.items() if e),
            hooks=tuple(self.hooks.items()),
        )

    def merge(self, f: _Fragment) -> None:
        for name, rules in f.chains:
            self.chains[name] = rules
        self.hooks.update(f.hooks)
        for s in f.sets:
            self.declare(s)
        for set_name, elements in f.elements:
            self.elements.setdefault(set_name, []).extend(elements)

    def build_parts(self) -> tuple[dict[str, NftChain], dict[str, NftSet]]:
        chains = {
            n: NftChain(n, tuple(rules), self.hooks.get(n)) for n, rules in self.chains.items()
        }
        sets = {
            n: NftSet(
                s.name,
                s.type,
                s.is_map,
                tuple(self.elements[n]),
                s.flags,
                s.timeout,
                s.comment,
                s.typeof,
            )
            for n, s in self.sets.items()
        }
        return chains, sets


@dataclass(frozen=True)
class _Fragment:
    chains: tuple[tuple[str, tuple[str, ...]], ...]
    sets: tuple[NftSet, ...]
    elements: tuple[tuple[str, tuple[NftElement, ...]], ...]
    hooks: tuple[tuple[str, BaseHook], ...] = ()
    cluster_ip: str = ""
    hairpins: tuple[str, ...] = ()
    """Keys of its local endpoints in the hairpin-connections set."""


Demands = dict[str, dict[str, tuple[int, PortKey]]]
"""endpoint map → chain → (windows it needs, the service port it belongs to)."""


@dataclass(frozen=True)
class _Rendered:
    serial: int
    fragments: dict[PortKey, _Fragment]
    shared: dict[str, dict[str, int]]
    by_service: dict[tuple[str, str], tuple[tuple[PortKey, ServicePortPlan], ...]]
    demands: Demands
    slots: dict[str, Slot]
    delta: tuple[int, frozenset[PortKey]] | None = None

    @property
    def endpoint_maps(self) -> list[str]:
        return sorted(name for name, chains in self.demands.items() if chains)


def _port_key(sp: ServicePortPlan) -> PortKey:
    return (sp.namespace, sp.name, sp.port_name, sp.protocol)


def _shared_keys(frag: _Fragment) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The elements a fragment adds to sets that several service ports share."""
    return ((CLUSTER_IPS, (frag.cluster_ip,)), (HAIRPIN_CONNECTIONS, frag.hairpins))


def _count(shared: dict[str, dict[str, int]], frag: _Fragment, step: int) -> None:
    for set_name, keys in _shared_keys(frag):
        counts = shared[set_name]
        for key in keys:
            n = counts.get(key, 0) + step
            if n:
                counts[key] = n
            else:
                del counts[key]


@dataclass
class RenderCache:
    """Rendered fragments of service ports, reused while their plan objects are (the
    incremental planner hands back the very same objects for unchanged Services)."""

    params: object = None
    fragments: dict[int, tuple[ServicePortPlan, _Fragment, tuple[Slot | None, ...]]] = field(
        default_factory=dict
    )
    last: _Rendered | None = None
    """The last plan rendered: a plan derived from it re-renders only its changes."""

    def fragment(
        self, plan: Plan, sp: ServicePortPlan, local_cidr: str | None, slots: Mapping[str, Slot]
    ) -> _Fragment:
        mine = tuple(slots.get(chain) for chain, _ in endpoint_map_chains(sp))
        hit = self.fragments.get(id(sp))
        if hit is not None and hit[0] is sp and hit[2] == mine:
            return hit[1]
        b = _Builder(plan.family)
        _render_port(plan, sp, b, local_cidr, slots)
        proto = sp.protocol.lowercase
        frag = dataclasses.replace(
            b.fragment(),
            cluster_ip=str(sp.cluster_ip),
            hairpins=tuple(
                f"{ep.ip} . {ep.ip} . {proto} . {ep.port}"
                for ep in sp.reachable_endpoints
                if ep.is_local
            ),
        )
        self.fragments[id(sp)] = (sp, frag, mine)
        return frag

    def start(self, params: object) -> None:
        """Forget everything when plan-wide settings changed."""
        if params != self.params:
            self.params = params
            self.fragments.clear()
            self.last = None

    def keep_only(self, plan: Plan) -> None:
        live = {id(sp) for sp in plan.service_ports}
        for key in [k for k in self.fragments if k not in live]:
            del self.fragments[key]


def render(plan: Plan, cache: RenderCache | None = None) -> NftRuleset:
    """Render a plan into our nftables table (pure; ``cache`` only saves work)."""
    fam = plan.family
    ipx = _ipx(fam)
    addr = _addr_type(fam)
    b = _Builder(fam)
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

    vmap_ip_key = f"{addr} . inet_proto . inet_service : verdict"
    vmap_port_key = "inet_proto . inet_service : verdict"
    b.declare(NftSet(CLUSTER_IPS, addr, comment="Active ClusterIPs"))
    b.declare(
        NftSet(
            HAIRPIN_CONNECTIONS,
            f"{addr} . {addr} . inet_proto . inet_service",
            comment="service hairpin connections",
        )
    )
    b.declare(
        NftSet(
            SERVICE_IPS,
            vmap_ip_key,
            is_map=True,
            comment="ClusterIP, ExternalIP and LoadBalancer IP traffic",
        )
    )
    b.declare(NftSet(SERVICE_NODEPORTS, vmap_port_key, is_map=True, comment="NodePort traffic"))
    b.declare(
        NftSet(
            NO_ENDPOINT_SERVICES,
            vmap_ip_key,
            is_map=True,
            comment="vmap to drop or reject packets to services with no endpoints",
        )
    )
    b.declare(
        NftSet(
            NO_ENDPOINT_NODEPORTS,
            vmap_port_key,
            is_map=True,
            comment="vmap to drop or reject packets to service nodeports with no endpoints",
        )
    )
    b.declare(
        NftSet(
            FIREWALL_IPS,
            vmap_ip_key,
            is_map=True,
            comment="destinations that are subject to LoadBalancerSourceRanges",
        )
    )

    # -- fixed rules
    new = "ct state new"
    b.rule(FILTER_PREROUTING_PRE_DNAT, f"{new} jump {FIREWALL_CHECK}")
    b.rule(FILTER_OUTPUT_PRE_DNAT, f"{new} jump {FIREWALL_CHECK}")
    b.rule(FILTER_INPUT, f"{new} jump {NODEPORT_ENDPOINTS_CHECK}")
    b.rule(FILTER_INPUT, f"{new} jump {SERVICE_ENDPOINTS_CHECK}")
    b.rule(FILTER_FORWARD, f"{new} jump {SERVICE_ENDPOINTS_CHECK}")
    b.rule(FILTER_FORWARD, f"{new} jump {CLUSTER_IPS_CHECK}")
    b.rule(FILTER_OUTPUT, f"{new} jump {SERVICE_ENDPOINTS_CHECK}")
    b.rule(FILTER_OUTPUT, f"{new} jump {CLUSTER_IPS_CHECK}")
    b.rule(NAT_PREROUTING, f"jump {SERVICES}")
    b.rule(NAT_OUTPUT, f"jump {SERVICES}")
    b.rule(NAT_POSTROUTING, f"jump {MASQUERADING}")

    mark = f"{plan.masquerade_mark:#010x}"
    b.rule(
        MASQUERADING,
        f"meta mark & {mark} != 0x00000000 meta mark set meta mark ^ {mark} "
        "masquerade fully-random",
    )
    # a pod reaching itself through a service: its reply would never leave the pod
    # without SNAT (upstream's hairpin set of local endpoint ip . ip . proto . port)
    b.rule(
        MASQUERADING,
        f"ct status dnat {ipx} saddr . {ipx} daddr . meta l4proto . th dport "
        f"@{HAIRPIN_CONNECTIONS} masquerade fully-random",
    )
    b.rule(
        REJECT_CHAIN, "reject", comment="helper for @no-endpoint-services / @no-endpoint-nodeports"
    )

    b.rule(
        CLUSTER_IPS_CHECK,
        f"{ipx} daddr @{CLUSTER_IPS} reject",
        comment="Reject traffic to invalid ports of ClusterIPs",
    )
    b.rule(FIREWALL_CHECK, f"{ipx} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}")
    b.rule(
        SERVICE_ENDPOINTS_CHECK,
        f"{ipx} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",
    )
    masquerade = masquerade_rule(plan)
    local_cidr = str(plan.cluster_cidr) if plan.cluster_cidr is not None else None
    if plan.masquerade_all:
        b.rule(SERVICES, f"{ipx} daddr @{CLUSTER_IPS} {masquerade}",
               comment="masquerade all clusterIP traffic")  # fmt: skip
    elif local_cidr is not None:
        # off-cluster clients may route a service CIDR to any node, which may send it on
        # to another node: SNAT so that replies come back the same way
        b.rule(
            SERVICES,
            f"{ipx} daddr @{CLUSTER_IPS} {ipx} saddr != {local_cidr} {masquerade}",
            comment="masquerade clusterIP traffic from outside cluster",
        )
    b.rule(SERVICES, f"{ipx} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}")

    no_localhost = f"{ipx} daddr != 127.0.0.0/8" if fam is IPFamily.V4 else f"{ipx} daddr != ::1"
    if plan.nodeports.match_all_local:
        b.rule(
            NODEPORT_ENDPOINTS_CHECK,
            f"{no_localhost} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
        )
        b.rule(
            SERVICES,
            f"fib daddr type local {no_localhost} "
            f"meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
            comment="NodePort traffic",
        )
    else:
        b.declare(NftSet(NODEPORT_IPS, addr, comment="IPs that accept NodePort traffic"))
        for ip in plan.nodeports.addresses:
            if not ip.is_loopback:
                b.element(NODEPORT_IPS, str(ip))
        b.rule(
            NODEPORT_ENDPOINTS_CHECK,
            f"{ipx} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
        )
        b.rule(
            SERVICES,
            f"{ipx} daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
            comment="NodePort traffic",
        )

    cache = cache if cache is not None else RenderCache()
    cache.start((fam, plan.masquerade_mark, plan.masquerade_all, local_cidr))
    last = cache.last
    if last is not None and plan.delta is not None and plan.delta[0] == last.serial:
        rendered = _render_delta(plan, plan.delta[1], last, cache, local_cidr)
    else:
        rendered = _render_all(plan, cache, local_cidr)
    cache.last = rendered
    for name in rendered.endpoint_maps:
        proto = endpointmaps.protocol_of(name)
        b.declare(
            NftSet(
                name,
                f"mark : {addr} . inet_service",
                is_map=True,
                typeof=f"numgen random mod 1 : {ipx} daddr . {proto} dport",
            )
        )
    return NftRuleset(
        fam, b.fragment(), rendered.fragments, rendered.shared, plan.serial, rendered.delta
    )


def _render_all(plan: Plan, cache: RenderCache, local_cidr: str | None) -> _Rendered:
    fragments: dict[PortKey, _Fragment] = {}
    shared: dict[str, dict[str, int]] = {CLUSTER_IPS: {}, HAIRPIN_CONNECTIONS: {}}
    by_service: dict[tuple[str, str], list[tuple[PortKey, ServicePortPlan]]] = {}
    demands: Demands = {}
    for sp in plan.service_ports:
        _demand(demands, sp, 1)
    slots: dict[str, Slot] = {}
    for name in demands:
        _place(demands, name, slots)
    for sp in plan.service_ports:
        frag = cache.fragment(plan, sp, local_cidr, slots)
        key = _port_key(sp)
        fragments[key] = frag
        _count(shared, frag, 1)
        by_service.setdefault((sp.namespace, sp.name), []).append((key, sp))
    cache.keep_only(plan)
    return _Rendered(
        plan.serial,
        fragments,
        shared,
        {k: tuple(v) for k, v in by_service.items()},
        demands,
        slots,
    )


def endpoint_map_chains(sp: ServicePortPlan) -> list[tuple[str, int]]:
    """The service port's policy chains that pick from an endpoint map, with their
    endpoint counts (two or more endpoints, no session affinity)."""
    if sp.affinity_seconds is not None:
        return []
    out = []
    if sp.uses_cluster_chain and len(sp.cluster_endpoints) > 1:
        out.append((naming.nft_service_chain(sp), len(sp.cluster_endpoints)))
    if sp.uses_local_chain and len(sp.local_endpoints) > 1:
        out.append((naming.nft_local_chain(sp), len(sp.local_endpoints)))
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
            demands.setdefault(name, {})[chain] = (endpointmaps.windows_for(n), _port_key(sp))
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
    changed: frozenset[tuple[str, str]],
    last: _Rendered,
    cache: RenderCache,
    local_cidr: str | None,
) -> _Rendered:
    """The last rendering with only ``changed`` Services rendered again (the plan says
    nothing else differs from the plan behind ``last``)."""
    fragments = dict(last.fragments)
    shared = {name: dict(counts) for name, counts in last.shared.items()}
    by_service = dict(last.by_service)
    demands = dict(last.demands)  # the maps touched are copied before they change
    slots = dict(last.slots)
    touched: set[PortKey] = set()
    maps: set[str] = set()

    def own(name: str) -> None:
        if name not in maps:
            maps.add(name)
            demands[name] = dict(demands.get(name, {}))

    for svc in changed:
        for _, sp in last.by_service.get(svc, ()):
            for chain, _n in endpoint_map_chains(sp):
                slots.pop(chain, None)
            _demand(demands, sp, -1, own)
        for sp in plan.by_service.get(svc, ()):
            _demand(demands, sp, 1, own)
    # a chain whose place moved (a colliding chain came or grew) is rendered again too
    moved: set[PortKey] = set()
    for name in maps:
        for chain, slot in _place(demands, name, slots).items():
            if last.slots.get(chain) != slot:
                moved.add(demands[name][chain][1])
        if not demands[name]:
            del demands[name]
    services = set(changed) | {(k[0], k[1]) for k in moved}
    for svc in services:
        for key, sp in by_service.pop(svc, ()):
            _count(shared, fragments.pop(key), -1)
            cache.fragments.pop(id(sp), None)
            touched.add(key)
        ports = []
        for sp in plan.by_service.get(svc, ()):
            frag = cache.fragment(plan, sp, local_cidr, slots)
            key = _port_key(sp)
            fragments[key] = frag
            _count(shared, frag, 1)
            ports.append((key, sp))
            touched.add(key)
        if ports:
            by_service[svc] = tuple(ports)
    return _Rendered(
        plan.serial,
        fragments,
        shared,
        by_service,
        demands,
        slots,
        (last.serial, frozenset(touched)),
    )


def masquerade_rule(plan: Plan) -> str:
    """The statement that marks a packet for masquerading in postrouting."""
    return f"meta mark set meta mark | {plan.masquerade_mark:#010x}"


def _verdict(f: Filter) -> str:
    return f"goto {REJECT_CHAIN}" if f is Filter.REJECT else "drop"


def _render_port(
    plan: Plan,
    sp: ServicePortPlan,
    b: _Builder,
    local_cidr: str | None,
    slots: Mapping[str, Slot],
) -> None:
    fam = plan.family
    ipx = _ipx(fam)
    proto = sp.protocol.lowercase
    spn = sp.service_port_name
    cluster_chain = naming.nft_service_chain(sp)
    local_chain = naming.nft_local_chain(sp)
    ext = naming.nft_external_chain(sp)
    fw = naming.nft_firewall_chain(sp)
    internal_chain = local_chain if sp.internal_policy_local else cluster_chain
    external_policy_chain = local_chain if sp.external_policy_local else cluster_chain

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
            b.chain(naming.nft_endpoint_chain(sp, ep.address))
            b.declare(
                NftSet(
                    naming.nft_affinity_set(sp, ep.address),
                    _addr_type(fam),
                    flags=("dynamic", "timeout"),
                    timeout=sp.affinity_seconds,
                )
            )

    def key(ip: object, port: int) -> str:
        return f"{ip} . {proto} . {port}"

    # -- cluster IP (its masquerading is one rule for all cluster IPs, in "services")
    if sp.has_internal_endpoints:
        b.element(SERVICE_IPS, key(sp.cluster_ip, sp.port), f"goto {internal_chain}", spn)
    else:
        f = sp.internal_filter or Filter.REJECT
        b.element(
            NO_ENDPOINT_SERVICES, key(sp.cluster_ip, sp.port), _verdict(f), sp.filter_reason(f)
        )

    ext_filter = sp.external_filter
    # -- external and load balancer IPs
    for ip in (*sp.external_ips, *sp.load_balancer_ips):
        if sp.has_endpoints:
            b.element(SERVICE_IPS, key(ip, sp.port), f"goto {ext}", spn)
        if ext_filter is not None:
            b.element(
                NO_ENDPOINT_SERVICES,
                key(ip, sp.port),
                _verdict(ext_filter),
                sp.filter_reason(ext_filter),
            )
    if sp.uses_firewall:
        for ip in sp.load_balancer_ips:
            b.element(FIREWALL_IPS, key(ip, sp.port), f"goto {fw}", spn)
        sources = ", ".join(str(s) for s in sp.firewall_allowed_sources)
        b.rule(fw, f"{ipx} saddr != {{ {sources} }} drop")
    # -- node port
    if sp.node_port:
        np_key = f"{proto} . {sp.node_port}"
        if sp.has_endpoints:
            b.element(SERVICE_NODEPORTS, np_key, f"goto {ext}", spn)
        if ext_filter is not None:
            b.element(
                NO_ENDPOINT_NODEPORTS, np_key, _verdict(ext_filter), sp.filter_reason(ext_filter)
            )

    # -- external chain
    masquerade = masquerade_rule(plan)
    if sp.uses_external_chain:
        if not sp.external_policy_local:
            b.rule(ext, masquerade)
        else:
            if local_cidr is not None and sp.uses_cluster_chain:
                b.rule(
                    ext,
                    f"{ipx} saddr {local_cidr} goto {cluster_chain}",
                    comment="short-circuit pod traffic",
                )
            b.rule(ext, f"fib saddr type local {masquerade}", comment="masquerade local traffic")
            if sp.uses_cluster_chain:
                b.rule(
                    ext,
                    f"fib saddr type local goto {cluster_chain}",
                    comment="short-circuit local traffic",
                )
        if sp.has_external_endpoints:
            b.rule(ext, f"goto {external_policy_chain}")

    # -- policy chains
    if sp.uses_cluster_chain:
        _balance(b, sp, cluster_chain, sp.cluster_endpoints, slots.get(cluster_chain))
    if sp.uses_local_chain:
        _balance(b, sp, local_chain, sp.local_endpoints, slots.get(local_chain))

    # -- endpoint chains (session affinity only)
    if sp.affinity_seconds is not None:
        for ep in sp.reachable_endpoints:
            chain = naming.nft_endpoint_chain(sp, ep.address)
            b.rule(chain, f"update @{naming.nft_affinity_set(sp, ep.address)} {{ {ipx} saddr }}")
            b.rule(chain, f"meta l4proto {proto} dnat to {ep.address}")


def cascade(n: int) -> list[str]:
    """Conditions that pick one of ``n`` targets uniformly per new connection: target i is
    taken with probability 1/(n-i) if none before it was, like iptables' statistic cascade.

    Used after the affinity lookups of a session-affinity service; other services pick
    through an endpoint map.
    """
    return [f"numgen random mod {n - i} == 0 " if i < n - 1 else "" for i in range(n)]


def _balance(
    b: _Builder,
    sp: ServicePortPlan,
    chain: str,
    endpoints: tuple[EndpointCandidate, ...],
    slot: Slot | None,
) -> None:
    """Pick an endpoint: the client's affinity entry first if configured (per-endpoint
    chains refresh it), else a uniform random choice per new connection: ``numgen``
    into the chain's keys of an endpoint map (see :mod:`proxy.nftables.endpointmaps`)."""
    ipx = _ipx(sp.family)
    proto = sp.protocol.lowercase
    picks = cascade(len(endpoints))
    if slot is not None:
        spn = sp.service_port_name
        for i, ep in enumerate(endpoints):
            b.element(slot.map_name, str(slot.offset + i), f"{ep.ip} . {ep.port}", spn)
        offset = f" offset {slot.offset}" if slot.offset else ""
        b.rule(
            chain,
            f"meta l4proto {proto} dnat to numgen random mod {len(endpoints)}{offset} "
            f"map @{slot.map_name}",
        )
    elif sp.affinity_seconds is not None:
        for ep in endpoints:
            b.rule(
                chain,
                f"{ipx} saddr @{naming.nft_affinity_set(sp, ep.address)} "
                f"goto {naming.nft_endpoint_chain(sp, ep.address)}",
            )
        for pick, ep in zip(picks, endpoints, strict=True):
            b.rule(chain, f"{pick}goto {naming.nft_endpoint_chain(sp, ep.address)}")
    else:
        for pick, ep in zip(picks, endpoints, strict=True):
            b.rule(chain, f"{pick}meta l4proto {proto} dnat to {ep.address}")


# ---------------------------------------------------------------------------------------
# transactions


def full_sync_text(ruleset: NftRuleset, existing: ExistingNft | None = None) -> str:
    """One ``nft -f`` transaction that makes our table exactly ``ruleset`` (the lines of
    :func:`full_sync_lines`)."""
    return "\n".join(full_sync_lines(ruleset, existing)) + "\n"


def full_sync_lines(ruleset: NftRuleset, existing: ExistingNft | None = None) -> Iterator[str]:
    """The lines of one ``nft -f`` transaction that makes our table exactly ``ruleset``,
    produced as they are written (at 10,000 services the whole text is tens of MB).

    Every chain and non-dynamic set/map is (re)declared, flushed and refilled; our chains,
    sets and maps that the ruleset no longer has are deleted; dynamic (affinity) sets keep
    their entries unless their timeout changed. Nothing outside our table is touched.
    """
    existing = existing or ExistingNft()
    chains, sets = ruleset.merged()
    fam = ruleset.nft_family
    t = f"{fam} {TABLE}"
    yield f'add table {t} {{ comment "{TABLE_COMMENT}" ; }}'
    # A base chain whose hook or priority differs (an older layout, or upstream's) cannot
    # be changed in place: delete it first (its rules go with it) and add it anew below.
    for name, c in chains.items():
        have = existing.base_chains.get(name)
        regular_now = name in existing.chains and name not in existing.base_chains
        if c.hook is not None and ((have is not None and have != c.hook) or regular_now):
            yield f"delete chain {t} {name}"
    recreate = [
        s.name
        for s in sets.values()
        if s.dynamic and s.name in existing.sets and existing.sets[s.name] != s.timeout
    ]
    for c in chains.values():
        if c.hook is not None:
            yield f"add chain {t} {c.name} {{ {c.hook.spec()} ; }}"
        else:
            yield f"add chain {t} {c.name}"
    for s in sets.values():
        if s.name not in recreate:
            yield f"add {'map' if s.is_map else 'set'} {t} {s.name} {{ {s.spec()} }}"
    stale_chains = sorted(existing.chains - set(chains))
    stale_sets = sorted(set(existing.sets) - set(sets))
    stale_maps = sorted(existing.maps - set(sets))
    for name in (*chains, *stale_chains):
        yield f"flush chain {t} {name}"
    for s in sets.values():
        if not s.dynamic:
            yield f"flush {'map' if s.is_map else 'set'} {t} {s.name}"
    for name in stale_chains:
        yield f"delete chain {t} {name}"
    for name in (*stale_sets, *recreate):
        yield f"delete set {t} {name}"
    for name in stale_maps:
        yield f"delete map {t} {name}"
    for name in recreate:
        s = sets[name]
        yield f"add set {t} {s.name} {{ {s.spec()} }}"
    for c in chains.values():
        for r in c.rules:
            yield f"add rule {t} {c.name} {r}"
    for s in sets.values():
        if s.elements and not s.dynamic:
            body = ", ".join(e.text() for e in s.elements)
            yield f"add element {t} {s.name} {{ {body} }}"


def cleanup_text(family: IPFamily) -> str:
    """Delete our whole table (and nothing else)."""
    return f"delete table {'ip' if family is IPFamily.V4 else 'ip6'} {TABLE}\n"


def _set_kind(s: NftSet) -> str:
    return "map" if s.is_map else "set"


@dataclass(frozen=True)
class NftOp:
    """One statement of an incremental transaction, kept structured so that the kernel
    layer can send it as netlink messages; :meth:`text` is its nft spelling."""

    verb: str
    """``add``, ``delete`` or ``flush``."""
    kind: str
    """``chain``, ``rule``, ``set``, ``map`` or ``element``."""
    name: str
    """The chain, set or map."""
    rule: str = ""
    hook: BaseHook | None = None
    spec: str = ""
    """A new set's or map's declaration (:meth:`NftSet.spec`)."""
    set_type: str = ""
    """An element's set or map type (``ipv4_addr . inet_proto . inet_service``)."""
    elements: tuple[NftElement, ...] = ()
    """Elements added, or deleted (their keys)."""

    def text(self, table: str) -> str:
        head = f"{self.verb} {self.kind} {table} {self.name}"
        if self.kind == "rule":
            return f"{head} {self.rule}"
        if self.kind == "element":
            body = ", ".join(e.text() if self.verb == "add" else e.key for e in self.elements)
            return f"{head} {{ {body} }}"
        if self.verb == "add" and self.hook is not None:
            return f"{head} {{ {self.hook.spec()} ; }}"
        if self.verb == "add" and self.spec:
            return f"{head} {{ {self.spec} }}"
        return head


@dataclass(frozen=True)
class NftTransaction:
    """The statements of one incremental transaction on one family's table."""

    family: IPFamily
    ops: tuple[NftOp, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ops)

    @property
    def table(self) -> str:
        return f"{'ip' if self.family is IPFamily.V4 else 'ip6'} {TABLE}"

    def text(self) -> str:
        """The ``nft -f`` script (empty when there is nothing to do)."""
        t = self.table
        return "".join(op.text(t) + "\n" for op in self.ops)


def incremental_text(old: NftRuleset, new: NftRuleset) -> str:
    """The nft script of :func:`incremental`."""
    return incremental(old, new).text()


def incremental(old: NftRuleset, new: NftRuleset) -> NftTransaction:
    """One transaction turning the table from ``old`` (what we applied last) into ``new``,
    touching only what changed (see :func:`diff`). Unchanged service ports share
    their fragment objects between the two, so only the changed ones and the plan-wide
    part are compared: the cost follows the change, not the number of services."""
    if old.family is not new.family:
        return diff(old, new)
    changed: list[PortKey]
    if new.delta is not None and old.serial and new.delta[0] == old.serial:
        changed = [k for k in new.delta[1] if old.fragments.get(k) is not new.fragments.get(k)]
    else:
        changed = [k for k, f in new.fragments.items() if old.fragments.get(k) is not f]
        changed.extend(k for k in old.fragments if k not in new.fragments)
    if not changed and old.core is new.core and old.shared == new.shared:
        return NftTransaction(new.family)
    touched: dict[str, dict[str, None]] = {name: {} for name in new.shared}
    for k in changed:
        for frag in (old.fragments.get(k), new.fragments.get(k)):
            if frag is not None:
                for set_name, keys in _shared_keys(frag):
                    touched[set_name].update(dict.fromkeys(keys))

    # of the (hundreds of) endpoint maps, only those the change touches or adds/removes
    def maps(rs: NftRuleset) -> set[str]:
        return {st.name for st in rs.core.sets if endpointmaps.is_map_name(st.name)}

    used = maps(old) ^ maps(new)
    for k in changed:
        for frag in (old.fragments.get(k), new.fragments.get(k)):
            if frag is not None:
                used.update(name for name, _ in frag.elements)

    def part(rs: NftRuleset) -> NftRuleset:
        frags = {k: f for k in changed if (f := rs.fragments.get(k)) is not None}
        shared = {
            name: {key: 1 for key in touched.get(name, ()) if counts.get(key)}
            for name, counts in rs.shared.items()
        }
        sets = tuple(
            st for st in rs.core.sets if st.name in used or not endpointmaps.is_map_name(st.name)
        )
        return NftRuleset(rs.family, dataclasses.replace(rs.core, sets=sets), frags, shared)

    return diff(part(old), part(new))


def diff_text(old: NftRuleset, new: NftRuleset) -> str:
    """The nft script of :func:`diff`."""
    return diff(old, new).text()


def diff(old: NftRuleset, new: NftRuleset) -> NftTransaction:
    """One transaction turning the table from ``old`` (what we applied last) into ``new``,
    touching only what changed: new/changed chains are (re)filled, map and set elements
    are added and deleted one by one, removed chains and sets are deleted. Empty when
    nothing changed.

    Order matters inside the transaction: elements and rules that reference a chain or set
    must be gone before it is deleted, and a chain must exist before anything jumps to it.
    """
    out: list[NftOp] = []
    recreated = {
        name
        for name, s in new.sets.items()
        if name in old.sets and old.sets[name].spec() != s.spec()
    }
    changed = [
        name
        for name, c in new.chains.items()
        if name in old.chains
        and (
            old.chains[name].rules != c.rules
            or any(f"@{s}" in r for s in recreated for r in c.rules)
        )
    ]
    added_chains = [name for name in new.chains if name not in old.chains]
    removed_chains = [name for name in old.chains if name not in new.chains]
    added_sets = [s for name, s in new.sets.items() if name not in old.sets]
    removed_sets = [s for name, s in old.sets.items() if name not in new.sets]

    def add_set(s: NftSet) -> NftOp:
        return NftOp("add", _set_kind(s), s.name, spec=s.spec())

    def elements(verb: str, s: NftSet, elems: tuple[NftElement, ...]) -> NftOp:
        return NftOp(verb, "element", s.name, set_type=s.type, elements=elems)

    for name in added_chains:
        out.append(NftOp("add", "chain", name, hook=new.chains[name].hook))
    out.extend(add_set(s) for s in added_sets)

    additions: list[NftOp] = []
    for name, s in new.sets.items():
        if s.dynamic or name not in old.sets or name in recreated:
            continue
        before = {e.key: e for e in old.sets[name].elements}
        after = {e.key: e for e in s.elements}
        gone = tuple(e for k, e in before.items() if after.get(k) != e)
        if gone:
            out.append(elements("delete", s, gone))
        fresh = tuple(e for k, e in after.items() if before.get(k) != e)
        if fresh:
            additions.append(elements("add", s, fresh))

    out.extend(NftOp("flush", "chain", name) for name in changed)
    for name in recreated:
        s = new.sets[name]
        out.append(NftOp("delete", _set_kind(s), name))
        out.append(add_set(s))
    for name in (*changed, *added_chains):
        out.extend(NftOp("add", "rule", name, rule=r) for r in new.chains[name].rules)
    out.extend(elements("add", s, s.elements) for s in added_sets if s.elements and not s.dynamic)
    out.extend(additions)

    out.extend(NftOp("flush", "chain", name) for name in removed_chains)
    out.extend(NftOp("delete", "chain", name) for name in removed_chains)
    out.extend(NftOp("delete", _set_kind(s), s.name) for s in removed_sets)
    return NftTransaction(new.family, tuple(out))
