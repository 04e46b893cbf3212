"""``kube-proxy-py lab demo``: a guided tour of Service networking on the lab cluster.

Everything goes through the real API with kubectl (Deployments, Services, EndpointSlices)
and is checked with real packets: from a client pod, from the lab's outside client and
from the nodes. Each step shows the command, its result, the rules kube-proxy-py wrote for
it, a one-line explanation, and checks its own outcome; the exit status is 1 if any step
was wrong. Objects live in the Kubernetes namespace ``demo``, recreated on every run.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from proxy.demo.present import Presenter
from proxy.harness import Outcome, ProbeResult
from proxy.harness.probe import Prober
from proxy.lab import lab as labmod
from proxy.lab.cluster import wait_for

NS = "demo"
EXTERNAL_IP = "203.0.113.10"
CLIENT_IP = "192.168.50.100"


class DemoError(RuntimeError):
    """The lab could not do what a step needs (not an unexpected outcome: a failure)."""


class LabDemo:
    def __init__(self, state: labmod.LabState, out: Presenter) -> None:
        self.state = state
        self.p = out
        self.node_names = [n.name for n in state.nodes if n.proxy == "kube-proxy-py"]
        self.node_ips = {n.name: n.lan_ip for n in state.nodes}
        self.node_addresses = {
            # the LAN address, and the pod bridge's (the CNI gateway, .1 of the podCIDR)
            n.name: {n.lan_ip, str(ipaddress.ip_network(n.pod_cidr)[1])}
            for n in state.nodes
        }
        self._probers: dict[str, Prober] = {}

    # -- plumbing ------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        argv = labmod.kubectl_argv(self.state, list(args))
        proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=120)
        if check and proc.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def show(self, *args: str, input: str | None = None) -> str:
        """Run kubectl as a step's visible command."""
        if input is not None:
            args = (*args, "-f", "-")
        self.p.command("kubectl " + " ".join(args))
        out = self.kubectl(*args, input=input)
        if out.strip():
            self.p.result(out)
        return out

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name, "-n", NS, "-o", "json"))  # type: ignore[no-any-return]

    def prober(self, netns: str) -> Prober:
        if netns not in self._probers:
            self._probers[netns] = Prober(netns)
        return self._probers[netns]

    def close(self) -> None:
        for prober in self._probers.values():
            prober.close()

    def node_ns(self, node: str) -> str:
        return f"{self.state.lab_id}-{node}"

    @property
    def client_ns(self) -> str:
        return f"{self.state.lab_id}-{labmod.CLIENT}"

    def pod_ns(self, pod: str) -> str:
        return labmod.shell_target(self.state, f"{NS}/{pod}")

    def service_ip(self, name: str) -> str:
        return str(self.get("service", name)["spec"]["clusterIP"])

    def endpoints(self, service: str) -> dict[str, str]:
        """Ready endpoint IP -> pod name, from the EndpointSlices."""
        out = json.loads(
            self.kubectl(
                "get",
                "endpointslices",
                "-n",
                NS,
                "-l",
                f"kubernetes.io/service-name={service}",
                "-o",
                "json",
            )
        )
        ready: dict[str, str] = {}
        for sl in out["items"]:
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready", True):
                    name = (ep.get("targetRef") or {}).get("name", "")
                    for ip in ep.get("addresses", []):
                        ready[ip] = name
        return ready

    def pods(self, label: str) -> list[dict[str, Any]]:
        out = json.loads(self.kubectl("get", "pods", "-n", NS, "-l", label, "-o", "json"))
        return [p for p in out["items"] if not p["metadata"].get("deletionTimestamp")]

    def rules(self, node: str, patterns: Sequence[str]) -> str:
        """Rules on ``node`` mentioning any of ``patterns``; in nftables mode also the
        service chains those lines jump to (their DNAT rules name no service)."""
        in_node = ["ip", "netns", "exec", self.node_ns(node)]
        if self.state.mode == "iptables":
            argv = ["iptables-save"]
        else:
            argv = ["nft", "list", "table", "ip", "kube-proxy"]
        out = subprocess.run([*in_node, *argv], capture_output=True, text=True,
                             check=False).stdout  # fmt: skip
        lines = [ln.strip() for ln in out.splitlines() if any(p in ln for p in patterns)][:10]
        if self.state.mode == "nftables":
            chains = sorted({m for ln in lines for m in re.findall(r"goto (service-\S+)", ln)})
            for chain in chains[:2]:
                listing = subprocess.run(
                    [*in_node, "nft", "list", "chain", "ip", "kube-proxy", chain.rstrip(",")],
                    capture_output=True, text=True, check=False,
                ).stdout  # fmt: skip
                lines += [
                    ln.strip()
                    for ln in listing.splitlines()
                    if ln.strip() and not ln.strip().startswith(("table", "}"))
                ]
        return "\n".join(dict.fromkeys(lines)) or "(none)"

    def spread(self, cip: str, want: set[str], n: int = 20) -> Counter[str | None]:
        """HTTP from the client pod until every pod in ``want`` answers (the agents may
        still be programming the change), then ``n`` fresh connections, counted."""
        wait_for(lambda: {r.endpoint for r in self.http(self.pod_ns("client"), cip, 80, n)}
                 == want, 60, what=f"connections to reach {sorted(want)}")  # fmt: skip
        return Counter(r.endpoint for r in self.http(self.pod_ns("client"), cip, 80, n))

    def http(self, netns: str, host: str, port: int, n: int = 1, keep: bool = False,
             timeout: float = 3.0) -> list[ProbeResult]:  # fmt: skip
        return self.prober(netns).http(host, port, requests=n, keepalive=keep, timeout=timeout)

    def answered(self, netns: str, host: str, port: int, *, what: str) -> ProbeResult:
        """The first HTTP answer (rules may take a moment to arrive)."""
        result: ProbeResult = wait_for(
            lambda: (r := self.http(netns, host, port)[0]).endpoint and r, 30, what=what
        )
        return result

    def check(self, what: str, fn: Callable[[], bool]) -> None:
        self.p.run_checked(what, fn)

    # -- the tour -------------------------------------------------------------------------
    def introduce(self) -> None:
        """The cluster the tour runs on: real kubelets, kube-proxy-py as DaemonSet pods."""
        self.show("get", "nodes", "-o", "wide")
        self.show("get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy-py", "-o", "wide")
        image = self.kubectl("get", "daemonset", "kube-proxy-py", "-n", "kube-system", "-o",
                             "jsonpath={.spec.template.spec.containers[0].image}")  # fmt: skip
        self.p.explain(
            "every node runs a real kubelet and containerd; kube-proxy-py runs on each as a "
            f"pod of the daemonset.yaml DaemonSet, from the image {image} built from the "
            "Dockerfile, on the node's network (hostNetwork) so its rules apply to the node"
        )

    def prepare(self) -> None:
        self.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=true",
                     "--timeout=120s")  # fmt: skip
        self.kubectl("create", "namespace", NS)
        self.kubectl("run", "client", "-n", NS, "--image=curlimages/curl", "--restart=Never",
                     "--", "sleep", "infinity")  # fmt: skip
        wait_for(lambda: self.get("pod", "client")["status"].get("podIP"), 60,
                 what="the client pod")  # fmt: skip

    def run(self) -> None:
        steps = (
            self.step_deployment_and_service,
            self.step_pod_replaced,
            self.step_ping,
            self.step_node_port,
            self.step_external_ip,
            self.step_affinity,
            self.step_local_policy,
            self.step_no_endpoints,
            self.step_selectorless,
            self.step_external_name,
        )
        for step in steps:
            try:
                step()
            except Exception as exc:  # a step that cannot finish is a failed step
                self.p.result(f"error: {exc}")
                self.p.check(False, step.__name__.removeprefix("step_").replace("_", " "))

    def step_deployment_and_service(self) -> None:
        p = self.p
        p.step("a two-replica my-nginx Deployment and its ClusterIP Service")
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "my-nginx", "namespace": NS},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"run": "my-nginx"}},
                "template": {
                    "metadata": {"labels": {"run": "my-nginx"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 3,
                        "topologySpreadConstraints": [
                            {
                                "maxSkew": 1,
                                "topologyKey": "kubernetes.io/hostname",
                                "whenUnsatisfiable": "DoNotSchedule",
                                "labelSelector": {"matchLabels": {"run": "my-nginx"}},
                            }
                        ],
                        "containers": [
                            {
                                "name": "my-nginx",
                                "image": "nginx",
                                "ports": [{"name": "http", "containerPort": 80}],
                            }
                        ],
                    },
                },
            },
        }
        self.show("apply", "-n", NS, input=json.dumps(deployment))
        self.show("expose", "deployment", "my-nginx", "-n", NS, "--port=80")
        wait_for(lambda: len(self.endpoints("my-nginx")) == 2, 90, what="two ready endpoints")
        self.show("get", "pods", "-n", NS, "-l", "run=my-nginx", "-o", "wide")
        self.show("get", "endpointslices", "-n", NS, "-l", "kubernetes.io/service-name=my-nginx")
        cip = self.service_ip("my-nginx")
        p.explain(f"the Service got ClusterIP {cip}; its endpoints are the two pod IPs")
        pods = {pod["metadata"]["name"] for pod in self.pods("run=my-nginx")}
        p.command(f"from pod client: 20 HTTP requests to {cip}:80, a new connection each")
        counts = self.spread(cip, pods)
        p.result(", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str)))
        p.rules(f"the rules kube-proxy-py wrote on {self.node_names[0]} for demo/my-nginx",
                self.rules(self.node_names[0], ["demo/my-nginx", "my-nginx/tcp"]))  # fmt: skip
        p.explain("kube-proxy-py DNATs each new connection to one endpoint, chosen at random")
        self.check("connections spread over both pods", lambda: set(counts) == pods)

    def step_pod_replaced(self) -> None:
        p = self.p
        p.step("deleting a pod changes the endpoints, not the ClusterIP")
        cip = self.service_ip("my-nginx")
        before = self.endpoints("my-nginx")
        victim = sorted(before.values())[0]
        self.show("delete", "pod", victim, "-n", NS, "--wait=false")
        wait_for(lambda: len(after := self.endpoints("my-nginx")) == 2 and victim not in
                 after.values(), 90, what="the replacement pod")  # fmt: skip
        after = self.endpoints("my-nginx")
        self.show("get", "pods", "-n", NS, "-l", "run=my-nginx", "-o", "wide")
        p.result(f"endpoints before: {sorted(before)}\nendpoints after:  {sorted(after)}")
        p.result(f"ClusterIP before: {cip}, after: {self.service_ip('my-nginx')}")
        p.explain("the Deployment replaced the pod with a new IP; the controller updated the "
                  "EndpointSlice and kube-proxy-py its rules, while clients keep using one "
                  "stable ClusterIP (and its DNS name)")  # fmt: skip
        p.command(f"from pod client: 12 HTTP requests to {cip}:80, a new connection each")
        counts = self.spread(cip, set(after.values()), 12)
        p.result(", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str)))
        self.check("same ClusterIP, new endpoints, traffic to the new pod",
                   lambda: cip == self.service_ip("my-nginx") and before != after
                   and set(counts) == set(after.values()))  # fmt: skip

    def step_ping(self) -> None:
        p = self.p
        p.step("ping the ClusterIP: it fails, while TCP to it works")
        cip = self.service_ip("my-nginx")
        client = self.prober(self.pod_ns("client"))
        p.command(f"from pod client: ping {cip}")
        ping = client.icmp_echo(cip, timeout=1.0)
        p.result(f"{ping.outcome}: {ping.detail}")
        p.command(f"from pod client: curl http://{cip}/")
        web = self.http(self.pod_ns("client"), cip, 80)[0]
        p.result(f"{web.outcome}: answered by {web.endpoint}")
        p.explain("a ClusterIP is on no interface: it exists only as IP:port/protocol matches "
                  "in DNAT rules, and ICMP has no port. "
                  + ("In iptables mode nothing matches, so the ping is routed away and lost."
                     if self.state.mode == "iptables" else
                     "nftables mode rejects it: 'port unreachable'."))  # fmt: skip
        want = Outcome.SILENT if self.state.mode == "iptables" else Outcome.REFUSED
        self.check("ping fails, HTTP works",
                   lambda: ping.outcome is want and web.outcome is Outcome.ANSWERED)  # fmt: skip

    def step_node_port(self) -> None:
        p = self.p
        p.step("a NodePort, from the outside client, through any node")
        self.show("patch", "service", "my-nginx", "-n", NS, "-p", '{"spec":{"type":"NodePort"}}')
        port = int(self.get("service", "my-nginx")["spec"]["ports"][0]["nodePort"])
        results: dict[str, ProbeResult] = {}
        for node in self.node_names:
            ip = self.node_ips[node]
            p.command(f"from the outside client: curl http://{ip}:{port}/   ({node})")
            r = self.answered(self.client_ns, ip, port, what=f"the NodePort on {node}")
            results[node] = r
            p.result(f"answered by {r.endpoint}; the pod saw the client as {r.seen_source}")
        p.rules(f"NodePort rules on {self.node_names[0]}",
                self.rules(self.node_names[0], [str(port)]))  # fmt: skip
        p.explain(
            "every node accepts the nodePort and forwards to any endpoint; with "
            "externalTrafficPolicy Cluster it masquerades, so pods see an address of the "
            "node (its LAN IP, or its cni0 bridge address when the pod runs on that node)"
        )
        self.check("each node forwards the NodePort",
                   lambda: all(r.outcome is Outcome.ANSWERED and r.seen_source in
                               self.node_addresses[n] for n, r in results.items()))  # fmt: skip

    def step_external_ip(self) -> None:
        p = self.p
        p.step("an ExternalIP standing in for a LoadBalancer")
        patch = json.dumps({"spec": {"externalIPs": [EXTERNAL_IP]}})
        self.show("patch", "service", "my-nginx", "-n", NS, "-p", patch)
        p.command(f"from the outside client (it routes 203.0.113.0/24 to "
                  f"{self.node_names[0]}): curl http://{EXTERNAL_IP}/")  # fmt: skip
        r = self.answered(self.client_ns, EXTERNAL_IP, 80, what="the ExternalIP")
        p.result(f"answered by {r.endpoint}")
        p.explain(
            "a cloud load balancer would send the traffic for its IP to a node; here the "
            "client's route plays that part, and kube-proxy-py DNATs it like a NodePort"
        )
        self.check("the external IP reaches the Service", lambda: r.outcome is Outcome.ANSWERED)

    def step_affinity(self) -> None:
        p = self.p
        p.step("session affinity pins a client to one pod")
        cip = self.service_ip("my-nginx")
        self.show("patch", "service", "my-nginx", "-n", NS, "-p",
                  '{"spec":{"sessionAffinity":"ClientIP"}}')  # fmt: skip
        wait_for(lambda: len({r.endpoint for r in self.http(self.pod_ns("client"), cip, 80, 6)})
                 == 1, 30, what="affinity in the rules")  # fmt: skip
        p.command(f"from pod client: 12 HTTP requests to {cip}, a new connection each")
        pinned = [r.endpoint for r in self.http(self.pod_ns("client"), cip, 80, 12)]
        p.result(", ".join(str(e) for e in pinned))
        p.explain(
            "with sessionAffinity ClientIP, kube-proxy-py remembers which pod each client "
            "IP got (for timeoutSeconds, default 3 hours) and sends it there again"
        )
        self.kubectl("patch", "service", "my-nginx", "-n", NS, "-p",
                     '{"spec":{"sessionAffinity":"None"}}')  # fmt: skip
        self.check("every request went to the same pod", lambda: len(set(pinned)) == 1)

    def step_local_policy(self) -> None:
        p = self.p
        p.step("externalTrafficPolicy Local keeps the client's source IP")
        self.show("patch", "service", "my-nginx", "-n", NS, "-p",
                  '{"spec":{"externalTrafficPolicy":"Local"}}')  # fmt: skip
        port = int(self.get("service", "my-nginx")["spec"]["ports"][0]["nodePort"])
        hosting = {pod["spec"]["nodeName"]: pod["metadata"]["name"]
                   for pod in self.pods("run=my-nginx")}  # fmt: skip
        node = next(n for n in self.node_names if n in hosting)
        ip = self.node_ips[node]
        p.command(f"from the outside client ({CLIENT_IP}): curl http://{ip}:{port}/  ({node})")
        r = wait_for(lambda: (x := self.http(self.client_ns, ip, port)[0]).seen_source
                     == CLIENT_IP and x, 30, what="the Local policy")  # fmt: skip
        p.result(f"answered by {r.endpoint}, which saw the client as {r.seen_source}")
        p.explain(
            "with Local, a node sends external traffic only to its own pods and so needs "
            "no masquerade: the pod sees the real client (a node without a local pod "
            "drops it, and a load balancer's health check on healthCheckNodePort says so)"
        )
        self.check(
            "local pod answered and saw the real client IP",
            lambda: r.endpoint == hosting[node] and r.seen_source == CLIENT_IP,
        )
        self.kubectl("patch", "service", "my-nginx", "-n", NS, "-p",
                     '{"spec":{"externalTrafficPolicy":"Cluster"}}')  # fmt: skip

    def step_no_endpoints(self) -> None:
        p = self.p
        p.step("a Service with no endpoints refuses connections")
        self.show("create", "service", "clusterip", "nothing-here", "-n", NS, "--tcp=80:80")
        cip = self.service_ip("nothing-here")
        self.show("get", "endpointslices", "-n", NS, "-l",
                  "kubernetes.io/service-name=nothing-here")  # fmt: skip
        p.command(f"from pod client: curl http://{cip}/")
        r = wait_for(lambda: (x := self.prober(self.pod_ns("client")).tcp(cip, 80)).outcome
                     is Outcome.REFUSED and x, 30, what="a reject rule")  # fmt: skip
        p.result(f"{r.outcome}: {r.detail}")
        p.rules(f"rules on {self.node_names[0]} for demo/nothing-here",
                self.rules(self.node_names[0], ["demo/nothing-here"]))  # fmt: skip
        p.explain(
            "no pod matches the selector, so kube-proxy-py rejects the connection at once "
            "('connection refused') instead of letting the client wait for a timeout"
        )
        self.check("connection refused", lambda: r.outcome is Outcome.REFUSED)

    def step_selectorless(self) -> None:
        p = self.p
        p.step("a selectorless Service with a hand-written EndpointSlice")
        ready = sorted(self.endpoints("my-nginx").items())
        if not ready:
            raise DemoError("my-nginx has no ready endpoint to point the slice at")
        target_ip, target = ready[0]
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "legacy-db", "namespace": NS},
            "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 80}]},
        }
        endpoint_slice = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "legacy-db-1", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": "legacy-db"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [target_ip]}],
        }  # fmt: skip
        self.show(
            "apply",
            "-n",
            NS,
            input=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": [service, endpoint_slice]}
            ),
        )
        cip = self.service_ip("legacy-db")
        p.command(f"from pod client: curl http://{cip}:8080/")
        r = self.answered(self.pod_ns("client"), cip, 8080, what="the hand-written endpoint")
        p.result(f"answered by {r.endpoint} ({target_ip})")
        p.explain(
            "without a selector no controller writes endpoints: you do, pointing the "
            "Service at any address (a database VM, another cluster; here a pod's IP)"
        )
        self.check("the hand-written endpoint answers", lambda: r.endpoint == target)

    def step_external_name(self) -> None:
        p = self.p
        p.step("an ExternalName Service is left to DNS")
        self.show("create", "service", "externalname", "db", "-n", NS,
                  "--external-name=db.example.com")  # fmt: skip
        self.show("get", "service", "db", "-n", NS)
        found = self.rules(self.node_names[0], ["demo/db"])
        p.rules(f"rules on {self.node_names[0]} for demo/db", found)
        p.explain(
            "ExternalName has no ClusterIP: cluster DNS answers db.demo.svc with a CNAME "
            "to db.example.com, and kube-proxy-py writes no rule at all"
        )
        self.check("no rules for the ExternalName Service", lambda: found == "(none)")


def main(state_dir: Path, *, color: bool | None, pause: bool) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    out = Presenter(color=sys.stdout.isatty() if color is None else color, pause=pause)
    state = labmod.load_state(state_dir)
    if state is None or not state.supervisor_alive() or state.phase != "ready":
        print("no lab is running: starting one (`kube-proxy-py lab up`)\n", flush=True)
        rc = labmod.up(state_dir, nodes=None, mode=None, compare=None)
        if rc != 0:
            return rc
        state = labmod.load_state(state_dir)
        if state is None:
            raise DemoError(f"the lab did not record its state in {state_dir}")
    out.title(f"kube-proxy-py lab demo ({state.mode} mode, lab {state.lab_id})")
    demo = LabDemo(state, out)
    try:
        demo.introduce()
        demo.prepare()
        demo.run()
    finally:
        demo.close()
    print()
    if out.failures:
        print("lab demo: unexpected outcomes:\n  " + "\n  ".join(out.failures), file=sys.stderr)
        return 1
    print(f"lab demo: all {out.steps} steps behaved as expected.")
    print(
        "The lab is still running: look around with `kube-proxy-py lab kubectl get all -n "
        "demo`, `kube-proxy-py lab shell node-1`; remove it with `kube-proxy-py lab down`."
    )
    return 0
