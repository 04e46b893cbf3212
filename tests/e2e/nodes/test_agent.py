"""The agent against a real control plane, as the pods of its DaemonSet, in both modes.

The lab's real nodes (kubelet + containerd): ``node-1`` and ``node-2`` run kube-proxy-py
from the image built from the Dockerfile, as ``daemonset.yaml`` deploys it (its
ServiceAccount is bound only to the manifest's ClusterRole). The tests create Services
and Pods of the test workload (``a1 a2`` on node-1, ``b1 b2`` on node-2, the client
``a3`` on node-1); the real EndpointSlice controller publishes them; readiness is switched
through a readiness gate the kubelet turns into the Ready condition. Probes from pods,
nodes and the lab's outside client check the result. The mode is changed as an operator
changes it (the ConfigMap, then ``kubectl rollout restart``): switching modes must remove
the other mode's rules.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.harness import Outcome
from proxy.host.sockets import NetnsHTTPConnection
from proxy.lab.cluster import wait_for
from proxy.lab.commands.status import print_status
from tests.e2e.nodelab import PROXY, NodeLab, workload_pod

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

SERVING = {"a1": "node-1", "a2": "node-1", "b1": "node-2", "b2": "node-2"}
PODS = tuple(SERVING)
CLIENT = "a3"
NODES = ("node-1", "node-2")
NODE_IP = {"node-1": "192.168.50.11", "node-2": "192.168.50.12"}
CNI_GATEWAY = {"node-1": "10.244.1.1", "node-2": "10.244.2.1"}
"""The bridge plugin's gateway on each node: the source masqueraded traffic to a local pod
gets."""
OUTSIDE = "192.168.50.100"
MIN_SYNC = "100ms"
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


def web_pod(name: str) -> dict[str, Any]:
    return workload_pod(name, SERVING[name], labels={"app": "web"})


@pytest.fixture(scope="module")
def cluster(node_lab: NodeLab) -> Iterator[NodeLab]:
    node_lab.create_pods([*(web_pod(p) for p in PODS), workload_pod(CLIENT, "node-1", serve=False)])
    yield node_lab
    for pod in (*PODS, CLIENT):
        node_lab.delete_pod(pod, force=True)


# nftables first: test_addons.py ends in nftables mode with the same minSyncPeriod, so
# the agents need no restart (each order switches modes once in this module).
@pytest.fixture(scope="module", params=["nftables", "iptables"])
def mode(cluster: NodeLab, request: pytest.FixtureRequest) -> str:
    cluster.configure_agents(request.param, MIN_SYNC)
    for node in NODES:
        assert cluster.node_http(node, "http://127.0.0.1:10249/proxyMode")[1] == request.param
    mode: str = request.param
    return mode


@pytest.fixture
def lab(cluster: NodeLab, mode: str) -> Iterator[NodeLab]:
    yield cluster
    # every test leaves the four pods Ready and an agent Ready on both nodes
    for pod in PODS:
        try:
            cluster.get("pod", pod)
        except Exception:
            cluster.create_pods([web_pod(pod)])
        else:
            if not cluster.is_ready(pod):
                cluster.set_ready(pod, True)
    for node in NODES:

        def healthy(node: str = node) -> bool:
            return cluster.node_http(node, "http://127.0.0.1:10256/healthz")[0] == 200

        wait_for(healthy, 60, what=f"kube-proxy-py healthy on {node}")


def reached(lab: NodeLab, src: str, dst: str, port: int = 80, count: int = 40) -> set[str]:
    results = lab.prober(src).tcp_many(dst, port, count, timeout=ANSWER)
    return {r.endpoint or f"<{r.outcome}>" for r in results}


def until_reached(
    lab: NodeLab, src: str, dst: str, want: set[str], port: int = 80, count: int = 40
) -> set[str]:
    got: set[str] = wait_for(
        lambda: (r := reached(lab, src, dst, port, count)) == want and r,
        60,
        what=f"{src} -> {dst}:{port} to reach exactly {sorted(want)}",
    )
    return got


def rules(lab: NodeLab, node: str) -> str:
    """Both backends' rules, without counters or timestamps."""
    return lab.rules(node)


def test_switching_mode_removed_the_other_modes_rules(lab: NodeLab, mode: str) -> None:
    lab.apply(service("switch"))
    cip = lab.service_ip("switch")
    wait_for(lambda: cip in rules(lab, "node-1"), 30, what="rules for the service")
    text = rules(lab, "node-1")
    if mode == "nftables":
        assert "KUBE-SVC-" not in text and "KUBE-SERVICES" not in text
    else:
        assert "table ip kube-proxy" not in text
    lab.kubectl("delete", "svc", "switch")


def test_service_reaches_every_ready_pod(lab: NodeLab, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, CLIENT, cip, set(PODS))
    r = lab.prober(CLIENT).udp(cip, 80)
    assert (
        r.outcome is Outcome.ANSWERED and r.endpoint in PODS and r.seen_source == lab.pod_ip(CLIENT)
    )
    assert lab.prober("node-1").tcp(cip, 80).outcome is Outcome.ANSWERED
    for node in NODES:  # the ClusterRole is enough
        assert "forbidden" not in lab.agent_log(node).lower()


def test_scale_down_and_up(lab: NodeLab, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    for pod in ("a1", "a2"):
        lab.set_ready(pod, False)
    until_reached(lab, CLIENT, cip, {"b1", "b2"})
    for pod in ("a1", "a2"):
        lab.set_ready(pod, True)
    until_reached(lab, CLIENT, cip, set(PODS))


def test_deleted_pod_terminates_then_disappears(lab: NodeLab, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, CLIENT, cip, set(PODS))
    lab.delete_pod("b2")  # its preStop hook keeps it Terminating for 30 s
    until_reached(lab, CLIENT, cip, {"a1", "a2", "b1"})
    slices = lab.kubectl(
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
        "-o",
        "jsonpath={.items[*].endpoints[?(@.targetRef.name=='b2')].conditions}",
    )
    assert json.loads(slices) == {"ready": False, "serving": True, "terminating": True}
    lab.delete_pod("b2", force=True)
    lab.wait_pod_gone("b2")
    lab.create_pods([web_pod("b2")])
    until_reached(lab, CLIENT, cip, set(PODS))


def test_cluster_ip_to_node_port_and_external_policy(lab: NodeLab, mode: str) -> None:
    lab.apply(service("edge"))
    lab.kubectl("patch", "svc", "edge", "-p", json.dumps({"spec": {"type": "NodePort"}}))
    port = lab.node_port("edge")
    until_reached(lab, "client", NODE_IP["node-2"], set(PODS), port)
    # masqueraded: pods on node-2 see its bridge address (cni0), the others its LAN one
    assert {
        r.seen_source
        for r in lab.prober("client").tcp_many(NODE_IP["node-2"], port, 20, timeout=ANSWER)
    } <= {NODE_IP["node-2"], CNI_GATEWAY["node-2"]}
    lab.kubectl(
        "patch", "svc", "edge", "-p", json.dumps({"spec": {"externalTrafficPolicy": "Local"}})
    )
    until_reached(lab, "client", NODE_IP["node-1"], {"a1", "a2"}, port)
    assert {
        r.seen_source
        for r in lab.prober("client").tcp_many(NODE_IP["node-1"], port, 10, timeout=ANSWER)
    } == {OUTSIDE}
    lab.kubectl(
        "patch", "svc", "edge", "-p", json.dumps({"spec": {"externalTrafficPolicy": "Cluster"}})
    )
    until_reached(lab, "client", NODE_IP["node-1"], set(PODS), port)
    lab.kubectl("delete", "svc", "edge")


def test_health_check_node_port_for_local_load_balancer(lab: NodeLab, mode: str) -> None:
    lab.apply(service("lb", udp=False, type="LoadBalancer", externalTrafficPolicy="Local"))
    hc = int(lab.kubectl("get", "svc", "lb", "-o", "jsonpath={.spec.healthCheckNodePort}"))
    url = f"http://{NODE_IP['node-2']}:{hc}/"

    def answer() -> tuple[int, dict[str, Any]]:
        code, body = lab.node_http("node-2", url)
        return code, json.loads(body)

    _, body = wait_for(lambda: (a := answer())[0] == 200 and a, 30, what="hc port 200")
    assert body["localEndpoints"] == 2 and body["service"] == {"namespace": "default", "name": "lb"}
    for pod in ("b1", "b2"):
        lab.set_ready(pod, False)
    _, body = wait_for(lambda: (a := answer())[0] == 503 and a, 30, what="hc port 503")
    assert body["localEndpoints"] == 0
    lab.kubectl("delete", "svc", "lb")


def test_session_affinity_toggle(lab: NodeLab, mode: str) -> None:
    lab.apply(service("sticky"))
    cip = lab.service_ip("sticky")
    until_reached(lab, CLIENT, cip, set(PODS))
    lab.kubectl(
        "patch", "svc", "sticky", "-p", json.dumps({"spec": {"sessionAffinity": "ClientIP"}})
    )
    wait_for(lambda: len(reached(lab, CLIENT, cip, count=30)) == 1, 30, what="affinity")
    lab.kubectl("patch", "svc", "sticky", "-p", json.dumps({"spec": {"sessionAffinity": "None"}}))
    until_reached(lab, CLIENT, cip, set(PODS))
    lab.kubectl("delete", "svc", "sticky")


def test_deleted_service_stops_answering(lab: NodeLab, mode: str) -> None:
    lab.apply(service("doomed"))
    cip = lab.service_ip("doomed")
    until_reached(lab, CLIENT, cip, set(PODS))
    lab.kubectl("delete", "svc", "doomed")
    wait_for(
        lambda: lab.prober(CLIENT).tcp(cip, 80, timeout=QUICK).outcome is Outcome.SILENT,
        30,
        what="no answer after delete",
    )
    wait_for(lambda: cip not in rules(lab, "node-1"), 30, what="rules gone")


def test_udp_flow_moves_when_its_endpoint_goes(lab: NodeLab, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, CLIENT, cip, set(PODS))
    first = lab.prober(CLIENT).udp(cip, 80, sport=5353)
    assert first.outcome is Outcome.ANSWERED and first.endpoint in PODS
    for _ in range(3):  # conntrack keeps the flow on its endpoint
        assert lab.prober(CLIENT).udp(cip, 80, sport=5353).endpoint == first.endpoint
    assert first.endpoint is not None
    lab.set_ready(first.endpoint, False)  # still alive, just not an endpoint
    others = set(PODS) - {first.endpoint}
    until_reached(lab, CLIENT, cip, others)
    moved = wait_for(
        lambda: (r := lab.prober(CLIENT).udp(cip, 80, sport=5353)).endpoint in others and r,
        30,
        what="the UDP flow to move",
    )
    assert moved.endpoint != first.endpoint


def test_malformed_object_is_skipped_and_reported(lab: NodeLab, mode: str) -> None:
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
        "endpoints": [{"addresses": [lab.pod_ip("a1")]}],
    }
    lab.apply(orphan)
    wait_for(
        lambda: 'kubeproxy_py_invalid_objects{kind="EndpointSlice"} 1.0' in lab.metrics("node-1"),
        30,
        what="invalid object metric",
    )
    log = lab.agent_log("node-1")
    assert "default/orphan" in log and "invalid object skipped" in log
    until_reached(lab, CLIENT, cip, set(PODS))  # everything else keeps working
    lab.kubectl("delete", "endpointslice", "orphan")
    wait_for(
        lambda: 'kubeproxy_py_invalid_objects{kind="EndpointSlice"} 0.0' in lab.metrics("node-1"),
        30,
        what="metric back to 0",
    )


def test_healthz_livez_and_metrics(lab: NodeLab, mode: str) -> None:
    code, body = lab.node_http("node-1", "http://127.0.0.1:10256/healthz")
    data = json.loads(body)
    assert code == 200 and data["nodeEligible"] is True and data["healthy"] is True
    assert set(data) >= {"lastUpdated", "currentTime"}
    code, body = lab.node_http("node-1", "http://127.0.0.1:10256/livez")
    assert code == 200 and "nodeEligible" not in json.loads(body)
    text = lab.metrics("node-1")
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
    assert lab.node_http("node-1", "http://127.0.0.1:10249/proxyMode")[1] == mode


def lab_explain(lab: NodeLab, *args: str) -> tuple[int, dict[str, Any]]:
    """``kube-proxy-py lab explain ARGS --verify -o json`` as a user runs it."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "proxy", "lab", "explain", "--state-dir", str(lab.state_dir),
         *args, "--verify", "-o", "json"],
        capture_output=True, text=True, env=lab.env, timeout=120, check=False,
    )  # fmt: skip
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_lab_explain_agrees_with_the_kernel(lab: NodeLab, mode: str) -> None:
    """``lab explain --verify`` on the lab's nodes: a pod to a ClusterIP, the ping to it,
    and the outside client to a NodePort with externalTrafficPolicy Local; each packet
    is sent from where it comes from and traced in the node it enters."""
    lab.apply(service("explained", udp=False))
    lab.apply(service("explained-local", udp=False, type="NodePort",
                      externalTrafficPolicy="Local"))  # fmt: skip
    cip = lab.service_ip("explained")
    until_reached(lab, CLIENT, cip, set(PODS))
    rc, doc = lab_explain(lab, f"default/{CLIENT}", "default/explained")
    assert rc == 0 and doc["verify"]["agrees"], doc
    assert doc["verdict"] == "dnat" and doc["service"] == "default/explained:http"
    assert {e["address"] for e in doc["endpoints"] if e["kept"]} == {lab.pod_ip(p) for p in PODS}
    assert doc["verify"]["kernel"]["endpoint"].rsplit(":", 1)[0] in {lab.pod_ip(p) for p in PODS}
    rc, ping = lab_explain(lab, f"default/{CLIENT}", "explained", "--proto", "icmp")
    assert rc == 0 and ping["verify"]["agrees"], ping
    assert ping["verdict"] == ("reject" if mode == "nftables" else "not-a-service")
    port = lab.node_port("explained-local")
    wait_for(lambda: reached(lab, "client", NODE_IP["node-2"], port, 10) == {"b1", "b2"}, 60,
             what="the Local NodePort on node-2")  # fmt: skip
    rc, local = lab_explain(lab, "client", f"node-2:{port}")
    assert rc == 0 and local["verify"]["agrees"], local
    assert local["verdict"] == "dnat" and local["masquerade"] is False
    assert {e["node"] for e in local["endpoints"] if e["kept"]} == {"node-2"}
    lab.kubectl("delete", "svc", "explained", "explained-local")


def test_service_traffic_counters_on_metrics(lab: NodeLab, mode: str) -> None:
    """The lab runs the agents with --metrics-service-counters: a Service's connections
    appear on /metrics, by verdict, in both modes."""
    lab.apply(service("counted", udp=False))
    cip = lab.service_ip("counted")
    until_reached(lab, CLIENT, cip, set(PODS))
    labels = '{namespace="default",port="http",service="counted",verdict="dnat"}'

    def counted() -> float:
        for line in lab.metrics("node-1").splitlines():
            if line.startswith(f"kubeproxy_py_service_packets_total{labels} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    # the connections above went through node-1 (a3 runs there); read every 2 s
    before = wait_for(lambda: counted() or None, 10, what="the Service's connections counted")
    reached(lab, CLIENT, cip, count=10)
    wait_for(lambda: counted() >= before + 10 * 6, 10, what="ten more connections counted")
    assert f"kubeproxy_py_service_bytes_total{labels}" in lab.metrics("node-1")
    lab.kubectl("delete", "svc", "counted")


def container_status(lab: NodeLab, node: str) -> dict[str, Any]:
    status: dict[str, Any] = lab.agent_pod(node)["status"]["containerStatuses"][0]
    return status


def test_restart_keeps_flows_and_converges_without_a_gap(lab: NodeLab, mode: str) -> None:
    """SIGTERM to the agent in its pod: it exits 0 without touching the rules, the
    kubelet restarts the container, and nothing in between fails."""
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, CLIENT, cip, set(PODS))
    before = rules(lab, "node-1")
    restarts = container_status(lab, "node-1")["restartCount"]
    flow = lab.prober(CLIENT).udp(cip, 80, sport=6000)
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:  # steady new connections through the restart
        while not stop.is_set():
            for r in lab.prober(CLIENT).tcp_many(cip, 80, 5, timeout=ANSWER):
                if r.outcome is not Outcome.ANSWERED:
                    failures.append(r.detail)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        lab.signal_agent("node-1", signal.SIGTERM)
        restarted = wait_for(
            lambda: (
                (c := container_status(lab, "node-1"))["restartCount"] > restarts
                and c.get("ready")
                and c
            ),
            90,
            what="the kubelet to restart kube-proxy-py's container on node-1, Ready again",
        )
        terminated = restarted["lastState"]["terminated"]
        assert terminated["exitCode"] == 0, terminated  # SIGTERM: a clean exit
        assert lab.prober(CLIENT).udp(cip, 80, sport=6000).endpoint == flow.endpoint
    finally:
        stop.set()
        worker.join(30)
    assert failures == []
    assert lab.prober(CLIENT).udp(cip, 80, sport=6000).endpoint == flow.endpoint
    assert rules(lab, "node-1") == before  # the same rules, after a restart too
    assert "stopping without touching the rules" in lab.agent_log("node-1", previous=True)


def compact_etcd(lab: NodeLab) -> None:
    """Compact etcd to its current revision, through its JSON gateway in the control
    plane's namespace."""
    cp = lab.state.control_plane
    port = int(cp["etcd_url"].rsplit(":", 1)[1])

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        conn = NetnsHTTPConnection(cp["namespace"], "127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", path, body=json.dumps(body).encode())
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        assert resp.status == 200, data
        result: dict[str, Any] = json.loads(data)
        return result

    revision = post("/v3/kv/range", {"key": "Lw==", "limit": 1})["header"]["revision"]  # "/"
    post("/v3/kv/compaction", {"revision": revision, "physical": True})


def stop_apiserver(lab: NodeLab) -> int:
    """Kill kube-apiserver (the lab's supervisor starts it again, as a kind node's kubelet
    restarts its static pod, on the same etcd); how many restarts it had before.

    SIGKILL, a crash: after SIGTERM, v1.37's API server stops listening at once but can
    take minutes to exit (seen here), which is not what this test is about."""
    lab.reload()
    record = lab.state.processes["kube-apiserver"]
    assert record.is_ours()
    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: not record.is_ours(), 60, what="kube-apiserver to exit")
    return lab.state.restarts.get("kube-apiserver", 0)


def wait_apiserver_restarted(lab: NodeLab, before: int) -> None:
    def restarted() -> bool:
        lab.reload()
        return lab.state.restarts.get("kube-apiserver", 0) > before

    wait_for(restarted, 90, what="the lab to start kube-apiserver again")
    wait_for(lambda: lab.api("GET", "/api/v1/namespaces/default"), 60, what="the API back")
    status = io.StringIO()
    print_status(lab.state, status)
    assert "kube-apiserver exited and was started again" in status.getvalue(), status.getvalue()


def test_watch_survives_apiserver_restart_and_compaction(lab: NodeLab, mode: str) -> None:
    lab.apply(service("kept"), service("gone"))
    kept, gone = lab.service_ip("kept"), lab.service_ip("gone")
    until_reached(lab, CLIENT, gone, set(PODS))
    pids = [lab.agent_pid(n) for n in NODES]
    # Freeze the agents and kill their API connections (ss -K, inside the node namespace),
    # so nothing of what follows can reach them, not even through a socket buffer. They
    # stay frozen only until the API server is down (their liveness probe would have the
    # kubelet restart them after 30 s).
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for node in NODES:
            lab.run(node, ["ss", "-K", "dst", "192.168.50.2", "dport", "=", "6443"])
        lab.kubectl("delete", "svc", "gone")
        lab.apply(service("fresh"))
        # the agents' resourceVersion is now unservable: compacted away in etcd, and not
        # in the restarted API server's watch cache either
        compact_etcd(lab)
        restarts = stop_apiserver(lab)
    finally:
        for pid in pids:  # (no API to look them up while it is down)
            os.kill(pid, signal.SIGCONT)
    wait_apiserver_restarted(lab, restarts)
    fresh = lab.service_ip("fresh")
    until_reached(lab, CLIENT, fresh, set(PODS))
    wait_for(
        lambda: gone not in rules(lab, "node-1") and gone not in rules(lab, "node-2"),
        60,
        what="no stale rule for the deleted service",
    )
    until_reached(lab, CLIENT, kept, set(PODS))
    assert [lab.agent_pid(n) for n in NODES] == pids  # the same processes, no restart
    for node in NODES:  # the watch really expired (410) and the agent relisted
        log = lab.agent_log(node)
        assert "watch resourceVersion expired; relisting" in log, log[-3000:]
    for name in ("kept", "fresh"):
        lab.kubectl("delete", "svc", name)


def without_node(lab: NodeLab, node: str, excluded: bool) -> None:
    """Keep kube-proxy-py's DaemonSet off ``node`` (or let it back), through the node
    affinity the lab's ``--compare`` already uses; wait for the rollout."""
    ds = lab.get("daemonset", PROXY[1], PROXY[0])
    terms = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    values = terms[0]["matchExpressions"][-1]["values"]
    values = sorted({*values, node}) if excluded else [v for v in values if v != node]
    terms[0]["matchExpressions"][-1]["values"] = values
    patch = {
        "spec": {"template": {"spec": {"affinity": ds["spec"]["template"]["spec"]["affinity"]}}}
    }
    lab.api("PATCH", f"/apis/apps/v1/namespaces/{PROXY[0]}/daemonsets/{PROXY[1]}", patch,
            content_type="application/merge-patch+json")  # fmt: skip
    lab.kubectl("rollout", "status", "-n", PROXY[0], f"ds/{PROXY[1]}", "--timeout=180s")


def cleanup_pod(node: str, image: str) -> dict[str, Any]:
    """``kube-proxy-py run --cleanup`` as a one-off pod on the node's network, from the
    DaemonSet's own image (how an operator cleans a node after removing the DaemonSet)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kube-proxy-py-cleanup", "namespace": PROXY[0]},
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "cleanup",
                    "image": image,
                    "command": ["kube-proxy-py", "run", "--cleanup", f"--hostname-override={node}"],
                    "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
                    "volumeMounts": [{"name": "lock", "mountPath": "/run/xtables.lock"}],
                }
            ],
            "volumes": [
                {"name": "lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}}
            ],
        },
    }


KUBELET_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-FIREWALL")
"""The kubelet's own chains: they stay."""


def test_cleanup_flag_removes_rules(lab: NodeLab, mode: str) -> None:
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    until_reached(lab, CLIENT, cip, set(PODS))
    image = lab.agent_pod("node-2")["spec"]["containers"][0]["image"]
    without_node(lab, "node-2", True)
    try:
        assert cip in rules(lab, "node-2")  # a stopped agent leaves its rules
        pod = cleanup_pod("node-2", image)
        lab.api("POST", f"/api/v1/namespaces/{PROXY[0]}/pods", pod)
        phase = wait_for(
            lambda: (
                (p := lab.get("pod", pod["metadata"]["name"], PROXY[0])["status"].get("phase"))
                in ("Succeeded", "Failed")
                and p
            ),
            120,
            what="the cleanup pod to finish",
        )
        out = lab.kubectl("logs", "-n", PROXY[0], pod["metadata"]["name"])
        assert phase == "Succeeded", out
        text = rules(lab, "node-2")
        ours = [
            line
            for line in text.splitlines()
            if "KUBE-" in line and not any(chain in line for chain in KUBELET_CHAINS)
        ]
        assert ours == [] and "kube-proxy" not in text, text
        lab.kubectl("delete", "pod", "-n", PROXY[0], pod["metadata"]["name"])
    finally:
        without_node(lab, "node-2", False)
    wait_for(lambda: cip in rules(lab, "node-2"), 60, what="rules back on node-2")


def test_programming_reaches_the_kernel_for_many_changes(lab: NodeLab, mode: str) -> None:
    """Twenty readiness flips in a row all end up in the kernel (ordering, coalescing)."""
    lab.apply(service("web"))
    cip = lab.service_ip("web")
    for i in range(20):
        lab.set_ready("b1", i % 2 == 1, wait=False)
    wait_for(lambda: lab.is_ready("b1"), 60, what="b1 Ready after the flips")
    until_reached(lab, CLIENT, cip, set(PODS))
    assert (
        Counter(r.outcome for r in lab.prober(CLIENT).tcp_many(cip, 80, 20, timeout=ANSWER))[
            Outcome.ANSWERED
        ]
        == 20
    )
