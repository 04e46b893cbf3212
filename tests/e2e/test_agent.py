"""The agent against a real control plane, in namespace nodes, in both modes.

kubectl creates Services and Pods; the real EndpointSlice controller publishes endpoints;
``kube-proxy-py run`` (with a ServiceAccount token bound only to daemonset.yaml's
ClusterRole) programs node-a and node-b; probes from pods, nodes and an outside client
check the result. Each mode gets its own pair of agents; switching modes must remove the
other mode's rules.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.harness import Outcome
from proxy.lab.cluster import LabCluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

PODS = ("a1", "a2", "b1", "b2")
NODES = ("node-a", "node-b")
NODE_IP = {"node-a": "192.168.50.11", "node-b": "192.168.50.12"}
OUTSIDE = "192.168.50.100"
QUICK = 0.5
ANSWER = 3.0  # allows one TCP SYN retransmission (see tests/netns/test_scenarios.py)


def service(name: str, *, udp: bool = True, **spec: Any) -> dict[str, Any]:
    ports = [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}]
    if udp:
        ports.append({"name": "dns", "port": 80, "targetPort": 80, "protocol": "UDP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": ports, **spec},
    }


@pytest.fixture(scope="module")
def cluster(k8s_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    with LabCluster(k8s_bin, workdir=tmp_path_factory.mktemp("lab")) as lab:
        for pod in PODS:
            lab.create_pod(pod, {"app": "web"})
        yield lab


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def mode(cluster: LabCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    for node in NODES:
        cluster.start_agent(node, request.param, "--iptables-min-sync-period=100ms")
    for node in NODES:

        def synced(n: str = node) -> bool:
            return cluster.syncs(n) > 0

        wait_for(synced, 60, what=f"first sync on {node}")
    yield request.param
    for node in NODES:
        assert cluster.stop_agent(node) == 0


@pytest.fixture
def lab(cluster: LabCluster, mode: str) -> Iterator[LabCluster]:
    yield cluster
    # every test leaves the four pods Ready and its agents running
    for pod in PODS:
        if cluster.kubectl("get", "pod", pod, "--ignore-not-found", "-o", "name").strip() == "":
            cluster.create_pod(pod, {"app": "web"})
        else:
            cluster.set_pod_ready(pod, True)
    for node in NODES:
        agent = cluster.agents.get(node)
        assert agent is not None and agent.alive(), agent.log_text()[-2000:] if agent else node


def reached(lab: LabCluster, src: str, dst: str, port: int = 80, count: int = 40) -> set[str]:
    results = lab.topo.prober(src).tcp_many(dst, port, count, timeout=ANSWER)
    return {r.endpoint or f"<{r.outcome}>" for r in results}


def until_reached(
    lab: LabCluster, src: str, dst: str, want: set[str], port: int = 80, count: int = 40
) -> set[str]:
    got: set[str] = wait_for(
        lambda: (r := reached(lab, src, dst, port, count)) == want and r,
        60,
        what=f"{src} -> {dst}:{port} to reach exactly {sorted(want)}",
    )
    return got


def rules(lab: LabCluster, node: str) -> str:
    """Both backends' rules, without counters or timestamps."""
    ipt = lab.topo.run(node, ["iptables-save"]).stdout
    nft = lab.topo.run(node, ["nft", "-s", "list", "ruleset"]).stdout
    return (
        "\n".join(
            re.sub(r"\[\d+:\d+\]", "", line)
            for line in ipt.splitlines()
            if not line.startswith("#")
        )
        + nft
    )


def test_switching_mode_removed_the_other_modes_rules(lab: LabCluster, mode: str) -> None:
    lab.apply(service("switch"))
    cip = lab.service_ip("switch")
    wait_for(lambda: cip in rules(lab, "node-a"), 30, what="rules for the service")
    text = rules(lab, "node-a")
    if mode == "nftables":
        assert "KUBE-SVC-" not in text and "KUBE-SERVICES" not in text
    else:
        assert "table ip kube-proxy" not in text
    lab.kubectl("delete", "svc", "switch")


def test_service_reaches_every_ready_pod(lab: LabCluster, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, "a3", cip, set(PODS))
    r = lab.topo.prober("a3").udp(cip, 80)
    assert r.outcome is Outcome.ANSWERED and r.endpoint in PODS and r.seen_source == "10.244.1.13"
    assert lab.topo.prober("node-a").tcp(cip, 80).outcome is Outcome.ANSWERED
    for agent in lab.agents.values():
        assert "forbidden" not in agent.log_text().lower()  # the ClusterRole is enough


def test_scale_down_and_up(lab: LabCluster, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    for pod in ("a1", "a2"):
        lab.set_pod_ready(pod, False)
    until_reached(lab, "a3", cip, {"b1", "b2"})
    for pod in ("a1", "a2"):
        lab.set_pod_ready(pod, True)
    until_reached(lab, "a3", cip, set(PODS))


def test_deleted_pod_terminates_then_disappears(lab: LabCluster, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, "a3", cip, set(PODS))
    lab.kubectl("delete", "pod", "b2", "--wait=false")  # no kubelet: stays Terminating
    until_reached(lab, "a3", cip, {"a1", "a2", "b1"})
    lab.kubectl("delete", "pod", "b2", "--grace-period=0", "--force")
    lab.create_pod("b2", {"app": "web"})
    until_reached(lab, "a3", cip, set(PODS))


def test_cluster_ip_to_node_port_and_external_policy(lab: LabCluster, mode: str) -> None:
    lab.apply(service("edge"))
    lab.kubectl("patch", "svc", "edge", "-p", json.dumps({"spec": {"type": "NodePort"}}))
    port = lab.node_port("edge")
    until_reached(lab, "outside", NODE_IP["node-b"], set(PODS), port)
    assert {
        r.seen_source
        for r in lab.topo.prober("outside").tcp_many(NODE_IP["node-b"], port, 10, timeout=ANSWER)
    } == {NODE_IP["node-b"]}
    lab.kubectl(
        "patch", "svc", "edge", "-p", json.dumps({"spec": {"externalTrafficPolicy": "Local"}})
    )
    until_reached(lab, "outside", NODE_IP["node-a"], {"a1", "a2"}, port)
    assert {
        r.seen_source
        for r in lab.topo.prober("outside").tcp_many(NODE_IP["node-a"], port, 10, timeout=ANSWER)
    } == {OUTSIDE}
    lab.kubectl(
        "patch", "svc", "edge", "-p", json.dumps({"spec": {"externalTrafficPolicy": "Cluster"}})
    )
    until_reached(lab, "outside", NODE_IP["node-a"], set(PODS), port)
    lab.kubectl("delete", "svc", "edge")


def test_health_check_node_port_for_local_load_balancer(lab: LabCluster, mode: str) -> None:
    lab.apply(service("lb", udp=False, type="LoadBalancer", externalTrafficPolicy="Local"))
    hc = int(lab.kubectl("get", "svc", "lb", "-o", "jsonpath={.spec.healthCheckNodePort}"))
    url = f"http://{NODE_IP['node-b']}:{hc}/"

    def answer() -> tuple[int, dict[str, Any]]:
        code, body = lab.node_http("node-b", url)
        return code, json.loads(body)

    _, body = wait_for(lambda: (a := answer())[0] == 200 and a, 30, what="hc port 200")
    assert body["localEndpoints"] == 2 and body["service"] == {"namespace": "default", "name": "lb"}
    for pod in ("b1", "b2"):
        lab.set_pod_ready(pod, False)
    _, body = wait_for(lambda: (a := answer())[0] == 503 and a, 30, what="hc port 503")
    assert body["localEndpoints"] == 0
    lab.kubectl("delete", "svc", "lb")


def test_session_affinity_toggle(lab: LabCluster, mode: str) -> None:
    lab.apply(service("sticky"))
    cip = lab.service_ip("sticky")
    until_reached(lab, "a3", cip, set(PODS))
    lab.kubectl(
        "patch", "svc", "sticky", "-p", json.dumps({"spec": {"sessionAffinity": "ClientIP"}})
    )
    wait_for(lambda: len(reached(lab, "a3", cip, count=30)) == 1, 30, what="affinity")
    lab.kubectl("patch", "svc", "sticky", "-p", json.dumps({"spec": {"sessionAffinity": "None"}}))
    until_reached(lab, "a3", cip, set(PODS))
    lab.kubectl("delete", "svc", "sticky")


def test_deleted_service_stops_answering(lab: LabCluster, mode: str) -> None:
    lab.apply(service("doomed"))
    cip = lab.service_ip("doomed")
    until_reached(lab, "a3", cip, set(PODS))
    lab.kubectl("delete", "svc", "doomed")
    wait_for(
        lambda: lab.topo.prober("a3").tcp(cip, 80, timeout=QUICK).outcome is Outcome.SILENT,
        30,
        what="no answer after delete",
    )
    wait_for(lambda: cip not in rules(lab, "node-a"), 30, what="rules gone")


def test_udp_flow_moves_when_its_endpoint_goes(lab: LabCluster, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, "a3", cip, set(PODS))
    first = lab.topo.prober("a3").udp(cip, 80, sport=5353)
    assert first.outcome is Outcome.ANSWERED and first.endpoint in PODS
    for _ in range(3):  # conntrack keeps the flow on its endpoint
        assert lab.topo.prober("a3").udp(cip, 80, sport=5353).endpoint == first.endpoint
    assert first.endpoint is not None
    lab.set_pod_ready(first.endpoint, False)  # still alive, just not an endpoint
    others = set(PODS) - {first.endpoint}
    until_reached(lab, "a3", cip, others)
    moved = wait_for(
        lambda: (r := lab.topo.prober("a3").udp(cip, 80, sport=5353)).endpoint in others and r,
        30,
        what="the UDP flow to move",
    )
    assert moved.endpoint != first.endpoint


def test_malformed_object_is_skipped_and_reported(lab: LabCluster, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    orphan = {  # valid for the API, unusable for a proxy: no kubernetes.io/service-name
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "orphan",
            "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/managed-by": "someone"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.1.11"]}],
    }
    lab.apply(orphan)
    wait_for(
        lambda: 'kubeproxy_py_invalid_objects{kind="EndpointSlice"} 1.0' in lab.metrics("node-a"),
        30,
        what="invalid object metric",
    )
    agent = lab.agents["node-a"]
    assert "default/orphan" in agent.log_text() and "invalid object skipped" in agent.log_text()
    until_reached(lab, "a3", cip, set(PODS))  # everything else keeps working
    lab.kubectl("delete", "endpointslice", "orphan")
    wait_for(
        lambda: 'kubeproxy_py_invalid_objects{kind="EndpointSlice"} 0.0' in lab.metrics("node-a"),
        30,
        what="metric back to 0",
    )


def test_healthz_livez_and_metrics(lab: LabCluster, mode: str) -> None:
    code, body = lab.node_http("node-a", "http://127.0.0.1:10256/healthz")
    data = json.loads(body)
    assert code == 200 and data["nodeEligible"] is True and data["healthy"] is True
    assert set(data) >= {"lastUpdated", "currentTime"}
    code, body = lab.node_http("node-a", "http://127.0.0.1:10256/livez")
    assert code == 200 and "nodeEligible" not in json.loads(body)
    text = lab.metrics("node-a")
    for name in (
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_network_programming_duration_seconds_bucket",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_proxy_healthz_total",
    ):
        assert name in text, name
    assert lab.node_http("node-a", "http://127.0.0.1:10249/proxyMode")[1] == mode


def test_restart_keeps_flows_and_converges_without_a_gap(lab: LabCluster, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, "a3", cip, set(PODS))
    before = rules(lab, "node-a")
    flow = lab.topo.prober("a3").udp(cip, 80, sport=6000)
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:  # steady new connections through the restart
        while not stop.is_set():
            for r in lab.topo.prober("a3").tcp_many(cip, 80, 5, timeout=ANSWER):
                if r.outcome is not Outcome.ANSWERED:
                    failures.append(r.detail)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        assert lab.stop_agent("node-a") == 0  # SIGTERM: exits cleanly...
        assert rules(lab, "node-a") == before  # ...without touching the rules
        assert lab.topo.prober("a3").udp(cip, 80, sport=6000).endpoint == flow.endpoint
        lab.start_agent("node-a", mode, "--iptables-min-sync-period=100ms")
        wait_for(lambda: lab.syncs("node-a") > 0, 60, what="restarted agent's first sync")
    finally:
        stop.set()
        worker.join(30)
    assert failures == []
    assert lab.topo.prober("a3").udp(cip, 80, sport=6000).endpoint == flow.endpoint
    assert rules(lab, "node-a").count(cip) == before.count(cip)


def test_watch_survives_apiserver_restart_and_compaction(lab: LabCluster, mode: str) -> None:
    lab.apply(service("kept"), service("gone"))
    kept, gone = lab.service_ip("kept"), lab.service_ip("gone")
    until_reached(lab, "a3", gone, set(PODS))
    agents = [lab.agents[n] for n in NODES]
    pids = [a.pid for a in agents]
    # Freeze the agents and kill their API connections (ss -K, inside the node namespace),
    # so nothing of what follows can reach them, not even through a socket buffer.
    for a in agents:
        a.process.send_signal(signal.SIGSTOP)
    try:
        for node in NODES:
            lab.topo.run(node, ["ss", "-K", "dst", "192.168.50.2", "dport", "=", "6443"])
        lab.kubectl("delete", "svc", "gone")
        lab.apply(service("fresh"))
        # the agents' resourceVersion is now unservable: compacted away in etcd, and not
        # in the restarted API server's watch cache either
        lab.control_plane.compact_etcd()
        lab.control_plane.restart_apiserver()
    finally:
        for a in agents:
            a.process.send_signal(signal.SIGCONT)
    fresh = lab.service_ip("fresh")
    until_reached(lab, "a3", fresh, set(PODS))
    wait_for(
        lambda: gone not in rules(lab, "node-a") and gone not in rules(lab, "node-b"),
        60,
        what="no stale rule for the deleted service",
    )
    until_reached(lab, "a3", kept, set(PODS))
    assert [a.pid for a in agents] == pids and all(a.alive() for a in agents)
    for a in agents:  # the watch really expired (410) and the agent relisted
        assert "watch resourceVersion expired; relisting" in a.log_text(), a.log_text()[-3000:]
    for name in ("kept", "fresh"):
        lab.kubectl("delete", "svc", name)


def test_cleanup_flag_removes_rules(lab: LabCluster, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, "a3", cip, set(PODS))
    assert lab.stop_agent("node-b") == 0
    proc = lab.topo.run(
        "node-b",
        [sys.executable, "-m", "proxy", "run", "--cleanup", "--hostname-override=node-b"],
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = rules(lab, "node-b")
    assert "KUBE-" not in text and "kube-proxy" not in text
    lab.start_agent("node-b", mode, "--iptables-min-sync-period=100ms")
    wait_for(lambda: cip in rules(lab, "node-b"), 60, what="rules back on node-b")


def test_programming_reaches_the_kernel_for_many_changes(lab: LabCluster, mode: str) -> None:
    """Twenty readiness flips in a row all end up in the kernel (ordering, coalescing)."""
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    for i in range(20):
        lab.set_pod_ready("b1", i % 2 == 1)
    until_reached(lab, "a3", cip, set(PODS))
    assert (
        Counter(r.outcome for r in lab.topo.prober("a3").tcp_many(cip, 80, 20, timeout=ANSWER))[
            Outcome.ANSWERED
        ]
        == 20
    )
