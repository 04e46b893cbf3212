"""kube-controller-manager: its flags and the controllers it runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from proxy.lab.controlplane.components import CONTROLLER_MANAGER, secure_serving_flags

DEFAULT_CONTROLLERS: tuple[str, ...] = ("*", "-node-lifecycle-controller")
"""Every default controller except node lifecycle.

No kubelet ever renews a Node's lease here, so the node lifecycle controller would mark
every Node NotReady after the grace period, flip its Pods to Ready=False (emptying the
EndpointSlices) and, five minutes later, evict them. Pass ``controllers=("*",)`` to
keep it.
"""

_SERVICEACCOUNT_CONTROLLER = "serviceaccount-controller"


def controller_manager_argv(
    binary: Path,
    *,
    kubeconfig: Path,
    secure_port: int,
    workdir: Path,
    pki: Path,
    service_cidr: str,
    controllers: Sequence[str],
    extra: Sequence[str],
) -> list[str]:
    """kube-controller-manager on loopback, signing with the cluster CA, no leader election."""
    ca_file = pki / "ca.crt"
    return [
        str(binary),
        *secure_serving_flags(
            CONTROLLER_MANAGER,
            kubeconfig=kubeconfig,
            secure_port=secure_port,
            cert_dir=workdir / "kcm-certs",
            pki=pki,
        ),
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={ca_file}",
        f"--cluster-signing-cert-file={ca_file}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={service_cidr}",
        f"--controllers={','.join(controllers)}",
        # Its default is under /usr/libexec, which it would create on the host.
        f"--flex-volume-plugin-dir={workdir / 'flexvolume'}",
        *extra,
    ]


def runs_serviceaccount_controller(controllers: Sequence[str]) -> bool:
    """The serviceaccount controller is on (it makes every namespace's ``default``)."""
    return (
        "*" in controllers or _SERVICEACCOUNT_CONTROLLER in controllers
    ) and f"-{_SERVICEACCOUNT_CONTROLLER}" not in controllers
