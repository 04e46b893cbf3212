"""What this node's rules do with one packet, and why: a pure function over the plan.

:func:`explain` walks the same decisions the renderers turn into rules, in the order the
kernel meets them (LoadBalancer source ranges before DNAT, no-endpoint checks, the
Service's traffic policy, endpoint selection, masquerading), and says at each step what
it found. It reads only the :class:`~proxy.plan.Plan` (every Kubernetes semantic is
decided there) and, for Services the plan leaves out, the Services themselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from proxy.config import ProxyMode
from proxy.explain.packet import Entry, Packet
from proxy.model import IPAddress, IPFamily, Service
from proxy.plan import EndpointCandidate, Filter, Plan, ServicePortPlan, TopologyMode


class Verdict(StrEnum):
    DNAT = "dnat"
    REJECT = "reject"
    DROP = "drop"
    NOT_A_SERVICE = "not-a-service"


class Path(StrEnum):
    """Which of the Service's addresses the packet was sent to."""

    CLUSTER_IP = "clusterIP"
    EXTERNAL_IP = "externalIP"
    LOAD_BALANCER_IP = "loadBalancerIP"
    NODE_PORT = "nodePort"


REJECT_WITH = {
    IPFamily.V4: "icmp port-unreachable (type 3, code 3)",
    IPFamily.V6: "icmpv6 port-unreachable (type 1, code 4)",
}
"""What a reject answers with in both modes (nft ``reject``, iptables ``-j REJECT``): TCP
clients see 'connection refused' too."""


@dataclass(frozen=True)
class AffinityEntry:
    """A live session affinity entry of the packet's source: the endpoint it is pinned to
    and the seconds left before it expires."""

    endpoint: str
    """``ip:port`` (``[ip]:port`` in IPv6)."""
    seconds_left: int


@dataclass(frozen=True)
class EndpointVerdict:
    """One endpoint the EndpointSlices list for the service port, and what the rules
    do with it for this packet."""

    address: str
    port: int
    node: str | None
    kept: bool
    reason: str
    probability: float
    masquerade: bool = False

    @property
    def target(self) -> str:
        """``ip:port`` (``[ip]:port`` in IPv6)."""
        if ":" in self.address:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Explanation:
    packet: Packet
    node: str
    mode: ProxyMode
    verdict: Verdict
    reason: str
    service: str | None = None
    """upstream's ServicePortName: ``ns/name:port-name`` (``ns/name`` for an unnamed port)."""
    port_plan: ServicePortPlan | None = field(default=None, compare=False, repr=False)
    path: Path | None = None
    endpoints: tuple[EndpointVerdict, ...] = ()
    masquerade: bool = False
    masquerade_reason: str = ""
    reject_with: str | None = None
    selection: str = ""
    affinity_seconds: int | None = None
    affinity: AffinityEntry | None = None
    steps: tuple[str, ...] = ()
    """What the rules found, in the order the kernel meets them."""

    @property
    def kept(self) -> tuple[EndpointVerdict, ...]:
        return tuple(e for e in self.endpoints if e.kept)


@dataclass(frozen=True)
class NodeView:
    """What explain needs to know about the node besides its plan."""

    local_addresses: frozenset[IPAddress] = frozenset()
    """Every address of the node (its Node object's, its interfaces'); loopback is
    always local."""

    def is_local(self, ip: IPAddress) -> bool:
        return ip.is_loopback or ip in self.local_addresses


def explain(
    plan: Plan,
    packet: Packet,
    *,
    node: NodeView | None = None,
    services: Iterable[Service] = (),
    affinity: Mapping[str, int] | None = None,
) -> Explanation:
    """What ``plan``'s rules do with ``packet``.

    ``services``: the Services of the state, to name a Service the plan leaves out (another
    proxy's, headless, …). ``affinity``: live session affinity entries of the packet's
    source for the matched service port, endpoint ``ip:port`` → seconds left (live
    explain reads them from the kernel)."""
    if packet.family is not plan.family:
        raise ValueError(
            f"an {packet.family} packet cannot be explained with the {plan.family} plan"
        )
    return _Walk(plan, packet, node or NodeView(), tuple(services), affinity or {}).run()


class _Walk:
    def __init__(
        self,
        plan: Plan,
        packet: Packet,
        node: NodeView,
        services: tuple[Service, ...],
        affinity: Mapping[str, int],
    ) -> None:
        self.plan, self.packet, self.node = plan, packet, node
        self.services = services
        self.affinity = affinity
        self.steps: list[str] = []
        self.nft = plan.mode is ProxyMode.NFTABLES

    # -- results -------------------------------------------------------------------------
    def result(self, verdict: Verdict, reason: str, **kw: object) -> Explanation:
        reject = REJECT_WITH[self.plan.family] if verdict is Verdict.REJECT else None
        return Explanation(
            packet=self.packet,
            node=self.plan.node_name,
            mode=self.plan.mode,
            verdict=verdict,
            reason=reason,
            reject_with=reject,
            steps=tuple(self.steps),
            **kw,  # type: ignore[arg-type]
        )

    def routed(self, reason: str) -> Explanation:
        return self.result(
            Verdict.NOT_A_SERVICE,
            reason + "; kube-proxy-py leaves it alone and the node routes it as any other packet",
        )

    # -- the walk ------------------------------------------------------------------------
    def run(self) -> Explanation:
        pkt = self.packet
        if pkt.protocol is None:
            return self.no_port()
        found = self.match()
        if found is None:
            return self.no_match()
        sp, path = found
        self.steps.append(
            f"{pkt.dst} {pkt.protocol_name} port {pkt.dport} is {_path_words(path, sp)} of "
            f"{sp.service_port_name}"
        )
        if path is Path.CLUSTER_IP:
            return self.internal(sp)
        return self.external(sp, path)

    def match(self) -> tuple[ServicePortPlan, Path] | None:
        pkt = self.packet
        for sp in self.plan.service_ports:
            if sp.protocol is not pkt.protocol or sp.port != pkt.dport:
                continue
            if sp.cluster_ip == pkt.dst:
                return sp, Path.CLUSTER_IP
            if pkt.dst in sp.external_ips:
                return sp, Path.EXTERNAL_IP
            if pkt.dst in sp.load_balancer_ips:
                return sp, Path.LOAD_BALANCER_IP
        if not self.accepts_node_ports(pkt.dst):
            return None
        for sp in self.plan.service_ports:
            if sp.protocol is pkt.protocol and sp.node_port == pkt.dport:
                return sp, Path.NODE_PORT
        return None

    def accepts_node_ports(self, dst: IPAddress) -> bool:
        targets = self.plan.nodeports
        if not targets.match_all_local:
            return dst in targets.addresses and not (self.nft and dst.is_loopback)
        if not self.node.is_local(dst):
            return False
        if dst.is_loopback:
            return not self.nft and targets.include_localhost
        return True

    def node_port_words(self) -> str:
        targets = self.plan.nodeports
        if targets.match_all_local:
            return "every local address of the node" + (
                ", 127.0.0.1 included" if targets.include_localhost else ""
            )
        if not targets.addresses:
            return "no address (the node's primary IP is unknown)"
        return ", ".join(str(a) for a in targets.addresses)

    # -- no service port -----------------------------------------------------------------
    def cluster_ip_owner(self, ip: IPAddress) -> list[ServicePortPlan]:
        return [sp for sp in self.plan.service_ports if sp.cluster_ip == ip]

    def no_port(self) -> Explanation:
        pkt = self.packet
        owners = self.cluster_ip_owner(pkt.dst)
        if owners:
            svc = f"{owners[0].namespace}/{owners[0].name}"
            self.steps.append(
                f"{pkt.dst} is the ClusterIP of {svc}: it exists only as IP:port/protocol "
                "matches in DNAT rules, on no interface, and ICMP carries no port"
            )
            return self.unclaimed_cluster_ip(svc, "ICMP carries no port to match")
        if self.node.is_local(pkt.dst):
            return self.routed(f"{pkt.dst} is an address of this node: the node itself answers")
        return self.not_ours()

    def unclaimed_cluster_ip(self, svc: str, why: str) -> Explanation:
        if self.nft:
            self.steps.append(
                "nftables mode rejects new traffic to a ClusterIP that no service port "
                "claims (chain cluster-ips-check)"
            )
            return self.result(
                Verdict.REJECT,
                f"{self.packet.dst} is the ClusterIP of {svc}, but {why}: nftables mode rejects it",
            )
        self.steps.append("in iptables mode no rule matches it")
        return self.routed(f"{self.packet.dst} is the ClusterIP of {svc}, but {why}")

    def no_match(self) -> Explanation:
        pkt = self.packet
        owners = self.cluster_ip_owner(pkt.dst)
        if owners:
            svc = f"{owners[0].namespace}/{owners[0].name}"
            ports = ", ".join(sorted({f"{sp.port}/{sp.protocol}" for sp in owners}))
            self.steps.append(
                f"{pkt.dst} is the ClusterIP of {svc}, which has no port "
                f"{pkt.dport}/{pkt.protocol} (its ports: {ports})"
            )
            return self.unclaimed_cluster_ip(svc, f"it has no port {pkt.dport}/{pkt.protocol}")
        for skipped in self.services:
            if pkt.dst in skipped.cluster_ips and skipped.skip_reason is not None:
                name = f"{skipped.namespace}/{skipped.name}"
                self.steps.append(f"{pkt.dst} is the ClusterIP of {name}")
                return self.routed(
                    f"{name} is not programmed by kube-proxy-py: {skipped.skip_reason}"
                )
        for sp in self.plan.service_ports:
            if sp.health_check_node_port == pkt.dport and self.node.is_local(pkt.dst):
                return self.routed(
                    f"port {pkt.dport} is the healthCheckNodePort of {sp.namespace}/{sp.name}: "
                    "kube-proxy-py's health check server on the node answers it"
                )
        if self.node.is_local(pkt.dst):
            self.steps.append(
                f"{pkt.dst} is an address of this node, but no NodePort {pkt.dport}/"
                f"{pkt.protocol} is served on it (NodePorts are served on "
                f"{self.node_port_words()})"
            )
            return self.routed(f"{pkt.dst} is an address of this node; nothing proxies it")
        return self.not_ours()

    def not_ours(self) -> Explanation:
        pkt = self.packet
        for sp in self.plan.service_ports:
            if any(c.ip == pkt.dst for c in sp.candidates):
                return self.routed(
                    f"{pkt.dst} is not a Service address but an endpoint (pod) of "
                    f"{sp.namespace}/{sp.name}: traffic to a pod IP goes straight to it"
                )
        return self.routed(
            f"{pkt.dst} is no ClusterIP, ExternalIP, LoadBalancer IP or NodePort of "
            f"the Services on node {self.plan.node_name}"
        )

    # -- ClusterIP -----------------------------------------------------------------------
    def internal(self, sp: ServicePortPlan) -> Explanation:
        f = sp.internal_filter
        if f is not None:
            return self.filtered(sp, Path.CLUSTER_IP, f, local=sp.internal_policy_local)
        policy = "Local" if sp.internal_policy_local else "Cluster"
        eps = sp.local_endpoints if sp.internal_policy_local else sp.cluster_endpoints
        self.steps.append(f"internalTrafficPolicy {policy}: {self.eligible_words(sp, eps)}")
        masq, why = self.cluster_ip_masquerade()
        return self.dnat(sp, Path.CLUSTER_IP, eps, masq, why, local=sp.internal_policy_local)

    def cluster_ip_masquerade(self) -> tuple[bool, str]:
        plan, src = self.plan, self.packet.src
        if plan.masquerade_all:
            return True, "--masquerade-all: all traffic to ClusterIPs is masqueraded"
        if plan.cluster_cidr is None:
            return False, (
                "no --cluster-cidr, so ClusterIP traffic is not masqueraded (only a pod "
                "reaching itself is)"
            )
        if src in plan.cluster_cidr:
            return False, (
                f"the source {src} is inside --cluster-cidr {plan.cluster_cidr}: pod "
                "traffic keeps its address"
            )
        return True, (
            f"the source {src} is outside --cluster-cidr {plan.cluster_cidr}: masqueraded "
            "so that the replies come back through this node"
        )

    # -- ExternalIP, LoadBalancer IP, NodePort -------------------------------------------
    def external(self, sp: ServicePortPlan, path: Path) -> Explanation:
        pkt = self.packet
        if path is Path.LOAD_BALANCER_IP and sp.uses_firewall:
            allowed = sp.firewall_allowed_sources
            ranges = ", ".join(str(r) for r in sp.source_ranges)
            if not any(pkt.src in r for r in allowed):
                if self.nft or sp.has_endpoints:
                    self.steps.append(f"loadBalancerSourceRanges ({ranges}) do not hold {pkt.src}")
                    return self.result(
                        Verdict.DROP,
                        f"{pkt.src} is outside the loadBalancerSourceRanges of "
                        f"{sp.service_port_name} ({ranges}): dropped before DNAT",
                        **self.service_fields(sp, path),
                    )
            else:
                self.steps.append(f"loadBalancerSourceRanges ({ranges}) allow {pkt.src}")
        if not sp.has_endpoints:
            return self.filtered(sp, path, Filter.REJECT, local=False)
        if not sp.external_policy_local:
            self.steps.append(
                "externalTrafficPolicy Cluster: external traffic is masqueraded and may go "
                f"to any endpoint; {self.eligible_words(sp, sp.cluster_endpoints)}"
            )
            return self.dnat(
                sp,
                path,
                sp.cluster_endpoints,
                True,
                "externalTrafficPolicy Cluster: the endpoint may be on another node, and its "
                "reply must come back through this node",
            )
        cidr = self.plan.cluster_cidr
        if cidr is not None and pkt.src in cidr and sp.uses_cluster_chain:
            self.steps.append(
                f"externalTrafficPolicy Local, but {pkt.src} is a pod (inside --cluster-cidr "
                f"{cidr}): pod traffic short-circuits to every endpoint"
            )
            masq, why = False, f"pod traffic (source inside --cluster-cidr {cidr})"
            return self.dnat(sp, path, sp.cluster_endpoints, masq, why)
        if pkt.entry is Entry.NODE:
            why = "traffic from the node itself is masqueraded"
            if sp.uses_cluster_chain:
                self.steps.append(
                    "externalTrafficPolicy Local, but the packet comes from the node itself: "
                    "it is masqueraded and short-circuits to every endpoint"
                )
                return self.dnat(sp, path, sp.cluster_endpoints, True, why)
            if sp.has_external_endpoints:
                return self.dnat(sp, path, sp.local_endpoints, True, why, local=True)
        if not sp.has_external_endpoints:
            return self.filtered(sp, path, Filter.DROP, local=True)
        self.steps.append(
            "externalTrafficPolicy Local: only this node's endpoints, and the client's "
            f"address is kept; {self.eligible_words(sp, sp.local_endpoints)}"
        )
        return self.dnat(
            sp,
            path,
            sp.local_endpoints,
            False,
            "externalTrafficPolicy Local: the endpoint is on this node, so the client's "
            "address is kept",
            local=True,
        )

    # -- outcomes ------------------------------------------------------------------------
    def service_fields(self, sp: ServicePortPlan, path: Path) -> dict[str, object]:
        return {
            "service": sp.service_port_name,
            "port_plan": sp,
            "path": path,
            "affinity_seconds": sp.affinity_seconds,
        }

    def filtered(self, sp: ServicePortPlan, path: Path, f: Filter, *, local: bool) -> Explanation:
        verdicts = tuple(self.endpoint_verdicts(sp, (), local=local))
        if f is Filter.REJECT:
            listed = len(sp.candidates)
            why = (
                "no endpoint"
                if not listed
                else f"none of its {listed} endpoint(s) is ready or serving-terminating"
            )
            self.steps.append(f"{sp.service_port_name} has {why}")
            return self.result(
                Verdict.REJECT,
                f"{sp.service_port_name} has {why}: the connection is rejected at once "
                "('connection refused') rather than left to time out",
                endpoints=verdicts,
                **self.service_fields(sp, path),
            )
        policy = "internalTrafficPolicy" if path is Path.CLUSTER_IP else "externalTrafficPolicy"
        self.steps.append(
            f"{policy} Local, and no endpoint of {sp.service_port_name} is on node "
            f"{self.plan.node_name}"
        )
        return self.result(
            Verdict.DROP,
            f"{policy} Local sends traffic only to endpoints on this node, and node "
            f"{self.plan.node_name} has none (other nodes do): the packet is dropped",
            endpoints=verdicts,
            **self.service_fields(sp, path),
        )

    def dnat(
        self,
        sp: ServicePortPlan,
        path: Path,
        eps: tuple[EndpointCandidate, ...],
        masq: bool,
        masq_reason: str,
        *,
        local: bool = False,
    ) -> Explanation:
        """DNAT to one of ``eps`` (``local``: the traffic policy's Local set)."""
        pkt = self.packet
        pinned = self.pinned(sp, {c.address for c in eps})
        verdicts = []
        for v in self.endpoint_verdicts(sp, eps, local=local):
            p = 0.0
            if v.kept:
                p = (1.0 if v.target == pinned else 0.0) if pinned else 1.0 / len(eps)
            # nftables keeps a hairpin set of this node's endpoints; iptables marks a
            # connection from any endpoint to itself
            hairpin = (
                v.kept
                and pkt.src == ipaddress.ip_address(v.address)
                and (not self.nft or v.node == self.plan.node_name)
            )
            verdicts.append(_with(v, p, masq or hairpin))
        selection = self.selection_words(sp, len(eps), pinned)
        if not masq and any(v.masquerade for v in verdicts):
            masq_reason += (
                f"; but a connection from {pkt.src} to itself (hairpin) is masqueraded, or "
                "its reply would never leave the pod"
            )
        chosen = [v.target for v in verdicts if v.kept and v.probability > 0]
        how = " (session affinity)" if pinned else ""
        return self.result(
            Verdict.DNAT,
            f"DNAT to {'one of ' if len(chosen) > 1 else ''}{', '.join(chosen)}{how}",
            endpoints=tuple(verdicts),
            masquerade=masq,
            masquerade_reason=masq_reason,
            selection=selection,
            affinity=(AffinityEntry(pinned, self.affinity[pinned]) if pinned is not None else None),
            **self.service_fields(sp, path),
        )

    def pinned(self, sp: ServicePortPlan, chosen: Collection[str]) -> str | None:
        if sp.affinity_seconds is None:
            return None
        live = [(left, ep) for ep, left in self.affinity.items() if ep in chosen and left > 0]
        return max(live)[1] if live else None

    def selection_words(self, sp: ServicePortPlan, n: int, pinned: str | None) -> str:
        how = "nftables' numgen random" if self.nft else "iptables' statistic --probability cascade"
        if n == 1:
            base = "one endpoint: every new connection goes to it"
        else:
            base = (
                f"each new connection picks one of the {n} endpoints at random, 1 in {n} "
                f"({how}); a connection already open (HTTP keep-alive) stays on the endpoint "
                "it got"
            )
        if sp.affinity_seconds is None:
            return base
        if pinned is not None:
            return (
                f"sessionAffinity ClientIP: {self.packet.src} has an affinity entry for "
                f"{pinned} ({self.affinity[pinned]} s left), so it goes there again"
            )
        return (
            f"sessionAffinity ClientIP ({sp.affinity_seconds} s): {self.packet.src}'s first "
            f"connection picks as without affinity ({base}); its later ones go to the same "
            "endpoint until the entry expires"
        )

    def eligible_words(self, sp: ServicePortPlan, eps: tuple[EndpointCandidate, ...]) -> str:
        n, listed = len(eps), len(sp.candidates)
        return (
            f"{n} of the {listed} endpoint{'s' if listed != 1 else ''} listed "
            f"{'is' if n == 1 else 'are'} used"
        )

    # -- per endpoint --------------------------------------------------------------------
    def endpoint_verdicts(
        self, sp: ServicePortPlan, eps: tuple[EndpointCandidate, ...], *, local: bool
    ) -> Iterable[EndpointVerdict]:
        kept = {c.address for c in eps}
        any_ready = any(c.ready for c in sp.candidates)
        any_local_ready = any(c.ready and c.is_local for c in sp.candidates)
        for c in sp.candidates:
            ok = c.address in kept
            why = (
                self.kept_reason(sp, c, local)
                if ok
                else self.filtered_reason(sp, c, local, any_local_ready if local else any_ready)
            )
            yield EndpointVerdict(str(c.ip), c.port, c.node_name, ok, why, 0.0)

    def kept_reason(self, sp: ServicePortPlan, c: EndpointCandidate, local: bool) -> str:
        state = (
            "ready"
            if c.ready
            else (
                "serving and terminating: no endpoint is ready, so terminating ones that still "
                "serve are used"
            )
        )
        if local:
            return f"{state}, on this node"
        if sp.topology_mode is TopologyMode.PREFER_SAME_ZONE:
            return f"{state}, hinted for zone {self.plan.node_zone} (this node's)"
        if sp.topology_mode is TopologyMode.PREFER_SAME_NODE:
            return f"{state}, hinted for this node"
        return state

    def filtered_reason(
        self, sp: ServicePortPlan, c: EndpointCandidate, local: bool, ready_exists: bool
    ) -> str:
        if not c.ready and not c.serving:
            return "terminating and no longer serving" if c.terminating else "not ready"
        if local and not c.is_local:
            return f"on node {c.node_name or '(none)'}, not this one: the traffic policy is Local"
        zone = self.plan.node_zone
        mode = TopologyMode.NONE if local else sp.topology_mode
        if mode is TopologyMode.PREFER_SAME_ZONE and zone not in c.zone_hints:
            hints = ", ".join(sorted(c.zone_hints))
            return f"topology hints: for zone {hints}, and this node is in zone {zone}"
        if mode is TopologyMode.PREFER_SAME_NODE and self.plan.node_name not in c.node_hints:
            return "topology hints: for other nodes"
        if c.serving_terminating and ready_exists:
            return "terminating (still serving): used only when no endpoint is ready"
        return "not used"


def _with(v: EndpointVerdict, probability: float, masquerade: bool) -> EndpointVerdict:
    return EndpointVerdict(v.address, v.port, v.node, v.kept, v.reason, probability, masquerade)


def _path_words(path: Path, sp: ServicePortPlan) -> str:
    if path is Path.CLUSTER_IP:
        return "the ClusterIP port"
    if path is Path.EXTERNAL_IP:
        return "an ExternalIP port"
    if path is Path.LOAD_BALANCER_IP:
        return "a LoadBalancer IP port"
    return f"NodePort {sp.node_port}"
