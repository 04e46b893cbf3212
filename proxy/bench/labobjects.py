"""Services with fake endpoints, for the benchmarks that run a lab cluster.

N selectorless Services (one TCP port 80 → 8080) in namespace ``bench``, each with a
hand-written EndpointSlice of M endpoints from 10.128.0.0/10 (IPv6: fd00:10:128::/104,
the Services ``ipFamilies: [IPv6]``). The benchmarks put an ``unreachable`` route to that
range in the node namespace, so a connection DNATed to a fake endpoint fails at once and
nothing leaves the lab.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from proxy.host.network import Network
from proxy.lab.cluster import LabCluster

NAMESPACE = "bench"
FAKE_ENDPOINTS = "10.128.0.0/10"
FAKE_ENDPOINTS_V6 = "fd00:10:128::/104"
_FAKE_SIZE = 1 << 22
_FAKE_V6_BASE = int(ipaddress.IPv6Address("fd00:10:128::"))
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
FAMILIES = ("ipv4", "ipv6")
"""What ``bench latency``/``datapath --ip-family`` take."""


def fake_endpoints(family: str = "ipv4") -> str:
    """The fake endpoints' range (the node routes it ``unreachable``)."""
    return FAKE_ENDPOINTS if family == "ipv4" else FAKE_ENDPOINTS_V6


def endpoint_ip(i: int, family: str = "ipv4") -> str:
    """The ``i``-th fake endpoint address (wraps around inside the family's range)."""
    i %= _FAKE_SIZE
    if family == "ipv6":
        return str(ipaddress.IPv6Address(_FAKE_V6_BASE + i))
    return f"10.{128 + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}"


def ip_counter(start: int, family: str = "ipv4") -> Callable[[], str]:
    """Fresh fake addresses from ``start`` on."""
    counter = itertools.count(start)
    return lambda: endpoint_ip(next(counter), family)


def service(
    name: str,
    port: int = 80,
    target_port: int = 8080,
    namespace: str = NAMESPACE,
    family: str = "ipv4",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": port, "targetPort": target_port}]}
    if family == "ipv6":
        spec |= {"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def endpoint_slice(
    service_name: str,
    endpoints: Sequence[dict[str, Any]],
    port: int = 8080,
    namespace: str = NAMESPACE,
    family: str = "ipv4",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv6" if family == "ipv6" else "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": list(endpoints),
    }


def objects(services: Iterable[int], endpoints: int, family: str = "ipv4") -> list[dict[str, Any]]:
    """Services ``svc-<i>`` for each i, each with ``endpoints`` fake endpoints spread over
    seven (absent) nodes; endpoint addresses are numbered from i × endpoints."""
    objs: list[dict[str, Any]] = []
    for i in services:
        name = f"svc-{i}"
        eps = [
            {"addresses": [endpoint_ip(c, family)], "nodeName": f"node-{c % 7}"}
            for c in range(i * endpoints, (i + 1) * endpoints)
        ]
        objs += [service(name, family=family), endpoint_slice(name, eps, family=family)]
    return objs


def create_namespace(lab: LabCluster[Network], name: str = NAMESPACE) -> None:
    lab.control_plane.api("POST", "/api/v1/namespaces", {"metadata": {"name": name}})


def create_all(lab: LabCluster[Network], objs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Create every object (4 writers in parallel); the Services' cluster IPs by name
    (names must be unique across namespaces)."""
    cp = lab.control_plane

    def create(obj: dict[str, Any]) -> tuple[str, str]:
        ns = obj["metadata"]["namespace"]
        if obj["kind"] == "Service":
            path = f"/api/v1/namespaces/{ns}/services"
        else:
            path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
        created = cp.api("POST", path, obj)
        return created["metadata"]["name"], str(created.get("spec", {}).get("clusterIP", ""))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return {name: ip for name, ip in pool.map(create, objs) if ip}


def set_endpoints(
    lab: LabCluster[Network], slice_name: str, endpoints: list[dict[str, Any]]
) -> None:
    """Replace one EndpointSlice's endpoint list (a JSON merge patch)."""
    lab.control_plane.api(
        "PATCH",
        f"{SLICES}/{slice_name}",
        {"endpoints": endpoints},
        content_type="application/merge-patch+json",
    )
