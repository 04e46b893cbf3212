"""Install the lab's cluster add-ons and wait for them: CoreDNS and MetalLB.

What they are is in :mod:`proxy.lab.coredns` and :mod:`proxy.lab.metallb`; this module
applies them with ``kubectl apply`` on a running cluster and waits until they serve:
both CoreDNS replicas Ready, MetalLB's controller Ready and a speaker Ready on every node,
and the address pool accepted (the first attempts fail until the controller's webhook
has a certificate, so they are retried).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from proxy.lab import addonbuild, coredns, metallb
from proxy.lab.images import COREDNS_REF
from proxy.lab.topology import service_ip

READY_TIMEOUT = 180.0


class Cluster(Protocol):
    def apply(self, *objects: Mapping[str, Any]) -> None: ...

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str: ...


class AddonError(RuntimeError):
    """An add-on did not come up; the message says which and what it last saw."""


def dns_service_ips(versions: Sequence[int]) -> tuple[str, ...]:
    """``kube-dns``'s ClusterIP in each family (``10.96.0.10``, ``fd00:10:96::10``)."""
    return tuple(service_ip(coredns.DNS_SERVICE_IP, v) for v in versions)


def objects(versions: Sequence[int] = (4,)) -> list[dict[str, Any]]:
    """CoreDNS (kubeadm's objects) and MetalLB (its native manifest), in apply order."""
    return [
        *coredns.cluster_dns_objects(COREDNS_REF, dns_service_ips(versions)),
        *metallb.install_objects(addonbuild.metallb_manifest()),
    ]


def deploy(
    cluster: Cluster, progress: Callable[[str], None], versions: Sequence[int] = (4,)
) -> None:
    progress(
        f"installing CoreDNS {addonbuild.COREDNS_VERSION} (kube-dns "
        f"{', '.join(dns_service_ips(versions))}, as kubeadm does) and MetalLB "
        f"{addonbuild.METALLB_VERSION} (metallb-native.yaml)"
    )
    cluster.apply(*objects(versions))


def _ready_counts(cluster: Cluster) -> dict[str, tuple[int, int]]:
    """name -> (ready, wanted) for CoreDNS, MetalLB's controller and its speakers."""
    out: dict[str, tuple[int, int]] = {}
    dep = json.loads(cluster.kubectl("get", "-n", "kube-system", "deploy/coredns", "-o", "json"))
    out["coredns"] = (
        int(dep.get("status", {}).get("readyReplicas", 0)),
        int(dep["spec"].get("replicas", 1)),
    )
    ctl = json.loads(
        cluster.kubectl("get", "-n", metallb.NAMESPACE, "deploy/controller", "-o", "json")
    )
    out["metallb controller"] = (int(ctl.get("status", {}).get("readyReplicas", 0)), 1)
    ds = json.loads(cluster.kubectl("get", "-n", metallb.NAMESPACE, "ds/speaker", "-o", "json"))
    status = ds.get("status", {})
    out["metallb speaker"] = (
        int(status.get("numberReady", 0)),
        max(1, int(status.get("desiredNumberScheduled", 0))),
    )
    return out


def wait_ready(
    cluster: Cluster,
    progress: Callable[[str], None],
    versions: Sequence[int] = (4,),
    timeout: float = READY_TIMEOUT,
) -> None:
    """Every add-on Ready and the address pool (a range per family) in place, else
    AddonError."""
    ranges = metallb.pool_ranges(versions)
    t0 = time.monotonic()
    deadline = t0 + timeout
    pending: Sequence[str] = ()
    pool_done = False
    last_error = ""
    while True:
        counts = _ready_counts(cluster)
        pending = [f"{n} {r}/{w}" for n, (r, w) in counts.items() if r < w]
        if not pool_done:  # refused until the controller's webhook serves
            try:
                cluster.apply(*metallb.pool_objects(ranges))
                pool_done = True
                progress(
                    f"MetalLB address pool {metallb.POOL} {', '.join(ranges)} (L2) after "
                    f"{time.monotonic() - t0:.1f}s"
                )
            except Exception as exc:  # the webhook is not serving yet
                last_error = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        if not pending and pool_done:
            progress(
                "add-ons ready after "
                f"{time.monotonic() - t0:.1f}s: "
                + ", ".join(f"{n} {r}/{w}" for n, (r, w) in counts.items())
            )
            return
        if time.monotonic() > deadline:
            raise AddonError(
                f"add-ons not ready within {timeout:.0f}s: "
                + ", ".join([*pending, *([] if pool_done else ["address pool not accepted"])])
                + (f" (last error: {last_error})" if last_error else "")
            )
        time.sleep(1.0)
