"""kube-scheduler: its flags."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from proxy.lab.ports import LOOPBACK


def scheduler_argv(
    binary: Path,
    *,
    kubeconfig: Path,
    secure_port: int,
    workdir: Path,
    pki: Path,
    extra: Sequence[str],
) -> list[str]:
    """kube-scheduler on loopback, no leader election."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={secure_port}",
        f"--cert-dir={workdir / 'scheduler-certs'}",
        f"--tls-cert-file={pki / 'kube-scheduler-serving.crt'}",
        f"--tls-private-key-file={pki / 'kube-scheduler-serving.key'}",
        "--leader-elect=false",
        *extra,
    ]
