"""``kube-proxy-py lab demo``: a guided tour of Service networking on the lab cluster.

Every step types what a person would type and shows its real output: ``kubectl`` against
the lab's API server (``kubectl exec`` into a client pod that reaches Services by their
DNS names through the cluster's CoreDNS, ``kubectl run`` for a one-off pod), and ``curl``,
``ip route`` and ``ip neigh`` on the lab's outside client, which reaches a LoadBalancer
address that MetalLB announces on the LAN. Each step also shows the rules kube-proxy-py
wrote for it, a one-line explanation, and checks its own outcome; the exit status is 1 if
any step was wrong. Waiting until the nodes' rules are in place (before a command is
shown) uses plain sockets from the client pod's node and from the outside client (many
connections, fast, no kubectl process); what a step shows and checks is the real command's
output. Objects live in the Kubernetes namespace ``demo``, recreated on every run.
"""

from __future__ import annotations

import errno
import http.client
import ipaddress
import json
import logging
import queue
import re
import shlex
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.demo.labexplain import LabExplained, explain_argv, explain_shown
from proxy.demo.present import Presenter
from proxy.host import neighbours
from proxy.host import netns as hostns
from proxy.host.sockets import connect_in_netns
from proxy.lab import clients as labclients
from proxy.lab import metallb
from proxy.lab import state as labstate
from proxy.lab import topology as labtopology
from proxy.lab.cluster import wait_for
from proxy.lab.commands.kubectl import kubectl_argv
from proxy.lab.commands.up import running_or_started

NS = "demo"
CLIENT_POD = "client"
EXTERNAL_NAME = "db.example.com"
LB_PATCH = '{"spec":{"type":"LoadBalancer"}}'
ANSWER = re.compile(r"^(\S+) ([0-9a-f.:]+):(\d+)$", re.MULTILINE)
"""The nginx stand-in's answer: ``<pod name> <client ip>:<port>`` (an IPv6 client address
is written without brackets: the port is after the last colon)."""
ADDRESS = r"(?:\d+\.\d+\.\d+\.\d+|[0-9a-f]*:[0-9a-f:]+)"
"""An IPv4 or IPv6 address in kubectl's output."""
COUNT = re.compile(r"^\s*(\d+) (\S+)$", re.MULTILINE)
"""A line of ``uniq -c``."""


def _in_pool(address: str) -> bool:
    """Whether ``address`` is in the MetalLB pool's range of its family."""
    ip = ipaddress.ip_address(address)
    first, _, last = metallb.POOL_RANGES[ip.version].partition("-")
    return ipaddress.ip_address(first) <= ip <= ipaddress.ip_address(last)  # type: ignore[operator]


def url(host: str, port: int | None = None) -> str:
    """``http://host[:port]/``, an IPv6 address in brackets."""
    where = labtopology.url_host(host) + ("" if port is None else f":{port}")
    return f"http://{where}/"


def curl_loop(url: str, n: int) -> str:
    """The shell loop a person types to see how ``n`` new connections spread."""
    return f'for i in $(seq {n}); do curl -s {url}; done | cut -d" " -f1 | sort | uniq -c'


def routed(routes: str, ip: str) -> bool:
    """Whether ``ip route`` output sends ``ip`` through a gateway (a route other than
    the default one names it or a network holding it with ``via``)."""
    for line in routes.splitlines():
        words = line.split()
        if not words or words[0] == "default":
            continue
        try:
            network = ipaddress.ip_network(words[0], strict=False)
        except ValueError:  # "unreachable", "multicast": not a destination
            continue
        if ipaddress.ip_address(ip) in network and ("via" in words or words[0] == ip):
            return True
    return False


def yaml_text(obj: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(obj), sort_keys=False, default_flow_style=False)


class DemoError(RuntimeError):
    """The lab could not do what a step needs (not an unexpected outcome: a failure)."""


@dataclass(frozen=True)
class Ran:
    """A command's exit status and what a terminal would show (stdout and stderr)."""

    rc: int
    out: str

    def answers(self) -> list[tuple[str, str]]:
        """(pod name, client IP) of every answer of the nginx stand-in in the output."""
        return [(m[1], m[2]) for m in ANSWER.finditer(self.out)]

    def counts(self) -> dict[str, int]:
        """``uniq -c`` output: pod name -> count."""
        return {m[2]: int(m[1]) for m in COUNT.finditer(self.out)}


class LabDemo:
    def __init__(self, state: labstate.LabState, out: Presenter) -> None:
        self.state = state
        self.p = out
        self.node_names = [n.name for n in state.nodes if n.proxy == "kube-proxy-py"]
        # The primary family's: Services are single-stack in it unless they ask for more.
        self.node_ips = {n.name: n.lan_ip for n in state.nodes}
        self.node_addresses = {
            # the LAN address, and the pod bridge's (the CNI gateway, .1 of the podCIDR)
            n.name: {n.lan_ip, str(ipaddress.ip_network(n.pod_cidr)[1])}
            for n in state.nodes
        }
        self.client_ip = str(state.client.get("lan_ip") or labtopology.CLIENT_IP)
        self.family = ipaddress.ip_address(self.client_ip).version
        self.resolver_ip = labtopology.twin(labtopology.RESOLVER_IP, self.family)
        self._client_node = ""
        self._macs: dict[str, str] = {}

    # -- plumbing ------------------------------------------------------------------------
    def _run(self, argv: Sequence[str], input: str | None = None, timeout: float = 120) -> Ran:
        proc = subprocess.run(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            timeout=timeout,
        )
        return Ran(proc.returncode, proc.stdout)

    def show(self, *args: str, heredoc: str | None = None, check: bool = True) -> Ran:
        """kubectl as a step's visible command (``heredoc``: its standard input, shown
        as a here-document); ``check``: a failure is the lab's, not a result."""
        text = "kubectl " + shlex.join(args)
        if heredoc is not None:
            text += " <<EOF\n" + heredoc.rstrip("\n") + "\nEOF"
        self.p.command(text)
        ran = self._run(kubectl_argv(self.state, list(args)), input=heredoc)
        if ran.out.strip():
            self.p.result(ran.out)
        if check and ran.rc != 0:
            raise DemoError(f"kubectl {shlex.join(args)} exited with status {ran.rc}")
        return ran

    def in_client(self, *command: str) -> Ran:
        """A command in the client pod, through ``kubectl exec`` (its status is a result)."""
        return self.show("exec", "-n", NS, CLIENT_POD, "--", *command, check=False)

    def client_argv(self, command: Sequence[str]) -> list[str]:
        return hostns.exec_argv(f"{self.state.lab_id}-{labtopology.CLIENT}", command)

    def on_client(self, *command: str) -> Ran:
        """A command on the outside client (``kube-proxy-py lab shell client -- …``)."""
        self.p.command(shlex.join(command), where="client")
        ran = self._run(self.client_argv(command), timeout=30)
        if ran.out.strip():
            self.p.result(ran.out)
        return ran

    def api(self, path: str, **query: str) -> Any:
        """GET from the API server behind the scenes (no kubectl process: fast polls)."""
        if query:
            path += "?" + urllib.parse.urlencode(query)
        status, body = labclients.api_client(self.state).call("GET", path, timeout=5.0)
        if status != 200:
            raise DemoError(f"GET {path}: HTTP {status}")
        return json.loads(body)

    def api_patch(self, path: str, patch: Mapping[str, Any]) -> None:
        """A merge patch behind the scenes (undoing a step's change)."""
        status, body = labclients.api_client(self.state).call(
            "PATCH", path, json.dumps(patch).encode(),
            content_type="application/merge-patch+json", timeout=5.0,
        )  # fmt: skip
        if status != 200:
            raise DemoError(f"PATCH {path}: HTTP {status}: {body[:200]!r}")

    def service(self, name: str) -> dict[str, Any]:
        return self.api(f"/api/v1/namespaces/{NS}/services/{name}")  # type: ignore[no-any-return]

    def service_ip(self, name: str) -> str:
        return str(self.service(name)["spec"]["clusterIP"])

    def endpoints(self, service: str) -> dict[str, str]:
        """Ready endpoint IP -> pod name, from the EndpointSlices."""
        out = self.api(
            f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
            labelSelector=f"kubernetes.io/service-name={service}",
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
        out = self.api(f"/api/v1/namespaces/{NS}/pods", labelSelector=label)
        return [p for p in out["items"] if not p["metadata"].get("deletionTimestamp")]

    def announcers(self, service: str) -> set[str]:
        """Nodes MetalLB's events say announced ``service`` (ever, not only now)."""
        out = self.api(
            f"/api/v1/namespaces/{NS}/events",
            fieldSelector=f"involvedObject.name={service},reason=nodeAssigned",
        )
        return {m for e in out["items"] for m in re.findall(r'node "([^"]+)"', e["message"])}

    def mac(self, node: str) -> str:
        """The MAC address of a node's LAN interface."""
        if node not in self._macs:
            found = neighbours.link_mac(f"{self.state.lab_id}-{node}", "eth0")
            if found is None:
                raise DemoError(f"node {node} has no eth0 (is the lab up?)")
            self._macs[node] = found
        return self._macs[node]

    def neighbour(self, ip: str) -> str | None:
        """The MAC the outside client's ARP table has for ``ip``."""
        return neighbours.neighbour_mac(f"{self.state.lab_id}-{labtopology.CLIENT}", ip)

    @property
    def client_node(self) -> str:
        """The node the client pod runs on."""
        if not self._client_node:
            pod = self.api(f"/api/v1/namespaces/{NS}/pods/{CLIENT_POD}")
            self._client_node = str(pod["spec"]["nodeName"])
        return self._client_node

    def peek(self, netns: str, ip: str, port: int, timeout: float = 2.0) -> tuple[str, str] | None:
        """One GET on a new connection from a named namespace, behind the scenes: the
        answering pod and the client address it saw, or None."""
        try:
            _, body = labclients.http_get(netns, ip, port, "/", timeout=timeout)
        except (OSError, http.client.HTTPException):
            return None
        found = ANSWER.match(body.strip())
        return (found[1], found[2]) if found else None

    def refused(self, netns: str, ip: str, port: int) -> bool:
        """Whether a connection from a named namespace is refused, behind the scenes
        (IPv6: the refusal has been seen to come with the SYN retransmitted after 1 s)."""
        try:
            connect_in_netns(netns, ip, port, timeout=3.0).close()
        except OSError as exc:
            return exc.errno == errno.ECONNREFUSED
        return False

    def dropped_outside(self, ip: str, port: int) -> bool:
        """Whether a connection from the outside client to ``ip:port`` gets no answer at
        all (dropped), behind the scenes."""
        ns = f"{self.state.lab_id}-{labtopology.CLIENT}"
        try:
            connect_in_netns(ns, ip, port, timeout=0.5).close()
        except OSError as exc:  # a timeout, not a refusal or an unreachable network
            return exc.errno in (None, errno.ETIMEDOUT) and "timed out" in str(exc)
        return False

    def wait_served(self, ip: str, port: int, want: set[str], n: int = 20) -> None:
        """Until ``n`` new connections from the client pod's node reach exactly the pods
        in ``want``: its agent has programmed the change the client pod's traffic meets
        next (node and pod traffic go through the same service rules)."""
        ns = self.node_ns(self.client_node)
        wait_for(
            lambda: (
                {(a or ("", ""))[0] for a in (self.peek(ns, ip, port) for _ in range(n))} == want
            ),
            60,
            what=f"connections to {ip}:{port} to reach {sorted(want)}",
        )

    def wait_outside(self, ip: str, port: int, ok: Callable[[tuple[str, str]], bool]) -> None:
        """Until a GET from the outside client gets an answer ``ok`` accepts."""
        ns = f"{self.state.lab_id}-{labtopology.CLIENT}"
        wait_for(
            lambda: (a := self.peek(ns, ip, port, timeout=0.5)) is not None and ok(a),
            30,
            what=f"an answer from {ip}:{port} on the client",
        )

    def node_ns(self, node: str) -> str:
        return f"{self.state.lab_id}-{node}"

    def affinity_programmed(self, node: str, service: str) -> bool:
        """Whether ``node``'s rules hold a session affinity lookup for ``service`` (an
        nftables affinity set, an iptables ``recent --rcheck`` match)."""
        in_node = ["ip", "netns", "exec", self.node_ns(node)]
        if self.state.mode == "iptables":
            argv = ["iptables-save" if self.family == 4 else "ip6tables-save", "-t", "nat"]
            want = ("--rcheck", f"{NS}/{service}")
        else:
            argv = ["nft", "list", "table", self.nft_family, "kube-proxy"]
            want = ("set affinity-", f"{NS}/{service}/")
        out = subprocess.run([*in_node, *argv], capture_output=True, text=True,
                             check=False).stdout  # fmt: skip
        return any(all(w in ln for w in want) for ln in out.splitlines())

    def rules(self, node: str, patterns: Sequence[str]) -> str:
        """Rules on ``node`` mentioning any of ``patterns``; in nftables mode also the
        service chains those lines jump to (their DNAT rules name no service)."""
        in_node = ["ip", "netns", "exec", self.node_ns(node)]
        if self.state.mode == "iptables":
            argv = ["iptables-save" if self.family == 4 else "ip6tables-save"]
        else:
            argv = ["nft", "list", "table", self.nft_family, "kube-proxy"]
        out = subprocess.run([*in_node, *argv], capture_output=True, text=True,
                             check=False).stdout  # fmt: skip
        lines = [ln.strip() for ln in out.splitlines() if any(p in ln for p in patterns)][:10]
        if self.state.mode == "nftables":
            chains = sorted({m for ln in lines for m in re.findall(r"goto (service-\S+)", ln)})
            for chain in chains[:2]:
                listing = subprocess.run(
                    [*in_node, "nft", "list", "chain", self.nft_family, "kube-proxy",
                     chain.rstrip(",")],
                    capture_output=True, text=True, check=False,
                ).stdout  # fmt: skip
                lines += [
                    ln.strip()
                    for ln in listing.splitlines()
                    if ln.strip() and not ln.strip().startswith(("table", "}"))
                ]
        return "\n".join(dict.fromkeys(lines)) or "(none)"

    @property
    def nft_family(self) -> str:
        """The nftables family of the primary IP family's table (``ip`` or ``ip6``)."""
        return "ip" if self.family == 4 else "ip6"

    def explain(self, source: str, target: str, *flags: str) -> LabExplained:
        """``kube-proxy-py lab explain SOURCE TARGET FLAGS --verify`` as a step's visible
        command, with its output (the kernel's trace cut to the rules of ours that
        decided)."""
        self.p.command(shlex.join(explain_argv(source, target, *flags)))
        done = explain_shown(self.state, source, target, *flags)
        self.p.result(done.short_text())
        return done

    def check(self, what: str, fn: Callable[[], bool]) -> None:
        self.p.run_checked(what, fn)

    # -- the tour -------------------------------------------------------------------------
    def introduce(self) -> None:
        """The cluster the tour runs on: real kubelets, kube-proxy-py as DaemonSet pods."""
        self.p.explain(
            "commands appear as you would type them on any cluster: here `kubectl …` runs "
            "as `kube-proxy-py lab kubectl -- …`, and `client$ …` on the lab's outside "
            f"client ({self.client_ip}) as `kube-proxy-py lab shell client -- …`"
        )
        self.show("get", "nodes", "-o", "wide")
        self.show("get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-proxy-py", "-o", "wide")
        daemonset = self.api("/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy-py")
        image = daemonset["spec"]["template"]["spec"]["containers"][0]["image"]
        self.p.explain(
            "every node runs a real kubelet and containerd; kube-proxy-py runs on each as a "
            f"pod of the daemonset.yaml DaemonSet, from the image {image} built from the "
            "Dockerfile, on the node's network (hostNetwork) so its rules apply to the node"
        )

    def prepare(self) -> None:
        """A fresh namespace ``demo`` and the client pod the steps exec into."""
        ns_path = f"/api/v1/namespaces/{NS}"
        api = labclients.api_client(self.state)
        if api.call("GET", ns_path, timeout=5.0)[0] == 200:
            # A previous run's: its pods get 1s to stop (the client's sleep ignores
            # SIGTERM and would hold the namespace for its 30s grace period).
            api.call("DELETE", ns_path, timeout=5.0)
            api.call("DELETE", f"{ns_path}/pods?gracePeriodSeconds=1", timeout=5.0)
            wait_for(lambda: api.call("GET", ns_path, timeout=5.0)[0] == 404, 180,
                     interval=0.5, what=f"the previous run's namespace {NS} to go")  # fmt: skip
        self.show("create", "namespace", NS)
        self.show("run", CLIENT_POD, "-n", NS, "--image=curlimages/curl", "--restart=Never",
                  "--", "sleep", "infinity")  # fmt: skip
        self.p.explain(
            "the client pod: curl and a shell, to reach Services the way pods do, by name"
        )

    def run(self) -> None:
        steps = (
            self.step_deployment_and_service,
            self.step_pod_replaced,
            self.step_ping,
            self.step_node_port,
            self.step_load_balancer,
            self.step_affinity,
            self.step_local_policy,
            self.step_no_endpoints,
            self.step_selectorless,
            self.step_dns,
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
        self.show("apply", "-f", "-", heredoc=yaml_text(deployment))
        self.show("expose", "deployment", "my-nginx", "-n", NS, "--port=80")
        wait_for(lambda: len(self.endpoints("my-nginx")) == 2, 90, what="two ready endpoints")
        self.show("get", "pods,services,endpointslices", "-n", NS, "-o", "wide")
        cip = self.service_ip("my-nginx")
        p.explain(f"the Service got ClusterIP {cip}; its endpoints are the two pod IPs")
        pods = {pod["metadata"]["name"] for pod in self.pods("run=my-nginx")}
        wait_for(lambda: self.get_pod_ip(CLIENT_POD), 60, what="the client pod")
        self.wait_served(cip, 80, pods)
        ran = self.in_client("sh", "-c", curl_loop("http://my-nginx/", 20))
        counts = ran.counts()
        p.rules(f"the rules kube-proxy-py wrote on {self.node_names[0]} for demo/my-nginx",
                self.rules(self.node_names[0], ["demo/my-nginx", "my-nginx/tcp"]))  # fmt: skip
        p.explain(
            "my-nginx is a DNS name (CoreDNS answers my-nginx.demo.svc.cluster.local with "
            "the ClusterIP); kube-proxy-py DNATs each new connection to the ClusterIP to one "
            "endpoint, chosen at random"
        )
        self.check("20 connections by name spread over both pods",
                   lambda: set(counts) == pods and sum(counts.values()) == 20)  # fmt: skip

    def get_pod_ip(self, name: str) -> str | None:
        pod = self.api(f"/api/v1/namespaces/{NS}/pods/{name}")
        ip = (pod.get("status") or {}).get("podIP")
        running = (pod.get("status") or {}).get("phase") == "Running"
        return str(ip) if ip and running else None

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
        self.show("get", "pods,endpointslices", "-n", NS, "-o", "wide")
        cip_after = self.service_ip("my-nginx")
        p.explain(
            f"endpoints {', '.join(sorted(before))} became {', '.join(sorted(after))}: the "
            "Deployment replaced the pod with a new IP, the controller updated the "
            f"EndpointSlice and kube-proxy-py its rules, while the ClusterIP ({cip_after}) "
            "and the name my-nginx stay"
        )
        self.wait_served(cip, 80, set(after.values()))
        ran = self.in_client("sh", "-c", curl_loop("http://my-nginx/", 20))
        counts = ran.counts()
        self.check("same ClusterIP, new endpoints, traffic to the new pod",
                   lambda: cip == cip_after and before != after
                   and set(counts) == set(after.values()))  # fmt: skip

    def step_ping(self) -> None:
        p = self.p
        p.step("ping the Service: it fails, while TCP to it works")
        cip = self.service_ip("my-nginx")
        ping = self.in_client("ping", "-c", "1", "-W", "1", "my-nginx")
        web = self.in_client("curl", "-s", "http://my-nginx/")
        pods = {pod["metadata"]["name"] for pod in self.pods("run=my-nginx")}
        why = self.explain(f"{NS}/client", f"{NS}/my-nginx", "--proto", "icmp")
        nft = self.state.mode == "nftables"
        p.explain("the name resolves to the ClusterIP, but a ClusterIP is on no interface: it "
                  "exists only as IP:port/protocol matches in DNAT rules, and ICMP has no "
                  "port. "
                  + ("In iptables mode nothing matches, so the ping is routed away and lost."
                     if not nft else
                     "nftables mode rejects it with 'port unreachable' (busybox's ping "
                     "shows only the loss)."))  # fmt: skip
        self.check(
            "the name resolves to the ClusterIP; ping fails, HTTP works; explain says why, "
            "and the kernel agrees",
            lambda: (
                ping.rc != 0
                and f"PING my-nginx ({cip})" in ping.out
                and " 0 packets received" in ping.out
                and why.why is not None
                and why.why.verdict.value == ("reject" if nft else "not-a-service")
                and why.agrees
                and web.rc == 0
                and len(a := web.answers()) == 1
                and a[0][0] in pods
            ),
        )

    def step_node_port(self) -> None:
        p = self.p
        p.step("a NodePort, from the outside client, through any node")
        self.show("patch", "service", "my-nginx", "-n", NS, "-p", '{"spec":{"type":"NodePort"}}')
        self.show("get", "service", "my-nginx", "-n", NS)
        port = int(self.service("my-nginx")["spec"]["ports"][0]["nodePort"])
        results: dict[str, Ran] = {}
        for node in self.node_names:
            self.wait_outside(self.node_ips[node], port, lambda a: True)
            results[node] = self.on_client(
                "curl", "-s", "--max-time", "2", url(self.node_ips[node], port)
            )
        last = self.node_names[-1]
        why = self.explain("client", f"{last}:{port}")
        p.explain(
            f"every node ({', '.join(f'{n} {self.node_ips[n]}' for n in self.node_names)}) "
            "accepts the nodePort and forwards to any endpoint; with externalTrafficPolicy "
            "Cluster it masquerades, so pods see an address of the node (its LAN IP, or its "
            "cni0 bridge address when the pod runs on that node), not the client"
        )
        self.check("each node forwards the NodePort; explain says it is masqueraded, and the "
                   "kernel agrees",
                   lambda: all(len(a := r.answers()) == 1 and a[0][1] in self.node_addresses[n]
                               for n, r in results.items())
                   and why.why is not None and why.why.masquerade and why.agrees)  # fmt: skip

    def step_load_balancer(self) -> None:
        p = self.p
        p.step("a LoadBalancer Service: MetalLB gives it an address on the LAN")
        watch = self.show_watch(
            ("get", "service", "my-nginx", "-n", NS, "--watch"),
            lambda: self.show("patch", "service", "my-nginx", "-n", NS, "-p", LB_PATCH),
            lambda line: bool(re.search(rf"LoadBalancer\s+\S+\s+{ADDRESS}\s", line)),
        )
        ingress = wait_for(
            lambda: (self.service("my-nginx").get("status") or {}).get("loadBalancer", {})
            .get("ingress"), 30, what="MetalLB's address")  # fmt: skip
        lb = str(ingress[0]["ip"])
        pending = next((i for i, ln in enumerate(watch) if "<pending>" in ln), None)
        assigned = next((i for i, ln in enumerate(watch) if re.search(rf"\s{re.escape(lb)}\s",
                                                                      ln + " ")), None)  # fmt: skip
        routes = self.on_client("ip", *(["-6"] if self.family == 6 else []), "route")
        wait_for(lambda: self.announcers("my-nginx"), 30, what="MetalLB's announcement")
        self.wait_outside(lb, 80, lambda a: True)
        web = self.on_client("curl", "-s", "--max-time", "2", url(lb))
        self.on_client("ip", "neigh")
        self.show("events", "-n", NS, "--for", "service/my-nginx")
        mac = self.neighbour(lb)
        # every node (a --compare lab's node-upstream runs MetalLB's speaker too)
        by_mac = {self.mac(n): n for n in self.node_ips}
        node = by_mac.get(mac or "")
        p.rules(f"the rules on {self.node_names[0]} for {lb}",
                self.rules(self.node_names[0], [lb]))  # fmt: skip
        p.explain(
            f"MetalLB's controller took {lb} from its pool "
            f"({metallb.POOL_RANGES[self.family]}) and wrote it into the Service's status; "
            "kube-proxy-py DNATs it like the ClusterIP. The client has no route for it: "
            f"{lb} is on its own LAN, so it asked by "
            f"{'ARP' if self.family == 4 else 'neighbour solicitation'}, and "
            f"MetalLB's speaker on {node or '(no node)'} answered with that node's MAC (the "
            f"same as {self.node_ips.get(node or '', '?')}'s above)"
        )
        self.check(
            "<pending>, then an address from the pool that the client reaches through the "
            "node announcing it",
            lambda: pending is not None and assigned is not None and pending < assigned
            and _in_pool(lb)
            and not routed(routes.out, lb)
            and len(web.answers()) == 1
            and node is not None and node in self.announcers("my-nginx"),
        )  # fmt: skip

    def show_watch(
        self, args: Sequence[str], then: Callable[[], object], done: Callable[[str], bool],
        timeout: float = 30,
    ) -> list[str]:  # fmt: skip
        """``kubectl ARGS &`` (a watch), then ``then()``, showing the watch's lines until
        ``done(line)``; then ``kill %1``. The lines the watch printed."""
        self.p.command("kubectl " + shlex.join(args) + " &")
        proc = subprocess.Popen(kubectl_argv(self.state, list(args)),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        seen: list[str] = []

        def take(stop: Callable[[str], bool]) -> None:
            while True:
                try:
                    line = lines.get(timeout=timeout)
                except queue.Empty:
                    raise DemoError(f"kubectl {shlex.join(args)}: no line in {timeout}s") from None
                if line is None:
                    raise DemoError(f"kubectl {shlex.join(args)} ended: {seen[-3:]}")
                seen.append(line)
                self.p.result(line)
                if stop(line):
                    return

        try:
            take(lambda line: not line.startswith("NAME "))  # the header and the object
            then()
            take(done)
        finally:
            proc.terminate()
            proc.wait(10)
        self.p.command("kill %1")
        return seen

    def step_affinity(self) -> None:
        p = self.p
        p.step("session affinity pins a client to one pod")
        cip = self.service_ip("my-nginx")
        self.show("patch", "service", "my-nginx", "-n", NS, "-p",
                  '{"spec":{"sessionAffinity":"ClientIP"}}')  # fmt: skip
        ns = self.node_ns(self.client_node)
        # the rules first: eight connections that happen to land on one pod before the
        # agent has synced would pass the check below by chance (1 in 128 per try)
        wait_for(lambda: self.affinity_programmed(self.client_node, "my-nginx"), 30,
                 what="affinity in the rules")  # fmt: skip
        wait_for(lambda: len({(a or ("", ""))[0] for a in
                              (self.peek(ns, cip, 80) for _ in range(8))} - {""}) == 1,
                 30, what="affinity in effect")  # fmt: skip
        ran = self.in_client("sh", "-c", curl_loop("http://my-nginx/", 10))
        counts = ran.counts()
        p.explain(
            "with sessionAffinity ClientIP, kube-proxy-py remembers which pod each client "
            "IP got (for timeoutSeconds, default 3 hours) and sends it there again"
        )
        self.api_patch(f"/api/v1/namespaces/{NS}/services/my-nginx",
                       {"spec": {"sessionAffinity": "None"}})  # fmt: skip
        self.check("10 new connections, all to the same pod",
                   lambda: list(counts.values()) == [10])  # fmt: skip

    def step_local_policy(self) -> None:
        p = self.p
        p.step("externalTrafficPolicy Local: only a node with a pod announces; the pod sees "
               "the client")  # fmt: skip
        lb = str(self.service("my-nginx")["status"]["loadBalancer"]["ingress"][0]["ip"])
        self.show("patch", "service", "my-nginx", "-n", NS, "-p",
                  '{"spec":{"externalTrafficPolicy":"Local"}}')  # fmt: skip
        self.show("scale", "deployment", "my-nginx", "-n", NS, "--replicas=1")
        wait_for(lambda: len(self.endpoints("my-nginx")) == 1
                 and len(self.pods("run=my-nginx")) == 1, 60,
                 what="one endpoint left")  # fmt: skip
        pod = self.pods("run=my-nginx")[0]
        name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
        self.show("get", "pods", "-n", NS, "-l", "run=my-nginx", "-o", "wide")
        # until the announcement has moved to the pod's node (if it had to)
        self.wait_outside(lb, 80, lambda a: a == (name, self.client_ip)
                          and self.neighbour(lb) == self.mac(node))  # fmt: skip
        web = self.on_client("curl", "-s", "--max-time", "2", url(lb))
        self.on_client("ip", "neigh", "show", lb)
        self.show("events", "-n", NS, "--for", "service/my-nginx")
        mac = self.neighbour(lb)
        # the NodePort on a node without the pod: what announcing from it would have done
        other = next(n for n in self.node_names if n != node)
        port = int(self.service("my-nginx")["spec"]["ports"][0]["nodePort"])
        wait_for(lambda: self.dropped_outside(self.node_ips[other], port), 30,
                 what=f"externalTrafficPolicy Local on {other}")  # fmt: skip
        why = self.explain("client", f"{other}:{port}")
        p.explain(
            f"with Local, a node sends external traffic only to its own pods, so MetalLB "
            f"announces {lb} only from a node with a ready local endpoint: {node} "
            f"({self.mac(node)}), where {name} runs. No masquerade is needed, and the pod "
            f"sees the real client {self.client_ip}. {other} has no local pod: the "
            "nodePort there drops what comes from outside (pods and the node itself still "
            "reach every endpoint)"
        )
        self.check(
            f"{node}, the pod's node, announces {lb}, and the pod saw the client's own IP; "
            f"on {other} explain says DROP, and the kernel agrees",
            lambda: web.answers() == [(name, self.client_ip)] and mac == self.mac(node)
            and why.why is not None and why.why.verdict.value == "drop" and why.agrees,
        )  # fmt: skip
        self.api_patch(f"/api/v1/namespaces/{NS}/services/my-nginx",
                       {"spec": {"externalTrafficPolicy": "Cluster"}})  # fmt: skip
        self.api_patch(f"/apis/apps/v1/namespaces/{NS}/deployments/my-nginx",
                       {"spec": {"replicas": 2}})  # fmt: skip

    def step_no_endpoints(self) -> None:
        p = self.p
        p.step("a Service with no endpoints refuses connections")
        self.show("create", "service", "clusterip", "nothing-here", "-n", NS, "--tcp=80:80")
        cip = self.service_ip("nothing-here")
        self.show("get", "endpointslices", "-n", NS, "-l",
                  "kubernetes.io/service-name=nothing-here")  # fmt: skip
        wait_for(lambda: self.refused(self.node_ns(self.client_node), cip, 80), 30,
                 what="a reject rule")  # fmt: skip
        ran = self.in_client("curl", "-sS", "http://nothing-here/")
        p.rules(f"rules on {self.node_names[0]} for demo/nothing-here",
                self.rules(self.node_names[0], ["demo/nothing-here"]))  # fmt: skip
        p.explain(
            "no pod matches the selector, so kube-proxy-py rejects the connection at once "
            "('connection refused', curl's exit status 7) instead of letting the client "
            "wait for a timeout"
        )
        refused = ran.rc == 7 and "Failed to connect to nothing-here" in ran.out
        self.check("connection refused", lambda: refused)

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
            "addressType": f"IPv{ipaddress.ip_address(target_ip).version}",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [target_ip]}],
        }  # fmt: skip
        manifest = yaml_text(service) + "---\n" + yaml_text(endpoint_slice)
        self.show("apply", "-f", "-", heredoc=manifest)
        cip = self.service_ip("legacy-db")
        self.wait_served(cip, 8080, {target}, n=1)
        ran = self.in_client("curl", "-s", "http://legacy-db:8080/")
        p.explain(
            "without a selector no controller writes endpoints: you do, pointing the "
            f"Service at any address (a database VM, another cluster; here {target_ip}, the "
            f"IP of {target})"
        )
        self.check("the hand-written endpoint answers",
                   lambda: [a[0] for a in ran.answers()] == [target])  # fmt: skip

    def step_dns(self) -> None:
        p = self.p
        p.step("DNS: an ExternalName is a CNAME, a headless Service names the pods")
        self.show("create", "service", "externalname", "db", "-n", NS,
                  f"--external-name={EXTERNAL_NAME}")  # fmt: skip
        self.show("expose", "deployment", "my-nginx", "-n", NS, "--name=my-nginx-headless",
                  "--cluster-ip=None")  # fmt: skip
        self.show("get", "services", "-n", NS, "db", "my-nginx-headless")
        wait_for(lambda: len(self.endpoints("my-nginx-headless")) == 2, 60,
                 what="two ready endpoints of my-nginx-headless")  # fmt: skip
        pod_ips = set(self.endpoints("my-nginx-headless"))
        lookups = (
            f"nslookup db.{NS}.svc.cluster.local\n"
            f"nslookup my-nginx-headless.{NS}.svc.cluster.local\n"
        )
        ran = self.show("run", "dns", "-n", NS, "--image=busybox", "--rm", "-i", "-q",
                        "--restart=Never", "--", "sh", heredoc=lookups, check=False)  # fmt: skip
        found = self.rules(self.node_names[0], ["demo/db", "demo/my-nginx-headless"])
        p.rules(f"rules on {self.node_names[0]} for demo/db and demo/my-nginx-headless", found)
        p.explain(
            f"neither has a ClusterIP: CoreDNS answers db.{NS}.svc.cluster.local with a "
            f"CNAME to {EXTERNAL_NAME}, which the network's own DNS resolves (here the lab's "
            f"outside resolver, {self.resolver_ip}), and the headless name with the ready "
            "pods' IPs; clients connect to those directly, so kube-proxy-py writes no rule"
        )
        cname = f"db.{NS}.svc.cluster.local\tcanonical name = {EXTERNAL_NAME}"
        headless = set(
            re.findall(r"Name:\s+my-nginx-headless\S*\nAddress: (\S+)", ran.out)
        )  # fmt: skip
        self.check(
            "a CNAME to the external name and its address; the pod IPs; no rules",
            lambda: (
                cname in ran.out
                and f"Name:\t{EXTERNAL_NAME}\nAddress: {self.resolver_ip}" in ran.out
                and headless == pod_ips
                and found == "(none)"
            ),
        )


def main(state_dir: Path, *, color: bool | None, pause: bool, ip_family: str | None = None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    out = Presenter(color=sys.stdout.isatty() if color is None else color, pause=pause)
    state = running_or_started(state_dir, ip_family=ip_family)
    if state is None:
        return 1
    versions = labtopology.versions_of(state.ip_family)
    out.title(
        f"kube-proxy-py lab demo ({state.mode} mode, "
        f"{labtopology.family_name(versions)}, lab {state.lab_id})"
    )
    demo = LabDemo(state, out)
    demo.introduce()
    demo.prepare()
    demo.run()
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
