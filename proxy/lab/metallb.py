"""LoadBalancer addresses for the lab: MetalLB in L2 mode, as kind users install it.

``kubectl apply -f metallb-native.yaml`` (the manifest of the MetalLB module the lab
built, :func:`proxy.lab.addonbuild.metallb_manifest`, applied unchanged: its images
are the ones the lab built, served by the lab registry under their quay.io names), then
one :func:`pool_objects` pair: an ``IPAddressPool`` on the lab LAN and an
``L2Advertisement`` for it. The speaker on a node answers ARP for an address it
announces, so the outside ``client`` reaches a LoadBalancer Service on the LAN with no
route of its own; with ``externalTrafficPolicy: Local`` only nodes with a ready local
endpoint announce.

The manifest's validating webhooks make the API server call the controller through its
Service's ClusterIP. A kind control-plane node runs kube-proxy for that; the lab's
control plane is no node, so it routes the Service CIDR through the first node (whose
proxy masquerades the traffic, as it does for any client outside the cluster CIDR).

Services whose ``spec.loadBalancerClass`` is set are left alone by MetalLB (it runs
without ``--lb-class``): the tests that hand-write a load balancer's status set
:data:`STATIC_CLASS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "metallb-system"
POOL = "lab-lan"
POOL_RANGE = "192.168.50.200-192.168.50.250"
"""Free addresses of the lab LAN (192.168.50.0/24) handed to LoadBalancer Services."""
POOL_RANGE_IPV6 = "fd00:192:168:50::200-fd00:192:168:50::250"
"""The IPv6 twin of :data:`POOL_RANGE` (on the LAN's fd00:192:168:50::/64)."""
POOL_RANGES: dict[int, str] = {4: POOL_RANGE, 6: POOL_RANGE_IPV6}


def pool_ranges(versions: Sequence[int]) -> list[str]:
    """The pool's ranges in an IPv4, IPv6 or dual-stack lab (a dual-stack Service gets
    one address of each)."""
    return [POOL_RANGES[v] for v in versions]


STATIC_CLASS = "kube-proxy-py.io/static"
"""A ``loadBalancerClass`` no controller in the lab implements: the load balancer's
status is whatever its writer put there."""


class MetalLBError(ValueError):
    """The MetalLB manifest is not what the lab expects; the message says what."""


def install_objects(path: Path) -> list[dict[str, Any]]:
    """The objects of ``metallb-native.yaml``, in its order."""
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise MetalLBError(f"cannot read the MetalLB manifest {path}: {exc}") from exc
    objects = [d for d in docs if isinstance(d, dict)]
    kinds = {(o.get("kind"), o.get("metadata", {}).get("name")) for o in objects}
    for want in (("Deployment", "controller"), ("DaemonSet", "speaker")):
        if want not in kinds:
            raise MetalLBError(f"{path} has no {want[0]} {want[1]}")
    return objects


def images(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every container image the manifest's workloads run."""
    out: list[str] = []
    for obj in objects:
        if obj.get("kind") not in ("Deployment", "DaemonSet"):
            continue
        for c in obj["spec"]["template"]["spec"].get("containers", []):
            out.append(str(c["image"]))
    return out


def pool_objects(addresses: Sequence[str] = (POOL_RANGE,)) -> list[dict[str, Any]]:
    """An address pool of ``addresses`` (ranges) on the lab LAN and its L2
    advertisement."""
    meta = {"name": POOL, "namespace": NAMESPACE}
    return [
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": meta,
            "spec": {"addresses": list(addresses)},
        },
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "L2Advertisement",
            "metadata": meta,
            "spec": {"ipAddressPools": [POOL]},
        },
    ]
