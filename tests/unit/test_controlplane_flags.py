"""The control plane's component flags, pinned: the e2e tests start these components, but
a changed flag that still starts would go unseen there."""

from __future__ import annotations

from pathlib import Path

from proxy.lab.controlplane.apiserver import advertise_args
from proxy.lab.controlplane.controllermanager import (
    DEFAULT_CONTROLLERS,
    controller_manager_argv,
    runs_serviceaccount_controller,
)
from proxy.lab.controlplane.scheduler import scheduler_argv

WORK = Path("/w")
PKI = WORK / "pki"
KCFG = WORK / "kubeconfigs" / "c.kubeconfig"


def test_controller_manager_flags() -> None:
    argv = controller_manager_argv(
        Path("/bin/kube-controller-manager"),
        kubeconfig=KCFG,
        secure_port=10257,
        workdir=WORK,
        pki=PKI,
        service_cidr="10.96.0.0/16",
        controllers=DEFAULT_CONTROLLERS,
        extra=["--v=2"],
    )
    assert argv == [
        "/bin/kube-controller-manager",
        f"--kubeconfig={KCFG}",
        f"--authentication-kubeconfig={KCFG}",
        f"--authorization-kubeconfig={KCFG}",
        "--bind-address=127.0.0.1",
        "--secure-port=10257",
        "--cert-dir=/w/kcm-certs",
        "--tls-cert-file=/w/pki/kube-controller-manager-serving.crt",
        "--tls-private-key-file=/w/pki/kube-controller-manager-serving.key",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        "--service-account-private-key-file=/w/pki/sa.key",
        "--root-ca-file=/w/pki/ca.crt",
        "--cluster-signing-cert-file=/w/pki/ca.crt",
        "--cluster-signing-key-file=/w/pki/ca.key",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--controllers=*,-node-lifecycle-controller",
        "--flex-volume-plugin-dir=/w/flexvolume",
        "--v=2",
    ]


def test_scheduler_flags() -> None:
    argv = scheduler_argv(
        Path("/bin/kube-scheduler"),
        kubeconfig=KCFG,
        secure_port=10259,
        workdir=WORK,
        pki=PKI,
        extra=[],
    )
    assert argv == [
        "/bin/kube-scheduler",
        f"--kubeconfig={KCFG}",
        f"--authentication-kubeconfig={KCFG}",
        f"--authorization-kubeconfig={KCFG}",
        "--bind-address=127.0.0.1",
        "--secure-port=10259",
        "--cert-dir=/w/scheduler-certs",
        "--tls-cert-file=/w/pki/kube-scheduler-serving.crt",
        "--tls-private-key-file=/w/pki/kube-scheduler-serving.key",
        "--leader-elect=false",
    ]


def test_the_advertised_address() -> None:
    assert advertise_args("127.0.0.1", None) == [
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",
    ]
    assert advertise_args("192.168.50.2", None) == ["--advertise-address=192.168.50.2"]
    assert advertise_args("127.0.0.1", "10.0.0.5") == ["--advertise-address=10.0.0.5"]


def test_the_serviceaccount_controller_runs_unless_turned_off() -> None:
    assert runs_serviceaccount_controller(DEFAULT_CONTROLLERS)
    assert runs_serviceaccount_controller(["serviceaccount-controller"])
    assert not runs_serviceaccount_controller(["*", "-serviceaccount-controller"])
    assert not runs_serviceaccount_controller(["endpointslice-controller"])
