"""Services with fake endpoints, for the benchmarks that run a lab cluster.

N selectorless Services (one TCP port 80 → 8080) in namespace ``bench``, each with a
hand-written EndpointSlice of M endpoints from 10.128.0.0/10. The benchmarks put an
``unreachable`` route to that range in the node namespace, so a connection DNATed to a
fake endpoint fails at once and nothing leaves the lab.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from proxy.host.network import Network
from proxy.lab.cluster import LabCluster

NAMESPACE = "bench"
FAKE_ENDPOINTS = "10.128.0.0/10"
_FAKE_SIZE = 1 << 22
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"


def endpoint_ip(i: int) -> str:
    """The ``i``-th fake endpoint address (wraps around inside 10.128.0.0/10)."""
    i %= _FAKE_SIZE
    return f"10.{128 + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}"


def ip_counter(start: int) -> Callable[[], str]:
    """Fresh fake addresses from ``start`` on."""
    counter = itertools.count(start)
    return lambda: endpoint_ip(next(counter))


def service(
    name: str, port: int = 80, target_port: int = 8080, namespace: str = NAMESPACE
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": target_port}]},
    }


def endpoint_slice(
    service_name: str,
    endpoints: Sequence[dict[str, Any]],
    port: int = 8080,
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": list(endpoints),
    }


def objects(services: Iterable[int], endpoints: int) -> list[dict[str, Any]]:
    """Services ``svc-<i>`` for each i, each with ``endpoints`` fake endpoints spread over
    seven (absent) nodes; endpoint addresses are numbered from i × endpoints."""
    objs: list[dict[str, Any]] = []
    for i in services:
        name = f"svc-{i}"
        eps = [
            {"addresses": [endpoint_ip(c)], "nodeName": f"node-{c % 7}"}
            for c in range(i * endpoints, (i + 1) * endpoints)
        ]
        objs += [service(name), endpoint_slice(name, eps)]
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
