"""Plain, validated descriptions of a test topology (no kernel access here).

A topology is IPv4, IPv6 or dual-stack. Like Kubernetes' ``podIPs``, every address field
holds the primary family's address and an optional ``*_secondary`` field the other
family's; a dual-stack topology gives every node, pod and client both. The IPv6 addresses
used by the defaults are the IPv4 ones' *twins* (:func:`v6_twin`): ``10.244.1.11`` is
``fd00:10:244:1::11``, so a learner can tell which is which.
"""

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


Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ip(kind: str, value: str) -> Address:
    try:
        address = ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{kind} {value!r} is not an IP address") from exc
    if str(address) != value:
        raise ValueError(f"{kind} {value!r}: write it in canonical form, {str(address)!r}")
    return address


def _net(kind: str, value: str) -> Network:
    try:
        network = ipaddress.ip_network(value)
    except ValueError as exc:
        raise ValueError(f"{kind} {value!r} is not a CIDR with its host bits zero") from exc
    if str(network) != value:
        raise ValueError(f"{kind} {value!r}: write it in canonical form, {str(network)!r}")
    return network


def _pair(kind: str, primary: str, secondary: str | None, net: bool = False) -> tuple[str, ...]:
    """The primary and (if given) secondary value, checked to be of different families."""
    check = _net if net else _ip
    first = check(kind, primary)
    if secondary is None:
        return (primary,)
    second = check(f"{kind}_secondary", secondary)
    if first.version == second.version:
        raise ValueError(
            f"{kind}_secondary {secondary!r} must be of the other IP family than {primary!r}"
        )
    return (primary, secondary)


def version_of(value: str) -> int:
    """4 or 6: the family of an address or CIDR (as ``ipaddress`` numbers it)."""
    return ipaddress.ip_network(value, strict=False).version


def pick(values: tuple[str, ...], version: int) -> str:
    """The one of ``values`` (an object's addresses or CIDRs) of IP ``version``."""
    for value in values:
        if version_of(value) == version:
            return value
    raise KeyError(f"no IPv{version} address among {values}")


def v6_twin(value: str) -> str:
    """The IPv6 twin of an IPv4 address or CIDR: each octet's decimal digits become one
    group of ``fd00:…`` (``10.244.1.11`` → ``fd00:10:244:1::11``), and a prefix of
    8·n bits becomes 16 + 16·n (``10.244.1.0/24`` → ``fd00:10:244:1::/64``)."""
    address, slash, length = value.partition("/")
    octets = address.split(".")
    if len(octets) != 4 or not all(o.isdigit() and int(o) <= 255 for o in octets):
        raise ValueError(f"{value!r} is not an IPv4 address or CIDR")
    if slash:
        bits = int(length)
        if bits % 8:
            raise ValueError(f"{value!r}: only /8, /16, /24 and /32 have a twin")
        kept = [str(int(o)) for o in octets[: bits // 8]]
        return str(ipaddress.ip_network(":".join(["fd00", *kept]) + "::" + f"/{16 + 2 * bits}"))
    groups = [str(int(o)) for o in octets]
    return str(ipaddress.ip_address(":".join(["fd00", *groups[:3]]) + "::" + groups[3]))


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
    lan_ip_secondary: str | None = None
    pod_cidr_secondary: str | None = None

    def __post_init__(self) -> None:
        _check_name("node", self.name)
        ips = _pair(f"node {self.name} lan_ip", self.lan_ip, self.lan_ip_secondary)
        cidrs = _pair(
            f"node {self.name} pod_cidr", self.pod_cidr, self.pod_cidr_secondary, net=True
        )
        if [version_of(v) for v in ips] != [version_of(v) for v in cidrs]:
            raise ValueError(
                f"node {self.name}: its LAN addresses {ips} and pod CIDRs {cidrs} must be of "
                "the same IP families, primary first"
            )

    @property
    def lan_ips(self) -> tuple[str, ...]:
        """Primary first, as a Node's ``InternalIP`` addresses."""
        return _both(self.lan_ip, self.lan_ip_secondary)

    @property
    def pod_cidrs(self) -> tuple[str, ...]:
        """Primary first, as ``spec.podCIDRs``."""
        return _both(self.pod_cidr, self.pod_cidr_secondary)


@dataclass(frozen=True)
class PodSpec:
    """A pod on a node, with the ports its workload server listens on."""

    name: str
    node: str
    ip: str
    tcp_ports: tuple[int, ...] = (80,)
    udp_ports: tuple[int, ...] = (80,)
    http_ports: tuple[int, ...] = ()
    ip_secondary: str | None = None

    def __post_init__(self) -> None:
        _check_name("pod", self.name)
        _pair(f"pod {self.name} ip", self.ip, self.ip_secondary)
        object.__setattr__(self, "tcp_ports", _ports(f"pod {self.name} tcp", self.tcp_ports))
        object.__setattr__(self, "udp_ports", _ports(f"pod {self.name} udp", self.udp_ports))
        object.__setattr__(self, "http_ports", _ports(f"pod {self.name} http", self.http_ports))
        clash = set(self.tcp_ports) & set(self.http_ports)
        if clash:
            raise ValueError(f"pod {self.name}: ports {sorted(clash)} are both tcp and http")

    @property
    def ips(self) -> tuple[str, ...]:
        """Primary first, as ``status.podIPs``."""
        return _both(self.ip, self.ip_secondary)

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
    lan_ip_secondary: str | None = None

    def __post_init__(self) -> None:
        _check_name("client", self.name)
        _pair(f"client {self.name} lan_ip", self.lan_ip, self.lan_ip_secondary)

    @property
    def lan_ips(self) -> tuple[str, ...]:
        return _both(self.lan_ip, self.lan_ip_secondary)


@dataclass(frozen=True)
class TopologySpec:
    """Nodes, pods and outside clients joined by one LAN."""

    nodes: tuple[NodeSpec, ...]
    pods: tuple[PodSpec, ...]
    clients: tuple[ClientSpec, ...]
    lan_cidr: str = "192.168.50.0/24"
    router_ip: str = "192.168.50.1"
    lan_cidr_secondary: str | None = None
    router_ip_secondary: str | None = None
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

        lans = _pair("lan_cidr", self.lan_cidr, self.lan_cidr_secondary, net=True)
        routers = _pair("router_ip", self.router_ip, self.router_ip_secondary)
        versions = [version_of(v) for v in lans]
        if [version_of(v) for v in routers] != versions:
            raise ValueError(f"router addresses {routers} must match the LAN's families {lans}")
        self._check_families(versions)
        for version in versions:
            self._validate_family(version)

    def _check_families(self, versions: list[int]) -> None:
        """Every node, pod and client has an address of each of the LAN's families, in
        the same order (primary first)."""
        objs: list[tuple[str, tuple[str, ...]]] = [
            (f"node {n.name}", n.lan_ips) for n in self.nodes
        ]
        objs += [(f"pod {p.name}", p.ips) for p in self.pods]
        objs += [(f"client {c.name}", c.lan_ips) for c in self.clients]
        want = "/".join(f"IPv{v}" for v in versions)
        for owner, values in objs:
            if [version_of(v) for v in values] != versions:
                raise ValueError(
                    f"{owner} has addresses {values}, but the topology is {want} "
                    "(give every node, pod and client one address per family, primary first)"
                )

    def _validate_family(self, version: int) -> None:
        lan = ipaddress.ip_network(pick(self.lan_cidrs, version))
        lan_ips = {"router": ipaddress.ip_address(pick(self.router_ips, version))}
        hosts: tuple[NodeSpec | ClientSpec, ...] = (*self.nodes, *self.clients)
        for host in hosts:
            lan_ips[host.name] = ipaddress.ip_address(pick(host.lan_ips, version))
        last = lan.broadcast_address if version == 4 else None
        for owner, address in lan_ips.items():
            if address not in lan or address in (lan.network_address, last):
                raise ValueError(f"{owner} LAN address {address} is not a host of {lan}")
        if len(set(lan_ips.values())) != len(lan_ips):
            raise ValueError(f"LAN addresses must be distinct: {lan_ips}")

        cidrs = {n.name: ipaddress.ip_network(pick(n.pod_cidrs, version)) for n in self.nodes}
        for name, cidr in cidrs.items():
            if cidr.overlaps(lan):
                raise ValueError(f"node {name} pod_cidr {cidr} overlaps the LAN {lan}")
            for other, other_cidr in cidrs.items():
                if other < name and cidr.overlaps(other_cidr):
                    raise ValueError(f"pod CIDRs of {other} and {name} overlap")

        pod_ips: dict[Address, str] = {}
        for pod in self.pods:
            if pod.node not in cidrs:
                raise ValueError(f"pod {pod.name} is on unknown node {pod.node!r}")
            ip = ipaddress.ip_address(pick(pod.ips, version))
            if ip not in cidrs[pod.node]:
                raise ValueError(
                    f"pod {pod.name} ip {ip} is outside {pod.node}'s pod CIDR {cidrs[pod.node]}"
                )
            if ip in pod_ips:
                raise ValueError(f"pods {pod_ips[ip]} and {pod.name} share the ip {ip}")
            pod_ips[ip] = pod.name

    @property
    def lan_cidrs(self) -> tuple[str, ...]:
        return _both(self.lan_cidr, self.lan_cidr_secondary)

    @property
    def router_ips(self) -> tuple[str, ...]:
        return _both(self.router_ip, self.router_ip_secondary)

    @property
    def versions(self) -> tuple[int, ...]:
        """The IP versions of the topology, primary first: (4,), (6,), (4, 6) or (6, 4)."""
        return tuple(version_of(c) for c in self.lan_cidrs)

    def lan_prefixlen_of(self, version: int) -> int:
        return ipaddress.ip_network(pick(self.lan_cidrs, version)).prefixlen

    @property
    def lan_prefixlen(self) -> int:
        """The primary LAN's prefix length."""
        return ipaddress.ip_network(self.lan_cidr).prefixlen

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


def _both(primary: str, secondary: str | None) -> tuple[str, ...]:
    return (primary,) if secondary is None else (primary, secondary)


def with_versions(spec: TopologySpec, versions: tuple[int, ...]) -> TopologySpec:
    """An IPv4 ``spec`` made IPv6-only ``(6,)``, dual-stack ``(4, 6)``/``(6, 4)`` or left
    as it is ``(4,)``, every IPv6 address the twin (:func:`v6_twin`) of its IPv4 one."""
    if spec.versions != (4,):
        raise ValueError(f"with_versions needs an IPv4 topology, not IPv{spec.versions}")
    if versions == (4,):
        return spec
    if versions not in ((6,), (4, 6), (6, 4)):
        raise ValueError(f"IP versions {versions}: choose (4,), (6,), (4, 6) or (6, 4)")

    def two(value: str) -> tuple[str, str | None]:
        twin = v6_twin(value)
        if versions == (6,):
            return twin, None
        return (value, twin) if versions == (4, 6) else (twin, value)

    def node(n: NodeSpec) -> NodeSpec:
        ip, ip2 = two(n.lan_ip)
        cidr, cidr2 = two(n.pod_cidr)
        return dataclasses.replace(
            n, lan_ip=ip, pod_cidr=cidr, lan_ip_secondary=ip2, pod_cidr_secondary=cidr2
        )

    def pod(p: PodSpec) -> PodSpec:
        ip, ip2 = two(p.ip)
        return dataclasses.replace(p, ip=ip, ip_secondary=ip2)

    def client(c: ClientSpec) -> ClientSpec:
        ip, ip2 = two(c.lan_ip)
        return dataclasses.replace(c, lan_ip=ip, lan_ip_secondary=ip2)

    lan, lan2 = two(spec.lan_cidr)
    router, router2 = two(spec.router_ip)
    return dataclasses.replace(
        spec,
        nodes=tuple(node(n) for n in spec.nodes),
        pods=tuple(pod(p) for p in spec.pods),
        clients=tuple(client(c) for c in spec.clients),
        lan_cidr=lan,
        router_ip=router,
        lan_cidr_secondary=lan2,
        router_ip_secondary=router2,
    )


def default_spec(versions: tuple[int, ...] = (4,)) -> TopologySpec:
    """Two nodes with two serving pods each (plus a port-less client pod on node-a) and
    one outside client; IPv4 unless ``versions`` says otherwise (see
    :func:`with_versions`)."""
    return with_versions(_default_ipv4_spec(), versions)


def _default_ipv4_spec() -> TopologySpec:
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
