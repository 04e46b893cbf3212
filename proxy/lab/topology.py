"""The lab's network: its nodes, LAN addresses, pod CIDRs, zones and well-known ports."""

from __future__ import annotations

from proxy.host.spec import ClientSpec, NodeSpec, TopologySpec
from proxy.lab import coredns
from proxy.lab.errors import LabError

DEFAULT_NODES = 2
MAX_NODES = 6
MODES = ("nftables", "iptables")
DEFAULT_MODE = "nftables"
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


def node_names(count: int) -> list[str]:
    return [f"node-{i}" for i in range(1, count + 1)]


def lab_topology(count: int, compare: bool) -> tuple[TopologySpec, dict[str, str]]:
    """The lab's nodes and client (LabCluster adds the control plane), and node zones."""
    if not 1 <= count <= MAX_NODES:
        raise LabError(f"--nodes {count}: the lab runs 1 to {MAX_NODES} nodes")
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
    return spec, zones
