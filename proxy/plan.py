"""The planner: every Kubernetes Service semantic, as a pure function.

``plan(snapshot, config, family)`` turns Services, EndpointSlices and the Node into one
:class:`ServicePortPlan` per (Service, port) of that IP family. The backends only
translate a plan into rules; which endpoints are eligible for which traffic, what is
masqueraded and whether traffic is rejected or dropped is decided here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from proxy.config import ProxyConfig, ProxyMode
from proxy.model import (
    AddressType,
    EndpointSlice,
    IPAddress,
    IPFamily,
    IPNetwork,
    Node,
    ObjectRef,
    Problem,
    Protocol,
    Service,
    ServicePort,
    TrafficPolicy,
)


class TopologyMode(StrEnum):
    NONE = ""
    PREFER_SAME_NODE = "PreferSameNode"
    PREFER_SAME_ZONE = "PreferSameZone"


class Filter(StrEnum):
    """What happens to traffic that has no usable endpoint."""

    REJECT = "reject"
    DROP = "drop"


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the API objects the proxy reads."""

    services: tuple[Service, ...] = ()
    slices: tuple[EndpointSlice, ...] = ()
    node: Node | None = None
    service_index: Mapping[tuple[str, str], Service] | None = field(
        default=None, compare=False, repr=False
    )
    """The services by (namespace, name), if the source keeps them so (saves a pass)."""
    slice_index: Mapping[tuple[str, str], tuple[EndpointSlice, ...]] | None = field(
        default=None, compare=False, repr=False
    )
    """The slices by their Service's (namespace, name), likewise."""


@dataclass(frozen=True, order=True)
class EndpointCandidate:
    """One endpoint (ip:port) of a service port, with everything needed to explain it."""

    ip: IPAddress
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    zone_hints: frozenset[str] = field(default=frozenset(), compare=False)
    node_hints: frozenset[str] = field(default=frozenset(), compare=False)
    is_local: bool = False

    @cached_property
    def address(self) -> str:
        """``ip:port`` (``[ip]:port`` for IPv6), as upstream spells it."""
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"

    @property
    def serving_terminating(self) -> bool:
        return self.serving and self.terminating


ServiceKey = tuple[str, str]
"""A Service: namespace, name."""
ServicePortKey = tuple[str, str, str, Protocol]
"""A service port: namespace, Service name, port name, protocol (upstream's ServicePortName,
with the protocol)."""


@dataclass(frozen=True)
class ServicePortPlan:
    """Everything the backends need to program one service port in one IP family."""

    namespace: str
    name: str
    port_name: str
    protocol: Protocol
    family: IPFamily
    cluster_ip: IPAddress
    port: int
    node_port: int | None = None
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    source_ranges: tuple[IPNetwork, ...] = ()
    affinity_seconds: int | None = None
    internal_policy_local: bool = False
    external_policy_local: bool = False
    """eTP=Local on an externally reachable port (NodePort, ExternalIP or LB IP)."""
    health_check_node_port: int | None = None
    node_ip: IPAddress | None = None
    """This node's primary IP of the family (source-range exception for node traffic)."""
    candidates: tuple[EndpointCandidate, ...] = ()
    """Every endpoint the slices list for this port, before any filtering."""
    topology_mode: TopologyMode = TopologyMode.NONE
    cluster_endpoints: tuple[EndpointCandidate, ...] = ()
    local_endpoints: tuple[EndpointCandidate, ...] = ()
    reachable_endpoints: tuple[EndpointCandidate, ...] = ()
    """Endpoints any rule may DNAT to (union of cluster and local)."""
    has_usable_endpoints: bool = False
    """Some node has a ready (or serving-terminating) endpoint, even if none is usable from
    here (iTP=Local with only remote endpoints): decides DROP rather than REJECT."""

    # -- names ---------------------------------------------------------------------------
    @cached_property
    def key(self) -> ServicePortKey:
        """The service port's identity across plans (what renderers key their caches by)."""
        return (self.namespace, self.name, self.port_name, self.protocol)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Service", self.namespace, self.name)

    @property
    def service_port_name(self) -> str:
        """``ns/name:port`` (``ns/name`` for an unnamed port), upstream's ServicePortName."""
        suffix = f":{self.port_name}" if self.port_name else ""
        return f"{self.namespace}/{self.name}{suffix}"

    # -- derived semantics ---------------------------------------------------------------
    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        # Even with eTP=Local, external ports short-circuit pod and node traffic to
        # cluster endpoints.
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or self.external_policy_local

    @property
    def has_endpoints(self) -> bool:
        return self.has_usable_endpoints

    @property
    def has_internal_endpoints(self) -> bool:
        if self.internal_policy_local:
            return bool(self.local_endpoints)
        return self.has_endpoints

    @property
    def has_external_endpoints(self) -> bool:
        if self.external_policy_local:
            return bool(self.local_endpoints)
        return self.has_endpoints

    @property
    def uses_cluster_chain(self) -> bool:
        return bool(self.cluster_endpoints) and self.uses_cluster_endpoints

    @property
    def uses_local_chain(self) -> bool:
        return bool(self.local_endpoints) and self.uses_local_endpoints

    @property
    def uses_external_chain(self) -> bool:
        return self.has_endpoints and self.externally_accessible

    @property
    def uses_firewall(self) -> bool:
        """loadBalancerSourceRanges restrict traffic to the LB IPs."""
        return bool(self.load_balancer_ips) and bool(self.source_ranges)

    @property
    def internal_filter(self) -> Filter | None:
        """REJECT when nothing serves; DROP when only local endpoints are missing."""
        if not self.has_endpoints:
            return Filter.REJECT
        if not self.has_internal_endpoints:
            return Filter.DROP
        return None

    @property
    def external_filter(self) -> Filter | None:
        if not self.has_endpoints:
            return Filter.REJECT
        if not self.has_external_endpoints:
            return Filter.DROP
        return None

    def filter_reason(self, verdict: Filter) -> str:
        if verdict is Filter.REJECT:
            return f"{self.service_port_name} has no endpoints"
        return f"{self.service_port_name} has no local endpoints"

    @property
    def firewall_allowed_sources(self) -> tuple[IPNetwork, ...]:
        """Sources the LB firewall lets through: the ranges, plus the LB IPs themselves
        when the node's own IP is inside a range (node traffic looping back to a VIP).
        Overlaps are merged, so the list is usable as an nftables interval set."""
        allowed: list[IPNetwork] = list(self.source_ranges)
        if self.node_ip is not None and any(self.node_ip in r for r in self.source_ranges):
            allowed.extend(ipaddress.ip_network(ip) for ip in self.load_balancer_ips)
        v4 = [n for n in allowed if isinstance(n, ipaddress.IPv4Network)]
        v6 = [n for n in allowed if isinstance(n, ipaddress.IPv6Network)]
        return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


UpdatedServicePorts = Mapping[ServicePortKey, ServicePortPlan | None]
"""The service ports that may differ from the previous plan (came, went or changed), each
with its plan in the new one (None: gone): upstream's UpdatedServices, per service port.
:class:`proxy.tracker.PlanTracker` says so; the renderers render only these again."""


@dataclass(frozen=True)
class NodePortTargets:
    """Which destination addresses accept NodePort traffic, resolved for one family."""

    match_all_local: bool
    addresses: tuple[IPAddress, ...] = ()
    include_localhost: bool = False
    """iptables: localhost NodePorts work (route_localnet=1 plus a guard rule)."""


@dataclass(frozen=True)
class SkippedService:
    """A Service (or, ``partial``, part of one) that is not programmed, and why."""

    ref: ObjectRef
    reason: str
    code: str = ""
    """The reason as a metric label (``headless``, ``ipv6-only``, ``dual-stack``, …)."""
    partial: bool = False

    def __str__(self) -> str:
        return f"{self.ref}: {'partly programmed' if self.partial else 'skipped'}: {self.reason}"


FAMILY_NAMES = {IPFamily.V4: "IPv4", IPFamily.V6: "IPv6"}


def unserved_family_notes(
    services: Iterable[Service], served: Collection[IPFamily], why: str
) -> list[SkippedService]:
    """What of ``services`` no plan covers because this node programs only the
    ``served`` families (``why`` says why the other is not: no ip6tables, IPv6 disabled
    in the kernel, …): a Service of the other family only, whole, or a dual-stack one's
    other half. Said per object rather than dropped silently."""
    notes: list[SkippedService] = []
    served_names = "/".join(FAMILY_NAMES[f] for f in sorted(served))
    for svc in services:
        if svc.skip_reason is not None:
            continue
        other = [ip for ip in svc.cluster_ips if IPFamily.of(ip) not in served]
        if not other:
            continue
        fam = FAMILY_NAMES[IPFamily.of(other[0])]
        mine = [ip for ip in svc.cluster_ips if IPFamily.of(ip) in served]
        if not mine:
            notes.append(
                SkippedService(
                    svc.ref,
                    f"{fam} only (ClusterIP {other[0]}): this node programs {served_names} "
                    f"only ({why})",
                    f"{fam.lower()}-only",
                )
            )
            continue
        notes.append(
            SkippedService(
                svc.ref,
                f"dual-stack: its ClusterIP {mine[0]} is programmed, its {fam} ClusterIP "
                f"{other[0]} is not: this node programs {served_names} only ({why})",
                "dual-stack",
                partial=True,
            )
        )
    return sorted(notes, key=lambda s: (s.ref.namespace, s.ref.name))


Destination = tuple[IPAddress, Protocol, int]


@dataclass(frozen=True)
class Claims:
    """The owner (service port name) of every destination and node port in a plan."""

    destinations: dict[Destination, str]
    node_ports: dict[tuple[Protocol, int], str]

    @staticmethod
    def keys(
        sp: ServicePortPlan,
    ) -> tuple[list[Destination], list[tuple[tuple[Protocol, int], str]]]:
        """The destinations ``sp`` claims, and its node port claims with their holders."""
        dests = [(sp.cluster_ip, sp.protocol, sp.port)]
        dests.extend((ip, sp.protocol, sp.port) for ip in sp.external_ips)
        dests.extend((ip, sp.protocol, sp.port) for ip in sp.load_balancer_ips)
        ports = [((sp.protocol, sp.node_port), sp.service_port_name)] if sp.node_port else []
        if sp.health_check_node_port:
            ports.append(((Protocol.TCP, sp.health_check_node_port), health_check_holder(sp)))
        return dests, ports

    def updated(
        self,
        released: Iterable[ServicePortPlan],
        claimed: Iterable[ServicePortPlan],
    ) -> Claims | None:
        """These claims after some ports left and others came; None when a newcomer wants
        something already taken (a conflict: resolve over all ports again)."""
        dests, nps = dict(self.destinations), dict(self.node_ports)
        for sp in released:
            name = sp.service_port_name
            keys, np_keys = Claims.keys(sp)
            for key in keys:
                if dests.get(key) == name:
                    del dests[key]
            for np_key, holder in np_keys:
                if nps.get(np_key) == holder:
                    del nps[np_key]
        for sp in claimed:
            name = sp.service_port_name
            keys, np_keys = Claims.keys(sp)
            for key in keys:
                if dests.setdefault(key, name) != name:
                    return None
            for np_key, holder in np_keys:
                if nps.setdefault(np_key, holder) != holder:
                    return None
        return Claims(dests, nps)


def health_check_holder(sp: ServicePortPlan) -> str:
    """Who holds a health check node port: the Service (all its ports share it)."""
    return f"{sp.namespace}/{sp.name} (healthCheckNodePort)"


@dataclass(frozen=True)
class Plan:
    """The complete, backend-neutral plan for one IP family on one node: a plain value
    (what the last plan was and what changed since is :mod:`proxy.tracker`'s business)."""

    family: IPFamily
    node_name: str
    node_zone: str
    node_ip: IPAddress | None
    mode: ProxyMode
    cluster_cidr: IPNetwork | None
    masquerade_all: bool
    masquerade_mark: int
    nodeports: NodePortTargets
    service_ports: tuple[ServicePortPlan, ...]
    skipped: tuple[SkippedService, ...] = ()
    problems: tuple[Problem, ...] = ()
    service_counters: bool = False
    """Count packets and bytes per service port and verdict (``--metrics-service-counters``)."""

    @cached_property
    def cluster_ips(self) -> tuple[IPAddress, ...]:
        return tuple(sorted({sp.cluster_ip for sp in self.service_ports}))

    @cached_property
    def endpoint_count(self) -> int:
        return sum(len(sp.reachable_endpoints) for sp in self.service_ports)

    def service_port(self, namespace: str, name: str, port_name: str = "") -> ServicePortPlan:
        for sp in self.service_ports:
            if (sp.namespace, sp.name, sp.port_name) == (namespace, name, port_name):
                return sp
        raise KeyError(f"{namespace}/{name}:{port_name}")


# ---------------------------------------------------------------------------------------
# endpoint selection (upstream's CategorizeEndpoints, in our words)


def topology_mode(
    candidates: Iterable[EndpointCandidate], node_name: str, zone: str
) -> TopologyMode:
    """Hints are used only when every ready endpoint carries them and one matches us."""
    ready = [c for c in candidates if c.ready]
    if not ready:
        return TopologyMode.NONE
    if all(c.node_hints for c in ready) and any(node_name in c.node_hints for c in ready):
        return TopologyMode.PREFER_SAME_NODE
    if all(c.zone_hints for c in ready) and zone and any(zone in c.zone_hints for c in ready):
        return TopologyMode.PREFER_SAME_ZONE
    return TopologyMode.NONE


def _topology_allows(c: EndpointCandidate, mode: TopologyMode, node_name: str, zone: str) -> bool:
    if mode is TopologyMode.PREFER_SAME_NODE:
        return node_name in c.node_hints
    if mode is TopologyMode.PREFER_SAME_ZONE:
        return zone in c.zone_hints
    return True


@dataclass(frozen=True)
class EndpointSelection:
    topology_mode: TopologyMode
    cluster: tuple[EndpointCandidate, ...]
    local: tuple[EndpointCandidate, ...]
    reachable: tuple[EndpointCandidate, ...]
    has_usable: bool


def select_endpoints(
    candidates: tuple[EndpointCandidate, ...],
    *,
    uses_cluster: bool,
    uses_local: bool,
    node_name: str,
    zone: str,
) -> EndpointSelection:
    """Split candidates into the cluster-policy and local-policy endpoint sets.

    Cluster: ready endpoints allowed by topology hints, falling back to serving and
    terminating ones when none is ready. Local: this node's ready endpoints, falling back to
    its serving-terminating ones. Reachable: the union, the set of DNAT targets.
    """
    mode = TopologyMode.NONE
    cluster: tuple[EndpointCandidate, ...] = ()
    if uses_cluster:
        mode = topology_mode(candidates, node_name, zone)
        cluster = tuple(
            c for c in candidates if c.ready and _topology_allows(c, mode, node_name, zone)
        )
        if not cluster:
            cluster = tuple(
                c
                for c in candidates
                if c.serving_terminating and _topology_allows(c, mode, node_name, zone)
            )
    if not uses_local:
        return EndpointSelection(mode, cluster, (), cluster, bool(cluster))

    has_usable = bool(cluster) or any(c.ready or c.serving_terminating for c in candidates)
    local = tuple(c for c in candidates if c.is_local and c.ready)
    used_terminating = False
    if not local:
        local = tuple(c for c in candidates if c.is_local and c.serving_terminating)
        used_terminating = bool(local)
    if not uses_cluster:
        return EndpointSelection(mode, (), local, local, has_usable)
    if mode is TopologyMode.NONE and not used_terminating:
        # cluster holds every ready endpoint, so it already contains every local one
        return EndpointSelection(mode, cluster, local, cluster, has_usable)
    merged = {c.address: c for c in (*cluster, *local)}
    reachable = tuple(sorted(merged.values(), key=lambda c: c.address))
    return EndpointSelection(mode, cluster, local, reachable, has_usable)


# ---------------------------------------------------------------------------------------
# candidates from EndpointSlices


def _candidates_by_port(
    slices: Iterable[EndpointSlice], family: IPFamily, node_name: str
) -> dict[tuple[str, Protocol], tuple[EndpointCandidate, ...]]:
    """(port name, protocol) → deduplicated endpoints across the Service's slices."""
    want = AddressType.IPV4 if family is IPFamily.V4 else AddressType.IPV6
    by_port: dict[tuple[str, Protocol], dict[str, EndpointCandidate]] = defaultdict(dict)
    for sl in slices:
        if sl.address_type is not want:
            continue
        for port in sl.ports:
            bucket = by_port[(port.name, port.protocol)]
            for ep in sl.endpoints:
                if not ep.addresses:
                    continue
                cand = EndpointCandidate(
                    ip=ep.addresses[0],
                    port=port.port,
                    ready=ep.ready,
                    serving=ep.serving,
                    terminating=ep.terminating,
                    node_name=ep.node_name,
                    zone=ep.zone,
                    zone_hints=ep.zone_hints,
                    node_hints=ep.node_hints,
                    is_local=ep.node_name is not None and ep.node_name == node_name,
                )
                old = bucket.get(cand.address)
                # The same ip:port in two slices. As upstream, a non-terminating copy
                # wins over a terminating one (a pod IP reused while the old pod is still
                # terminating: the new pod's conditions count). Between copies that are
                # both terminating or both not (a controller handover; upstream keeps
                # whichever it saw last), prefer the ready copy.
                if (
                    old is None
                    or (old.terminating and not cand.terminating)
                    or (old.terminating == cand.terminating and cand.ready and not old.ready)
                ):
                    bucket[cand.address] = cand
    return {
        key: tuple(sorted(bucket.values(), key=lambda c: c.address))
        for key, bucket in by_port.items()
    }


def _family_filter(ips: Iterable[IPAddress], family: IPFamily) -> tuple[IPAddress, ...]:
    return tuple(ip for ip in ips if IPFamily.of(ip) == family)


def nodeport_targets(config: ProxyConfig, node: Node | None, family: IPFamily) -> NodePortTargets:
    """Resolve ``--nodeport-addresses`` and the mode's default for one family."""
    npa = config.nodeport_addresses.for_family(family)
    primary = node.primary_ip(family) if node is not None else None
    localhost_ok = (
        config.mode is ProxyMode.IPTABLES and family is IPFamily.V4 and config.localhost_nodeports
    )
    use_primary = npa.primary or (not npa.cidrs and config.mode is ProxyMode.NFTABLES)
    if use_primary:
        return NodePortTargets(False, (primary,) if primary is not None else ())
    if not npa.cidrs or any(c.prefixlen == 0 for c in npa.cidrs):
        return NodePortTargets(True, (), include_localhost=localhost_ok)
    pool = config.host_addresses or (node.addresses if node is not None else ())
    chosen = sorted(
        {
            ip
            for ip in _family_filter(pool, family)
            if any(ip in c for c in npa.cidrs) and (localhost_ok or not ip.is_loopback)
        }
    )
    return NodePortTargets(
        False, tuple(chosen), include_localhost=any(ip.is_loopback for ip in chosen)
    )


def _plan_port(
    svc: Service,
    sp: ServicePort,
    cluster_ip: IPAddress,
    family: IPFamily,
    candidates: tuple[EndpointCandidate, ...],
    node_name: str,
    zone: str,
    node_ip: IPAddress | None,
) -> ServicePortPlan:
    external_ips = _family_filter(svc.external_ips, family)
    lb_ips = _family_filter(svc.load_balancer_ips, family)
    ranges = tuple(r for r in svc.load_balancer_source_ranges if IPFamily.of(r) == family)
    externally = bool(sp.node_port or external_ips or lb_ips)
    internal_local = svc.internal_traffic_policy is TrafficPolicy.LOCAL
    external_local = externally and svc.external_traffic_policy is TrafficPolicy.LOCAL
    uses_cluster = not internal_local or externally
    uses_local = internal_local or external_local
    sel = select_endpoints(
        candidates, uses_cluster=uses_cluster, uses_local=uses_local, node_name=node_name, zone=zone
    )
    return ServicePortPlan(
        namespace=svc.namespace,
        name=svc.name,
        port_name=sp.name,
        protocol=sp.protocol,
        family=family,
        cluster_ip=cluster_ip,
        port=sp.port,
        node_port=sp.node_port,
        external_ips=external_ips,
        load_balancer_ips=lb_ips,
        source_ranges=ranges,
        affinity_seconds=svc.affinity_seconds,
        internal_policy_local=internal_local,
        external_policy_local=external_local,
        health_check_node_port=svc.health_check_node_port if external_local else None,
        node_ip=node_ip,
        candidates=candidates,
        topology_mode=sel.topology_mode,
        cluster_endpoints=sel.cluster,
        local_endpoints=sel.local,
        reachable_endpoints=sel.reachable,
        has_usable_endpoints=sel.has_usable,
    )


@dataclass(frozen=True)
class PlanInputs:
    """What every port plan depends on besides its Service and its EndpointSlices: port
    plans made from equal inputs can be reused."""

    config: ProxyConfig
    node: Node | None
    family: IPFamily

    @cached_property
    def zone(self) -> str:
        return self.node.zone if self.node is not None else ""

    @cached_property
    def node_ip(self) -> IPAddress | None:
        return self.node.primary_ip(self.family) if self.node is not None else None


def service_index(snapshot: Snapshot) -> Mapping[ServiceKey, Service]:
    """The snapshot's Services by (namespace, name)."""
    if snapshot.service_index is not None:
        return snapshot.service_index
    return {(s.namespace, s.name): s for s in snapshot.services}


def slices_by_service(
    snapshot: Snapshot, needed: Callable[[ServiceKey], bool] | None = None
) -> Mapping[ServiceKey, Sequence[EndpointSlice]]:
    """The snapshot's EndpointSlices by their Service's (namespace, name); when the
    snapshot has no index, only those of the Services ``needed`` says yes to."""
    if snapshot.slice_index is not None:
        return snapshot.slice_index
    grouped: defaultdict[ServiceKey, list[EndpointSlice]] = defaultdict(list)
    for sl in snapshot.slices:
        key = (sl.namespace, sl.service_name)
        if needed is None or needed(key):
            grouped[key].append(sl)
    return grouped


def service_port_plans(
    svc: Service, slices: Iterable[EndpointSlice], inputs: PlanInputs
) -> tuple[ServicePortPlan, ...] | None:
    """The Service's port plans; None when it has no ClusterIP of the family."""
    family = inputs.family
    cluster_ip = next((ip for ip in svc.cluster_ips if IPFamily.of(ip) == family), None)
    if cluster_ip is None:
        return None
    node_name = inputs.config.node_name
    by_port = _candidates_by_port(slices, family, node_name)
    service_ports = [
        _plan_port(
            svc,
            sp,
            cluster_ip,
            family,
            by_port.get((sp.name, sp.protocol), ()),
            node_name,
            inputs.zone,
            inputs.node_ip,
        )
        for sp in svc.ports
    ]
    service_ports.sort(key=lambda p: (p.port_name, p.protocol))
    return tuple(service_ports)


PortPlans = Mapping[ServiceKey, tuple[ServicePortPlan, ...]]
"""Each Service's port plans, before conflicts between Services are resolved."""


def plan_services(
    inputs: PlanInputs,
    services: Mapping[ServiceKey, Service],
    order: Iterable[ServiceKey],
    slices: Mapping[ServiceKey, Sequence[EndpointSlice]],
    reusable: PortPlans | None = None,
    replan: Collection[ServiceKey] = (),
) -> tuple[dict[ServiceKey, tuple[ServicePortPlan, ...]], list[SkippedService]]:
    """The port plans of ``services`` in ``order``, and what is left out and why. Port
    plans in ``reusable`` (made from equal inputs) are taken as they are, except those of
    the Services in ``replan``."""
    reusable = reusable or {}
    by_service: dict[ServiceKey, tuple[ServicePortPlan, ...]] = {}
    skipped: list[SkippedService] = []
    for key in order:
        svc = services[key]
        if svc.skip_reason is not None:
            # every family's plan says so: an agent may program either one alone
            skipped.append(SkippedService(svc.ref, svc.skip_reason, svc.skip_code))
            continue
        if key in reusable and key not in replan:
            by_service[key] = reusable[key]
            continue
        planned = service_port_plans(svc, slices.get(key, ()), inputs)
        if planned is not None:
            by_service[key] = planned
    return by_service, skipped


def assemble_plan(
    inputs: PlanInputs,
    ports: Iterable[ServicePortPlan],
    skipped: Iterable[SkippedService],
    problems: Iterable[Problem],
) -> Plan:
    """The plan of these (conflict-free) port plans, with the plan-wide settings."""
    config, family = inputs.config, inputs.family
    return Plan(
        family=family,
        node_name=config.node_name,
        node_zone=inputs.zone,
        node_ip=inputs.node_ip,
        mode=config.mode,
        cluster_cidr=config.cluster_cidr(family),
        masquerade_all=config.masquerade_all,
        masquerade_mark=config.masquerade_mark,
        nodeports=nodeport_targets(config, inputs.node, family),
        service_ports=tuple(ports),
        skipped=tuple(skipped),
        problems=tuple(problems),
        service_counters=config.service_counters,
    )


def plan(
    snapshot: Snapshot,
    config: ProxyConfig,
    family: IPFamily = IPFamily.V4,
    problems: Iterable[Problem] = (),
) -> Plan:
    """Plan every service port of ``family`` for the node named in ``config``.

    Every Service is planned; :class:`proxy.tracker.PlanTracker` plans only the Services
    that changed since its last plan (and says which service ports may differ)."""
    inputs = PlanInputs(config, snapshot.node, family)
    services = service_index(snapshot)
    by_service, skipped = plan_services(
        inputs, services, sorted(services), slices_by_service(snapshot)
    )
    ports = [sp for group in by_service.values() for sp in group]
    ports, conflicts, _ = resolve_conflicts(ports, config.node_name, inputs.zone)
    return assemble_plan(inputs, ports, skipped, (*problems, *conflicts))


def resolve_conflicts(
    ports: list[ServicePortPlan], node_name: str, zone: str
) -> tuple[list[ServicePortPlan], list[Problem], Claims | None]:
    """Keep every destination (IP, protocol, port) and node port owned by one service port.

    The API does not stop two Services from listing the same externalIP and port, and a
    state file can hold anything; a duplicate would make nftables refuse the whole
    transaction. The first service port in (namespace, name, port) order keeps it; later
    ones lose that destination and the conflict is reported. The claims are returned when
    there was no conflict.
    """
    owner: dict[tuple[IPAddress, Protocol, int], str] = {}
    node_ports: dict[tuple[Protocol, int], str] = {}
    out: list[ServicePortPlan] = []
    problems: list[Problem] = []
    hc_reported: set[str] = set()

    def claim(key: tuple[IPAddress, Protocol, int], sp: ServicePortPlan, field_name: str) -> bool:
        holder = owner.setdefault(key, sp.service_port_name)
        if holder == sp.service_port_name:
            return True
        problems.append(
            Problem(
                sp.ref,
                field_name,
                f"{key[0]}:{key[2]}/{key[1]} is already used by {holder}; ignored here",
            )
        )
        return False

    for sp in ports:
        if not claim((sp.cluster_ip, sp.protocol, sp.port), sp, "spec.clusterIP"):
            continue
        externals = tuple(
            ip
            for ip in sp.external_ips
            if claim((ip, sp.protocol, sp.port), sp, "spec.externalIPs")
        )
        lbs = tuple(
            ip
            for ip in sp.load_balancer_ips
            if claim((ip, sp.protocol, sp.port), sp, "status.loadBalancer.ingress")
        )
        node_port = sp.node_port
        if node_port:
            holder = node_ports.setdefault((sp.protocol, node_port), sp.service_port_name)
            if holder != sp.service_port_name:
                problems.append(
                    Problem(
                        sp.ref,
                        "spec.ports.nodePort",
                        f"{node_port}/{sp.protocol} is already used by {holder}; ignored here",
                    )
                )
                node_port = None
        if (externals, lbs, node_port) != (sp.external_ips, sp.load_balancer_ips, sp.node_port):
            sp = _replan_external(sp, externals, lbs, node_port, node_name, zone)
        hc = sp.health_check_node_port
        if hc:
            mine = health_check_holder(sp)
            holder = node_ports.setdefault((Protocol.TCP, hc), mine)
            if holder != mine:
                if mine not in hc_reported:  # once per Service, not per port
                    hc_reported.add(mine)
                    problems.append(
                        Problem(
                            sp.ref,
                            "spec.healthCheckNodePort",
                            f"{hc}/TCP is already used by {holder}; no health check is served",
                        )
                    )
                sp = dataclasses.replace(sp, health_check_node_port=None)
        out.append(sp)
    return out, problems, (None if problems else Claims(owner, node_ports))


def _replan_external(
    sp: ServicePortPlan,
    externals: tuple[IPAddress, ...],
    lbs: tuple[IPAddress, ...],
    node_port: int | None,
    node_name: str,
    zone: str,
) -> ServicePortPlan:
    """The same port with fewer external destinations; endpoint sets depend on whether it is
    still externally reachable, so they are selected again."""
    externally = bool(node_port or externals or lbs)
    external_local = sp.external_policy_local and externally
    sel = select_endpoints(
        sp.candidates,
        uses_cluster=not sp.internal_policy_local or externally,
        uses_local=sp.internal_policy_local or external_local,
        node_name=node_name,
        zone=zone,
    )
    return dataclasses.replace(
        sp,
        external_ips=externals,
        load_balancer_ips=lbs,
        node_port=node_port,
        external_policy_local=external_local,
        health_check_node_port=sp.health_check_node_port if external_local else None,
        topology_mode=sel.topology_mode,
        cluster_endpoints=sel.cluster,
        local_endpoints=sel.local,
        reachable_endpoints=sel.reachable,
        has_usable_endpoints=sel.has_usable,
    )
