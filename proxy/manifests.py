"""Builders for Service, EndpointSlice and Node API objects (plain dicts, as the API serves).

Used by tests, benchmarks and the lab to write state without hand-written YAML.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class Port:
    port: int
    name: str = ""
    protocol: str = "TCP"
    target_port: int | str | None = None
    node_port: int | None = None

    def service_port(self) -> JSON:
        out: JSON = {"port": self.port, "protocol": self.protocol}
        if self.name:
            out["name"] = self.name
        out["targetPort"] = self.target_port if self.target_port is not None else self.port
        if self.node_port is not None:
            out["nodePort"] = self.node_port
        return out


def service(
    name: str,
    cluster_ip: str,
    ports: Sequence[Port],
    *,
    namespace: str = "default",
    type: str = "ClusterIP",
    external_ips: Sequence[str] = (),
    lb_ips: Sequence[str] = (),
    lb_ip_mode: str | None = None,
    source_ranges: Sequence[str] = (),
    affinity_seconds: int | None = None,
    external_policy: str | None = None,
    internal_policy: str | None = None,
    health_check_node_port: int | None = None,
    labels: dict[str, str] | None = None,
    selector: dict[str, str] | None = None,
    cluster_ips: Sequence[str] = (),
    ip_families: Sequence[str] = (),
    ip_family_policy: str | None = None,
    secondary_cluster_ip: str | None = None,
) -> JSON:
    """A Service. ``cluster_ips`` (dual-stack: one per family, ``cluster_ip`` first)
    defaults to ``[cluster_ip]``, or to ``[cluster_ip, secondary_cluster_ip]``. Unless
    ``ip_families``/``ip_family_policy`` are given, a dual-stack or IPv6 Service gets
    them as the API server would write them (``PreferDualStack``/``SingleStack``)."""
    if cluster_ips and cluster_ips[0] != cluster_ip:
        raise ValueError(f"cluster_ips {list(cluster_ips)} must start with {cluster_ip!r}")
    if cluster_ips and secondary_cluster_ip:
        raise ValueError("give cluster_ips or secondary_cluster_ip, not both")
    ips = list(cluster_ips) or [
        cluster_ip,
        *([secondary_cluster_ip] if secondary_cluster_ip else []),
    ]
    if not ip_families and cluster_ip not in ("", "None") and (len(ips) > 1 or ":" in cluster_ip):
        ip_families = ["IPv6" if ":" in ip else "IPv4" for ip in ips]
        ip_family_policy = ip_family_policy or (
            "PreferDualStack" if len(ips) > 1 else "SingleStack"
        )
    spec: JSON = {
        "type": type,
        "clusterIP": cluster_ip,
        "clusterIPs": ips,
        "ports": [p.service_port() for p in ports],
    }
    if cluster_ip == "":
        del spec["clusterIP"], spec["clusterIPs"]
    if ip_families:
        spec["ipFamilies"] = list(ip_families)
    if ip_family_policy is not None:
        spec["ipFamilyPolicy"] = ip_family_policy
    if selector is not None:
        spec["selector"] = selector
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    if affinity_seconds is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_seconds}}
    if external_policy is not None:
        spec["externalTrafficPolicy"] = external_policy
    if internal_policy is not None:
        spec["internalTrafficPolicy"] = internal_policy
    if health_check_node_port is not None:
        spec["healthCheckNodePort"] = health_check_node_port
    obj: JSON = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": spec,
    }
    if lb_ips:
        ingress = []
        for ip in lb_ips:
            entry: JSON = {"ip": ip}
            if lb_ip_mode is not None:
                entry["ipMode"] = lb_ip_mode
            ingress.append(entry)
        obj["status"] = {"loadBalancer": {"ingress": ingress}}
    return obj


@dataclass(frozen=True)
class EP:
    """One endpoint of a slice."""

    ip: str
    node: str | None = None
    ready: bool = True
    serving: bool | None = None
    terminating: bool = False
    zone: str | None = None
    zone_hints: tuple[str, ...] = ()
    node_hints: tuple[str, ...] = ()
    extra: JSON = field(default_factory=dict)

    def render(self) -> JSON:
        serving = self.ready if self.serving is None else self.serving
        out: JSON = {
            "addresses": [self.ip],
            "conditions": {
                "ready": self.ready,
                "serving": serving,
                "terminating": self.terminating,
            },
        }
        if self.node is not None:
            out["nodeName"] = self.node
        if self.zone is not None:
            out["zone"] = self.zone
        hints: JSON = {}
        if self.zone_hints:
            hints["forZones"] = [{"name": z} for z in self.zone_hints]
        if self.node_hints:
            hints["forNodes"] = [{"name": n} for n in self.node_hints]
        if hints:
            out["hints"] = hints
        out.update(self.extra)
        return out


def endpoint_slice(
    service_name: str,
    endpoints: Iterable[EP],
    ports: Sequence[tuple[str, int, str]],
    *,
    name: str | None = None,
    namespace: str = "default",
    address_type: str = "IPv4",
) -> JSON:
    """``ports`` is (name, port, protocol) per slice port (name matches the Service's)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service_name}-abc12",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": address_type,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
        "endpoints": [e.render() for e in endpoints],
    }


def node(
    name: str,
    internal_ip: str | Sequence[str],
    *more_internal_ips: str,
    zone: str | None = None,
    pod_cidr: str | Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
) -> JSON:
    """A Node; a dual-stack node has an InternalIP of each family (a sequence, or more
    arguments) and may have a pod CIDR of each (primary first)."""
    meta_labels = dict(labels or {})
    if zone is not None:
        meta_labels["topology.kubernetes.io/zone"] = zone
    spec: JSON = {}
    if pod_cidr is not None:
        cidrs = [pod_cidr] if isinstance(pod_cidr, str) else list(pod_cidr)
        spec = {"podCIDR": cidrs[0], "podCIDRs": cidrs}
    ips = [internal_ip] if isinstance(internal_ip, str) else list(internal_ip)
    ips += more_internal_ips
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": meta_labels},
        "spec": spec,
        "status": {
            "addresses": [
                *({"type": "InternalIP", "address": ip} for ip in ips),
                {"type": "Hostname", "address": name},
            ]
        },
    }


def as_list(objects: Iterable[JSON]) -> JSON:
    return {"apiVersion": "v1", "kind": "List", "items": list(objects)}


def synthetic_cluster(
    services: int,
    endpoints_per_service: int,
    *,
    node_name: str = "node-a",
    nodes: int = 10,
    node_port_every: int = 20,
) -> list[JSON]:
    """A large, valid cluster state for benchmarks and property checks.

    Service i gets ClusterIP 10.96.x.y, one TCP port 80 (every ``node_port_every``-th
    also a NodePort, unique while fewer than 2768 of them), and ``endpoints_per_service``
    endpoints 10.(128+…) spread over ``nodes`` nodes.
    """
    objs: list[JSON] = [node(node_name, "192.168.50.11", zone="zone-a")]
    ep_counter = 0
    for i in range(services):
        cip = f"10.{96 + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}"
        node_port = 30000 + (i // node_port_every) % 2768 if i % node_port_every == 0 else None
        svc_type = "NodePort" if node_port is not None else "ClusterIP"
        name = f"svc-{i}"
        objs.append(
            service(
                name,
                cip,
                [Port(80, "http", target_port=8080, node_port=node_port)],
                type=svc_type,
                namespace="bench",
            )
        )
        eps = []
        for _ in range(endpoints_per_service):
            n = 128 + (ep_counter >> 16)
            eps.append(
                EP(
                    f"10.{n}.{(ep_counter >> 8) & 0xFF}.{ep_counter & 0xFF}",
                    node=f"node-{chr(ord('a') + ep_counter % nodes)}",
                )
            )
            ep_counter += 1
        objs.append(endpoint_slice(name, eps, [("http", 8080, "TCP")], namespace="bench"))
    return objs
