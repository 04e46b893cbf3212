"""Builds a test topology of network namespaces, and tears it down by id.

Layout (every box is a namespace named ``<id>-<name>``; nothing is linked to the root
namespace, and no interface ever exists there):

    <id>-lan: bridge br0 with router_ip, ip_forward=0 (the upstream router: answers
              for itself, silently drops everything else)
       |  veth per node/client: eth0 on the node/client side, a bridge port in lan
    <id>-<node>: eth0 lan_ip, default via router_ip, other nodes' pod CIDRs via them,
                 ip_forward=1, rp_filter=0, send_redirects=0
       |  veth per pod (Calico style): node side has no address, proxy_arp=1,
       |  proxy_delay=0 and a /32 route to the pod
    <id>-<pod>: eth0 ip/32, default via 169.254.1.1 dev eth0 onlink src ip, a
                workload server on the pod's ports
    <id>-<client>: eth0 lan_ip, routes to the pod CIDRs via their nodes, no default

ICMP error rate limits are off in every namespace unless spec.icmp_rate_limit: with
them, a client that sees more than ~6 REJECTs from one node within a second gets
silence instead, which makes probe outcomes depend on timing.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from proxy.harness import netns
from proxy.harness.errors import HarnessError
from proxy.harness.probe import Prober
from proxy.harness.process import ManagedProcess, child_env, python_argv, stop_all
from proxy.harness.spec import (
    LAN,
    ClientSpec,
    NodeSpec,
    PodSpec,
    TopologySpec,
    default_spec,
)
from proxy.harness.workload import READY_PREFIX

__all__ = [
    "LAN",
    "ClientSpec",
    "NodeSpec",
    "PodSpec",
    "Topology",
    "TopologySpec",
    "default_spec",
]

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
POD_GATEWAY = "169.254.1.1"
BRIDGE = "br0"
SERVER_READY_TIMEOUT = 60.0

_FileArg = int | IO[str] | None


def new_id() -> str:
    """A fresh topology id: ``kpp-`` and 6 random hex digits."""
    return f"kpp-{secrets.token_hex(3)}"


def _ifname(prefix: str, name: str) -> str:
    """An interface name (at most 15 characters) derived from a node/pod/client name."""
    candidate = f"{prefix}{name}"
    if len(candidate) <= 15:
        return candidate
    return prefix + hashlib.sha1(name.encode()).hexdigest()[: 15 - len(prefix)]


def veth_name(pod: str) -> str:
    """The node-side interface of a pod's veth pair."""
    return _ifname("veth-", pod)


def lan_port_name(host: str) -> str:
    """The bridge-side interface (in the lan namespace) of a node's or client's veth."""
    return _ifname("p-", host)


class Topology:
    """Nodes, pods and outside clients as network namespaces.

    Use as a context manager (``with Topology(spec) as topo:``), or call up() and
    down(). Everything is removed by down(): on leaving the ``with`` block whatever
    happened, and from an ``atexit`` hook if the program exits without calling it.
    Not thread-safe.
    """

    def __init__(self, spec: TopologySpec | None = None, *, id: str | None = None) -> None:
        topology_id = id if id is not None else new_id()
        if not ID_RE.fullmatch(topology_id):
            raise ValueError(f"topology id {topology_id!r} must match {ID_RE.pattern}")
        self._id = topology_id
        self._spec = spec if spec is not None else default_spec()
        self._created: list[str] = []
        self._servers: dict[str, ManagedProcess] = {}
        self._popens: list[subprocess.Popen[str]] = []
        self._probers: dict[str, Prober] = {}
        self._pids: list[int] = []
        self._logs: Path | None = None
        self._is_up = False

    # -- description ----------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def spec(self) -> TopologySpec:
        """The current spec (pods added or removed at runtime included)."""
        return self._spec

    @property
    def is_up(self) -> bool:
        return self._is_up

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces this topology created and has not deleted yet."""
        return tuple(self._created)

    @property
    def started_pids(self) -> tuple[int, ...]:
        """Every process this topology started (servers, probe workers, popen)."""
        return tuple(self._pids)

    def ns(self, name: str) -> str:
        """The namespace of a node, pod or client, or of the LAN (``"lan"``)."""
        if name != LAN and name not in self._names():
            raise KeyError(f"topology {self._id} has no node, pod or client named {name!r}")
        return f"{self._id}-{name}"

    def node(self, name: str) -> NodeSpec:
        return self._spec.node(name)

    def pod(self, name: str) -> PodSpec:
        return self._spec.pod(name)

    def client(self, name: str) -> ClientSpec:
        return self._spec.client(name)

    def _names(self) -> set[str]:
        spec = self._spec
        names = {n.name for n in spec.nodes} | {p.name for p in spec.pods}
        return names | {c.name for c in spec.clients}

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> Topology:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Topology:
        """Build every namespace, link and route, and start the pods' servers."""
        if self._is_up:
            raise HarnessError(f"topology {self._id} is already up")
        if os.geteuid() != 0:
            raise HarnessError("building network namespaces needs root")
        self._is_up = True
        _LIVE[self._id] = self
        self._logs = Path(tempfile.mkdtemp(prefix=f"{self._id}-"))
        try:
            self._build()
        except BaseException as exc:
            try:
                self.down()
            except HarnessError as cleanup:
                exc.add_note(f"cleanup after the failure also failed: {cleanup}")
            raise
        return self

    def down(self) -> None:
        """Stop every process started here, kill anything left in our namespaces and
        delete them. Idempotent; raises HarnessError if something could not be removed."""
        problems: list[str] = []
        for name, prober in list(self._probers.items()):
            try:
                prober.close()
            except Exception as exc:
                problems.append(f"closing prober {name}: {exc}")
        self._probers.clear()
        try:
            stop_all([s.popen for s in self._servers.values()] + list(self._popens))
        except Exception as exc:  # what is left is killed by namespace below
            problems.append(f"stopping processes: {exc}")
        self._servers.clear()
        self._popens.clear()
        survivors = netns.empty(self._created)
        if survivors:
            problems.append(f"processes that survived SIGKILL: {survivors}")
        remaining = netns.delete(self._created)
        if remaining:
            problems.append(f"namespaces that could not be deleted: {remaining}")
        self._created = remaining
        if self._logs is not None:
            shutil.rmtree(self._logs, ignore_errors=True)
            self._logs = None
        self._is_up = False
        if not remaining:
            _LIVE.pop(self._id, None)
        if problems:
            raise HarnessError(f"topology {self._id} teardown: " + "; ".join(problems))

    # -- building -------------------------------------------------------------------

    def _create(self, names: Sequence[str]) -> None:
        namespaces = [self.ns(n) for n in names]
        netns.create(namespaces)
        self._created.extend(namespaces)

    def _build(self) -> None:
        spec = self._spec
        hosts: list[NodeSpec | ClientSpec] = [*spec.nodes, *spec.clients]
        self._create([LAN, *(h.name for h in hosts), *(p.name for p in spec.pods)])
        lan = self.ns(LAN)
        plen = spec.lan_prefixlen

        settings = {ns: self._base_sysctls() for ns in self._created}
        settings[lan]["net.ipv4.ip_forward"] = 0
        for node in spec.nodes:
            settings[self.ns(node.name)].update(_NODE_SYSCTLS)
        netns.sysctls(settings)
        netns.ip_batch(
            lan,
            [
                "link set lo up",
                f"link add {BRIDGE} type bridge",
                f"addr add {spec.router_ip}/{plen} dev {BRIDGE}",
                f"link set {BRIDGE} up",
            ],
        )
        for host in hosts:
            commands = [
                f"link add eth0 type veth peer name {lan_port_name(host.name)} netns {lan}",
                f"addr add {host.lan_ip}/{plen} dev eth0",
                "link set eth0 up",
                "link set lo up",
            ]
            if isinstance(host, NodeSpec):
                commands.append(f"route add default via {spec.router_ip}")
            if isinstance(host, NodeSpec) or host.routes_to_pods:
                commands += [
                    f"route add {other.pod_cidr} via {other.lan_ip}"
                    for other in spec.nodes
                    if other.name != host.name
                ]
            netns.ip_batch(self.ns(host.name), commands)
        ports = [lan_port_name(h.name) for h in hosts]
        netns.ip_batch(lan, [f"link set {p} master {BRIDGE}" for p in ports])
        netns.ip_batch(lan, [f"link set {p} up" for p in ports])

        for pod in spec.pods:
            self._wire_pod(pod)
        node_sysctls: dict[str, dict[str, str | int]] = {}
        for node in spec.nodes:
            pods = [p for p in spec.pods if p.node == node.name]
            netns.ip_batch(self.ns(node.name), _node_side_commands(pods))
            node_sysctls[self.ns(node.name)] = _node_iface_sysctls(pods, with_eth0=True)
        netns.sysctls(node_sysctls)

        self._start_servers([p for p in spec.pods if p.has_servers])

    def _wire_pod(self, pod: PodSpec) -> None:
        """The pod's namespace side of its veth pair (the node side is configured by
        _node_side_commands)."""
        netns.ip_batch(
            self.ns(pod.name),
            [
                f"link add eth0 type veth peer name {veth_name(pod.name)} "
                f"netns {self.ns(pod.node)}",
                f"addr add {pod.ip}/32 dev eth0",
                "link set eth0 up",
                "link set lo up",
                # src: scapy takes its source address (also for ARP) from the route.
                f"route add default via {POD_GATEWAY} dev eth0 onlink src {pod.ip}",
            ],
        )

    # -- pods at runtime ------------------------------------------------------------

    def add_pod(self, pod: PodSpec) -> None:
        """Create a pod (namespace, veth, routes) and start its servers."""
        self._require_up()
        new_spec = self._spec.with_pod(pod)  # validates before touching anything
        self._spec = new_spec
        try:
            self._create([pod.name])
            self._wire_pod(pod)
            node = self.ns(pod.node)
            netns.ip_batch(node, _node_side_commands([pod]))
            netns.sysctls(
                {
                    node: _node_iface_sysctls([pod], with_eth0=False),
                    self.ns(pod.name): self._base_sysctls(),
                }
            )
            if pod.has_servers:
                self._start_servers([pod])
        except BaseException:
            self._discard_pod(pod)
            raise

    def remove_pod(self, name: str) -> None:
        """Stop the pod's servers and probe worker and delete its namespace."""
        self._require_up()
        self._discard_pod(self.pod(name))

    def _discard_pod(self, pod: PodSpec) -> None:
        prober = self._probers.pop(pod.name, None)
        if prober is not None:
            prober.close()
        server = self._servers.pop(pod.name, None)
        if server is not None:
            server.stop()
        namespace = f"{self._id}-{pod.name}"
        if namespace in self._created:
            netns.empty([namespace])
            # Deleting the node end removes the pair now; namespace teardown is lazy.
            netns.run_command(
                ["ip", "-n", self.ns(pod.node), "link", "del", veth_name(pod.name)],
                check=False,
            )
            remaining = netns.delete([namespace])
            if remaining:
                raise HarnessError(f"could not delete namespace {namespace}")
            self._created.remove(namespace)
        if pod in self._spec.pods:
            self._spec = self._spec.without_pod(pod.name)

    def set_pod_servers(self, name: str, running: bool) -> None:
        """Stop (dead endpoint) or restart a pod's workload server; idempotent."""
        self._require_up()
        pod = self.pod(name)
        server = self._servers.get(name)
        if running and (server is None or not server.running()):
            if pod.has_servers:
                self._start_servers([pod])
        elif not running and server is not None:
            del self._servers[name]
            server.stop()

    def _start_servers(self, pods: Sequence[PodSpec]) -> None:
        started: list[tuple[PodSpec, ManagedProcess]] = []
        for pod in pods:
            args = ["--name", pod.name]
            for flag, ports in (
                ("--tcp", pod.tcp_ports),
                ("--udp", pod.udp_ports),
                ("--http", pod.http_ports),
            ):
                for port in ports:
                    args += [flag, str(port)]
            argv = netns.exec_argv(self.ns(pod.name), python_argv("proxy.harness.workload", *args))
            process = ManagedProcess.start(
                argv,
                label=f"workload of pod {pod.name}",
                log=self._log(f"workload-{pod.name}"),
                stdout=subprocess.PIPE,
            )
            self._pids.append(process.pid)
            self._servers[pod.name] = process
            started.append((pod, process))
        for _, process in started:
            process.wait_ready(READY_PREFIX, SERVER_READY_TIMEOUT)

    # -- commands in namespaces -----------------------------------------------------

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = netns.DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a namespace and wait for it (text output captured)."""
        return netns.run_command(
            netns.exec_argv(self.ns(name), argv), check=check, input=input, timeout=timeout
        )

    def popen(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdin: _FileArg = subprocess.DEVNULL,
        stdout: _FileArg = None,
        stderr: _FileArg = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[str]:
        """Start a command inside a namespace (text mode); stopped by down()."""
        self._require_up()
        process = subprocess.Popen(
            netns.exec_argv(self.ns(name), argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else child_env(),
            cwd=cwd,
            text=True,
            start_new_session=True,
        )
        self._pids.append(process.pid)
        self._popens.append(process)
        return process

    def prober(self, name: str) -> Prober:
        """The (cached) probe worker of a namespace; closed by down() or remove_pod()."""
        self._require_up()
        prober = self._probers.get(name)
        if prober is None:
            prober = Prober(self.ns(name), log=self._log(f"probe-{name}"))
            self._pids.append(prober.pid)
            self._probers[name] = prober
        return prober

    def add_route(self, name: str, prefix: str, via: str) -> None:
        """Add (or replace) a route in a namespace, e.g. a client's route to service IPs."""
        self._require_up()
        netns.ip_batch(self.ns(name), [f"route replace {prefix} via {via}"])

    def del_route(self, name: str, prefix: str) -> None:
        self._require_up()
        netns.ip_batch(self.ns(name), [f"route del {prefix}"])

    def flush_conntrack(self, name: str) -> None:
        """Empty the conntrack table of one namespace (never any other)."""
        self.run(name, ["conntrack", "-F"])

    # -- helpers --------------------------------------------------------------------

    def _base_sysctls(self) -> dict[str, str | int]:
        """Settings for every namespace."""
        if self._spec.icmp_rate_limit:
            return {}
        settings: dict[str, str | int] = {"net.ipv4.icmp_ratemask": 0}
        if _HAS_IPV6:
            settings["net.ipv6.icmp.ratelimit"] = 0
        return settings

    def _require_up(self) -> None:
        if not self._is_up:
            raise HarnessError(f"topology {self._id} is not up")

    def _log(self, stem: str) -> Path | None:
        return None if self._logs is None else self._logs / f"{stem}.log"


_HAS_IPV6 = Path("/proc/sys/net/ipv6").is_dir()
_NODE_SYSCTLS: dict[str, str | int] = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.default.send_redirects": 0,
}


def _node_side_commands(pods: Sequence[PodSpec]) -> list[str]:
    commands = [f"link set {veth_name(p.name)} up" for p in pods]
    commands += [f"route add {p.ip}/32 dev {veth_name(p.name)}" for p in pods]
    return commands


def _node_iface_sysctls(pods: Sequence[PodSpec], *, with_eth0: bool) -> dict[str, str | int]:
    settings: dict[str, str | int] = {}
    if with_eth0:
        settings["net.ipv4.conf.eth0.rp_filter"] = 0
        settings["net.ipv4.conf.eth0.send_redirects"] = 0
    for pod in pods:
        settings[f"net.ipv4.conf.{veth_name(pod.name)}.proxy_arp"] = 1
        settings[f"net.ipv4.conf.{veth_name(pod.name)}.rp_filter"] = 0
        # Answer proxy ARP at once, not after up to 0.8 s (Calico does the same).
        settings[f"net.ipv4.neigh.{veth_name(pod.name)}.proxy_delay"] = 0
    return settings


#: Topologies that are up, so the atexit hook can tear them down.
_LIVE: dict[str, Topology] = {}


@atexit.register
def _down_all() -> None:
    for topology in list(_LIVE.values()):
        try:
            topology.down()
        except Exception as exc:
            print(f"kube-proxy-py harness: {exc}", file=sys.stderr)
