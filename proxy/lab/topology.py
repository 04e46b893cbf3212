"""The lab's network: its nodes, LAN addresses, pod CIDRs, zones, well-known ports and IP
families.

Every address is written here in IPv4; an IPv6 or dual-stack lab (``--ip-family``) uses
each one's IPv6 twin (:func:`proxy.host.spec.v6_twin`: ``192.168.50.11`` is
``fd00:192:168:50::11``, ``10.244.1.0/24`` is ``fd00:10:244:1::/64``), except the Service
CIDR, whose IPv6 range is kind's ``fd00:10:96::/112`` (so the twin of the ClusterIP
``10.96.0.10`` is ``fd00:10:96::10``).
"""

from __future__ import annotations

import ipaddress

from proxy.host.spec import ClientSpec, NodeSpec, TopologySpec, v6_twin, with_versions
from proxy.lab import coredns
from proxy.lab.errors import LabError

DEFAULT_NODES = 2
MAX_NODES = 6
MODES = ("nftables", "iptables")
DEFAULT_MODE = "nftables"
IP_FAMILIES: dict[str, tuple[int, ...]] = {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}
"""``--ip-family`` -> the IP versions of the lab, primary first."""
DEFAULT_IP_FAMILY = "ipv4"
LAN_CIDR = "192.168.50.0/24"
CLIENT = "client"
CLIENT_IP = "192.168.50.100"
REGISTRY = "registry"
REGISTRY_IP = "192.168.50.3"
EXTERNAL_IP_CIDR = "203.0.113.0/24"
RESOLVER = coredns.RESOLVER
RESOLVER_IP = coredns.RESOLVER_IP
UPSTREAM_NODE = "node-upstream"
UPSTREAM_NODE_IP = "192.168.50.30"
UPSTREAM_POD_CIDR = "10.244.30.0/24"
API_PORT = 6443
HEALTHZ_PORT = 10256
ZONES = ("zone-a", "zone-b")
SERVICE_CIDRS: dict[int, str] = {4: "10.96.0.0/16", 6: "fd00:10:96::/112"}
"""The Service CIDR of each family (kubeadm's IPv4 default, kind's IPv6 one)."""
NODE_CIDR_MASK_SIZES: dict[int, int] = {4: 24, 6: 64}
"""The size of a node's pod CIDR in each family."""


def versions_of(ip_family: str) -> tuple[int, ...]:
    """The IP versions of an ``--ip-family`` value, primary first."""
    try:
        return IP_FAMILIES[ip_family]
    except KeyError:
        raise LabError(f"--ip-family {ip_family}: choose one of {', '.join(IP_FAMILIES)}") from None


def family_name(versions: tuple[int, ...]) -> str:
    """``IPv4``, ``IPv6`` or ``IPv4/IPv6`` (primary first)."""
    return "/".join(f"IPv{v}" for v in versions)


def twin(ipv4: str, version: int) -> str:
    """``ipv4`` (an address or CIDR) itself for version 4, its IPv6 twin for 6."""
    return ipv4 if version == 4 else v6_twin(ipv4)


def addresses(ipv4: str, versions: tuple[int, ...]) -> tuple[str, ...]:
    """``ipv4`` in each of ``versions`` (primary first): ``("192.168.50.2",
    "fd00:192:168:50::2")`` for a dual-stack lab."""
    return tuple(twin(ipv4, v) for v in versions)


def service_cidrs(versions: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(SERVICE_CIDRS[v] for v in versions)


def service_ip(ipv4: str, version: int) -> str:
    """A well-known ClusterIP (``10.96.0.10``) in IP ``version``: ``fd00:10:96::10``."""
    if version == 4:
        return ipv4
    result = v6_twin(ipv4)
    if ipaddress.ip_address(result) not in ipaddress.ip_network(SERVICE_CIDRS[6]):
        raise ValueError(f"{ipv4}'s IPv6 twin {result} is outside {SERVICE_CIDRS[6]}")
    return result


def service_ips(ipv4: str, versions: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(service_ip(ipv4, v) for v in versions)


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_host(host: str) -> str:
    """A host as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def node_names(count: int) -> list[str]:
    return [f"node-{i}" for i in range(1, count + 1)]


def lab_topology(
    count: int, compare: bool, ip_family: str = DEFAULT_IP_FAMILY
) -> tuple[TopologySpec, dict[str, str]]:
    """The lab's nodes and clients (LabCluster adds the control plane) in the families of
    ``ip_family``, and node zones."""
    if not 1 <= count <= MAX_NODES:
        raise LabError(f"--nodes {count}: the lab runs 1 to {MAX_NODES} nodes")
    versions = versions_of(ip_family)
    nodes = [
        NodeSpec(f"node-{i}", f"192.168.50.{10 + i}", f"10.244.{i}.0/24")
        for i in range(1, count + 1)
    ]
    zones = {n.name: ZONES[i % 2] for i, n in enumerate(nodes)}
    if compare:
        nodes.append(NodeSpec(UPSTREAM_NODE, UPSTREAM_NODE_IP, UPSTREAM_POD_CIDR))
        zones[UPSTREAM_NODE] = ZONES[0]
    clients = (
        ClientSpec(CLIENT, CLIENT_IP),
        ClientSpec(REGISTRY, REGISTRY_IP),
        ClientSpec(RESOLVER, RESOLVER_IP),
    )
    spec = TopologySpec(nodes=tuple(nodes), pods=(), clients=clients, lan_cidr=LAN_CIDR)
    return with_versions(spec, versions), zones


SERVICE_COUNTERS_FLAG = "--metrics-service-counters"
"""The lab's agents count traffic per Service (:mod:`proxy.lab.deploy`)."""
METRICS_PORT = 10249
"""The agents' /metrics, on each node's loopback (the DaemonSet's default bind address)."""
