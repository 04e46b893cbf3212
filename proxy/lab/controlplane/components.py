"""The control plane's components: their names and the ports they use in a lab namespace."""

from __future__ import annotations

ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
KUBECTL = "kubectl"

NETNS_PORTS: dict[tuple[str, str], int] = {
    (ETCD, "client"): 2379,
    (ETCD, "peer"): 2380,
    (APISERVER, "secure"): 6443,
    (CONTROLLER_MANAGER, "secure"): 10257,
    (SCHEDULER, "secure"): 10259,
}
"""The ports every component uses inside a lab namespace (the upstream defaults).

The namespace is the control plane's alone, so there is nobody to collide with, and
node agents get the familiar ``https://<address>:6443``.
"""


def host_port(host: str, port: int) -> str:
    """host:port for a URL (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
