"""Typed, frozen Kubernetes objects parsed from API dicts, with validation.

Only the fields kube-proxy needs are kept. Parsing never raises for bad input: it returns
the object (or ``None`` when the object must be skipped) together with a list of
:class:`Problem` values that say ``namespace/name: field: problem``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"
DEFAULT_AFFINITY_SECONDS = 10800
MAX_AFFINITY_SECONDS = 86400


class Protocol(StrEnum):
    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"

    @property
    def lowercase(self) -> str:
        return self.value.lower()


class IPFamily(StrEnum):
    V4 = "IPv4"
    V6 = "IPv6"

    @staticmethod
    def of(ip: IPAddress | IPNetwork) -> IPFamily:
        return IPFamily.V4 if ip.version == 4 else IPFamily.V6


class ServiceType(StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"
    EXTERNAL_NAME = "ExternalName"


class TrafficPolicy(StrEnum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


@dataclass(frozen=True, order=True)
class ObjectRef:
    """``kind namespace/name`` of an API object (namespace empty for cluster-scoped)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Problem:
    """One validation problem: which object, which field, what is wrong."""

    ref: ObjectRef
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.ref}: {self.field}: {self.message}"


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: Protocol
    port: int
    target_port: int | str
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    type: ServiceType
    cluster_ips: tuple[IPAddress, ...]
    ports: tuple[ServicePort, ...]
    external_ips: tuple[IPAddress, ...] = ()
    load_balancer_ips: tuple[IPAddress, ...] = ()
    """Ingress IPs kube-proxy programs: ``ipMode`` unset or ``VIP``."""
    load_balancer_source_ranges: tuple[IPNetwork, ...] = ()
    affinity_seconds: int | None = None
    """``None``: no session affinity; otherwise ClientIP affinity with this timeout."""
    external_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    internal_traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    health_check_node_port: int | None = None
    skip_reason: str | None = None
    """Why kube-proxy leaves this Service alone (headless, ExternalName, proxy-name)."""
    resource_version: str = field(default="", compare=False)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Service", self.namespace, self.name)


@dataclass(frozen=True)
class EndpointPort:
    name: str
    protocol: Protocol
    port: int


@dataclass(frozen=True)
class Endpoint:
    addresses: tuple[IPAddress, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    zone_hints: frozenset[str] = frozenset()
    node_hints: frozenset[str] = frozenset()


class AddressType(StrEnum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"
    FQDN = "FQDN"


@dataclass(frozen=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str
    address_type: AddressType
    ports: tuple[EndpointPort, ...]
    endpoints: tuple[Endpoint, ...]
    resource_version: str = field(default="", compare=False)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("EndpointSlice", self.namespace, self.name)


@dataclass(frozen=True)
class Node:
    name: str
    addresses: tuple[IPAddress, ...] = ()
    """InternalIP addresses first, then ExternalIP, in API order."""
    labels: Mapping[str, str] = field(default_factory=dict)
    pod_cidrs: tuple[IPNetwork, ...] = ()
    deleting: bool = False

    @property
    def zone(self) -> str:
        return self.labels.get(ZONE_LABEL, "")

    def primary_ip(self, family: IPFamily) -> IPAddress | None:
        for ip in self.addresses:
            if IPFamily.of(ip) == family:
                return ip
        return None

    def __hash__(self) -> int:
        return hash((self.name, self.addresses, tuple(sorted(self.labels.items()))))


# ---------------------------------------------------------------------------------------
# parsing helpers


class _Collector:
    """Collects problems for one object."""

    def __init__(self, ref: ObjectRef) -> None:
        self.ref = ref
        self.problems: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.ref, path, message))

    @property
    def ok(self) -> bool:
        return not self.problems


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _is_iana_svc_name(value: str) -> bool:
    return (
        len(value) <= 15
        and bool(_IANA_SVC_NAME.match(value))
        and "--" not in value
        and any(c.isalpha() for c in value)
    )


def _metadata(obj: Mapping[str, Any], kind: str, namespaced: bool) -> tuple[ObjectRef, list[str]]:
    """Return the object's ref and problems with its metadata (name, namespace)."""
    meta = obj.get("metadata")
    errors: list[str] = []
    if not isinstance(meta, Mapping):
        return ObjectRef(kind, "?" if namespaced else "", "?"), ["metadata: missing"]
    name = meta.get("name")
    ns = meta.get("namespace", "default" if namespaced else "")
    if not isinstance(name, str) or not name:
        errors.append("metadata.name: missing")
        name = "?"
    elif not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
        errors.append(f"metadata.name: {name!r} is not a valid DNS subdomain name")
    if namespaced:
        if not isinstance(ns, str) or not ns:
            errors.append("metadata.namespace: missing")
            ns = "?"
        elif not _DNS_LABEL.match(ns) or len(ns) > 63:
            errors.append(f"metadata.namespace: {ns!r} is not a valid DNS label")
    return ObjectRef(kind, str(ns) if namespaced else "", str(name)), errors


def _parse_ip(value: Any, path: str, c: _Collector) -> IPAddress | None:
    if not isinstance(value, str):
        c.add(path, f"{value!r} is not a string IP address")
        return None
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        c.add(path, f"{value!r} is not a valid IP address")
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        c.add(path, f"{value!r}: IPv4-mapped IPv6 addresses are not allowed")
        return None
    return ip


def _parse_cidr(value: Any, path: str, c: _Collector) -> IPNetwork | None:
    if not isinstance(value, str):
        c.add(path, f"{value!r} is not a CIDR string")
        return None
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        c.add(path, f"{value!r} is not a valid CIDR")
        return None


def _parse_port(value: Any, path: str, c: _Collector, *, allow_zero: bool = False) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        c.add(path, f"{value!r} is not an integer port")
        return None
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        c.add(path, f"{value} is out of range {low}-65535")
        return None
    return value


def _parse_protocol(value: Any, path: str, c: _Collector) -> Protocol | None:
    if value is None:
        return Protocol.TCP
    try:
        return Protocol(value)
    except ValueError:
        c.add(path, f"unknown protocol {value!r} (want TCP, UDP or SCTP)")
        return None


def _list(value: Any, path: str, c: _Collector) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return value
    c.add(path, f"expected a list, got {type(value).__name__}")
    return ()


def _mapping(value: Any, path: str, c: _Collector) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    c.add(path, f"expected an object, got {type(value).__name__}")
    return {}


def _labels(meta: Any) -> dict[str, str]:
    if not isinstance(meta, Mapping):
        return {}
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        return {}
    return {str(k): str(v) for k, v in labels.items()}


# ---------------------------------------------------------------------------------------
# Service


def _parse_service_ports(spec: Mapping[str, Any], c: _Collector) -> tuple[ServicePort, ...]:
    raw_ports = _list(spec.get("ports"), "spec.ports", c)
    ports: list[ServicePort] = []
    names: set[str] = set()
    node_ports: set[tuple[int, Protocol]] = set()
    keys: set[tuple[int, Protocol]] = set()
    for i, raw in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        if not isinstance(raw, Mapping):
            c.add(path, "expected an object")
            continue
        name = raw.get("name") or ""
        if not isinstance(name, str):
            c.add(f"{path}.name", f"{name!r} is not a string")
            continue
        if name and not (_DNS_LABEL.match(name) and len(name) <= 63):
            c.add(f"{path}.name", f"{name!r} is not a valid DNS label")
        if name in names:
            c.add(f"{path}.name", f"duplicate port name {name!r}")
        names.add(name)
        if len(raw_ports) > 1 and not name:
            c.add(f"{path}.name", "must be set when a Service has more than one port")
        protocol = _parse_protocol(raw.get("protocol"), f"{path}.protocol", c)
        port = _parse_port(raw.get("port"), f"{path}.port", c)
        target: int | str | None
        raw_target = raw.get("targetPort", port)
        if raw_target is None or raw_target == 0:
            target = port
        elif isinstance(raw_target, str) and not raw_target.isdigit():
            target = raw_target
            if not _is_iana_svc_name(raw_target):
                c.add(f"{path}.targetPort", f"{raw_target!r} is not a valid port name")
        else:
            target = _parse_port(
                int(raw_target) if isinstance(raw_target, str) else raw_target,
                f"{path}.targetPort",
                c,
            )
        node_port_raw = raw.get("nodePort")
        node_port = None
        if node_port_raw not in (None, 0):
            node_port = _parse_port(node_port_raw, f"{path}.nodePort", c)
        if protocol is None or port is None or target is None:
            continue
        if (port, protocol) in keys:
            c.add(f"{path}", f"duplicate port {port}/{protocol}")
        keys.add((port, protocol))
        if node_port is not None:
            if (node_port, protocol) in node_ports:
                c.add(f"{path}.nodePort", f"duplicate nodePort {node_port}/{protocol}")
            node_ports.add((node_port, protocol))
        ports.append(ServicePort(name, protocol, port, target, node_port))
    return tuple(ports)


def _parse_cluster_ips(
    spec: Mapping[str, Any], c: _Collector
) -> tuple[tuple[IPAddress, ...], bool]:
    """Return (cluster IPs, headless)."""
    raw_ips = spec.get("clusterIPs")
    if raw_ips is None:
        single = spec.get("clusterIP")
        raw_ips = [single] if single not in (None, "") else []
    raw_list = _list(raw_ips, "spec.clusterIPs", c)
    if any(v == "None" for v in raw_list):
        return (), True
    ips: list[IPAddress] = []
    for i, value in enumerate(raw_list):
        ip = _parse_ip(value, f"spec.clusterIPs[{i}]", c)
        if ip is not None:
            ips.append(ip)
    if len(ips) == 2 and ips[0].version == ips[1].version:
        c.add("spec.clusterIPs", "a dual-stack Service needs one IP of each family")
    if len(ips) > 2:
        c.add("spec.clusterIPs", "at most two cluster IPs (one per family)")
    single = spec.get("clusterIP")
    if ips and isinstance(single, str) and single and single != str(ips[0]):
        try:
            if ipaddress.ip_address(single) != ips[0]:
                c.add("spec.clusterIP", f"{single!r} differs from spec.clusterIPs[0]")
        except ValueError:
            c.add("spec.clusterIP", f"{single!r} is not a valid IP address")
    return tuple(ips), False


def parse_service(obj: Mapping[str, Any]) -> tuple[Service | None, list[Problem]]:
    """Parse a v1 Service; ``None`` when it has problems (they say why)."""
    ref, meta_errors = _metadata(obj, "Service", namespaced=True)
    c = _Collector(ref)
    for e in meta_errors:
        path, _, msg = e.partition(": ")
        c.add(path, msg)
    meta = obj.get("metadata") or {}
    labels = _labels(meta)
    spec = _mapping(obj.get("spec"), "spec", c)
    status = _mapping(obj.get("status"), "status", c)

    raw_type = spec.get("type") or "ClusterIP"
    try:
        svc_type = ServiceType(raw_type)
    except ValueError:
        c.add("spec.type", f"unknown type {raw_type!r}")
        svc_type = ServiceType.CLUSTER_IP

    skip_reason: str | None = None
    if svc_type is ServiceType.EXTERNAL_NAME:
        skip_reason = "type ExternalName is resolved by DNS, not proxied"
    elif SERVICE_PROXY_NAME_LABEL in labels:
        skip_reason = (
            f"labelled {SERVICE_PROXY_NAME_LABEL}={labels[SERVICE_PROXY_NAME_LABEL]} "
            "(handled by another proxy)"
        )

    cluster_ips: tuple[IPAddress, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    if svc_type is not ServiceType.EXTERNAL_NAME:
        cluster_ips, headless = _parse_cluster_ips(spec, c)
        if headless and skip_reason is None:
            skip_reason = "headless (clusterIP None): DNS returns the pod IPs directly"
        if not headless and not cluster_ips and skip_reason is None:
            c.add("spec.clusterIP", "missing (not yet allocated?)")
        ports = _parse_service_ports(spec, c)

    external_ips: list[IPAddress] = []
    for i, value in enumerate(_list(spec.get("externalIPs"), "spec.externalIPs", c)):
        ip = _parse_ip(value, f"spec.externalIPs[{i}]", c)
        if ip is not None:
            external_ips.append(ip)

    lb_ips: list[IPAddress] = []
    source_ranges: list[IPNetwork] = []
    if svc_type is ServiceType.LOAD_BALANCER:
        lb = _mapping(status.get("loadBalancer"), "status.loadBalancer", c)
        for i, ingress in enumerate(_list(lb.get("ingress"), "status.loadBalancer.ingress", c)):
            path = f"status.loadBalancer.ingress[{i}]"
            if not isinstance(ingress, Mapping):
                c.add(path, "expected an object")
                continue
            mode = ingress.get("ipMode")
            if mode not in (None, "VIP", "Proxy"):
                c.add(f"{path}.ipMode", f"unknown ipMode {mode!r} (want VIP or Proxy)")
            if "ip" not in ingress or ingress.get("ip") in (None, ""):
                continue  # hostname-only ingress: nothing to program
            ip = _parse_ip(ingress.get("ip"), f"{path}.ip", c)
            if ip is not None and mode in (None, "VIP"):
                lb_ips.append(ip)
        for i, value in enumerate(
            _list(spec.get("loadBalancerSourceRanges"), "spec.loadBalancerSourceRanges", c)
        ):
            net = _parse_cidr(value, f"spec.loadBalancerSourceRanges[{i}]", c)
            if net is not None:
                source_ranges.append(net)

    affinity: int | None = None
    raw_affinity = spec.get("sessionAffinity") or "None"
    if raw_affinity == "ClientIP":
        cfg = _mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig", c)
        client = _mapping(cfg.get("clientIP"), "spec.sessionAffinityConfig.clientIP", c)
        timeout = client.get("timeoutSeconds", DEFAULT_AFFINITY_SECONDS)
        if timeout is None:
            timeout = DEFAULT_AFFINITY_SECONDS
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int)
            or not 0 < timeout <= MAX_AFFINITY_SECONDS
        ):
            c.add(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                f"{timeout!r} must be an integer in 1-{MAX_AFFINITY_SECONDS}",
            )
        else:
            affinity = timeout
    elif raw_affinity != "None":
        c.add("spec.sessionAffinity", f"unknown value {raw_affinity!r} (want None or ClientIP)")

    def policy(key: str) -> TrafficPolicy:
        raw = spec.get(key) or "Cluster"
        if raw == "Local":
            return TrafficPolicy.LOCAL
        if raw not in ("Cluster",):
            c.add(f"spec.{key}", f"unknown value {raw!r} (want Cluster or Local)")
        return TrafficPolicy.CLUSTER

    etp = policy("externalTrafficPolicy")
    itp = policy("internalTrafficPolicy")
    hc: int | None = None
    if spec.get("healthCheckNodePort") not in (None, 0):
        hc = _parse_port(spec.get("healthCheckNodePort"), "spec.healthCheckNodePort", c)

    if not c.ok:
        return None, c.problems
    rv = meta.get("resourceVersion", "") if isinstance(meta, Mapping) else ""
    return (
        Service(
            namespace=ref.namespace,
            name=ref.name,
            type=svc_type,
            cluster_ips=cluster_ips,
            ports=ports,
            external_ips=tuple(external_ips),
            load_balancer_ips=tuple(lb_ips),
            load_balancer_source_ranges=tuple(source_ranges),
            affinity_seconds=affinity,
            external_traffic_policy=etp,
            internal_traffic_policy=itp,
            health_check_node_port=hc,
            skip_reason=skip_reason,
            resource_version=str(rv),
        ),
        [],
    )


# ---------------------------------------------------------------------------------------
# EndpointSlice


def _condition(
    conditions: Mapping[str, Any], key: str, default: bool, c: _Collector, path: str
) -> bool:
    value = conditions.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        c.add(f"{path}.{key}", f"{value!r} is not a boolean")
        return default
    return value


def _hint_names(hints: Mapping[str, Any], key: str, c: _Collector, path: str) -> frozenset[str]:
    names: set[str] = set()
    for i, h in enumerate(_list(hints.get(key), f"{path}.{key}", c)):
        name = h.get("name") if isinstance(h, Mapping) else None
        if not isinstance(name, str) or not name:
            c.add(f"{path}.{key}[{i}].name", "missing")
            continue
        names.add(name)
    return frozenset(names)


def parse_endpoint_slice(obj: Mapping[str, Any]) -> tuple[EndpointSlice | None, list[Problem]]:
    """Parse a discovery.k8s.io/v1 EndpointSlice; ``None`` when it must be skipped."""
    ref, meta_errors = _metadata(obj, "EndpointSlice", namespaced=True)
    c = _Collector(ref)
    for e in meta_errors:
        path, _, msg = e.partition(": ")
        c.add(path, msg)
    meta = obj.get("metadata") or {}
    labels = _labels(meta)
    service_name = labels.get(SERVICE_NAME_LABEL, "")
    if not service_name:
        c.add(f"metadata.labels[{SERVICE_NAME_LABEL}]", "missing: the slice belongs to no Service")
    raw_type = obj.get("addressType")
    try:
        address_type = AddressType(str(raw_type))
    except ValueError:
        c.add("addressType", f"unknown address type {raw_type!r} (want IPv4, IPv6 or FQDN)")
        return None, c.problems

    ports: list[EndpointPort] = []
    names: set[str] = set()
    for i, raw in enumerate(_list(obj.get("ports"), "ports", c)):
        path = f"ports[{i}]"
        if not isinstance(raw, Mapping):
            c.add(path, "expected an object")
            continue
        name = raw.get("name") or ""
        if not isinstance(name, str):
            c.add(f"{path}.name", f"{name!r} is not a string")
            continue
        if name in names:
            c.add(f"{path}.name", f"duplicate port name {name!r}")
        names.add(name)
        protocol = _parse_protocol(raw.get("protocol"), f"{path}.protocol", c)
        if raw.get("port") is None:
            continue  # "all ports": not usable by a proxy, ignored as upstream does
        port = _parse_port(raw.get("port"), f"{path}.port", c)
        if protocol is not None and port is not None:
            ports.append(EndpointPort(name, protocol, port))

    endpoints: list[Endpoint] = []
    if address_type is not AddressType.FQDN:
        want = 4 if address_type is AddressType.IPV4 else 6
        for i, raw in enumerate(_list(obj.get("endpoints"), "endpoints", c)):
            path = f"endpoints[{i}]"
            if not isinstance(raw, Mapping):
                c.add(path, "expected an object")
                continue
            addrs: list[IPAddress] = []
            raw_addrs = _list(raw.get("addresses"), f"{path}.addresses", c)
            if not raw_addrs:
                c.add(f"{path}.addresses", "must hold at least one address")
            for j, value in enumerate(raw_addrs):
                ip = _parse_ip(value, f"{path}.addresses[{j}]", c)
                if ip is None:
                    continue
                if ip.version != want:
                    c.add(f"{path}.addresses[{j}]", f"{ip} is not an {address_type} address")
                    continue
                addrs.append(ip)
            conds = _mapping(raw.get("conditions"), f"{path}.conditions", c)
            ready = _condition(conds, "ready", True, c, f"{path}.conditions")
            # unset serving means true (the API's rule, and upstream's), not "as ready"
            serving = _condition(conds, "serving", True, c, f"{path}.conditions")
            terminating = _condition(conds, "terminating", False, c, f"{path}.conditions")
            hints = _mapping(raw.get("hints"), f"{path}.hints", c)
            node_name = raw.get("nodeName")
            zone = raw.get("zone")
            endpoints.append(
                Endpoint(
                    addresses=tuple(addrs),
                    ready=ready,
                    serving=serving,
                    terminating=terminating,
                    node_name=node_name if isinstance(node_name, str) and node_name else None,
                    zone=zone if isinstance(zone, str) and zone else None,
                    zone_hints=_hint_names(hints, "forZones", c, f"{path}.hints"),
                    node_hints=_hint_names(hints, "forNodes", c, f"{path}.hints"),
                )
            )
    if not c.ok:
        return None, c.problems
    rv = meta.get("resourceVersion", "") if isinstance(meta, Mapping) else ""
    return (
        EndpointSlice(
            namespace=ref.namespace,
            name=ref.name,
            service_name=service_name,
            address_type=address_type,
            ports=tuple(ports),
            endpoints=tuple(endpoints),
            resource_version=str(rv),
        ),
        [],
    )


# ---------------------------------------------------------------------------------------
# Node


def parse_node(obj: Mapping[str, Any]) -> tuple[Node | None, list[Problem]]:
    ref, meta_errors = _metadata(obj, "Node", namespaced=False)
    c = _Collector(ref)
    for e in meta_errors:
        path, _, msg = e.partition(": ")
        c.add(path, msg)
    meta = obj.get("metadata") or {}
    spec = _mapping(obj.get("spec"), "spec", c)
    status = _mapping(obj.get("status"), "status", c)
    internal: list[IPAddress] = []
    external: list[IPAddress] = []
    for i, addr in enumerate(_list(status.get("addresses"), "status.addresses", c)):
        if not isinstance(addr, Mapping):
            c.add(f"status.addresses[{i}]", "expected an object")
            continue
        kind = addr.get("type")
        if kind not in ("InternalIP", "ExternalIP"):
            continue
        ip = _parse_ip(addr.get("address"), f"status.addresses[{i}].address", c)
        if ip is not None:
            (internal if kind == "InternalIP" else external).append(ip)
    cidrs: list[IPNetwork] = []
    raw_cidrs = spec.get("podCIDRs")
    if raw_cidrs is None and spec.get("podCIDR"):
        raw_cidrs = [spec.get("podCIDR")]
    for i, value in enumerate(_list(raw_cidrs, "spec.podCIDRs", c)):
        net = _parse_cidr(value, f"spec.podCIDRs[{i}]", c)
        if net is not None:
            cidrs.append(net)
    if not c.ok:
        return None, c.problems
    deleting = isinstance(meta, Mapping) and bool(meta.get("deletionTimestamp"))
    return (
        Node(
            name=ref.name,
            addresses=tuple(internal + external),
            labels=_labels(meta),
            pod_cidrs=tuple(cidrs),
            deleting=deleting,
        ),
        [],
    )
