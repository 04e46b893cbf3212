"""The control plane's components: their names and the ports they use in a lab namespace."""

from __future__ import annotations

from pathlib import Path

from proxy.lab.ports import LOOPBACK

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


def secure_serving_flags(
    name: str, *, kubeconfig: Path, secure_port: int, cert_dir: Path, pki: Path
) -> list[str]:
    """kube-controller-manager's and kube-scheduler's common flags: its kubeconfig for
    everything, HTTPS on loopback with its serving certificate from ``pki``, no leader
    election."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={secure_port}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={pki / f'{name}-serving.crt'}",
        f"--tls-private-key-file={pki / f'{name}-serving.key'}",
        "--leader-elect=false",
    ]


def host_port(host: str, port: int) -> str:
    """host:port for a URL (IPv6 literals in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
