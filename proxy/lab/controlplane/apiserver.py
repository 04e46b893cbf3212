"""kube-apiserver: its flags (serving, ServiceAccount tokens, RBAC, the front proxy,
the kubelet client) and the address it advertises."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from proxy.lab.ports import LOOPBACK

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


def advertise_args(bind_address: str, advertise_address: str | None) -> list[str]:
    """The address published as the ``kubernetes`` Service's endpoint (or none)."""
    if advertise_address is not None:
        return [f"--advertise-address={advertise_address}"]
    if not ipaddress.ip_address(bind_address).is_loopback:
        # A lab namespace's LAN address: the default (lease) endpoint reconciler
        # publishes it as the `kubernetes` Service's endpoint, as on a real cluster.
        return [f"--advertise-address={bind_address}"]
    # Without an address the API server advertises the host's default interface IP
    # (bind-address is loopback), and the `kubernetes` Service's endpoints would send
    # lab traffic to the host. Loopback cannot be an endpoint, so: no endpoints.
    return [f"--advertise-address={LOOPBACK}", "--endpoint-reconciler-type=none"]


def apiserver_argv(
    binary: Path,
    *,
    etcd_url: str,
    bind_address: str,
    secure_port: int,
    workdir: Path,
    pki: Path,
    service_cidr: str,
    advertise: Sequence[str],
    extra: Sequence[str],
) -> list[str]:
    """kube-apiserver on ``bind_address:secure_port`` with the certificates in ``pki``."""
    ca_file = pki / "ca.crt"
    return [
        str(binary),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={bind_address}",
        f"--secure-port={secure_port}",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={ca_file}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-cluster-ip-range={service_cidr}",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        # Kubelets are reached by their InternalIP (no DNS for node names here)
        # and must present a serving certificate from the lab CA.
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={ca_file}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        *advertise,
        *extra,
    ]
