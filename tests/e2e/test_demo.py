"""The lab's guided demo and the learners'-note walkthroughs (``lab seeds``) run end
to end, and a rolling update under load loses nothing.

Here in nftables mode, on the session's default lab (``lab up --nodes 2`` through the CLI
as a user starts it), which test_lab.py goes on using and finally takes down (checking
that nothing is left behind). The walkthroughs and the rolling update also run in
iptables mode, on the lab of real nodes of tests/e2e/nodes (tests/e2e/nodes/
test_01_walkthroughs.py): a lab start less than a lab of their own. Every walkthrough
passes in both modes; ``--parallel`` runs the five at once (each works in its own
namespace).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from proxy.harness.probe import Prober
from proxy.lab import state as labstate
from proxy.lab.cluster import wait_for
from proxy.lab.commands.kubectl import kubectl_argv
from proxy.lab.commands.shell import shell_target

if TYPE_CHECKING:
    from tests.e2e import test_lab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

CHECKS = {0: 10, 1: 11, 2: 9, 3: 15, 4: 6}
"""How many checks each walkthrough makes."""
PING = {
    "nftables": "[ok] ping is refused in nftables mode",
    "iptables": "[ok] ping is silent in iptables mode",
}
PROXY_PODS = ("-n", "kube-system", "-l", "k8s-app=kube-proxy-py")
DIFFERENCES = (
    # seed 000
    "- kubectl exec deploy/sleep-1 - ping -c 1 sleep-2: kubectl refuses it",
    "the ping fails because DNS may not work: DNS works",
    # seed 001
    "- kubectl run curl --image=radial/busyboxplus:curl -ti --rm: `-t` asks for a terminal",
    # seed 002
    "is redirected to db.example.com: nothing is redirected",
    # seed 003
    "- kubectl apply -f sleep/sleep1.yaml -f sleep/sleep2. yaml: the space",
    "- numbers/api-service.yaml: tab indentation:",
    "- numbers/api-service.yaml: `type: ClusterIp`:",
    "- minikube service numbers-web --url / minikube tunnel: not run",
    "- kubectl apply -f numbers-services/api-service-headless.yaml: this is the headless",
    "this Service is not headless: it has a ClusterIP",
)


def kpp(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


class Lab:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        state = labstate.load_state(state_dir)
        assert state is not None
        self.state = state

    def kubectl(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run(kubectl_argv(self.state, list(args)), capture_output=True,
                              text=True, input=input, timeout=180)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def ready_endpoints(self, service: str, namespace: str) -> dict[str, str]:
        out = json.loads(self.kubectl("get", "endpointslices", "-n", namespace, "-l",
                                      f"kubernetes.io/service-name={service}", "-o", "json"))  # fmt: skip
        return {
            ip: (ep.get("targetRef") or {}).get("name", "")
            for sl in out["items"]
            for ep in sl.get("endpoints") or []
            if (ep.get("conditions") or {}).get("ready", True)
            for ip in ep.get("addresses", [])
        }


@pytest.fixture(scope="module")
def lab(default_lab: test_lab.Lab) -> Lab:
    """The session's default lab (nftables; tests/e2e/conftest.py)."""
    return Lab(default_lab.state_dir)


def test_demo_runs_end_to_end(lab: Lab) -> None:
    assert lab.state.mode == "nftables"  # the demo is the embedded default; not in iptables
    proc = kpp("lab", "demo", "--no-color", "--state-dir", str(lab.state_dir))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.count("[ok]") == 10, proc.stdout[-4000:]
    assert "UNEXPECTED" not in proc.stdout and "\033[" not in proc.stdout
    assert "lab demo: all 10 steps behaved as expected" in proc.stdout
    out = proc.stdout
    # It opens with the cluster: real kubelets, kube-proxy-py's DaemonSet pods.
    assert "containerd://2.3.7" in out
    assert out.count("kube-proxy-py-") >= 2 and "kube-proxy-py:0.1.0" in out
    # The traffic is real commands' output: curl by the Service's name from the client pod
    # (kubectl exec), a ping whose name resolves to the ClusterIP, curl on the client.
    assert (
        "$ kubectl exec -n demo client -- sh -c 'for i in $(seq 20); do curl -s http://my-nginx/;"
        in out
    )
    assert re.search(r"^ +\d+ my-nginx-\S+$", out, re.M), out[-4000:]
    assert re.search(r"PING my-nginx \(10\.96\.\d+\.\d+\)", out), out[-4000:]
    assert re.search(r"client\$ curl -s --max-time 2 http://192\.168\.50\.11:3\d{4}/", out)
    # A LoadBalancer: <pending>, then MetalLB's address, reached through ARP, not a route.
    assert re.search(r"LoadBalancer +\S+ +<pending>", out), out[-4000:]
    lb = re.search(r"LoadBalancer +\S+ +(192\.168\.50\.\d+) ", out)
    assert lb and 200 <= int(lb[1].rsplit(".", 1)[1]) <= 250, out[-4000:]
    assert re.search(rf"^ +{re.escape(lb[1])} dev eth0 lladdr ", out, re.M), out[-4000:]
    assert 'announcing from node "node-' in out
    # externalTrafficPolicy Local: the pod saw the outside client's own address.
    assert re.search(r"^ +my-nginx-\S+ 192\.168\.50\.100:\d+$", out, re.M), out[-4000:]
    assert "curl: (7) Failed to connect to nothing-here port 80" in out
    # The ping, NodePort and Local steps explain with lab explain --verify.
    assert out.count("$ kube-proxy-py lab explain ") == 3
    assert out.count("verified    the kernel agrees with the explanation") == 3
    # DNS for real: the ExternalName's CNAME and the outside resolver's address.
    assert "db.demo.svc.cluster.local\tcanonical name = db.example.com" in out
    assert "Name:\tdb.example.com\n    Address: 192.168.50.4" in out


def web(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "rollout"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    # The server exits at once on SIGTERM, as most do; the preStop sleep
                    # keeps it serving while the endpoint's removal reaches every node
                    # (the usual advice for zero-downtime rollouts behind kube-proxy).
                    # The readiness probe keeps a new pod out of the endpoints until
                    # it listens (Ready would otherwise mean "started").
                    "containers": [{"name": "web", "image": "nginx",
                                    "lifecycle": {"preStop": {"exec": {
                                        "command": ["sleep", "3"]}}},
                                    "readinessProbe": {"httpGet": {"path": "/", "port": 80},
                                                       "periodSeconds": 1},
                                    "ports": [{"name": "http", "containerPort": 80}]}],
                },
            },
        },
    }  # fmt: skip


def test_rolling_update_under_load_loses_no_connection(lab: Lab) -> None:
    lab.kubectl("create", "namespace", "rollout")
    lab.kubectl("apply", "-f", "-", input=json.dumps(web(3)))
    lab.kubectl("expose", "deployment", "web", "-n", "rollout", "--port=80")
    lab.kubectl("run", "load", "-n", "rollout", "--image=curlimages/curl", "--restart=Never",
                "--", "sleep", "infinity")  # fmt: skip
    wait_for(lambda: len(lab.ready_endpoints("web", "rollout")) == 3, 90, what="3 endpoints")
    cip = json.loads(lab.kubectl("get", "svc", "web", "-n", "rollout", "-o", "json"))["spec"][
        "clusterIP"
    ]
    load_ns = wait_for(lambda: shell_target(lab.state, "rollout/load"), 60,
                       what="the load pod's namespace")  # fmt: skip
    before = set(lab.ready_endpoints("web", "rollout").values())
    with Prober(load_ns) as prober:
        wait_for(lambda: {r.endpoint for r in prober.http(cip, 80, requests=30,
                                                          keepalive=False)} == before,
                 60, what="rules for all 3 pods")  # fmt: skip
        failures: list[str] = []
        served: list[str] = []
        stop = threading.Event()

        def load() -> None:  # a new connection per request, as fast as it goes
            with Prober(load_ns) as own:
                while not stop.is_set():
                    for r in own.http(cip, 80, requests=5, keepalive=False, timeout=3.0):
                        if r.endpoint is None:
                            failures.append(f"{r.outcome}: {r.detail}")
                        else:
                            served.append(r.endpoint)

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        try:
            lab.kubectl("rollout", "restart", "deployment/web", "-n", "rollout")
            lab.kubectl("rollout", "status", "deployment/web", "-n", "rollout",
                        "--timeout=180s")  # fmt: skip
            after = set(lab.ready_endpoints("web", "rollout").values())
            # keep the load on until the last old pod is gone and the new ones serve
            wait_for(lambda: set(served[-60:]) == after, 60, what="traffic on the new pods")
        finally:
            stop.set()
            worker.join(60)
    assert after.isdisjoint(before) and len(after) == 3  # every pod was replaced
    assert failures == [], failures[:10]
    assert len(served) > 100
    lab.kubectl("delete", "namespace", "rollout", "--wait=false")


# -------------------------------------------------------------------- lab seeds


def leftovers(lab: Lab) -> list[str]:
    """What the walkthroughs made and did not delete: their namespaces, and the one
    Service the seed-002 note puts into namespace default."""
    names = lab.kubectl("get", "namespaces", "-o", "name").split()
    left = [n for n in names if n.startswith("namespace/seed-") or n == "namespace/lab06"]
    return (
        left
        + lab.kubectl(
            "get",
            "services",
            "external-db",
            "-n",
            "default",
            "--ignore-not-found",
            "-o",
            "name",
        ).split()
    )


def unexpected_steps(out: str) -> str:
    """Each step of ``lab seeds`` output that holds an ``[UNEXPECTED]`` check, whole (the
    walkthroughs' output is long, and a failed step's commands are far from the end)."""
    steps = re.split(r"^(?=Step \d+:|Summary )", out, flags=re.M)
    return "".join(s for s in steps if "[UNEXPECTED]" in s)


def test_every_walkthrough_passes(lab: Lab) -> None:
    mode = lab.state.mode
    proc = kpp("lab", "seeds", "--parallel", "--no-color", "--state-dir", str(lab.state_dir))
    out = proc.stdout
    assert proc.returncode == 0, unexpected_steps(out) + out[-6000:] + proc.stderr[-2000:]
    assert f"({mode} mode, nodes node-1, node-2)" in out
    assert "UNEXPECTED" not in out and "\033[" not in out
    for number, checks in CHECKS.items():
        assert re.search(rf"^seed {number} \(\S+\): {checks} checks passed, 0 failed", out, re.M), (
            out[-8000:]
        )
    assert f"lab seeds: all {sum(CHECKS.values())} checks passed in 5 walkthrough(s)" in out
    assert PING[mode] in out
    # seed 0's ping and seed 4's NodePort are explained, and the kernel agrees
    assert out.count("$ kube-proxy-py lab explain ") == 2
    assert "[ok] explain says" in out and "masqueraded; the kernel agrees" in out
    differences = out.split("Where the notes and the lab differ", 1)[1]
    missing = [d for d in DIFFERENCES if d not in differences]
    assert missing == [], differences
    if mode == "iptables":  # checked once, on the nodes' lab (whose other tests come next)
        # Each walkthrough starts its namespace's deletion; once the namespace controller
        # is through, nothing of theirs is left.
        wait_for(lambda: not leftovers(lab), 120, interval=1.0, what="the cleanup")
        assert leftovers(lab) == []
