"""A cluster made of network namespaces: the lab's and the e2e tests' shared machinery.

A :class:`LabCluster` is a network of namespaces (nodes, pods, an outside client on a LAN:
a :class:`proxy.host.network.Network`, or the harness's Topology when pods serve and
probes are sent) plus a real control plane running inside a "control-plane" namespace on
the same LAN, Node objects registered for the node namespaces, kube-proxy-py's RBAC taken from
``daemonset.yaml``, and agents (``kube-proxy-py run``) started inside node namespaces with
a ServiceAccount token bound only to that RBAC. Nothing is linked to the root namespace;
the API server is reached over the lab LAN only.

Pods in the API are bound to the network's pods: ``create_pod`` creates a Pod with
``spec.nodeName`` and writes its status (Running, Ready, podIP) the way a kubelet would,
using the network pod's IP, so the real EndpointSlice controller publishes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from proxy.host.network import Network
from proxy.host.spec import ClientSpec, TopologySpec, default_spec
from proxy.lab.controlplane.controllermanager import DEFAULT_CONTROLLERS
from proxy.lab.controlplane.controlplane import ControlPlane
from proxy.lab.topology import NODE_CIDR_MASK_SIZES, addresses, service_cidrs

log = logging.getLogger(__name__)

CONTROL_PLANE = "control-plane"
CONTROL_PLANE_IP = "192.168.50.2"
CLUSTER_CIDR = "10.244.0.0/16"
"""The IPv4 pod network; an IPv6 lab's is its twin, ``fd00:10:244::/48``."""
MANIFEST = Path(__file__).resolve().parents[2] / "daemonset.yaml"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
SERVICE_ACCOUNT = ("kube-system", "kube-proxy-py")
UPSTREAM_SERVICE_ACCOUNT = ("kube-system", "kube-proxy-upstream")
UPSTREAM_CLUSTER_ROLE = "system:node-proxier"
"""The bootstrap ClusterRole upstream kube-proxy runs with (the API server creates it)."""
NODE_CAPACITY = {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"}

N = TypeVar("N", bound=Network, covariant=True)


def lab_spec(base: TopologySpec | None = None) -> TopologySpec:
    """``base`` (default: :func:`~proxy.host.spec.default_spec`) plus the control-plane
    namespace (an address of each of ``base``'s families): the spec of a
    :class:`LabCluster`'s network."""
    spec = base or default_spec()
    ips = addresses(CONTROL_PLANE_IP, spec.versions)
    control_plane = ClientSpec(
        CONTROL_PLANE, ips[0], lan_ip_secondary=ips[1] if len(ips) > 1 else None
    )
    return dataclasses.replace(spec, clients=(*spec.clients, control_plane))


def cluster_cidrs(versions: tuple[int, ...]) -> tuple[str, ...]:
    """The pod network of each family (``--cluster-cidr``), primary first."""
    return addresses(CLUSTER_CIDR, versions)


def controller_manager_network_args(versions: tuple[int, ...]) -> list[str]:
    """kube-controller-manager's view of the pod network, as kind gives it: the cluster
    CIDR of each family and the node CIDR size per family. The lab is its own node IPAM
    (node-N's podCIDRs are the ones its CNI config was written with), so no
    ``--allocate-node-cidrs``."""
    return [
        f"--cluster-cidr={','.join(cluster_cidrs(versions))}",
        *(f"--node-cidr-mask-size-ipv{v}={NODE_CIDR_MASK_SIZES[v]}" for v in versions),
    ]


def upstream_rbac_objects() -> list[dict[str, Any]]:
    """The ServiceAccount upstream kube-proxy runs as, bound to ``system:node-proxier``."""
    ns, sa = UPSTREAM_SERVICE_ACCOUNT
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": sa},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": UPSTREAM_CLUSTER_ROLE,
            },
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
        },
    ]


def upstream_args(
    kubeconfig: Path, node: str, mode: str, versions: tuple[int, ...] = (4,)
) -> list[str]:
    """Upstream kube-proxy's flags on a namespace node (those kube-proxy-py also gets)."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node}",
        f"--proxy-mode={mode}",
        f"--cluster-cidr={','.join(cluster_cidrs(versions))}",
        # The conntrack table size is host-wide (hashsize in /sys): leave it alone.
        "--conntrack-max-per-core=0",
        "--v=2",
    ]


def wait_for(
    condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll until ``condition()`` is truthy; its value, or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


@dataclass
class Agent:
    """One ``kube-proxy-py run`` inside a node namespace."""

    node: str
    mode: str
    process: subprocess.Popen[str]
    log_path: Path
    argv: tuple[str, ...]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the agent and wait for it; its exit status."""
        if self.alive():
            with suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise
        return self.process.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class LabCluster(Generic[N]):
    def __init__(
        self,
        bin_dir: Path,
        topo: N,
        *,
        workdir: Path,
        zones: Mapping[str, str] | None = None,
        with_controllers: bool = True,
        with_scheduler: bool = False,
        real_nodes: bool = False,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """``topo``: the namespaces (not up yet), built from a :func:`lab_spec` (its
        control-plane client holds the API server): start() brings them up, stop() down.
        ``with_scheduler`` also runs kube-scheduler (Pods without ``spec.nodeName``
        then get a node); ``real_nodes``: kubelets will register the Nodes (nothing is
        registered here, every controller runs, node lifecycle included, and no RBAC is
        installed: ``daemonset.yaml`` is applied whole); ``progress`` is called with a line
        before each start-up step."""
        if CONTROL_PLANE not in {c.name for c in topo.spec.clients}:
            raise ValueError(f"the lab cluster's network has no {CONTROL_PLANE!r}: use lab_spec()")
        self.bin_dir = bin_dir
        self.with_controllers = with_controllers
        self.with_scheduler = with_scheduler
        self.real_nodes = real_nodes
        self.workdir = workdir
        self.zones = dict(zones or {})
        self.topo = topo
        self._progress = progress or (lambda line: None)
        self.cp: ControlPlane | None = None
        self.agents: dict[str, Agent] = {}
        self.agent_kubeconfig: Path | None = None
        self.upstream_kubeconfig: Path | None = None

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def spec(self) -> TopologySpec:
        """The network's spec (pods added at runtime included)."""
        return self.topo.spec

    def start(self) -> LabCluster[N]:
        try:
            self._progress(f"creating network namespaces ({self.topo.id}-*)")
            self.topo.up()
            components = ["etcd", "kube-apiserver"]
            if self.with_controllers:
                components.append("kube-controller-manager")
            if self.with_scheduler:
                components.append("kube-scheduler")
            self._progress(f"starting {', '.join(components)} in {self.topo.ns(CONTROL_PLANE)}")
            versions = self.spec.versions
            own_ips = self.spec.client(CONTROL_PLANE).lan_ips
            self.cp = ControlPlane(
                self.bin_dir,
                controllers=("*",) if self.real_nodes else DEFAULT_CONTROLLERS,
                with_controllers=self.with_controllers,
                with_scheduler=self.with_scheduler,
                service_cidr=",".join(service_cidrs(versions)),
                netns=self.topo.ns(CONTROL_PLANE),
                # The primary family's address; the other one is in the certificate too.
                bind_address=own_ips[0],
                extra_sans=own_ips[1:],
                extra_controller_manager_args=controller_manager_network_args(versions),
                workdir=self.workdir / "control-plane",
            ).start()
            if not self.real_nodes:
                self._progress("registering nodes " + ", ".join(n.name for n in self.spec.nodes))
                self._register_nodes()
                self._progress("installing kube-proxy-py's RBAC from daemonset.yaml")
                self._install_rbac()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for agent in list(self.agents.values()):
            with suppress(Exception):
                agent.stop(signal.SIGKILL, timeout=10)
        self.agents.clear()
        if self.cp is not None:
            self.cp.stop()
            self.cp = None
        self.topo.down()

    def __enter__(self) -> LabCluster[N]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def control_plane(self) -> ControlPlane:
        if self.cp is None:
            raise RuntimeError("the lab cluster is not started")
        return self.cp

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.control_plane.kubectl(*args, input=input, check=check).stdout

    def apply(self, *objects: Mapping[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in objects))

    # -- nodes and RBAC -------------------------------------------------------------------
    def _register_nodes(self) -> None:
        for node in self.spec.nodes:
            labels = {"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux"}
            if node.name in self.zones:
                labels["topology.kubernetes.io/zone"] = self.zones[node.name]
            self.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node.name, "labels": labels},
                    "spec": {"podCIDR": node.pod_cidr, "podCIDRs": list(node.pod_cidrs)},
                }
            )
            self.set_node_status(node.name)
            # The TaintNodesByCondition admission plugin gives a new Node the not-ready
            # taint; the node lifecycle controller that would lift it is off (no lease
            # renewals here), so lift it ourselves or the scheduler never picks the node.
            self.control_plane.api(
                "PATCH",
                f"/api/v1/nodes/{node.name}",
                {"spec": {"taints": None}},
                content_type="application/merge-patch+json",
            )

    def set_node_status(self, name: str) -> None:
        node = self.spec.node(name)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "status": {
                "addresses": [
                    *({"type": "InternalIP", "address": ip} for ip in node.lan_ips),
                    {"type": "Hostname", "address": node.name},
                ],
                # What the scheduler fits Pods against (a kubelet reports the machine's).
                "capacity": NODE_CAPACITY,
                "allocatable": NODE_CAPACITY,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kube-proxy-py lab node",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
            }
        }
        self.kubectl(
            "patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status)
        )

    def manifest_objects(self) -> list[dict[str, Any]]:
        return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if isinstance(d, dict)]

    def _install_rbac(self) -> None:
        self.apply(*(d for d in self.manifest_objects() if d.get("kind") in RBAC_KINDS))
        token = self.control_plane.service_account_token(
            *SERVICE_ACCOUNT, expiration_seconds=24 * 3600
        )
        self.agent_kubeconfig = self.control_plane.token_kubeconfig("kube-proxy-py", token)

    # -- agents --------------------------------------------------------------------------
    def start_agent(self, node: str, mode: str, *extra: str) -> Agent:
        """``kube-proxy-py run`` in ``node``'s namespace with the ServiceAccount's token."""
        assert self.agent_kubeconfig is not None
        argv = (
            sys.executable,
            "-m",
            "proxy",
            "run",
            f"--kubeconfig={self.agent_kubeconfig}",
            f"--hostname-override={node}",
            f"--proxy-mode={mode}",
            f"--cluster-cidr={','.join(cluster_cidrs(self.spec.versions))}",
            *extra,
        )
        return self._spawn_agent(node, mode, "agent", argv)

    def start_upstream_agent(self, node: str, mode: str, *extra: str) -> Agent:
        """Upstream ``kube-proxy`` (built by ``lab build``) in ``node``'s namespace, with a
        ServiceAccount bound to ``system:node-proxier`` and the same flags kube-proxy-py
        gets from :meth:`start_agent`; tracked in :attr:`agents` like ours."""
        if self.upstream_kubeconfig is None:
            self.apply(*upstream_rbac_objects())
            ns, sa = UPSTREAM_SERVICE_ACCOUNT
            token = self.control_plane.service_account_token(ns, sa, expiration_seconds=24 * 3600)
            self.upstream_kubeconfig = self.control_plane.token_kubeconfig(sa, token)
        argv = (
            str(self.bin_dir / "kube-proxy"),
            *upstream_args(self.upstream_kubeconfig, node, mode, self.spec.versions),
            *extra,
        )
        return self._spawn_agent(node, f"upstream-{mode}", "upstream", argv)

    def _spawn_agent(self, node: str, mode: str, kind: str, argv: tuple[str, ...]) -> Agent:
        if node in self.agents and self.agents[node].alive():
            raise RuntimeError(f"an agent already runs on {node}")
        log_path = self.workdir / f"{kind}-{node}-{len(self.agents)}-{time.monotonic_ns()}.log"
        out = log_path.open("w")
        process = self.topo.popen(node, argv, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        agent = Agent(node, mode, process, log_path, argv)
        self.agents[node] = agent
        return agent

    def stop_agent(self, node: str, sig: int = signal.SIGTERM) -> int:
        agent = self.agents.pop(node)
        return agent.stop(sig)

    def node_http(self, node: str, url: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET a URL from inside a node's namespace (the agent's health/metrics ports)."""
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen({url!r}, timeout={timeout})\n"
            "    print(r.status); sys.stdout.write(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); sys.stdout.write(e.read().decode())\n"
        )
        proc = self.topo.run(node, [sys.executable, "-c", code], timeout=timeout + 10)
        status, _, body = proc.stdout.partition("\n")
        return int(status), body

    def metrics(self, node: str) -> str:
        return self.node_http(node, "http://127.0.0.1:10249/metrics")[1]

    def syncs(self, node: str) -> int:
        """How many successful syncs the node's agent reports (0 before the first)."""
        total = 0
        for line in self.metrics(node).splitlines():
            if line.startswith("kubeproxy_sync_proxy_rules_duration_seconds_count"):
                total += int(float(line.split()[-1]))
        return total

    # -- pods ----------------------------------------------------------------------------
    def create_pod(
        self,
        name: str,
        labels: Mapping[str, str],
        *,
        ports: Sequence[tuple[str, int, str]] = (("http", 80, "TCP"), ("dns", 80, "UDP")),
        namespace: str = "default",
        ready: bool = True,
    ) -> None:
        """A Pod bound to the network's pod ``name`` (same node and IP), Running and Ready."""
        pod = self.spec.pod(name)
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
                "spec": {
                    "nodeName": pod.node,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "app",
                            "image": "kube-proxy-py/workload",
                            "ports": [
                                {"name": n, "containerPort": p, "protocol": proto}
                                for n, p, proto in ports
                            ],
                        }
                    ],
                },
            }
        )
        self.set_pod_ready(name, ready, namespace=namespace)

    def set_pod_ready(self, name: str, ready: bool, *, namespace: str = "default") -> None:
        pod = self.spec.pod(name)
        node = self.spec.node(pod.node)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        flag = "True" if ready else "False"
        status = {
            "status": {
                "phase": "Running",
                "hostIP": node.lan_ip,
                "hostIPs": [{"ip": ip} for ip in node.lan_ips],
                "podIP": pod.ip,
                "podIPs": [{"ip": ip} for ip in pod.ips],
                "startTime": now,
                "conditions": [
                    {"type": t, "status": flag, "lastTransitionTime": now}
                    for t in ("Ready", "ContainersReady")
                ]
                + [
                    {"type": t, "status": "True", "lastTransitionTime": now}
                    for t in ("Initialized", "PodScheduled")
                ],
            }
        }
        self.kubectl(
            "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps(status),
        )  # fmt: skip

    def service_ip(self, name: str, namespace: str = "default") -> str:
        return self.kubectl(
            "get", "svc", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
        ).strip()

    def node_port(self, name: str, port_index: int = 0, namespace: str = "default") -> int:
        out = self.kubectl(
            "get", "svc", name, "-n", namespace, "-o",
            f"jsonpath={{.spec.ports[{port_index}].nodePort}}",
        )  # fmt: skip
        return int(out.strip())

    def slice_addresses(self, service: str, namespace: str = "default") -> set[str]:
        """Ready endpoint addresses the EndpointSlice controller published."""
        out = self.kubectl(
            "get", "endpointslices", "-n", namespace, "-l",
            f"kubernetes.io/service-name={service}", "-o", "json",
        )  # fmt: skip
        found: set[str] = set()
        for sl in json.loads(out)["items"]:
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready", True):
                    found.update(ep.get("addresses", []))
        return found
