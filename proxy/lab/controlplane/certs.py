"""The control plane's PKI, as kubeadm's certs phase writes it: the cluster CA, the API
server's serving and kubelet-client certificates, the admin's client certificate, the
controller manager's and scheduler's serving certificates, the ServiceAccount signing
key and the front proxy's CA."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.lab.controlplane.components import CONTROLLER_MANAGER, SCHEDULER
from proxy.lab.pki import CertificateAuthority, CertKey, SigningKey


@dataclass(frozen=True)
class ControlPlaneCerts:
    ca: CertificateAuthority
    admin: CertKey
    """The admin's client certificate (group system:masters)."""
    admin_tls: ssl.SSLContext
    """TLS as the admin: trusts the CA, presents the admin certificate."""


def write_pki(
    pki: Path,
    service_nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
    extra_sans: Sequence[str],
) -> ControlPlaneCerts:
    """Create the certificates and keys in ``pki`` (``ca.crt``, ``apiserver.crt``, …)."""
    ca = CertificateAuthority.create()
    ca.pair.write(pki, "ca")
    ips = ["127.0.0.1", *(str(n[1]) for n in service_nets)]
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    for san in extra_sans:
        try:
            ipaddress.ip_address(san)
            ips.append(san)
        except ValueError:
            dns.append(san)
    ca.issue("kube-apiserver", dns_names=dns, ip_addresses=ips, server=True).write(pki, "apiserver")
    admin = ca.issue("kubernetes-admin", organizations=["system:masters"], client=True)
    admin.write(pki, "admin")
    # How the API server authenticates to kubelets (exec, logs, port-forward), as
    # kubeadm's apiserver-kubelet-client certificate does.
    ca.issue("kube-apiserver-kubelet-client", organizations=["system:masters"], client=True).write(
        pki, "apiserver-kubelet-client"
    )
    for component in (CONTROLLER_MANAGER, SCHEDULER):
        ca.issue(component, dns_names=["localhost"], ip_addresses=["127.0.0.1"], server=True).write(
            pki, f"{component}-serving"
        )
    SigningKey.create().write(pki, "sa")
    # The aggregation layer's front proxy: without a requestheader CA the controller
    # manager and scheduler log an error every few seconds about the missing bundle.
    front = CertificateAuthority.create("kube-proxy-py-lab-front-proxy-ca")
    front.pair.write(pki, "front-proxy-ca")
    front.issue("front-proxy-client", client=True).write(pki, "front-proxy-client")
    tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ControlPlaneCerts(ca, admin, tls)
