"""kube-scheduler: its flags."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from proxy.lab.controlplane.components import SCHEDULER, secure_serving_flags


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
        *secure_serving_flags(
            SCHEDULER,
            kubeconfig=kubeconfig,
            secure_port=secure_port,
            cert_dir=workdir / "scheduler-certs",
            pki=pki,
        ),
        *extra,
    ]
