"""Typed, frozen Kubernetes objects parsed from API dicts, with validation.

Only the fields kube-proxy needs are kept. Parsing never raises for bad input: it returns
the object (or ``None`` when the object must be skipped) together with a list of
:class:`Problem` values that say ``namespace/name: field: problem``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

from proxy import apivalidation as av

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
    skip_code: str = ""
    """The reason as a metric label: ``headless``, ``external-name`` or ``other-proxy``."""
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


MAX_SLICE_ENDPOINTS = 1000
MAX_SLICE_PORTS = 20000
MAX_ENDPOINT_ADDRESSES = 100
MAX_HINTS = 8
"""The API's bounds on an EndpointSlice (discovery validation, v1.37)."""


def _name_rule(kind: str) -> Callable[[str], str | None]:
    # Service names are RFC 1123 labels since v1.37 (RelaxedServiceNameValidation GA);
    # EndpointSlices and Nodes are subdomains.
    return av.dns1123_label if kind == "Service" else av.dns1123_subdomain


def _metadata(obj: Mapping[str, Any], kind: str, namespaced: bool) -> tuple[ObjectRef, _Collector]:
    """The object's ref and a collector holding its metadata's problems."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        c = _Collector(ObjectRef(kind, "?" if namespaced else "", "?"))
        c.add("metadata", f"expected an object, got {av.show(meta)}")
        return c.ref, c
    name = meta.get("name")
    ns = meta.get("namespace", "default") if namespaced else ""
    errors: list[tuple[str, str]] = []
    if not isinstance(name, str) or not name:
        errors.append(
            ("metadata.name", "missing" if not name else f"{av.show(name)} is not a string")
        )
        name = "?"
    elif (why := _name_rule(kind)(name)) is not None:
        errors.append(("metadata.name", f"{av.show(name)}: {why}"))
        name = av.printable(name)
    if namespaced:
        if not isinstance(ns, str) or not ns:
            errors.append(
                ("metadata.namespace", "missing" if not ns else f"{av.show(ns)} is not a string")
            )
            ns = "?"
        elif (why := av.dns1123_label(ns)) is not None:
            errors.append(("metadata.namespace", f"{av.show(ns)}: {why}"))
            ns = av.printable(ns)
    c = _Collector(ObjectRef(kind, str(ns), str(name)))
    for path, msg in errors:
        c.add(path, msg)
    return c.ref, c


def _parse_ip(
    value: Any,
    path: str,
    c: _Collector,
    rule: Callable[[IPAddress], str | None] | None = None,
) -> IPAddress | None:
    ip, why = av.parse_ip(value)
    if ip is None:
        c.add(path, str(why))
        return None
    if rule is not None and (why := rule(ip)) is not None:
        c.add(path, why)
        return None
    return ip


def _parse_cidr(value: Any, path: str, c: _Collector) -> IPNetwork | None:
    net, why = av.parse_cidr(value)
    if net is None:
        c.add(path, str(why))
    return net


def _parse_port(value: Any, path: str, c: _Collector) -> int | None:
    why = av.port_number(value)
    if why is not None:
        c.add(path, why)
        return None
    return int(value)


def _parse_protocol(value: Any, path: str, c: _Collector) -> Protocol | None:
    if value is None:
        return Protocol.TCP  # the API's default
    if isinstance(value, str):
        for p in Protocol:
            if p.value == value:
                return p
    c.add(path, f"unknown protocol {av.show(value)} (want TCP, UDP or SCTP)")
    return None


def _string(value: Any, path: str, c: _Collector) -> str | None:
    if value is None or isinstance(value, str):
        return value
    c.add(path, f"{av.show(value)} is not a string")
    return None


def _list(value: Any, path: str, c: _Collector) -> Sequence[Any]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return value
    c.add(path, f"expected a list, got {av.show(value)}")
    return ()


def _mapping(value: Any, path: str, c: _Collector) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    c.add(path, f"expected an object, got {av.show(value)}")
    return {}


def _labels(meta: Mapping[str, Any], c: _Collector) -> dict[str, str]:
    """The labels; a value that is not a string is a problem (the API stores strings)."""
    labels = _mapping(meta.get("labels"), "metadata.labels", c)
    out: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            c.add(f"metadata.labels[{av.show(key)}]", f"{av.show(value)} is not a string")
            continue
        out[key] = value
    return out


def _resource_version(meta: Any) -> str:
    rv = meta.get("resourceVersion", "") if isinstance(meta, Mapping) else ""
    return rv if isinstance(rv, str) else ""


# ---------------------------------------------------------------------------------------
# Service


def _parse_target_port(raw: Any, port: int | None, path: str, c: _Collector) -> int | str | None:
    """``targetPort``: a number (1-65535) or an IANA port name; unset or 0 means ``port``
    (the API's defaulting). A string of digits is a name to the API, and a name needs a
    letter: ``"8080"`` is refused there, so it is here."""
    if raw is None or (isinstance(raw, int) and not isinstance(raw, bool) and raw == 0):
        return port
    if isinstance(raw, str):
        why = av.port_name(raw)
        if why is not None:
            hint = (
                " (a quoted number is a port name; write the number without quotes)"
                if raw.isascii() and raw.isdigit()
                else ""
            )
            c.add(path, f"{av.show(raw)}: {why}{hint}")
            return None
        return raw
    return _parse_port(raw, path, c)


def _parse_service_ports(
    spec: Mapping[str, Any], svc_type: ServiceType, c: _Collector
) -> tuple[ServicePort, ...]:
    raw_ports = _list(spec.get("ports"), "spec.ports", c)
    ports: list[ServicePort] = []
    names: set[str] = set()
    node_ports: set[tuple[int, Protocol]] = set()
    keys: set[tuple[int, Protocol]] = set()
    for i, raw in enumerate(raw_ports):
        path = f"spec.ports[{i}]"
        if not isinstance(raw, Mapping):
            c.add(path, f"expected an object, got {av.show(raw)}")
            continue
        name = _string(raw.get("name"), f"{path}.name", c) or ""
        if name:
            if (why := av.dns1123_label(name)) is not None:
                c.add(f"{path}.name", f"{av.show(name)}: {why}")
            elif name in names:
                c.add(f"{path}.name", f"duplicate port name {av.show(name)}")
            names.add(name)
        elif len(raw_ports) > 1:
            c.add(f"{path}.name", "must be set when a Service has more than one port")
        protocol = _parse_protocol(raw.get("protocol"), f"{path}.protocol", c)
        port = _parse_port(raw.get("port"), f"{path}.port", c)
        target = _parse_target_port(raw.get("targetPort"), port, f"{path}.targetPort", c)
        node_port_raw = raw.get("nodePort")
        node_port = None
        if not (node_port_raw is None or (type(node_port_raw) is int and node_port_raw == 0)):
            node_port = _parse_port(node_port_raw, f"{path}.nodePort", c)
            if node_port is not None and svc_type is ServiceType.CLUSTER_IP:
                c.add(f"{path}.nodePort", "may not be used when `type` is 'ClusterIP'")
        if protocol is None or port is None or target is None:
            continue
        if (port, protocol) in keys:
            c.add(path, f"duplicate port {port}/{protocol}")
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
    """Return (cluster IPs, headless). ``clusterIP`` alone is accepted (the API copies it
    into ``clusterIPs`` before validating); when both are set they must agree."""
    single = spec.get("clusterIP")
    raw_ips = spec.get("clusterIPs")
    if raw_ips is None or raw_ips == []:
        raw_ips = [single] if single not in (None, "") else []
    raw_list = _list(raw_ips, "spec.clusterIPs", c)
    if raw_list and raw_list[0] == "None":
        if len(raw_list) > 1:
            c.add("spec.clusterIPs", "'None' must be the first and only value")
        return (), True
    ips: list[IPAddress] = []
    for i, value in enumerate(raw_list):
        ip = _parse_ip(value, f"spec.clusterIPs[{i}]", c, av.service_ip_problem)
        if ip is not None:
            ips.append(ip)
    if len(raw_list) > 2:
        c.add("spec.clusterIPs", "may only hold up to 2 values")
    elif len(ips) == 2 and IPFamily.of(ips[0]) is IPFamily.of(ips[1]):
        c.add("spec.clusterIPs", "may specify no more than one IP for each IP family")
    if single not in (None, "") and raw_list and single != raw_list[0]:
        c.add("spec.clusterIPs", "first value must match `clusterIP`")
    families = _list(spec.get("ipFamilies"), "spec.ipFamilies", c)
    seen: set[str] = set()
    for i, fam in enumerate(families):
        if fam not in ("IPv4", "IPv6"):
            c.add(f"spec.ipFamilies[{i}]", f"unsupported value {av.show(fam)} (want IPv4 or IPv6)")
        elif fam in seen:
            c.add(f"spec.ipFamilies[{i}]", f"duplicate value {av.show(fam)}")
        else:
            seen.add(fam)
            if i < len(ips) and IPFamily.of(ips[i]).value != fam:
                c.add(
                    f"spec.clusterIPs[{i}]",
                    f"expected an {fam} value as indicated by `ipFamilies[{i}]`",
                )
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in ("SingleStack", "PreferDualStack", "RequireDualStack"):
        c.add(
            "spec.ipFamilyPolicy",
            f"unsupported value {av.show(policy)} (want SingleStack, PreferDualStack or "
            "RequireDualStack)",
        )
    return tuple(ips), False


def _externally_accessible(svc_type: ServiceType, spec: Mapping[str, Any]) -> bool:
    """The API's ``ExternallyAccessible``: NodePort, LoadBalancer, or any externalIPs."""
    return svc_type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER) or bool(
        spec.get("externalIPs")
    )


def _parse_affinity(spec: Mapping[str, Any], c: _Collector) -> int | None:
    """ClientIP affinity's timeout, or None (no affinity)."""
    raw = spec.get("sessionAffinity")
    if raw in (None, "", "None"):
        return None  # the API's defaulting drops a sessionAffinityConfig here
    if raw != "ClientIP":
        c.add("spec.sessionAffinity", f"unsupported value {av.show(raw)} (want None or ClientIP)")
        return None
    cfg = _mapping(spec.get("sessionAffinityConfig"), "spec.sessionAffinityConfig", c)
    client = _mapping(cfg.get("clientIP"), "spec.sessionAffinityConfig.clientIP", c)
    timeout = client.get("timeoutSeconds")
    if timeout is None:
        return DEFAULT_AFFINITY_SECONDS
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int)
        or not 0 < timeout <= MAX_AFFINITY_SECONDS
    ):
        c.add(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            f"{av.show(timeout)} must be an integer in 1-{MAX_AFFINITY_SECONDS}",
        )
        return None
    return timeout


def _parse_load_balancer(
    spec: Mapping[str, Any], status: Mapping[str, Any], svc_type: ServiceType, c: _Collector
) -> tuple[list[IPAddress], list[IPNetwork]]:
    lb_ips: list[IPAddress] = []
    source_ranges: list[IPNetwork] = []
    raw_ranges = _list(spec.get("loadBalancerSourceRanges"), "spec.loadBalancerSourceRanges", c)
    if raw_ranges and svc_type is not ServiceType.LOAD_BALANCER:
        c.add("spec.loadBalancerSourceRanges", "may only be used when `type` is 'LoadBalancer'")
    if svc_type is not ServiceType.LOAD_BALANCER:
        return lb_ips, source_ranges  # a stale status.loadBalancer is not programmed
    for i, value in enumerate(raw_ranges):
        net = _parse_cidr(value, f"spec.loadBalancerSourceRanges[{i}]", c)
        if net is not None:
            source_ranges.append(net)
    lb = _mapping(status.get("loadBalancer"), "status.loadBalancer", c)
    for i, ingress in enumerate(_list(lb.get("ingress"), "status.loadBalancer.ingress", c)):
        path = f"status.loadBalancer.ingress[{i}]"
        if not isinstance(ingress, Mapping):
            c.add(path, f"expected an object, got {av.show(ingress)}")
            continue
        mode = ingress.get("ipMode")
        if mode not in (None, "VIP", "Proxy"):
            c.add(f"{path}.ipMode", f"unsupported value {av.show(mode)} (want VIP or Proxy)")
        if ingress.get("ip") in (None, ""):
            continue  # hostname-only ingress: nothing to program
        ip = _parse_ip(ingress.get("ip"), f"{path}.ip", c, av.service_ip_problem)
        if ip is not None and mode in (None, "VIP"):
            lb_ips.append(ip)
    return lb_ips, source_ranges


def parse_service(obj: Mapping[str, Any]) -> tuple[Service | None, list[Problem]]:
    """Parse a v1 Service; ``None`` when it has problems (they say why)."""
    ref, c = _metadata(obj, "Service", namespaced=True)
    meta = obj.get("metadata")
    labels = _labels(meta, c) if isinstance(meta, Mapping) else {}
    spec = _mapping(obj.get("spec"), "spec", c)
    status = _mapping(obj.get("status"), "status", c)

    raw_type = spec.get("type") or "ClusterIP"
    svc_type = ServiceType.CLUSTER_IP
    if isinstance(raw_type, str) and raw_type in {t.value for t in ServiceType}:
        svc_type = ServiceType(raw_type)
    else:
        c.add(
            "spec.type",
            f"unsupported value {av.show(raw_type)} (want ClusterIP, NodePort, LoadBalancer "
            "or ExternalName)",
        )

    skip_reason: str | None = None
    skip_code = ""
    if svc_type is ServiceType.EXTERNAL_NAME:
        skip_reason, skip_code = (
            "type ExternalName is resolved by DNS, not proxied",
            "external-name",
        )
    elif SERVICE_PROXY_NAME_LABEL in labels:
        skip_code = "other-proxy"
        proxy_name = labels[SERVICE_PROXY_NAME_LABEL]
        if (why := av.label_value(proxy_name)) is not None:
            c.add(f"metadata.labels[{SERVICE_PROXY_NAME_LABEL}]", f"{av.show(proxy_name)}: {why}")
        skip_reason = f"labelled {SERVICE_PROXY_NAME_LABEL}={proxy_name} (handled by another proxy)"

    cluster_ips: tuple[IPAddress, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    if svc_type is not ServiceType.EXTERNAL_NAME:
        cluster_ips, headless = _parse_cluster_ips(spec, c)
        if headless:
            if svc_type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER):
                c.add("spec.clusterIPs[0]", f"may not be set to 'None' for {svc_type} services")
            if skip_reason is None:
                skip_reason = "headless (clusterIP None): DNS returns the pod IPs directly"
                skip_code = "headless"
        if not headless and not cluster_ips and skip_reason is None and c.ok:
            c.add("spec.clusterIP", "missing (not yet allocated?)")
        ports = _parse_service_ports(spec, svc_type, c)
        if not headless and not spec.get("ports") and c.ok:
            c.add("spec.ports", "required: a Service needs at least one port")

    external_ips: list[IPAddress] = []
    for i, value in enumerate(_list(spec.get("externalIPs"), "spec.externalIPs", c)):
        ip = _parse_ip(value, f"spec.externalIPs[{i}]", c, av.endpoint_ip_problem)
        if ip is not None:
            external_ips.append(ip)

    lb_ips, source_ranges = _parse_load_balancer(spec, status, svc_type, c)
    affinity = _parse_affinity(spec, c)

    external = _externally_accessible(svc_type, spec)
    etp = TrafficPolicy.CLUSTER
    raw_etp = spec.get("externalTrafficPolicy")
    if raw_etp not in (None, ""):
        if not external and svc_type is not ServiceType.EXTERNAL_NAME:
            c.add(
                "spec.externalTrafficPolicy", "may only be set for externally-accessible services"
            )
        elif raw_etp == "Local":
            etp = TrafficPolicy.LOCAL
        elif raw_etp != "Cluster":
            c.add(
                "spec.externalTrafficPolicy",
                f"unsupported value {av.show(raw_etp)} (want Cluster or Local)",
            )
    itp = TrafficPolicy.CLUSTER
    raw_itp = spec.get("internalTrafficPolicy")
    if raw_itp == "Local":
        itp = TrafficPolicy.LOCAL
    elif raw_itp not in (None, "", "Cluster"):
        c.add(
            "spec.internalTrafficPolicy",
            f"unsupported value {av.show(raw_itp)} (want Cluster or Local)",
        )

    hc: int | None = None
    raw_hc = spec.get("healthCheckNodePort")
    if not (raw_hc is None or (type(raw_hc) is int and raw_hc == 0)):
        if svc_type is ServiceType.LOAD_BALANCER and etp is TrafficPolicy.LOCAL:
            hc = _parse_port(raw_hc, "spec.healthCheckNodePort", c)
        else:
            c.add(
                "spec.healthCheckNodePort",
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` "
                "is 'Local'",
            )

    if not c.ok:
        return None, c.problems
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
            skip_code=skip_code,
            resource_version=_resource_version(meta),
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
        c.add(f"{path}.{key}", f"{av.show(value)} is not a boolean")
        return default
    return value


def _hint_names(
    hints: Mapping[str, Any],
    key: str,
    rule: Callable[[str], str | None],
    c: _Collector,
    path: str,
) -> frozenset[str]:
    if not hints:
        return frozenset()
    names: list[str] = []
    raw = _list(hints.get(key), f"{path}.{key}", c)
    if len(raw) > MAX_HINTS:
        c.add(f"{path}.{key}", f"must have at most {MAX_HINTS} items, got {len(raw)}")
        return frozenset()
    for i, h in enumerate(raw):
        name = h.get("name") if isinstance(h, Mapping) else None
        where = f"{path}.{key}[{i}].name"
        if not isinstance(name, str) or not name:
            c.add(where, "missing" if not name else f"{av.show(name)} is not a string")
        elif (why := rule(name)) is not None:
            c.add(where, f"{av.show(name)}: {why}")
        elif name in names:
            c.add(where, f"duplicate value {av.show(name)}")
        else:
            names.append(name)
    return frozenset(names)


def _parse_slice_ports(obj: Mapping[str, Any], c: _Collector) -> tuple[EndpointPort, ...]:
    ports: list[EndpointPort] = []
    names: set[str] = set()
    raw_ports = _list(obj.get("ports"), "ports", c)
    if len(raw_ports) > MAX_SLICE_PORTS:
        c.add("ports", f"must have at most {MAX_SLICE_PORTS} items, got {len(raw_ports)}")
        return ()
    for i, raw in enumerate(raw_ports):
        path = f"ports[{i}]"
        if not isinstance(raw, Mapping):
            c.add(path, f"expected an object, got {av.show(raw)}")
            continue
        name = _string(raw.get("name"), f"{path}.name", c) or ""
        if name and (why := av.dns1123_label(name)) is not None:
            c.add(f"{path}.name", f"{av.show(name)}: {why}")
        if name in names:
            c.add(f"{path}.name", f"duplicate port name {av.show(name)}")
        names.add(name)
        protocol = _parse_protocol(raw.get("protocol"), f"{path}.protocol", c)
        if raw.get("port") is None:
            continue  # "all ports": not usable by a proxy, ignored as upstream does
        # The API takes any int32 here; a port no packet can carry would make the whole
        # transaction fail (iptables-restore refuses it), so the slice is skipped.
        port = _parse_port(raw.get("port"), f"{path}.port", c)
        if protocol is not None and port is not None:
            ports.append(EndpointPort(name, protocol, port))
    return tuple(ports)


def _parse_endpoint(
    raw: Mapping[str, Any], address_type: AddressType, path: str, c: _Collector
) -> Endpoint:
    want = IPFamily.V4 if address_type is AddressType.IPV4 else IPFamily.V6
    addrs: list[IPAddress] = []
    raw_addrs = _list(raw.get("addresses"), f"{path}.addresses", c)
    if not raw_addrs:
        c.add(f"{path}.addresses", "must contain at least 1 address")
    elif len(raw_addrs) > MAX_ENDPOINT_ADDRESSES:
        c.add(f"{path}.addresses", f"must have at most {MAX_ENDPOINT_ADDRESSES} items")
        raw_addrs = ()
    for j, value in enumerate(raw_addrs):
        where = f"{path}.addresses[{j}]"
        ip = _parse_ip(value, where, c, av.endpoint_ip_problem)
        if ip is None:
            continue
        if IPFamily.of(ip) is not want:
            c.add(where, f"{ip} is not an {address_type} address")
        elif want is IPFamily.V6 and str(ip) != value:
            c.add(where, f"{av.show(value)} must be in canonical form ({ip})")
        else:
            addrs.append(ip)
    conds = _mapping(raw.get("conditions"), f"{path}.conditions", c)
    ready = _condition(conds, "ready", True, c, f"{path}.conditions")
    # unset serving means true (the API's rule, and upstream's), not "as ready"
    serving = _condition(conds, "serving", True, c, f"{path}.conditions")
    terminating = _condition(conds, "terminating", False, c, f"{path}.conditions")
    hints = _mapping(raw.get("hints"), f"{path}.hints", c)
    node_name = _string(raw.get("nodeName"), f"{path}.nodeName", c)
    if node_name and (why := av.dns1123_subdomain(node_name)) is not None:
        c.add(f"{path}.nodeName", f"{av.show(node_name)}: {why}")
    zone = _string(raw.get("zone"), f"{path}.zone", c)
    return Endpoint(
        addresses=tuple(addrs),
        ready=ready,
        serving=serving,
        terminating=terminating,
        node_name=node_name or None,
        zone=zone or None,
        zone_hints=_hint_names(hints, "forZones", av.label_value, c, f"{path}.hints"),
        node_hints=_hint_names(hints, "forNodes", av.dns1123_subdomain, c, f"{path}.hints"),
    )


def parse_endpoint_slice(obj: Mapping[str, Any]) -> tuple[EndpointSlice | None, list[Problem]]:
    """Parse a discovery.k8s.io/v1 EndpointSlice; ``None`` when it must be skipped."""
    ref, c = _metadata(obj, "EndpointSlice", namespaced=True)
    meta = obj.get("metadata")
    labels = _labels(meta, c) if isinstance(meta, Mapping) else {}
    service_name = labels.get(SERVICE_NAME_LABEL, "")
    if not service_name:
        c.add(f"metadata.labels[{SERVICE_NAME_LABEL}]", "missing: the slice belongs to no Service")
    elif (why := av.dns1123_label(service_name)) is not None:
        c.add(f"metadata.labels[{SERVICE_NAME_LABEL}]", f"{av.show(service_name)}: {why}")
    raw_type = obj.get("addressType")
    address_type = next((t for t in AddressType if t.value == raw_type), None)
    if address_type is None:
        c.add("addressType", f"unsupported value {av.show(raw_type)} (want IPv4, IPv6 or FQDN)")
        return None, c.problems

    ports = _parse_slice_ports(obj, c)
    endpoints: list[Endpoint] = []
    raw_endpoints = _list(obj.get("endpoints"), "endpoints", c)
    if len(raw_endpoints) > MAX_SLICE_ENDPOINTS:
        c.add(
            "endpoints", f"must have at most {MAX_SLICE_ENDPOINTS} items, got {len(raw_endpoints)}"
        )
    elif address_type is not AddressType.FQDN:
        for i, raw in enumerate(raw_endpoints):
            path = f"endpoints[{i}]"
            if not isinstance(raw, Mapping):
                c.add(path, f"expected an object, got {av.show(raw)}")
                continue
            endpoints.append(_parse_endpoint(raw, address_type, path, c))
    if not c.ok:
        return None, c.problems
    return (
        EndpointSlice(
            namespace=ref.namespace,
            name=ref.name,
            service_name=service_name,
            address_type=address_type,
            ports=ports,
            endpoints=tuple(endpoints),
            resource_version=_resource_version(meta),
        ),
        [],
    )


# ---------------------------------------------------------------------------------------
# Node


def parse_node(obj: Mapping[str, Any]) -> tuple[Node | None, list[Problem]]:
    ref, c = _metadata(obj, "Node", namespaced=False)
    meta = obj.get("metadata")
    labels = _labels(meta, c) if isinstance(meta, Mapping) else {}
    spec = _mapping(obj.get("spec"), "spec", c)
    status = _mapping(obj.get("status"), "status", c)
    internal: list[IPAddress] = []
    external: list[IPAddress] = []
    for i, addr in enumerate(_list(status.get("addresses"), "status.addresses", c)):
        if not isinstance(addr, Mapping):
            c.add(f"status.addresses[{i}]", f"expected an object, got {av.show(addr)}")
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
            labels=labels,
            pod_cidrs=tuple(cidrs),
            deleting=deleting,
        ),
        [],
    )
