"""The pod agent (a kubelet stand-in) against a real control plane with the scheduler.

A LabCluster with three namespace nodes and no harness pods; ``python -m
proxy.lab.podagent`` runs inside node-a and node-b with node credentials (client
certificate ``system:node:NODE`` / ``system:nodes``, so the Node authorizer applies);
node-c (a /29 pod CIDR, tainted so that the scheduler never uses it) gets an in-process
``PodAgent`` in one test. kubectl creates a Deployment, the real scheduler binds its pods,
the agents run them as namespaces, and the real EndpointSlice controller publishes them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.harness import NodeSpec, TopologySpec
from proxy.harness import netns as harness_netns
from proxy.lab import nsutil, podnet
from proxy.lab.cluster import LabCluster, wait_for
from proxy.lab.controlplane import ApiError
from proxy.lab.podagent import (
    IPAllocator,
    PodAgent,
    PodAgentError,
    SetupError,
    cleanup_from_state,
    grace_seconds,
    served_ports,
    state_path,
)
from proxy.source.api import ApiClient

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

NODES = (
    NodeSpec("node-a", "192.168.50.11", "10.244.1.0/24"),
    NodeSpec("node-b", "192.168.50.12", "10.244.2.0/24"),
    NodeSpec("node-c", "192.168.50.13", "10.244.3.0/29"),
)
SPEC = TopologySpec(nodes=NODES, pods=(), clients=())
AGENT_NODES = ("node-a", "node-b")
"""Nodes with a pod agent process; the scheduler may use them (node-c is tainted)."""
CIDR = {n.name: ipaddress.IPv4Network(n.pod_cidr) for n in NODES}
NODE_IP = {n.name: n.lan_ip for n in NODES}
DEPLOY_GRACE = 2
TIMEOUT = 90.0


@dataclass
class AgentProcess:
    node: str
    process: subprocess.Popen[str]
    log_path: Path
    state: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int, timeout: float = 60.0) -> int:
        if self.alive():
            os.kill(self.process.pid, sig)
        return self.process.wait(timeout=timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Lab:
    """The cluster, node credentials and the pod agent processes."""

    def __init__(self, cluster: LabCluster, state_dir: Path) -> None:
        self.cluster = cluster
        self.state_dir = state_dir
        self.agents: dict[str, AgentProcess] = {}
        self.kubeconfigs = {
            n.name: cluster.control_plane.client_cert_kubeconfig(
                f"podagent-{n.name}", f"system:node:{n.name}", ["system:nodes"]
            )
            for n in NODES
        }
        self._starts = 0

    @property
    def id(self) -> str:
        return self.cluster.topo.id

    def ns(self, node: str) -> str:
        return self.cluster.topo.ns(node)

    def kubectl(self, *args: str) -> str:
        return self.cluster.kubectl(*args)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self.cluster.control_plane.api(method, path, body)

    def start_agent(self, node: str) -> AgentProcess:
        self._starts += 1
        log_path = self.state_dir / f"agent-{node}-{self._starts}.log"
        argv = [
            sys.executable, "-m", "proxy.lab.podagent", "--node", node,
            "--kubeconfig", str(self.kubeconfigs[node]), "--lab-id", self.id,
            "--state-dir", str(self.state_dir), "--max-grace", "120",
        ]  # fmt: skip
        with log_path.open("w") as out:
            process = self.cluster.topo.popen(node, argv, stdout=out, stderr=subprocess.STDOUT)
        agent = AgentProcess(node, process, log_path, state_path(self.state_dir, node))
        self.agents[node] = agent
        return agent

    def ensure_agents(self) -> None:
        for node in AGENT_NODES:
            agent = self.agents.get(node)
            if agent is None or not agent.alive():
                self.start_agent(node)

    def stop_agents(self) -> None:
        for agent in self.agents.values():
            if agent.alive():
                try:
                    agent.signal(signal.SIGTERM)
                except subprocess.TimeoutExpired:
                    agent.signal(signal.SIGKILL)
        self.agents.clear()

    def state(self, node: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(state_path(self.state_dir, node).read_text())
        except FileNotFoundError:
            return {"pods": []}
        return data

    def netns_of(self, pod: str) -> str:
        record = self.record(pod)
        assert record is not None, f"no pod network recorded for {pod}"
        return str(record["netns"])

    def record(self, pod: str, namespace: str = "default") -> dict[str, Any] | None:
        for node in (*AGENT_NODES, "node-c"):
            for entry in self.state(node).get("pods", []):
                if entry["pod"] == f"{namespace}/{pod}":
                    return dict(entry)
        return None

    def pod_namespaces(self) -> list[str]:
        return sorted(
            p.name for p in Path("/run/netns").iterdir() if p.name.startswith(f"{self.id}-pod-")
        )

    def agent_logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.state_dir.glob("agent-*.log"))
        )


@pytest.fixture(scope="module")
def lab(k8s_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("podagent-lab")
    with LabCluster(k8s_bin, SPEC, workdir=workdir, with_scheduler=True) as cluster:
        # node-c runs only pods bound to it by name (nodeName bypasses taints)
        cluster.kubectl("taint", "node", "node-c", "kube-proxy-py/no-schedule=true:NoSchedule")
        the_lab = Lab(cluster, workdir / "state")
        the_lab.state_dir.mkdir()
        try:
            the_lab.ensure_agents()
            yield the_lab
        finally:
            the_lab.stop_agents()
            for node in NODES:  # whatever a killed agent left
                cleanup_from_state(state_path(the_lab.state_dir, node.name))
            assert the_lab.pod_namespaces() == []


@pytest.fixture
def agents(lab: Lab) -> Iterator[Lab]:
    lab.ensure_agents()
    yield lab
    text = lab.agent_logs()
    assert "Traceback" not in text, text[-4000:]
    assert "forbidden" not in text.lower(), text[-4000:]


# ------------------------------------------------------------------------------ helpers


def deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": DEPLOY_GRACE,
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.example/web:1.0",
                            "ports": [
                                {"name": "http", "containerPort": 80},
                                {"name": "echo", "containerPort": 9000},
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            ],
                        }
                    ],
                },
            },
        },
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "selector": {"app": "web"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
        ],
    },
}


def pods(lab: Lab, selector: str = "app=web") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lab.api(
        "GET", f"/api/v1/namespaces/default/pods?labelSelector={selector}"
    )["items"]
    return items


def get_pod(lab: Lab, name: str) -> dict[str, Any] | None:
    try:
        pod: dict[str, Any] = lab.api("GET", f"/api/v1/namespaces/default/pods/{name}")
    except ApiError as e:
        if e.status == 404:
            return None
        raise
    return pod


def process_alive(pid: int | None) -> bool:
    """A live process (an orphaned workload killed by cleanup may linger as a zombie until
    init reaps it)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pod_ip(lab: Lab, name: str) -> str:
    pod = get_pod(lab, name)
    assert pod is not None, f"no pod {name}"
    return str(pod["status"]["podIP"])


def condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in pod.get("status", {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


def is_ready(pod: dict[str, Any]) -> bool:
    return (
        pod.get("status", {}).get("phase") == "Running"
        and condition(pod, "Ready").get("status") == "True"
        and bool(pod["status"].get("podIP"))
    )


def ready_pods(lab: Lab, count: int, selector: str = "app=web") -> list[dict[str, Any]]:
    """Wait until exactly ``count`` pods exist, none terminating, all Ready."""

    def check() -> list[dict[str, Any]] | None:
        found = pods(lab, selector)
        live = [p for p in found if not p["metadata"].get("deletionTimestamp")]
        if len(found) == count and len(live) == count and all(is_ready(p) for p in live):
            return found
        return None

    result: list[dict[str, Any]] = wait_for(check, TIMEOUT, 0.3, f"{count} Ready pods ({selector})")
    return result


def ensure_web(lab: Lab, replicas: int = 2) -> list[dict[str, Any]]:
    lab.cluster.apply(SERVICE, deployment(replicas))
    return ready_pods(lab, replicas)


def slice_endpoints(lab: Lab, service: str = "web") -> list[dict[str, Any]]:
    slices = lab.api(
        "GET",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
        f"?labelSelector=kubernetes.io/service-name={service}",
    )["items"]
    return [ep for s in slices for ep in s.get("endpoints") or []]


def endpoint_for(lab: Lab, ip: str) -> dict[str, Any] | None:
    for ep in slice_endpoints(lab):
        if ip in ep.get("addresses", []):
            return ep
    return None


def http_get(netns: str, ip: str, port: int = 80) -> str:
    conn = nsutil.NetnsHTTPConnection(netns, ip, port, timeout=5)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def tcp_banner(netns: str, ip: str, port: int) -> str:
    with nsutil.connect_in_netns(netns, ip, port, timeout=5) as sock:
        return sock.recv(200).decode()


def udp_banner(netns: str, ip: str, port: int) -> str:
    def attempt() -> str:
        with nsutil.socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.sendto(b"hello", (ip, port))
            return sock.recv(200).decode()

    answer: str = wait_for(attempt, 15, 0.2, f"UDP answer from {ip}:{port} in {netns}")
    return answer


def assert_serves(netns: str, pod: dict[str, Any]) -> None:
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    assert http_get(netns, ip).split()[0] == name
    assert tcp_banner(netns, ip, 9000).split()[0] == name
    assert udp_banner(netns, ip, 53).split()[0] == name


# ------------------------------------------------------------------------------ pure parts


def test_ip_allocator_skips_reserved_and_never_gives_an_ip_twice() -> None:
    ipam = IPAllocator("10.244.3.0/29")
    assert ipam.size == 5  # .2 … .6: not .0, .1 or .7
    assert ipam.reserve("kept", "10.244.3.5")
    assert not ipam.reserve("other", "10.244.3.5")
    assert not ipam.reserve("bad", "10.244.3.1")
    got = [ipam.assign(f"u{i}", exclude={"10.244.3.3"}) for i in range(3)]
    assert got == ["10.244.3.2", "10.244.3.4", "10.244.3.6"]
    with pytest.raises(SetupError, match="no free IP"):
        ipam.assign("u3", exclude={"10.244.3.3"})
    ipam.release("u0")
    assert ipam.assign("u4", preferred="10.244.3.5") == "10.244.3.2"  # .5 is taken
    assert ipam.assign("u4") == "10.244.3.2"  # idempotent per uid


def test_served_ports_and_grace() -> None:
    pod: dict[str, Any] = {
        "metadata": {"deletionGracePeriodSeconds": 7},
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {"ports": [{"name": "http-alt", "containerPort": 8080}, {"containerPort": 9000}]},
                {
                    "ports": [
                        {"containerPort": 53, "protocol": "UDP"},
                        {"containerPort": 5, "protocol": "SCTP"},
                    ]
                },
            ],
        },
    }
    ports = served_ports(pod)
    assert (ports.tcp, ports.udp, ports.http, ports.skipped) == (
        (9000,),
        (53,),
        (8080,),
        ("SCTP/5",),
    )
    assert grace_seconds(pod) == 7 and grace_seconds(pod, max_grace=3) == 3
    del pod["metadata"]["deletionGracePeriodSeconds"]
    assert grace_seconds(pod) == 30 and grace_seconds({}) == 30


# ------------------------------------------------------------------------------ e2e


def test_scheduled_deployment_runs_and_answers(agents: Lab) -> None:
    lab = agents
    running = ensure_web(lab, 2)
    ips = {p["status"]["podIP"] for p in running}
    assert len(ips) == 2
    for pod in running:
        node = pod["spec"]["nodeName"]  # set by the real scheduler: the manifest has none
        assert node in AGENT_NODES
        status = pod["status"]
        ip = ipaddress.IPv4Address(status["podIP"])
        cidr = CIDR[node]
        assert ip in cidr and ip not in (
            cidr.network_address,
            cidr.network_address + 1,
            cidr.broadcast_address,
        )
        assert status["podIPs"] == [{"ip": status["podIP"]}]
        assert status["hostIP"] == NODE_IP[node] and status["hostIPs"] == [{"ip": NODE_IP[node]}]
        assert status["startTime"]
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
            assert condition(pod, kind)["status"] == "True", kind
        (container,) = status["containerStatuses"]
        assert container["name"] == "app" and container["image"] == "registry.example/web:1.0"
        assert container["ready"] and container["started"] and container["restartCount"] == 0
        assert container["state"]["running"]["startedAt"]
        assert container["containerID"] and container["imageID"]
        record = lab.record(pod["metadata"]["name"])
        assert record is not None and record["ip"] == status["podIP"]
        assert record["netns"].startswith(f"{lab.id}-pod-") and harness_netns.exists(
            record["netns"]
        )
        assert len(record["veth"]) <= 15 and podnet.link_exists(lab.ns(node), record["veth"])

    # TCP, UDP and HTTP from a node, and pod to pod (the peer is the client pod's IP)
    for pod in running:
        assert_serves(lab.ns("node-a"), pod)
    first, second = running
    first_ns = lab.netns_of(first["metadata"]["name"])
    answer = http_get(first_ns, second["status"]["podIP"])
    assert answer.split() == [second["metadata"]["name"], answer.split()[1]]
    assert answer.split()[1].startswith(first["status"]["podIP"] + ":")

    wait_for(
        lambda: (
            {
                a
                for ep in slice_endpoints(lab)
                if ep["conditions"].get("ready")
                for a in ep["addresses"]
            }
            == ips
        ),
        TIMEOUT,
        what="the EndpointSlice to list both pods ready",
    )


def test_deleted_pod_serves_as_terminating_then_is_removed(agents: Lab) -> None:
    lab = agents
    running = ensure_web(lab, 2)
    victim = running[0]
    name, ip = victim["metadata"]["name"], victim["status"]["podIP"]
    pod_ns = lab.netns_of(name)
    lab.kubectl("delete", "pod", name, "--grace-period=300", "--wait=false")

    def terminating() -> dict[str, Any] | None:
        ep = endpoint_for(lab, ip)
        c = (ep or {}).get("conditions", {})
        ok = c.get("terminating") is True and c.get("serving") is True and c.get("ready") is False
        return ep if ok else None

    wait_for(terminating, TIMEOUT, what=f"{name} terminating and serving in the EndpointSlice")
    # still serving during the grace period, and still Ready like a kubelet reports it
    assert http_get(lab.ns("node-b"), ip).split()[0] == name
    pod = get_pod(lab, name)
    assert pod is not None and pod["metadata"]["deletionTimestamp"]
    assert condition(pod, "Ready")["status"] == "True"
    assert harness_netns.exists(pod_ns)

    # a second delete shortens the grace period, as with a kubelet
    lab.kubectl("delete", "pod", name, "--grace-period=1", "--wait=false")
    wait_for(lambda: get_pod(lab, name) is None, TIMEOUT, what=f"{name} deleted by its agent")
    wait_for(lambda: endpoint_for(lab, ip) is None, TIMEOUT, what=f"{ip} out of the EndpointSlice")
    assert not harness_netns.exists(pod_ns)
    assert lab.record(name) is None
    ready_pods(lab, 2)  # the ReplicaSet's replacement runs


def test_scale_to_zero_removes_everything(agents: Lab) -> None:
    lab = agents
    running = ensure_web(lab, 2)
    records = [lab.record(p["metadata"]["name"]) for p in running]
    pids = [r["pid"] for r in records if r is not None]
    assert len(pids) == 2
    lab.kubectl("scale", "deployment", "web", "--replicas=0")
    wait_for(lambda: pods(lab) == [], TIMEOUT, what="every pod deleted")
    wait_for(lambda: slice_endpoints(lab) == [], TIMEOUT, what="an empty EndpointSlice")
    wait_for(lambda: lab.pod_namespaces() == [], 30, what="every pod namespace removed")
    for node in AGENT_NODES:
        assert lab.state(node)["pods"] == []
    for pid in pids:
        assert not process_alive(pid)


def test_sigterm_removes_namespaces_and_a_restart_reuses_ips(agents: Lab) -> None:
    lab = agents
    running = ensure_web(lab, 2)
    before = {p["metadata"]["name"]: p["status"]["podIP"] for p in running}
    records = [lab.record(name) for name in before]
    for node in AGENT_NODES:
        assert lab.agents[node].signal(signal.SIGTERM) == 0, lab.agents[node].log_text()[-3000:]
    assert lab.pod_namespaces() == []
    for node in AGENT_NODES:
        assert not state_path(lab.state_dir, node).exists()
    for record in records:
        assert record is not None and not process_alive(record["pid"])
    # the pods stay in the API, as when a kubelet goes away
    assert {p["metadata"]["name"] for p in pods(lab)} == set(before)

    # a pod deleted while no agent runs waits for one
    gone, kept = sorted(before)
    lab.kubectl("delete", "pod", gone, "--wait=false")
    pod = get_pod(lab, gone)
    assert pod is not None and pod["metadata"]["deletionTimestamp"]

    lab.ensure_agents()
    wait_for(lambda: get_pod(lab, gone) is None, TIMEOUT, what=f"{gone} finalized at start")
    after = {p["metadata"]["name"]: p for p in ready_pods(lab, 2)}
    assert after[kept]["status"]["podIP"] == before[kept]  # its IP was reserved again
    assert_serves(lab.ns("node-a"), after[kept])


def test_cleanup_from_state_after_sigkill(agents: Lab) -> None:
    lab = agents
    running = ensure_web(lab, 2)
    node = running[0]["spec"]["nodeName"]
    left = list(lab.state(node)["pods"])
    assert left
    assert lab.agents[node].signal(signal.SIGKILL) == -signal.SIGKILL
    for record in left:  # a killed agent leaves its pods running
        assert harness_netns.exists(record["netns"])
        assert process_alive(record["pid"])
    cleanup_from_state(state_path(lab.state_dir, node))
    for record in left:
        assert not harness_netns.exists(record["netns"])
        assert not podnet.link_exists(lab.ns(node), record["veth"])
        assert not process_alive(record["pid"])
    assert not state_path(lab.state_dir, node).exists()
    cleanup_from_state(state_path(lab.state_dir, node))  # a missing file is fine
    lab.ensure_agents()
    restarted = {p["metadata"]["name"]: p["status"]["podIP"] for p in ready_pods(lab, 2)}
    assert restarted == {p["metadata"]["name"]: p["status"]["podIP"] for p in running}


def bare_pod(
    name: str, node: str, *, ports: bool = False, host_network: bool = False
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "registry.example/sleep:1"}
    if ports:
        container["ports"] = [{"name": "http", "containerPort": 8080}]
    spec: dict[str, Any] = {
        "nodeName": node,
        "terminationGracePeriodSeconds": 1,
        "containers": [container],
        # node-c is tainted against scheduling; nodeName bypasses taints
    }
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "small"}},
        "spec": spec,
    }


def test_in_process_agent_reports_ip_exhaustion_and_retries(lab: Lab) -> None:
    node = "node-c"  # a /29: 5 usable addresses
    client = ApiClient.from_config(str(lab.kubeconfigs[node]))
    agent = PodAgent(
        node,
        client,
        lab_id=lab.id,
        state_dir=lab.state_dir,
        node_netns=lab.ns(node),
        resync_period=1.0,
    )
    names = [f"small-{i}" for i in range(6)]
    try:
        agent.start()
        lab.cluster.apply(*(bare_pod(n, node, ports=(n == "small-0")) for n in names[:5]))
        running = ready_pods(lab, 5, "app=small")
        ips = {p["status"]["podIP"] for p in running}
        assert ips == {str(CIDR[node].network_address + i) for i in range(2, 7)}
        assert http_get(lab.ns(node), pod_ip(lab, "small-0"), 8080).startswith("small-0 ")

        lab.cluster.apply(bare_pod(names[5], node), bare_pod("host", node, host_network=True))

        def failed() -> dict[str, Any] | None:
            pod = get_pod(lab, names[5])
            c = condition(pod, "PodReadyToStartContainers") if pod else {}
            return c if "no free IP" in c.get("message", "") else None

        c = wait_for(failed, TIMEOUT, what="the IP exhaustion reported in the pod's status")
        assert c["status"] == "False" and c["reason"] == "FailedCreatePodSandBox"
        assert (get_pod(lab, names[5]) or {}).get("status", {}).get("phase") == "Pending"

        def warned() -> bool:
            events = lab.api("GET", "/api/v1/namespaces/default/events")["items"]
            return any(
                e["involvedObject"].get("name") == names[5]
                and e["reason"] == "FailedCreatePodSandBox"
                and e["type"] == "Warning"
                for e in events
            )

        wait_for(warned, 30, what="a FailedCreatePodSandBox Warning event")
        host = wait_for(
            lambda: (p := get_pod(lab, "host")) is not None and is_ready(p) and p,
            TIMEOUT,
            what="the hostNetwork pod Running",
        )
        assert host["status"]["podIP"] == NODE_IP[node]
        assert "default/host" not in agent.pods()

        # freeing an address lets the failed pod start
        lab.kubectl("delete", "pod", "small-1", "--grace-period=1", "--wait=false")
        wait_for(lambda: get_pod(lab, "small-1") is None, TIMEOUT, what="small-1 deleted")
        wait_for(
            lambda: (p := get_pod(lab, names[5])) is not None and is_ready(p),
            TIMEOUT,
            what=f"{names[5]} Running once an IP is free",
        )
        assert pod_ip(lab, names[5]) in ips
        created = [r["netns"] for r in agent.pods().values()]
        assert len(created) == 5 and all(harness_netns.exists(n) for n in created)
    finally:
        agent.stop()
        client.close()
    assert not any(harness_netns.exists(n) for n in created)
    assert not state_path(lab.state_dir, node).exists()
    remaining = {p["metadata"]["name"] for p in pods(lab, "app=small")}
    assert remaining == set(names) - {"small-1"} | {"host"}  # pods stay in the API
    lab.kubectl("delete", "pod", "-l", "app=small", "--force", "--grace-period=0", "--wait=false")


def test_killed_workload_is_restarted(agents: Lab) -> None:
    lab = agents
    pod = ensure_web(lab, 2)[0]
    name = pod["metadata"]["name"]
    record = lab.record(name)
    assert record is not None and process_alive(record["pid"])
    os.kill(record["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        current = get_pod(lab, name)
        statuses = (current or {}).get("status", {}).get("containerStatuses") or [{}]
        return current if statuses[0].get("restartCount") == 1 and is_ready(current or {}) else None

    current = wait_for(restarted, TIMEOUT, what=f"{name} restarted (restartCount 1)")
    assert current["status"]["podIP"] == pod["status"]["podIP"]
    new = lab.record(name)
    assert new is not None and new["pid"] != record["pid"] and new["netns"] == record["netns"]
    assert_serves(lab.ns("node-a"), current)


def test_refuses_to_run_outside_its_lab(lab: Lab, tmp_path: Path) -> None:
    # from the root namespace (not a named lab namespace): exit 2, nothing created
    done = subprocess.run(
        [
            sys.executable, "-m", "proxy.lab.podagent", "--node", "node-a",
            "--kubeconfig", str(lab.kubeconfigs["node-a"]), "--lab-id", lab.id,
            "--state-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "must run inside its node's named network namespace" in done.stderr
    assert list(tmp_path.iterdir()) == []
    # in-process: a namespace of another lab id is refused
    client = ApiClient.from_config(str(lab.kubeconfigs["node-a"]))
    try:
        agent = PodAgent(
            "node-a", client, lab_id="kpp-other", state_dir=tmp_path, node_netns=lab.ns("node-a")
        )
        with pytest.raises(PodAgentError, match="does not belong to lab"):
            agent.start()
        agent.stop()
    finally:
        client.close()
    assert list(tmp_path.iterdir()) == []
