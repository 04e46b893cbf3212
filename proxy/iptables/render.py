"""iptables mode's renderer (pure): a :class:`Plan` becomes our chains (:class:`IptablesRuleset`).

The chain layout and names are upstream kube-proxy's, so ``iptables-save`` output reads the
same as on a node running kube-proxy: ``KUBE-SERVICES`` dispatches on destination,
``KUBE-SVC-*``/``KUBE-SVL-*`` balance over ``KUBE-SEP-*`` endpoint chains with a
``statistic`` cascade, ``KUBE-EXT-*`` handles external destinations, ``KUBE-FW-*``
loadBalancerSourceRanges, and the filter table rejects or drops traffic to services
without endpoints.

Rules are written in the order ``iptables-save`` prints their matches, so a saved table
can be compared rule by rule with what we rendered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from proxy import comments
from proxy.iptables import names
from proxy.iptables.model import IptablesRuleset, jump_rules
from proxy.iptables.names import (
    COUNTER_FIXED,
    FILTER_FIXED,
    KUBE_EXTERNAL_SERVICES,
    KUBE_FIREWALL,
    KUBE_FORWARD,
    KUBE_MARK_MASQ,
    KUBE_NODEPORT_TRAFFIC,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICE_TRAFFIC,
    KUBE_SERVICES,
    NAT_FIXED,
)
from proxy.model import IPAddress, IPFamily, IPNetwork
from proxy.plan import EndpointCandidate, Filter, Plan, ServicePortKey, ServicePortPlan

IPT_COMMENT_MAX = 255
"""xt_comment holds 256 bytes with the NUL."""


def _q(comment: str) -> str:
    """``comment`` as one double-quoted iptables-restore word (:func:`comments.quotable`)."""
    return '"' + comments.quotable(comment, IPT_COMMENT_MAX) + '"'


def _comment(text: str) -> str:
    """The comment match carrying ``text``."""
    return f"-m comment --comment {_q(text)}"


class _Writer:
    """Accumulates chains (ordered) and their rules for one table."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {}

    def chain(self, name: str) -> None:
        self.chains.setdefault(name, [])

    def add(self, chain: str, *parts: str) -> None:
        self.chains.setdefault(chain, []).append(" ".join(p for p in parts if p))

    def frozen(self) -> dict[str, tuple[str, ...]]:
        return {k: tuple(v) for k, v in self.chains.items()}

    def merge(
        self, chains: tuple[tuple[str, tuple[str, ...]], ...], shared: frozenset[str]
    ) -> None:
        """Add a fragment: rules for shared chains are appended, own chains taken whole."""
        for name, rules in chains:
            if name in shared:
                self.chains.setdefault(name, []).extend(rules)
            else:
                self.chains[name] = rules  # type: ignore[assignment]


@dataclass(frozen=True)
class _Fragment:
    nat: tuple[tuple[str, tuple[str, ...]], ...]
    filter: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass
class RenderCache:
    """The fragments of the service ports of the last plan rendered with it, by service
    port: a render told which service ports changed since renders only those again."""

    params: object = None
    fragments: dict[ServicePortKey, _Fragment] = field(default_factory=dict)
    renders: int = 0
    """Fragments rendered (not reused) so far."""

    def start(self, params: object, updated: Collection[ServicePortKey] | None) -> None:
        """Forget the fragments of the ``updated`` service ports; all of them when
        plan-wide settings changed or ``updated`` is None."""
        if params != self.params or updated is None:
            self.params = params
            self.fragments.clear()
            return
        for key in updated:
            self.fragments.pop(key, None)

    def fragment(
        self, plan: Plan, sp: ServicePortPlan, local_cidr: str | None, large: bool
    ) -> _Fragment:
        """``sp``'s chains; ``large`` is :func:`large_cluster` of the plan (part of the
        parameters given to :meth:`start`)."""
        frag = self.fragments.get(sp.key)
        if frag is not None:
            return frag
        nat, flt = _Writer(), _Writer()
        _render_port(plan, sp, nat, flt, local_cidr, large)
        frag = _Fragment(
            tuple((n, tuple(r)) for n, r in nat.chains.items()),
            tuple((n, tuple(r)) for n, r in flt.chains.items()),
        )
        self.fragments[sp.key] = frag
        self.renders += 1
        return frag


def _host(ip: object, family: IPFamily) -> str:
    return f"{ip}/{32 if family is IPFamily.V4 else 128}"


def probability(n: int) -> str:
    """Upstream's statistic probability for the i-th of n remaining endpoints."""
    return f"{1.0 / n:0.10f}"


LARGE_CLUSTER_ENDPOINTS = 1000
"""Upstream's large-cluster threshold: above this many endpoint chains in all, the
per-endpoint rules (endpoint chains, and a service chain's jumps to them) carry no comment."""


def large_cluster(plan: Plan) -> bool:
    """Whether ``plan`` has more endpoint chains than :data:`LARGE_CLUSTER_ENDPOINTS`.

    Legacy iptables copies the whole table out of the kernel and back for every change, and
    a comment match takes ~290 bytes of it: at 10,000 Services × 10 endpoints, dropping the
    per-endpoint comments takes a third off every incremental restore (2.8 s → 1.9 s)."""
    return plan.endpoint_count > LARGE_CLUSTER_ENDPOINTS


def render(
    plan: Plan,
    cache: RenderCache | None = None,
    updated: Collection[ServicePortKey] | None = None,
) -> IptablesRuleset:
    """Render a plan into our nat and filter chains (pure; ``cache`` only saves work).

    ``updated`` names the service ports that may differ from the last plan rendered with
    ``cache`` (:class:`proxy.tracker.PlanUpdate`); the others' chains are taken from the
    cache. None: render every service port."""
    fam = plan.family
    nat = _Writer()
    flt = _Writer()
    for c in NAT_FIXED:
        nat.chain(c)
    for c in FILTER_FIXED:
        flt.chain(c)
    counted = plan.service_counters
    for c in COUNTER_FIXED if counted else ():
        flt.chain(c)
    mark = f"{plan.masquerade_mark:#x}"

    nat.add(KUBE_POSTROUTING, f"-m mark ! --mark {mark}/{mark}", "-j RETURN")
    nat.add(KUBE_POSTROUTING, f"-j MARK --set-xmark {mark}/0x0")  # == --xor-mark, as saved
    nat.add(
        KUBE_POSTROUTING,
        _comment("kubernetes service traffic requiring SNAT"),
        "-j MASQUERADE --random-fully",
    )
    nat.add(KUBE_MARK_MASQ, f"-j MARK --set-xmark {mark}/{mark}")  # == --or-mark, as saved

    flt.add(KUBE_FORWARD, "-m conntrack --ctstate INVALID", "-j DROP")
    flt.add(
        KUBE_FORWARD,
        _comment("kubernetes forwarding rules"),
        f"-m mark --mark {mark}/{mark}",
        "-j ACCEPT",
    )
    flt.add(
        KUBE_FORWARD,
        _comment("kubernetes forwarding conntrack rule"),
        "-m conntrack --ctstate RELATED,ESTABLISHED",
        "-j ACCEPT",
    )

    local_cidr = str(plan.cluster_cidr) if plan.cluster_cidr is not None else None
    cache = cache if cache is not None else RenderCache()
    large = large_cluster(plan)
    params = (fam, plan.masquerade_mark, plan.masquerade_all, local_cidr, large, counted)
    cache.start(params, updated)
    nat_shared = frozenset((*NAT_FIXED, KUBE_FIREWALL))
    filter_shared = frozenset((*FILTER_FIXED, *COUNTER_FIXED, KUBE_FIREWALL))
    for sp in plan.service_ports:
        frag = cache.fragment(plan, sp, local_cidr, large)
        nat.merge(frag.nat, nat_shared)
        flt.merge(frag.filter, filter_shared)
    if counted:
        _traffic_tree(plan, flt)

    # NodePort dispatch: must be the last rule of KUBE-SERVICES
    np_comment = _q("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    targets = plan.nodeports
    if targets.match_all_local:
        not_local = ""
        if fam is IPFamily.V6:
            not_local = "! -d ::1/128"
        elif not targets.include_localhost:
            not_local = "! -d 127.0.0.0/8"
        nat.add(
            KUBE_SERVICES,
            not_local,
            f"-m comment --comment {np_comment}",
            "-m addrtype --dst-type LOCAL",
            f"-j {KUBE_NODEPORTS}",
        )
    else:
        for ip in targets.addresses:
            nat.add(
                KUBE_SERVICES,
                f"-d {_host(ip, fam)}",
                f"-m comment --comment {np_comment}",
                f"-j {KUBE_NODEPORTS}",
            )

    localhost_guard = fam is IPFamily.V4 and targets.include_localhost
    if localhost_guard:
        flt.add(
            KUBE_FIREWALL,
            "! -s 127.0.0.0/8 -d 127.0.0.0/8",
            _comment("block incoming localnet connections"),
            "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT",
            "-j DROP",
        )
    return IptablesRuleset(
        family=fam,
        nat=nat.frozen(),
        filter=flt.frozen(),
        jumps=jump_rules(localhost_guard, counted),
        route_localnet=localhost_guard,
    )


def _render_port(
    plan: Plan,
    sp: ServicePortPlan,
    nat: _Writer,
    flt: _Writer,
    local_cidr: str | None,
    large: bool,
) -> None:
    fam = plan.family
    spn = sp.service_port_name
    proto = f"-p {sp.protocol.lowercase}"
    dport = f"-m {sp.protocol.lowercase} --dport {sp.port}"
    cluster_chain = names.svc_chain(sp)
    local_chain = names.svl_chain(sp)
    ext = names.ext_chain(sp)
    fw = names.fw_chain(sp)
    internal_chain = local_chain if sp.internal_policy_local else cluster_chain
    external_policy_chain = local_chain if sp.external_policy_local else cluster_chain
    lb_target = fw if (sp.uses_firewall and sp.has_endpoints) else ext
    counted = plan.service_counters
    cnt = names.cnt_chain(sp)

    def verdict(f: Filter) -> str:
        """A reject or drop: through the counting chain when traffic is counted."""
        return f"-j {cnt}" if counted else f"-j {f.upper()}"

    # declare per-service chains in a stable order
    if sp.uses_cluster_chain:
        nat.chain(cluster_chain)
    if sp.uses_local_chain:
        nat.chain(local_chain)
    if sp.uses_external_chain:
        nat.chain(ext)
    if sp.uses_firewall and sp.has_endpoints:
        nat.chain(fw)
    for ep in sp.reachable_endpoints:
        nat.chain(names.sep_chain(sp, ep.address))

    cip = _host(sp.cluster_ip, fam)
    # -- cluster IP
    if sp.has_internal_endpoints:
        nat.add(
            KUBE_SERVICES,
            f"-d {cip}",
            proto,
            _comment(f"{spn} cluster IP"),
            dport,
            f"-j {internal_chain}",
        )
        if plan.masquerade_all:
            nat.add(
                internal_chain,
                f"-d {cip}",
                proto,
                _comment(f"{spn} cluster IP"),
                dport,
                f"-j {KUBE_MARK_MASQ}",
            )
        elif local_cidr is not None:
            nat.add(
                internal_chain,
                f"! -s {local_cidr} -d {cip}",
                proto,
                _comment(f"{spn} cluster IP"),
                dport,
                f"-j {KUBE_MARK_MASQ}",
            )
    else:
        internal = sp.internal_filter or Filter.REJECT
        flt.add(
            KUBE_SERVICES,
            f"-d {cip}",
            proto,
            _comment(sp.filter_reason(internal)),
            dport,
            verdict(internal),
        )

    ext_filter = sp.external_filter
    # -- external IPs
    for ip in sp.external_ips:
        dst = f"-d {_host(ip, fam)}"
        if sp.has_endpoints:
            nat.add(KUBE_SERVICES, dst, proto, _comment(f"{spn} external IP"), dport, f"-j {ext}")
        if ext_filter is not None:
            flt.add(
                KUBE_EXTERNAL_SERVICES,
                dst,
                proto,
                _comment(sp.filter_reason(ext_filter)),
                dport,
                verdict(ext_filter),
            )
    # -- load balancer IPs
    for ip in sp.load_balancer_ips:
        dst = f"-d {_host(ip, fam)}"
        if sp.has_endpoints:
            nat.add(
                KUBE_SERVICES,
                dst,
                proto,
                _comment(f"{spn} loadbalancer IP"),
                dport,
                f"-j {lb_target}",
            )
            if sp.uses_firewall:
                flt.add(
                    KUBE_PROXY_FIREWALL,
                    dst,
                    proto,
                    _comment(f"{spn} traffic not accepted by {fw}"),
                    dport,
                    verdict(Filter.DROP),
                )
        if ext_filter is not None:
            flt.add(
                KUBE_EXTERNAL_SERVICES,
                dst,
                proto,
                _comment(sp.filter_reason(ext_filter)),
                dport,
                verdict(ext_filter),
            )
    # -- node port
    if sp.node_port:
        np_dport = f"-m {sp.protocol.lowercase} --dport {sp.node_port}"
        if sp.has_endpoints:
            nat.add(KUBE_NODEPORTS, proto, _comment(spn), np_dport, f"-j {ext}")
        if ext_filter is not None:
            flt.add(
                KUBE_EXTERNAL_SERVICES,
                proto,
                _comment(sp.filter_reason(ext_filter)),
                "-m addrtype --dst-type LOCAL",
                np_dport,
                verdict(ext_filter),
            )
    if sp.health_check_node_port:
        flt.add(
            KUBE_NODEPORTS,
            "-p tcp",
            _comment(f"{spn} health check node port"),
            f"-m tcp --dport {sp.health_check_node_port}",
            "-j ACCEPT",
        )

    # -- external chain
    if sp.uses_external_chain:
        if not sp.external_policy_local:
            nat.add(
                ext,
                _comment(f"masquerade traffic for {spn} external destinations"),
                f"-j {KUBE_MARK_MASQ}",
            )
        else:
            if local_cidr is not None and sp.uses_cluster_chain:
                nat.add(
                    ext,
                    f"-s {local_cidr}",
                    _comment(f"pod traffic for {spn} external destinations"),
                    f"-j {cluster_chain}",
                )
            nat.add(
                ext,
                _comment(f"masquerade LOCAL traffic for {spn} external destinations"),
                "-m addrtype --src-type LOCAL",
                f"-j {KUBE_MARK_MASQ}",
            )
            if sp.uses_cluster_chain:
                nat.add(
                    ext,
                    _comment(f"route LOCAL traffic for {spn} external destinations"),
                    "-m addrtype --src-type LOCAL",
                    f"-j {cluster_chain}",
                )
        if sp.has_external_endpoints:
            nat.add(ext, f"-j {external_policy_chain}")

    # -- firewall chain (loadBalancerSourceRanges)
    if sp.uses_firewall and sp.has_endpoints:
        for src in sp.firewall_allowed_sources:
            nat.add(fw, f"-s {src}", _comment(f"{spn} loadbalancer IP"), f"-j {ext}")
        nat.add(fw, _comment(f"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"))

    # -- policy chains
    if sp.uses_cluster_chain:
        _balance(nat, sp, cluster_chain, sp.cluster_endpoints, large)
    if sp.uses_local_chain:
        _balance(nat, sp, local_chain, sp.local_endpoints, large)

    if counted:
        _count(sp, flt, cnt)

    # -- endpoint chains
    ep_comment = "" if large else _comment(spn)
    for ep in sp.reachable_endpoints:
        sep = names.sep_chain(sp, ep.address)
        nat.add(sep, f"-s {_host(ep.ip, fam)}", ep_comment, f"-j {KUBE_MARK_MASQ}")
        recent = (
            f"-m recent --set --name {sep} --mask {_full_mask(fam)} --rsource"
            if (sp.affinity_seconds is not None)
            else ""
        )
        nat.add(
            sep,
            proto,
            ep_comment,
            recent,
            f"-m {sp.protocol.lowercase}",
            f"-j DNAT --to-destination {ep.address}",
        )


def counted_label(sp: ServicePortPlan) -> str:
    """``ns/name:port`` with the port's name, or ``#`` and its number when it has none:
    what a counting rule's comment names (:func:`proxy.traffic.parse_counted_comment`)."""
    return f"{sp.namespace}/{sp.name}:{sp.port_name or '#' + str(sp.port)}"


def _count(sp: ServicePortPlan, flt: _Writer, cnt: str) -> None:
    """``--metrics-service-counters``: the service port's counting chain (its rules'
    counters are the figures: DNATed packets both ways, and those it rejects or drops,
    which the filter rules send here), and the dispatch to it by conntrack's original
    destination."""
    proto = sp.protocol.lowercase
    label = counted_label(sp)
    flt.chain(cnt)
    dnat = "-m conntrack --ctstate DNAT"
    flt.add(cnt, dnat, _comment(f"{label} dnat"), "-j RETURN")
    if not sp.has_endpoints:
        flt.add(cnt, _comment(f"{label} reject"), "-j REJECT")
    elif sp.internal_filter or sp.external_filter or sp.uses_firewall:
        flt.add(cnt, _comment(f"{label} drop"), "-j DROP")
    if sp.node_port:
        flt.add(
            KUBE_NODEPORT_TRAFFIC,
            f"-p {proto} {dnat} --ctorigdstport {sp.node_port}",
            f"-g {cnt}",
        )


TRAFFIC_LEAF = 16
"""At most this many service destinations are compared in one chain of the traffic
dispatch tree (:func:`_traffic_tree`), unless the tree is as deep as it may be."""
TRAFFIC_DEPTH = 8
"""Levels of the traffic dispatch tree below its root. nf_tables refuses a rule that
makes a chain reachable more than 16 jumps or gotos deep (EMLINK, "Too many links"):
built-in chain, root, 8 levels, the NodePort dispatch and a counting chain stay well
below. A prefix with one used half costs no level (the tree skips it)."""


def _traffic_tree(plan: Plan, flt: _Writer) -> None:
    """Every packet of a DNATed connection goes to its service port's counting chain, by
    conntrack's original destination. A flat list would compare each packet with every
    service destination (iptables has no maps): the destinations are split by address
    prefix into a binary tree of chains instead, ``KUBE-SERVICE-TRAFFIC`` its root, with
    at most :data:`TRAFFIC_LEAF` destinations compared in a leaf: about 2·log2(N/16) + 16
    rules per packet, at most :data:`TRAFFIC_DEPTH` levels deep. Every chain is entered
    by goto and ends in the NodePort dispatch, so a connection is counted once (a
    NodePort's port may be a ClusterIP's too)."""
    fam = plan.family
    bits = 32 if fam is IPFamily.V4 else 128
    rules: list[tuple[IPAddress, str]] = []
    for sp in plan.service_ports:
        proto, cnt = sp.protocol.lowercase, names.cnt_chain(sp)
        for ip in (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips):
            rules.append((ip, f"-p {proto} -m conntrack --ctorigdst {ip} "
                              f"--ctorigdstport {sp.port} -g {cnt}"))  # fmt: skip
    rules.sort(key=lambda r: (int(r[0]), r[1]))
    nodeports = f"-j {KUBE_NODEPORT_TRAFFIC}"

    def build(chain: str, net: IPNetwork, group: list[tuple[IPAddress, str]], depth: int) -> None:
        """``chain`` for the destinations of ``group`` (all within ``net``)."""
        while len(group) > TRAFFIC_LEAF and net.prefixlen < bits and depth < TRAFFIC_DEPTH:
            halves = [(h, [r for r in group if r[0] in h]) for h in net.subnets(prefixlen_diff=1)]
            used = [(h, inside) for h, inside in halves if inside]
            if len(used) == 2:
                break
            net = used[0][0]  # one half holds them all: no chain for it (no level)
        if len(group) <= TRAFFIC_LEAF or net.prefixlen == bits or depth >= TRAFFIC_DEPTH:
            for _, rule in group:
                flt.add(chain, rule)
        else:
            for half, inside in used:
                child = names.traffic_chain(str(half))
                flt.chain(child)
                flt.add(chain, f"-m conntrack --ctorigdst {half}", f"-g {child}")
                build(child, half, inside, depth + 1)
        flt.add(chain, nodeports)

    if not rules:
        flt.add(KUBE_SERVICE_TRAFFIC, nodeports)
        return
    first, last = int(rules[0][0]), int(rules[-1][0])
    common = bits - (first ^ last).bit_length()
    root = ipaddress.ip_network(f"{rules[0][0]}/{common}", strict=False)
    build(KUBE_SERVICE_TRAFFIC, root, rules, 0)


def _full_mask(fam: IPFamily) -> str:
    return "255.255.255.255" if fam is IPFamily.V4 else "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def _balance(
    nat: _Writer,
    sp: ServicePortPlan,
    chain: str,
    endpoints: Iterable[EndpointCandidate],
    large: bool,
) -> None:
    """Affinity lookups first, then a statistic cascade: the i-th of n endpoints is taken
    with probability 1/(n-i), which makes the overall choice uniform."""
    eps = list(endpoints)
    spn = sp.service_port_name

    def comment(ep: EndpointCandidate) -> str:
        return "" if large else _comment(f"{spn} -> {ep.address}")

    if sp.affinity_seconds is not None:
        for ep in eps:
            sep = names.sep_chain(sp, ep.address)
            nat.add(
                chain,
                comment(ep),
                f"-m recent --rcheck --seconds {sp.affinity_seconds} --reap --name {sep} "
                f"--mask {_full_mask(sp.family)} --rsource",
                f"-j {sep}",
            )
    n = len(eps)
    for i, ep in enumerate(eps):
        sep = names.sep_chain(sp, ep.address)
        stat = f"-m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
        nat.add(chain, comment(ep), stat, f"-j {sep}")
