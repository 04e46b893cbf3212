"""Plain, validated descriptions of a test topology (no kernel access here)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

#: Names of nodes, pods and clients become part of namespace and interface names.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
#: Name reserved for the LAN namespace (the bridge standing in for the upstream router).
LAN = "lan"


def _check_name(kind: str, name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} must be 1-32 characters of [a-z0-9-], "
            "starting and ending with a letter or digit"
        )
    if name == LAN:
        raise ValueError(f"{kind} name {name!r} is reserved for the LAN namespace")


def _ipv4(kind: str, value: str) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{kind} {value!r} is not an IP address") from exc
    if not isinstance(address, ipaddress.IPv4Address):
        raise ValueError(f"{kind} {value!r}: the topology is IPv4 only")
    return address


def _ipv4_net(kind: str, value: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.ip_network(value)
    except ValueError as exc:
        raise ValueError(f"{kind} {value!r} is not a CIDR with its host bits zero") from exc
    if not isinstance(network, ipaddress.IPv4Network):
        raise ValueError(f"{kind} {value!r}: the topology is IPv4 only")
    return network


def _ports(kind: str, ports: tuple[int, ...]) -> tuple[int, ...]:
    result = tuple(int(p) for p in ports)
    for port in result:
        if not 1 <= port <= 65535:
            raise ValueError(f"{kind} port {port} is outside 1-65535")
    if len(set(result)) != len(result):
        raise ValueError(f"{kind} ports {result} contain duplicates")
    return result


@dataclass(frozen=True)
class NodeSpec:
    """A node: a namespace on the LAN that routes for its pods."""

    name: str
    lan_ip: str
    pod_cidr: str

    def __post_init__(self) -> None:
        _check_name("node", self.name)
        _ipv4(f"node {self.name} lan_ip", self.lan_ip)
        _ipv4_net(f"node {self.name} pod_cidr", self.pod_cidr)


@dataclass(frozen=True)
class PodSpec:
    """A pod on a node, with the ports its workload server listens on."""

    name: str
    node: str
    ip: str
    tcp_ports: tuple[int, ...] = (80,)
    udp_ports: tuple[int, ...] = (80,)
    http_ports: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_name("pod", self.name)
        _ipv4(f"pod {self.name} ip", self.ip)
        object.__setattr__(self, "tcp_ports", _ports(f"pod {self.name} tcp", self.tcp_ports))
        object.__setattr__(self, "udp_ports", _ports(f"pod {self.name} udp", self.udp_ports))
        object.__setattr__(self, "http_ports", _ports(f"pod {self.name} http", self.http_ports))
        clash = set(self.tcp_ports) & set(self.http_ports)
        if clash:
            raise ValueError(f"pod {self.name}: ports {sorted(clash)} are both tcp and http")

    @property
    def has_servers(self) -> bool:
        """Whether the pod runs a workload server (a pod with no ports is a pure client)."""
        return bool(self.tcp_ports or self.udp_ports or self.http_ports)


@dataclass(frozen=True)
class ClientSpec:
    """A machine outside the cluster on the LAN.

    ``routes_to_pods`` gives it a route to every node's pod CIDR via that node (a flat,
    routed pod network), so that pods can reach it and it can answer them. It never
    has a default route.
    """

    name: str
    lan_ip: str
    routes_to_pods: bool = True

    def __post_init__(self) -> None:
        _check_name("client", self.name)
        _ipv4(f"client {self.name} lan_ip", self.lan_ip)


@dataclass(frozen=True)
class TopologySpec:
    """Nodes, pods and outside clients joined by one LAN."""

    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...]
    clients: tuple[ClientSpec, ...]
    lan_cidr: str = "192.168.50.0/24"
    router_ip: str = "192.168.50.1"
    icmp_rate_limit: bool = False
    """Keep the kernel's ICMP error rate limits (by default they are switched off in
    every namespace: with them a burst of more than ~6 REJECTs seen by one client in
    a second turns the next ones into silence)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "pods", tuple(self.pods))
        object.__setattr__(self, "clients", tuple(self.clients))
        self._validate()

    def _validate(self) -> None:
        names = [n.name for n in self.nodes] + [p.name for p in self.pods]
        names += [c.name for c in self.clients]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"names must be unique across nodes, pods and clients: {duplicates}")
        if not self.nodes:
            raise ValueError("a topology needs at least one node")

        lan = _ipv4_net("lan_cidr", self.lan_cidr)
        lan_ips = {"router": _ipv4("router_ip", self.router_ip)}
        hosts: tuple[NodeSpec | ClientSpec, ...] = (*self.nodes, *self.clients)
        for host in hosts:
            lan_ips[host.name] = ipaddress.IPv4Address(host.lan_ip)
        for owner, address in lan_ips.items():
            if address not in lan or address in (lan.network_address, lan.broadcast_address):
                raise ValueError(f"{owner} LAN address {address} is not a host of {lan}")
        if len(set(lan_ips.values())) != len(lan_ips):
            raise ValueError(f"LAN addresses must be distinct: {lan_ips}")

        cidrs = {n.name: ipaddress.IPv4Network(n.pod_cidr) for n in self.nodes}
        for name, cidr in cidrs.items():
            if cidr.overlaps(lan):
                raise ValueError(f"node {name} pod_cidr {cidr} overlaps the LAN {lan}")
            for other, other_cidr in cidrs.items():
                if other < name and cidr.overlaps(other_cidr):
                    raise ValueError(f"pod CIDRs of {other} and {name} overlap")

        pod_ips: dict[ipaddress.IPv4Address, str] = {}
        for pod in self.pods:
            if pod.node not in cidrs:
                raise ValueError(f"pod {pod.name} is on unknown node {pod.node!r}")
            ip = ipaddress.IPv4Address(pod.ip)
            if ip not in cidrs[pod.node]:
                raise ValueError(
                    f"pod {pod.name} ip {ip} is outside {pod.node}'s pod CIDR {cidrs[pod.node]}"
                )
            if ip in pod_ips:
                raise ValueError(f"pods {pod_ips[ip]} and {pod.name} share the ip {ip}")
            pod_ips[ip] = pod.name

    @property
    def lan_prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.lan_cidr).prefixlen

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node named {name!r}")

    def pod(self, name: str) -> PodSpec:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise KeyError(f"no pod named {name!r}")

    def client(self, name: str) -> ClientSpec:
        for client in self.clients:
            if client.name == name:
                return client
        raise KeyError(f"no client named {name!r}")

    def with_pod(self, pod: PodSpec) -> TopologySpec:
        """A copy with one more pod (validated)."""
        return dataclasses.replace(self, pods=(*self.pods, pod))

    def without_pod(self, name: str) -> TopologySpec:
        """A copy without the named pod."""
        self.pod(name)
        return dataclasses.replace(self, pods=tuple(p for p in self.pods if p.name != name))


def default_spec() -> TopologySpec:
    """Two nodes with two serving pods each (plus a port-less client pod on node-a) and
    one outside client."""
    return TopologySpec(
        nodes=(
            NodeSpec("node-a", "192.168.50.11", "10.244.1.0/24"),
            NodeSpec("node-b", "192.168.50.12", "10.244.2.0/24"),
        ),
        pods=(
            PodSpec("a1", "node-a", "10.244.1.11"),
            PodSpec("a2", "node-a", "10.244.1.12"),
            PodSpec("a3", "node-a", "10.244.1.13", tcp_ports=(), udp_ports=()),
            PodSpec("b1", "node-b", "10.244.2.11"),
            PodSpec("b2", "node-b", "10.244.2.12"),
        ),
        clients=(ClientSpec("outside", "192.168.50.100"),),
    )
