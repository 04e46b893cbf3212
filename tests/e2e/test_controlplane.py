"""The control plane fixture against the real upstream binaries (no mocks)."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from proxy.lab.build import K8S_VERSION
from proxy.lab.controlplane.components import APISERVER
from proxy.lab.controlplane.controlplane import ControlPlane
from proxy.lab.controlplane.errors import ControlPlaneError, KubectlError
from proxy.lab.ports import listeners_of, port_is_free, tcp_listeners

pytestmark = pytest.mark.e2e

T = TypeVar("T")

WAIT_SECONDS = 90.0
"""Upper bound for eventual effects (controllers); a bound, not a timing assertion."""


class NotYet(Exception):
    """Raised by a probe: not there yet; the message says what it saw."""


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT_SECONDS) -> T:
    """Poll probe until it returns a value that is not None; fail after timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except (KubectlError, NotYet) as e:
            value, last = None, e
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}; last seen: {last}")
        time.sleep(0.5)


def kget(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def apply(cp: ControlPlane, obj: dict[str, Any]) -> str:
    return cp.kubectl("apply", "-f", "-", input=json.dumps(obj)).stdout


def pid_alive(pid: int, argv0: str) -> bool:
    """True if pid still runs the binary argv0 (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return cmdline.split(b"\0", 1)[0].decode(errors="replace").endswith(argv0)


@pytest.fixture(scope="module")
def cp(k8s_bin: Path) -> Iterator[ControlPlane]:
    """Every component; test_stop_leaves_no_process_port_or_directory stops it (stop() is
    idempotent), so the tests that use it come before that one."""
    with ControlPlane(k8s_bin, with_controllers=True, with_scheduler=True) as plane:
        yield plane


def test_starts_and_serves_the_pinned_version(cp: ControlPlane) -> None:
    version = json.loads(cp.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == K8S_VERSION
    assert version["clientVersion"]["gitVersion"] == K8S_VERSION
    assert cp.server.startswith("https://127.0.0.1:")

    # Every component listens, and only on 127.0.0.1, exactly on the ports it reports.
    assert set(cp.pids) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    }
    seen: set[int] = set()
    for name, pid in cp.pids.items():
        listeners = listeners_of(pid)
        assert listeners, f"{name} (pid {pid}) listens on nothing"
        assert {lst.address for lst in listeners} == {"127.0.0.1"}, (name, listeners)
        seen |= {lst.port for lst in listeners}
    assert seen == set(cp.ports.values())


def test_service_gets_cluster_ip_in_service_cidr(cp: ControlPlane) -> None:
    cp.kubectl("create", "namespace", "t-cidr")
    cp.kubectl("create", "service", "clusterip", "svc", "-n", "t-cidr", "--tcp=80:8080")
    svc = kget(cp, "service", "svc", "-n", "t-cidr")
    ip = ipaddress.ip_address(svc["spec"]["clusterIP"])
    assert ip in ipaddress.ip_network(cp.service_cidr)
    kubernetes = kget(cp, "service", "kubernetes", "-n", "default")
    assert kubernetes["spec"]["clusterIP"] == str(ipaddress.ip_network(cp.service_cidr)[1])


def test_endpointslice_controller_publishes_patched_pod(cp: ControlPlane) -> None:
    ns, node, pod_ip, host_ip = "t-eps", "node-a", "10.244.1.5", "10.0.0.10"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # A Node that a kubelet would have registered, Ready.
    apply(cp, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    node_status = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "patched by the e2e test",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": host_ip},
                {"type": "Hostname", "address": node},
            ],
        }
    }
    cp.kubectl(
        "patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(node_status)
    )
    ready = [c for c in kget(cp, "node", node)["status"]["conditions"] if c["type"] == "Ready"]
    assert [c["status"] for c in ready] == ["True"]

    cp.kubectl("create", "namespace", ns)
    apply(
        cp,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
            },
        },
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": ns, "labels": {"app": "web"}},
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": "web",
                    "image": "registry.k8s.io/pause:3.10",
                    "ports": [{"containerPort": 8080}],
                }
            ],
        },
    }
    # The ServiceAccount admission plugin refuses Pods until the serviceaccount controller
    # has created the namespace's `default` ServiceAccount.
    wait_for(f"pod creation in {ns}", lambda: apply(cp, pod))

    conditions = [
        {"type": t, "status": "True", "lastTransitionTime": now}
        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    pod_status = {
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": now,
        }
    }
    cp.kubectl(
        "patch", "pod", "web-0", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps(pod_status),
    )  # fmt: skip
    status = kget(cp, "pod", "web-0", "-n", ns)["status"]
    assert status["phase"] == "Running"
    assert status["podIPs"] == [{"ip": pod_ip}]

    def ready_slice() -> dict[str, Any]:
        slices = kget(cp, "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=web")
        for s in slices["items"]:
            for ep in s.get("endpoints") or []:
                if pod_ip in ep["addresses"] and ep["conditions"].get("ready") is True:
                    return {"slice": s, "endpoint": ep}
        raise NotYet(f"EndpointSlices for web: {json.dumps(slices['items'])}")

    found = wait_for("an EndpointSlice with the ready pod IP", ready_slice)
    eps, endpoint = found["slice"], found["endpoint"]
    assert eps["addressType"] == "IPv4"
    assert eps["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert endpoint["nodeName"] == node
    assert endpoint["targetRef"]["name"] == "web-0"
    assert eps["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == (
        "endpointslice-controller.k8s.io"
    )


def test_service_account_token_kubeconfig_is_subject_to_rbac(cp: ControlPlane) -> None:
    ns = "t-token"
    cp.kubectl("create", "namespace", ns)
    cp.kubectl("create", "serviceaccount", "reader", "-n", ns)
    token = cp.service_account_token(ns, "reader")
    kubeconfig = cp.token_kubeconfig("reader", token)

    who = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:reader"
    denied = cp.kubectl("get", "services", "-n", ns, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()

    cp.kubectl("create", "role", "svc-reader", "-n", ns, "--verb=list", "--resource=services")
    cp.kubectl(
        "create", "rolebinding", "reader", "-n", ns, "--role=svc-reader",
        f"--serviceaccount={ns}:reader",
    )  # fmt: skip
    cp.kubectl("get", "services", "-n", ns, kubeconfig=kubeconfig)


def _etcd_range(cp: ControlPlane, revision: int) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"key": base64.b64encode(b"/").decode(), "revision": str(revision)})
    req = urllib.request.Request(f"{cp.etcd_url}/v3/kv/range", data=body.encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _first_watch_event(cp: ControlPlane, path: str, resource_version: str) -> Any:
    url = f"{cp.server}{path}?watch=1&resourceVersion={resource_version}"

    def first() -> Any:
        try:
            with urllib.request.urlopen(url, context=cp.ssl_context(), timeout=10) as resp:
                return json.loads(resp.readline())
        except urllib.error.HTTPError as e:
            if e.code == 429:  # the new watch cache is still initializing
                raise NotYet(f"HTTP 429: {e.read()[:200]!r}") from e
            raise

    return wait_for(f"a watch on {path}", first)


def test_compact_etcd_and_restart_apiserver_keep_data(cp: ControlPlane) -> None:
    cp.kubectl("create", "configmap", "survivor", "-n", "default", "--from-literal=k=v")
    old_rv = kget(cp, "configmap", "survivor", "-n", "default")["metadata"]["resourceVersion"]
    cp.kubectl("create", "configmap", "later", "-n", "default")
    head = int(_etcd_range(cp, 0)[1]["header"]["revision"])
    status, _ = _etcd_range(cp, head - 1)
    assert status == 200, "an old revision should be readable before compaction"

    compacted = cp.compact_etcd()
    assert compacted >= head
    status, reply = _etcd_range(cp, compacted - 1)
    assert status != 200
    assert "compacted" in reply.get("message", reply.get("error", ""))

    server, old_pid = cp.server, cp.pids[APISERVER]
    cp.restart_apiserver()
    assert cp.server == server
    assert cp.pids[APISERVER] != old_pid
    assert not pid_alive(old_pid, "kube-apiserver")
    cm = kget(cp, "configmap", "survivor", "-n", "default")
    assert cm["data"] == {"k": "v"}

    # The new API server's watch cache starts after the compaction: an old watch is gone.
    event = _first_watch_event(cp, "/api/v1/namespaces/default/configmaps", old_rv)
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410


def test_two_control_planes_run_side_by_side(cp: ControlPlane, k8s_bin: Path) -> None:
    with ControlPlane(k8s_bin, service_cidr="10.100.0.0/24") as other:
        assert other.server != cp.server
        assert other.workdir != cp.workdir
        assert not set(other.ports.values()) & set(cp.ports.values())
        other.kubectl("create", "configmap", "only-here", "-n", "default")
        missing = cp.kubectl("get", "configmap", "only-here", "-n", "default", check=False)
        assert missing.returncode != 0
        assert "NotFound" in missing.stderr
        other.kubectl("create", "service", "clusterip", "s", "--tcp=53:53")
        ip = kget(other, "service", "s")["spec"]["clusterIP"]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.100.0.0/24")
        assert json.loads(other.kubectl("version", "-o", "json").stdout)["serverVersion"]
        assert json.loads(cp.kubectl("version", "-o", "json").stdout)["serverVersion"]


def _assert_cleaned_up(spawned: list[tuple[str, int]], ports: list[int], workdir: Path) -> None:
    alive = [(name, pid) for name, pid in spawned if pid_alive(pid, name)]
    assert not alive, f"processes left running: {alive}"
    listening = {lst.port for lst in tcp_listeners()}
    assert not set(ports) & listening, "ports still listening"
    assert all(port_is_free(p) for p in ports)
    assert not workdir.exists()


def test_stop_leaves_no_process_port_or_directory(cp: ControlPlane) -> None:
    """Stops the module's control plane (every component): the last test that uses it."""
    plane = cp
    try:
        spawned, ports, workdir = plane.spawned, list(plane.ports.values()), plane.workdir
        assert {name for name, _ in spawned} == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        }
        assert len(ports) == 5
        assert workdir.is_dir()
        assert not any(port_is_free(p) for p in ports)
    finally:
        plane.stop()
    _assert_cleaned_up(spawned, ports, workdir)
    assert plane.pids == {}


def test_failed_start_reports_log_and_cleans_up(k8s_bin: Path) -> None:
    plane = ControlPlane(k8s_bin, extra_apiserver_args=["--no-such-flag-for-e2e"])
    with pytest.raises(ControlPlaneError) as err:
        plane.start(timeout=60)
    message = str(err.value)
    assert "kube-apiserver exited" in message
    assert "no-such-flag-for-e2e" in message
    _assert_cleaned_up(plane.spawned, list(plane.ports.values()), plane.workdir)
    assert {name for name, _ in plane.spawned} == {"etcd", "kube-apiserver"}
