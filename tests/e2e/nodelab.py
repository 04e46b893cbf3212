"""A handle on a lab of real nodes, for the e2e tests that drive the agent through it.

``NodeLab.up`` runs ``python -m proxy lab up`` (kubelet + containerd nodes, kube-proxy-py
as the pods of ``daemonset.yaml``; with ``--compare`` upstream kube-proxy as its own
DaemonSet on ``node-upstream``) and the handle then offers what those tests do to it:
the API (a TLS client with the lab's admin certificate, and kubectl), Pods of the test
workload pinned to nodes, readiness switched through a readiness gate (the kubelet itself
turns the gate into the Ready condition), probes from any node, pod or outside client,
the agents' configuration changed the way an operator changes it (ConfigMap or
DaemonSet, then a rolling restart), and the agents' processes found in their pods'
cgroups.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import yaml

from proxy.apiclient.client import ApiError
from proxy.harness import Prober
from proxy.host import links
from proxy.host import netns as hostns
from proxy.host.process import SOURCE_ROOT, proc_cmdline, run_command
from proxy.lab import cgroups, images
from proxy.lab import clients as labclients
from proxy.lab import state as labstate
from proxy.lab.build import BIN_ENV
from proxy.lab.cluster import wait_for
from proxy.lab.commands.kubectl import kubectl_argv
from proxy.lab.commands.shell import shell_target

JSON = dict[str, Any]
READY_GATE = "kube-proxy-py.test/ready"
"""The readiness gate of the test workload's Pods: Ready only while it is True."""
PROXY = ("kube-system", "kube-proxy-py")
UPSTREAM = ("kube-system", "kube-proxy")
UP_TIMEOUT = 900.0
IP_FAMILY_ENV = "KPP_DIFF_IP_FAMILY"
"""``ipv4``, ``ipv6`` or ``dual`` (the default, what CI runs): the ``--ip-family`` of the
nodes package's lab and the families the differential tests probe (``ipv6``: an IPv6-only
run of test_differential.py alone)."""


def ip_family() -> str:
    """The package lab's IP family: ``dual`` (what CI runs: every test of the package
    passes on it, the differential tests compare both families) unless
    ``KPP_DIFF_IP_FAMILY`` says ``ipv4`` or ``ipv6`` (an IPv6-only run is for
    test_differential.py alone: the add-on tests and the walkthroughs speak IPv4)."""
    return os.environ.get(IP_FAMILY_ENV, "dual")


def workload_pod(
    name: str, node: str, *, serve: bool = True, labels: Mapping[str, str] | None = None
) -> JSON:
    """A Pod of the test workload on ``node`` (``spec.nodeName``: no scheduler involved).

    Serving pods answer TCP and UDP on port 80 with ``<pod name> <peer>`` and stay in
    their ``preStop`` hook for 30 s when deleted (long enough to be seen terminating);
    their Ready condition also needs the :data:`READY_GATE` condition. Other pods only
    sleep (a network namespace to probe from)."""
    spec: JSON = {"nodeName": node, "terminationGracePeriodSeconds": 45}
    if serve:
        container: JSON = {
            "name": "web",
            "image": images.WORKLOAD_REF,
            "args": ["--name", "$(POD_NAME)", "--tcp", "80", "--udp", "80"],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
            ],
            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "30"]}}},
        }
        spec["readinessGates"] = [{"conditionType": READY_GATE}]
    else:
        container = {"name": "sleep", "image": "busybox", "command": ["sleep", "86400"]}
    spec["containers"] = [container]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": dict(labels or {})},
        "spec": spec,
    }


@dataclass
class NodeLab:
    state_dir: Path
    env: dict[str, str]
    state: labstate.LabState
    extra_clients: dict[str, str] = field(default_factory=dict)
    deployed_config: str = ""
    """kube-proxy-py's ``config.conf`` as ``lab up`` deployed it (see :meth:`restore_agents`)."""
    _probers: dict[str, Prober] = field(default_factory=dict)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def up(cls, k8s_bin: Path, state_dir: Path, *args: str) -> NodeLab:
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", labstate.STATE_ENV)}
        env[BIN_ENV] = str(k8s_bin)
        env["PYTHONPATH"] = str(SOURCE_ROOT)
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "lab", "up", "--state-dir", str(state_dir), *args],
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            cls._down(env, state_dir)
            raise AssertionError(f"lab up failed:\n{done.stdout}{done.stderr}")
        state = labstate.load_state(state_dir)
        assert state is not None
        lab = cls(state_dir, env, state)
        lab.deployed_config = lab.get("configmap", PROXY[1], PROXY[0])["data"]["config.conf"]
        return lab

    @staticmethod
    def _down(env: dict[str, str], state_dir: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "proxy", "lab", "down", "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )

    def down(self) -> None:
        for prober in self._probers.values():
            prober.close()
        self._probers.clear()
        for ns in self.extra_clients.values():
            if hostns.exists(ns):
                hostns.empty([ns])
                hostns.delete([ns])
        self._down(self.env, self.state_dir)

    def reload(self) -> None:
        state = labstate.load_state(self.state_dir)
        assert state is not None
        self.state = state

    @property
    def lab_id(self) -> str:
        return self.state.lab_id

    # -- the API ---------------------------------------------------------------------------
    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        ok: Sequence[int] = (200, 201),
    ) -> Any:
        return labclients.api_client(self.state).request(
            method, path, body, content_type=content_type, timeout=30, ok=tuple(ok)
        )

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            kubectl_argv(self.state, list(args)),
            input=input,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def apply(self, *objects: Mapping[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))

    def get(self, kind: str, name: str, namespace: str = "default") -> JSON:
        paths = {
            "pod": f"/api/v1/namespaces/{namespace}/pods/{name}",
            "service": f"/api/v1/namespaces/{namespace}/services/{name}",
            "daemonset": f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}",
            "configmap": f"/api/v1/namespaces/{namespace}/configmaps/{name}",
        }
        result: JSON = self.api("GET", paths[kind])
        return result

    def service_ip(self, name: str, namespace: str = "default") -> str:
        return str(self.get("service", name, namespace)["spec"]["clusterIP"])

    def node_port(self, name: str, index: int = 0, namespace: str = "default") -> int:
        return int(self.get("service", name, namespace)["spec"]["ports"][index]["nodePort"])

    # -- pods ------------------------------------------------------------------------------
    def create_pods(self, pods: Sequence[JSON], *, ready: bool = True) -> None:
        """Create Pods and wait until each runs (and, for serving ones, is Ready when
        ``ready``: their readiness gate set True)."""
        for pod in pods:
            self.api("POST", f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods", pod)
        for pod in pods:
            name = pod["metadata"]["name"]
            gated = bool(pod["spec"].get("readinessGates"))

            def running(name: str = name) -> bool:
                status = self.get("pod", name).get("status") or {}
                return status.get("phase") == "Running" and bool(status.get("podIP"))

            wait_for(running, 120, what=f"pod {name} Running")
            if gated and ready:
                self.set_ready(name, True)

    def pod_ip(self, name: str, namespace: str = "default") -> str:
        return str(self.get("pod", name, namespace)["status"]["podIP"])

    def is_ready(self, name: str, namespace: str = "default") -> bool:
        conditions = (self.get("pod", name, namespace).get("status") or {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def set_ready(
        self, name: str, ready: bool, namespace: str = "default", *, wait: bool = True
    ) -> None:
        """Set the Pod's readiness gate and (``wait``) wait until the kubelet reflects it
        in the Pod's Ready condition (what the EndpointSlice controller reads)."""
        condition = {"type": READY_GATE, "status": "True" if ready else "False"}
        self.api(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            {"status": {"conditions": [condition]}},
            content_type="application/strategic-merge-patch+json",
        )
        if not wait:
            return
        wait_for(
            lambda: self.is_ready(name, namespace) == ready,
            60,
            what=f"pod {name} Ready={ready}",
        )

    def delete_pod(self, name: str, *, force: bool = False, namespace: str = "default") -> None:
        query = "?gracePeriodSeconds=0" if force else ""
        self.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}{query}", ok=(200, 202, 404))

    def wait_pod_gone(self, name: str, namespace: str = "default", timeout: float = 120) -> None:
        def gone() -> bool:
            try:
                self.get("pod", name, namespace)
            except ApiError as exc:
                return exc.status == 404
            return False

        wait_for(gone, timeout, what=f"pod {name} gone")

    # -- namespaces, commands and probes ---------------------------------------------------
    def ns(self, target: str) -> str:
        """The network namespace of a node, ``client``, an extra client, or a Pod
        (``name`` or ``namespace/name``; a ``/proc/PID/ns/net`` path)."""
        if target in self.extra_clients:
            return self.extra_clients[target]
        return shell_target(self.state, target)

    def run(
        self, target: str, argv: Sequence[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run_command(hostns.exec_argv(self.ns(target), argv), check=check)

    def prober(self, target: str) -> Prober:
        ns = self.ns(target)
        prober = self._probers.get(ns)
        if prober is None:
            prober = self._probers[ns] = Prober(ns)
        return prober

    def flush_conntrack(self, node: str) -> None:
        self.run(node, ["conntrack", "-F"])

    def rules(self, node: str) -> str:
        """Both backends' rules on a node, without counters or comments of the dump, nor
        the elements of the traffic counting sets (a deleted Service's destination stays
        counted there until it expires: a counter, not a rule)."""
        ipt = self.run(node, ["iptables-save"]).stdout
        nft = self.run(node, ["nft", "-s", "list", "ruleset"]).stdout
        lines = [line.split(" [")[0] if line.startswith(":") else line for line in ipt.splitlines()]
        return (
            "\n".join(line for line in lines if not line.startswith("#"))
            + "\n"
            + (re.sub(r"(?ms)^\tset traffic-\S+ \{.*?^\t\}\n", "", nft))
        )

    def add_client(self, name: str, *lan_ips: str) -> str:
        """Another outside client on the lab LAN (its own namespace, a veth into the LAN
        bridge) with ``lan_ips`` (one per IP family: the LAN is a /24 in IPv4, a /64 in
        IPv6) and a route to every node's pod CIDR of those families; removed by
        :meth:`down` (and by ``lab down``: it is ``<lab id>-<name>``)."""
        ns = f"{self.lab_id}-{name}"
        lan = f"{self.lab_id}-lan"
        hostns.create([ns])
        self.extra_clients[name] = ns
        cidrs = [f"{ip}/{24 if ip_address(ip).version == 4 else 64}" for ip in lan_ips]
        links.ip_batch(ns, links.lan_port_commands(name, lan, *cidrs))
        links.join_bridge(lan, [name])
        versions = {ip_address(ip).version for ip in lan_ips}
        for node in self.state.nodes:
            for pod_cidr, node_ip in zip(node.pod_cidrs, node.lan_ips, strict=True):
                if ip_address(node_ip).version in versions:
                    self.route(name, pod_cidr, node_ip)
        return ns

    def route(self, target: str, prefix: str, via: str) -> None:
        self.run(target, ["ip", "route", "replace", prefix, "via", via])

    def node_http(self, node: str, url: str, timeout: float = 5.0) -> tuple[int, str]:
        parts = urllib.parse.urlsplit(url)
        return labclients.http_get(
            self.ns(node), parts.hostname or "", parts.port or 80, parts.path or "/", timeout
        )

    def metrics(self, node: str) -> str:
        return self.node_http(node, "http://127.0.0.1:10249/metrics")[1]

    # -- the agents ------------------------------------------------------------------------
    def agent_pod(self, node: str, app: tuple[str, str] = PROXY) -> JSON:
        namespace, name = app
        pods = self.api(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods?labelSelector=k8s-app%3D{name}"
            f"&fieldSelector=spec.nodeName%3D{node}",
        )["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(live) == 1, f"{name} pods on {node}: {[p['metadata']['name'] for p in pods]}"
        pod: JSON = live[0]
        return pod

    def agent_log(self, node: str, app: tuple[str, str] = PROXY, *, previous: bool = False) -> str:
        pod = self.agent_pod(node, app)
        args = ["logs", "-n", app[0], pod["metadata"]["name"]]
        return self.kubectl(*args, *(["--previous"] if previous else []), check=False)

    def agent_pid(self, node: str, app: tuple[str, str] = PROXY) -> int:
        """The agent process of the DaemonSet pod on ``node`` (found in the pod's cgroup)."""
        pod = self.agent_pod(node, app)
        node_root = cgroups.node_path(self.lab_id, node)
        binary = "kube-proxy-py" if app == PROXY else "kube-proxy"
        for pid in sorted(cgroups.pods_pids(node_root, pod["metadata"]["uid"])):
            words = proc_cmdline(pid).split()
            # kube-proxy-py: python3 /usr/local/bin/kube-proxy-py run …; upstream: the binary
            if any(Path(w).name == binary for w in words[:2]):
                return pid
        raise AssertionError(f"no {binary} process in pod {pod['metadata']['name']} on {node}")

    def signal_agent(self, node: str, sig: signal.Signals, app: tuple[str, str] = PROXY) -> None:
        os.kill(self.agent_pid(node, app), sig)

    def agent_config(self) -> JSON:
        """kube-proxy-py's KubeProxyConfiguration (the ConfigMap's ``config.conf``)."""
        cm = self.get("configmap", PROXY[1], PROXY[0])
        config: JSON = yaml.safe_load(cm["data"]["config.conf"])
        return config

    def configure_agents(self, mode: str, min_sync_period: str) -> None:
        """Change kube-proxy-py's ConfigMap (``mode``, both modes' ``minSyncPeriod``) and
        restart its DaemonSet, as an operator would; return once every pod is Ready on
        the new configuration. If the ConfigMap has that configuration already, the
        agents run it (every change went through here): no restart, only the wait."""
        current = self.agent_config()
        config = copy.deepcopy(current)
        config["mode"] = mode
        for section in ("iptables", "nftables"):
            config.setdefault(section, {})["minSyncPeriod"] = min_sync_period
        if config == current:
            self.kubectl("rollout", "status", "-n", PROXY[0], f"ds/{PROXY[1]}", "--timeout=180s")
            return
        self.api(
            "PATCH",
            f"/api/v1/namespaces/{PROXY[0]}/configmaps/{PROXY[1]}",
            {"data": {"config.conf": yaml.safe_dump(config, sort_keys=False)}},
            content_type="application/merge-patch+json",
        )
        self.restart_daemonset(PROXY)

    def restore_agents(self) -> None:
        """kube-proxy-py's ConfigMap back to what ``lab up`` deployed, and (if it had been
        changed) a rolling restart: the agents as a fresh lab of this mode runs them."""
        current = self.get("configmap", PROXY[1], PROXY[0])["data"]["config.conf"]
        if current == self.deployed_config:
            return
        self.api(
            "PATCH",
            f"/api/v1/namespaces/{PROXY[0]}/configmaps/{PROXY[1]}",
            {"data": {"config.conf": self.deployed_config}},
            content_type="application/merge-patch+json",
        )
        self.restart_daemonset(PROXY)

    def configure_upstream(self, mode: str, *flags: str) -> None:
        """Upstream kube-proxy's DaemonSet with ``--proxy-mode=mode`` and ``flags``."""
        ds = self.get("daemonset", UPSTREAM[1], UPSTREAM[0])
        container = ds["spec"]["template"]["spec"]["containers"][0]
        names = {f.split("=", 1)[0] for f in flags} | {"--proxy-mode"}
        command = [c for c in container["command"] if c.split("=", 1)[0] not in names]
        command += [f"--proxy-mode={mode}", *flags]
        patch = {"spec": {"template": {"spec": {"containers": [
            {"name": container["name"], "command": command}]}}}}  # fmt: skip
        self.api(
            "PATCH",
            f"/apis/apps/v1/namespaces/{UPSTREAM[0]}/daemonsets/{UPSTREAM[1]}",
            patch,
            content_type="application/strategic-merge-patch+json",
        )
        self.kubectl("rollout", "status", "-n", UPSTREAM[0], f"ds/{UPSTREAM[1]}", "--timeout=180s")

    def restart_daemonset(self, app: tuple[str, str] = PROXY) -> None:
        namespace, name = app
        self.kubectl("rollout", "restart", "-n", namespace, f"ds/{name}")
        self.kubectl("rollout", "status", "-n", namespace, f"ds/{name}", "--timeout=180s")
