"""A network of namespaces built from a TopologySpec, and torn down by id.

Layout (every box is a namespace named ``<id>-<name>``; nothing is linked to the root
namespace, and no interface ever exists there). A topology is IPv4, IPv6 or dual-stack
(:mod:`proxy.host.spec`); every address, route and setting below exists once per family
of the topology (IPv6 addresses with ``nodad``, so they are usable at once):

    <id>-lan: bridge br0 with the router_ips, forwarding off (the upstream router:
              answers for itself, silently drops everything else; IPv6 needs a
              blackhole default route for that)
       |  veth per node/client: eth0 on the node/client side, a bridge port in lan
    <id>-<node>: eth0 lan_ips, default routes via the router_ips, other nodes' pod
                 CIDRs via them, forwarding on (IPv4: rp_filter=0, send_redirects=0)
       |  veth per pod (Calico style): node side has no address but IPv6's fe80::1,
       |  IPv4 proxy_arp=1 and proxy_delay=0, and a /32 or /128 route to the pod
    <id>-<pod>: eth0 ips as /32 and /128, default via 169.254.1.1 (IPv4) and via
                fe80::1 (IPv6) dev eth0 onlink src ip (the harness's Topology also
                starts a workload server on the pod's ports)
    <id>-<client>: eth0 lan_ips, routes to the pod CIDRs via their nodes, no default

ICMP and ICMPv6 error rate limits are off in every namespace unless
spec.icmp_rate_limit: with them, a client that sees more than ~6 REJECTs from one node
within a second gets silence instead, which makes probe outcomes depend on timing.
ICMPv6 redirects are ignored (IPv4 nodes send none), so a node that forwards back out of
eth0 never changes a neighbour's routes.
"""

from __future__ import annotations

import atexit
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
from typing import IO, Self

from proxy.host import links, netns
from proxy.host.errors import HostError
from proxy.host.links import veth_name
from proxy.host.process import DEFAULT_TIMEOUT, child_env, run_command, stop_all
from proxy.host.spec import (
    LAN,
    ClientSpec,
    NodeSpec,
    PodSpec,
    TopologySpec,
    default_spec,
    pick,
    version_of,
)

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
POD_GATEWAY = "169.254.1.1"
"""The pods' IPv4 gateway: link-local, answered by the node with proxy ARP."""
POD_GATEWAY6 = "fe80::1"
"""The pods' IPv6 gateway: a link-local address of the node side of every pod link."""

_FileArg = int | IO[str] | None


def new_id() -> str:
    """A fresh topology id: ``kpp-`` and 6 random hex digits."""
    return f"kpp-{secrets.token_hex(3)}"


class Network:
    """Nodes, pods and outside clients as network namespaces.

    Use as a context manager (``with Network(spec) as net:``), or call up() and down().
    Everything is removed by down(): on leaving the ``with`` block whatever happened,
    and from an ``atexit`` hook if the program exits without calling it. Not
    thread-safe. Subclasses start processes of their own in :meth:`_started` and
    :meth:`_pod_added`, and stop them in :meth:`_stop_processes` and
    :meth:`_pod_removing`.
    """

    def __init__(self, spec: TopologySpec | None = None, *, id: str | None = None) -> None:
        topology_id = id if id is not None else new_id()
        if not ID_RE.fullmatch(topology_id):
            raise ValueError(f"topology id {topology_id!r} must match {ID_RE.pattern}")
        self._id = topology_id
        self._spec = spec if spec is not None else default_spec()
        self._created: list[str] = []
        self._popens: list[subprocess.Popen[str]] = []
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
        """Every process this network started (popen, and what subclasses start)."""
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

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Self:
        """Build every namespace, link and route (then :meth:`_started`)."""
        if self._is_up:
            raise HostError(f"topology {self._id} is already up")
        if os.geteuid() != 0:
            raise HostError("building network namespaces needs root")
        self._is_up = True
        _LIVE[self._id] = self
        self._logs = Path(tempfile.mkdtemp(prefix=f"{self._id}-"))
        try:
            self._build()
            self._started()
        except BaseException as exc:
            try:
                self.down()
            except HostError as cleanup:
                exc.add_note(f"cleanup after the failure also failed: {cleanup}")
            raise
        return self

    def down(self) -> None:
        """Stop every process started here, kill anything left in our namespaces and
        delete them. Idempotent; raises HostError if something could not be removed."""
        problems = self._stop_processes()
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
            raise HostError(f"topology {self._id} teardown: " + "; ".join(problems))

    def _started(self) -> None:
        """Called when every namespace, link and route is up (nothing to do here)."""

    def _stop_processes(self, *others: subprocess.Popen[bytes]) -> list[str]:
        """Stop what :meth:`popen` started, and ``others``, together; the problems."""
        try:
            stop_all([*others, *self._popens])
        except Exception as exc:  # what is left is killed by namespace in down()
            return [f"stopping processes: {exc}"]
        finally:
            self._popens.clear()
        return []

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
        versions = spec.versions

        def on_lan(ips: tuple[str, ...]) -> list[str]:
            return [f"{ip}/{spec.lan_prefixlen_of(version_of(ip))}" for ip in ips]

        settings = {ns: self._base_sysctls() for ns in self._created}
        settings[lan]["net.ipv4.ip_forward"] = 0
        for node in spec.nodes:
            settings[self.ns(node.name)].update(_NODE_SYSCTLS)
            if 6 in versions:
                settings[self.ns(node.name)].update(_NODE_SYSCTLS6)
        netns.sysctls(settings)
        lan_commands = links.bridge_commands(*on_lan(spec.router_ips))
        if 6 in versions:
            # With forwarding off, IPv4 drops what is not for the router without a word;
            # IPv6 would first look for a route and answer "no route" (ICMPv6 1/0).
            lan_commands.append("route add blackhole ::/0")
        links.ip_batch(lan, lan_commands)
        for host in hosts:
            commands = links.lan_port_commands(host.name, lan, *on_lan(host.lan_ips))
            if isinstance(host, NodeSpec):
                commands += [
                    f"route add {_DEFAULT[version_of(ip)]} via {ip}" for ip in spec.router_ips
                ]
            if isinstance(host, NodeSpec) or host.routes_to_pods:
                commands += [
                    f"route add {pick(other.pod_cidrs, v)} via {pick(other.lan_ips, v)}"
                    for other in spec.nodes
                    if other.name != host.name
                    for v in versions
                ]
            links.ip_batch(self.ns(host.name), commands)
        links.join_bridge(lan, [h.name for h in hosts])

        for pod in spec.pods:
            self._wire_pod(pod)
        node_sysctls: dict[str, dict[str, str | int]] = {}
        for node in spec.nodes:
            pods = [p for p in spec.pods if p.node == node.name]
            links.ip_batch(self.ns(node.name), _node_side_commands(pods))
            node_sysctls[self.ns(node.name)] = _node_iface_sysctls(pods, with_eth0=True)
        netns.sysctls(node_sysctls)

    def _wire_pod(self, pod: PodSpec) -> None:
        """The pod's namespace side of its veth pair (the node side is configured by
        _node_side_commands)."""
        routes = [(ip, _POD_GATEWAYS[version_of(ip)]) for ip in pod.ips]
        links.ip_batch(
            self.ns(pod.name), links.pod_link_commands(pod.name, self.ns(pod.node), routes)
        )

    # -- pods at runtime ------------------------------------------------------------

    def add_pod(self, pod: PodSpec) -> None:
        """Create a pod (namespace, veth, routes), then :meth:`_pod_added`."""
        self._require_up()
        new_spec = self._spec.with_pod(pod)  # validates before touching anything
        self._spec = new_spec
        try:
            self._create([pod.name])
            # Before the pod's link exists: IPv6 settings apply to links made afterwards.
            netns.sysctls({self.ns(pod.name): self._base_sysctls()})
            self._wire_pod(pod)
            node = self.ns(pod.node)
            links.ip_batch(node, _node_side_commands([pod]))
            netns.sysctls({node: _node_iface_sysctls([pod], with_eth0=False)})
            self._pod_added(pod)
        except BaseException:
            self._discard_pod(pod)
            raise

    def remove_pod(self, name: str) -> None:
        """:meth:`_pod_removing`, then delete the pod's namespace."""
        self._require_up()
        self._discard_pod(self.pod(name))

    def _pod_added(self, pod: PodSpec) -> None:
        """Called when a pod added at runtime is wired (nothing to do here)."""

    def _pod_removing(self, pod: PodSpec) -> None:
        """Called before a pod's namespace is deleted (nothing to do here)."""

    def _discard_pod(self, pod: PodSpec) -> None:
        self._pod_removing(pod)
        namespace = f"{self._id}-{pod.name}"
        if namespace in self._created:
            netns.empty([namespace])
            # Deleting the node end removes the pair now; namespace teardown is lazy.
            run_command(
                ["ip", "-n", self.ns(pod.node), "link", "del", veth_name(pod.name)],
                check=False,
            )
            remaining = netns.delete([namespace])
            if remaining:
                raise HostError(f"could not delete namespace {namespace}")
            self._created.remove(namespace)
        if pod in self._spec.pods:
            self._spec = self._spec.without_pod(pod.name)

    # -- commands in namespaces -----------------------------------------------------

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a namespace and wait for it (text output captured)."""
        return run_command(
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

    def add_route(self, name: str, prefix: str, via: str) -> None:
        """Add (or replace) a route in a namespace, e.g. a client's route to service IPs."""
        self._require_up()
        links.ip_batch(self.ns(name), [f"route replace {prefix} via {via}"])

    def del_route(self, name: str, prefix: str) -> None:
        self._require_up()
        links.ip_batch(self.ns(name), [f"route del {prefix}"])

    def flush_conntrack(self, name: str) -> None:
        """Empty the conntrack table of one namespace (never any other)."""
        self.run(name, ["conntrack", "-F"])

    # -- helpers --------------------------------------------------------------------

    def _base_sysctls(self) -> dict[str, str | int]:
        """Settings for every namespace."""
        settings: dict[str, str | int] = {}
        if 6 in self._spec.versions:
            settings.update(_IPV6_SYSCTLS)
        if self._spec.icmp_rate_limit:
            return settings
        settings["net.ipv4.icmp_ratemask"] = 0
        if _HAS_IPV6:
            settings["net.ipv6.icmp.ratelimit"] = 0
        if 6 in self._spec.versions and _HAS_IPV6_RATEMASK:
            # No ICMPv6 type is limited: not even by the host-wide token bucket.
            settings["net.ipv6.icmp.ratemask"] = ""
        return settings

    def _require_up(self) -> None:
        if not self._is_up:
            raise HostError(f"topology {self._id} is not up")

    def _log(self, stem: str) -> Path | None:
        return None if self._logs is None else self._logs / f"{stem}.log"


_HAS_IPV6 = Path("/proc/sys/net/ipv6").is_dir()
_HAS_IPV6_RATEMASK = Path("/proc/sys/net/ipv6/icmp/ratemask").is_file()
_DEFAULT = {4: "default", 6: "::/0"}
_POD_GATEWAYS = {4: POD_GATEWAY, 6: POD_GATEWAY6}
_IPV6_SYSCTLS: dict[str, str | int] = {
    # Links made after this (all of ours) skip duplicate address detection, so their
    # link-local addresses are usable at once, as our nodad addresses are.
    "net.ipv6.conf.all.accept_dad": 0,
    "net.ipv6.conf.default.accept_dad": 0,
    "net.ipv6.conf.all.accept_redirects": 0,
    "net.ipv6.conf.default.accept_redirects": 0,
}
_NODE_SYSCTLS6: dict[str, str | int] = {"net.ipv6.conf.all.forwarding": 1}
_NODE_SYSCTLS: dict[str, str | int] = {
    "net.ipv4.ip_forward": 1,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.ipv4.conf.default.rp_filter": 0,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.default.send_redirects": 0,
}


def _node_side_commands(pods: Sequence[PodSpec]) -> list[str]:
    commands = [
        links.addr_add(f"{POD_GATEWAY6}/64", veth_name(p.name))
        for p in pods
        if any(version_of(ip) == 6 for ip in p.ips)
    ]
    commands += [f"link set {veth_name(p.name)} up" for p in pods]
    commands += [
        f"route add {ip}/{32 if version_of(ip) == 4 else 128} dev {veth_name(p.name)}"
        for p in pods
        for ip in p.ips
    ]
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


#: Networks that are up, so the atexit hook can tear them down.
_LIVE: dict[str, Network] = {}


@atexit.register
def _down_all() -> None:
    for network in list(_LIVE.values()):
        try:
            network.down()
        except Exception as exc:
            print(f"kube-proxy-py harness: {exc}", file=sys.stderr)
