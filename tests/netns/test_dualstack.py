"""A dual-stack Service as packets, in both modes.

The topology is dual-stack with IPv6 as the primary family (``default_spec((6, 4))``;
the scenarios run IPv4-primary). Every node is programmed as a dual-stack kube-proxy
programs it: one plan per IP family, written to that family's table (``ip`` / ``ip6``
kube-proxy, iptables / ip6tables). The Service (PreferDualStack, ``ipFamilies`` [IPv4,
IPv6]) has a ClusterIP of each family and one EndpointSlice per address type; it must
be reachable on both ClusterIPs from a pod, and on its NodePort at both addresses of
each node from the outside client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.harness import Outcome, Topology
from proxy.host.spec import default_spec, pick, v6_twin
from proxy.iptables import render as ipt_render
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.addresses import local_addresses
from proxy.kernel.executor import Executor
from proxy.model import IPFamily
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
from proxy.plan import plan
from proxy.source.file import build_state

pytestmark = pytest.mark.netns

SPEC = default_spec((6, 4))
FAMILIES = (IPFamily.V4, IPFamily.V6)
VERSION = {IPFamily.V4: 4, IPFamily.V6: 6}
NODES = tuple(n.name for n in SPEC.nodes)
SERVERS = ("a1", "b1")
CIP = {IPFamily.V4: "10.96.0.20", IPFamily.V6: v6_twin("10.96.0.20")}
CLUSTER_CIDRS = tuple(ipaddress.ip_network(c) for c in ("10.244.0.0/16", v6_twin("10.244.0.0/16")))
NODE_PORT = 30090
ANSWER = 3.0
QUICK = 0.5


def ip_of(name: str, family: IPFamily) -> str:
    """The address of a pod, node or client in ``family``."""
    for pod in SPEC.pods:
        if pod.name == name:
            return pick(pod.ips, VERSION[family])
    hosts: dict[str, tuple[str, ...]] = {n.name: n.lan_ips for n in SPEC.nodes}
    hosts.update((c.name, c.lan_ips) for c in SPEC.clients)
    return pick(hosts[name], VERSION[family])


def objects() -> list[dict[str, Any]]:
    nodes = [m.node(n.name, n.lan_ips, zone="z1", pod_cidr=n.pod_cidrs) for n in SPEC.nodes]
    ports = [m.Port(80, "tcp", "TCP", node_port=NODE_PORT), m.Port(80, "udp", "UDP")]
    svc = m.service(
        "dual",
        CIP[IPFamily.V4],
        ports,
        type="NodePort",
        cluster_ips=[CIP[IPFamily.V4], CIP[IPFamily.V6]],
        ip_families=["IPv4", "IPv6"],
        ip_family_policy="PreferDualStack",
    )
    slices = [
        m.endpoint_slice(
            "dual",
            [m.EP(ip_of(p, family), node=SPEC.pod(p).node) for p in SERVERS],
            [("tcp", 80, "TCP"), ("udp", 80, "UDP")],
            name=f"dual-{family.value.lower()}",
            address_type=family.value,
        )
        for family in FAMILIES
    ]
    return [*nodes, svc, *slices]


def program(topo: Topology, mode: ProxyMode) -> None:
    """Both families' rules on every node, from one state."""
    for node in NODES:
        state = build_state(objects(), node)
        assert state.problems == (), state.problems
        executor = Executor(topo.ns(node))
        config = ProxyConfig(
            node,
            mode=mode,
            cluster_cidrs=CLUSTER_CIDRS,
            host_addresses=local_addresses(executor),
        )
        for family in FAMILIES:
            p = plan(state.snapshot, config, family)
            assert {str(sp.cluster_ip) for sp in p.service_ports} == {CIP[family]}, family
            if mode is ProxyMode.IPTABLES:
                IptablesKernel(executor, family).full_sync(ipt_render.render(p))
            else:
                NftKernel(executor, family).full_sync(nft_render.render(p))
        topo.flush_conntrack(node)


def cleanup(topo: Topology) -> None:
    for node in NODES:
        executor = Executor(topo.ns(node))
        for family in FAMILIES:
            NftKernel(executor, family).cleanup()
            IptablesKernel(executor, family, variant="nft").cleanup()


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(SPEC) as t:
        yield t


@pytest.fixture(scope="module", params=[ProxyMode.IPTABLES, ProxyMode.NFTABLES], ids=str)
def mode(topo: Topology, request: pytest.FixtureRequest) -> Iterator[ProxyMode]:
    cleanup(topo)
    program(topo, request.param)
    yield request.param
    cleanup(topo)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_pod_reaches_both_cluster_ips(topo: Topology, mode: ProxyMode, family: IPFamily) -> None:
    prober = topo.prober("a3")
    results = prober.tcp_many(CIP[family], 80, 20, timeout=ANSWER)
    assert {r.outcome for r in results} == {Outcome.ANSWERED}, [r.detail for r in results]
    assert {r.endpoint for r in results} == set(SERVERS)
    assert {r.seen_source for r in results} == {ip_of("a3", family)}  # not masqueraded
    udp = prober.udp(CIP[family], 80, timeout=ANSWER)
    assert udp.outcome is Outcome.ANSWERED and udp.endpoint in SERVERS, udp.detail
    assert udp.seen_source == ip_of("a3", family)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_node_port_on_both_addresses_of_every_node(
    topo: Topology, mode: ProxyMode, family: IPFamily
) -> None:
    prober = topo.prober("outside")
    for node in NODES:
        address = ip_of(node, family)
        results = prober.tcp_many(address, NODE_PORT, 10, timeout=ANSWER)
        assert {r.outcome for r in results} == {Outcome.ANSWERED}, [r.detail for r in results]
        assert {r.endpoint for r in results} <= set(SERVERS), node
        # externalTrafficPolicy Cluster: masqueraded to the node's address of the family
        assert {r.seen_source for r in results} == {address}, node


def test_ping_a_cluster_ip_over_icmpv6(topo: Topology, mode: ProxyMode) -> None:
    echo = topo.prober("a3").icmp_echo(CIP[IPFamily.V6], timeout=QUICK)
    if mode is ProxyMode.IPTABLES:
        # nothing matches ICMPv6 to a ClusterIP: routed to the default gateway and lost
        assert echo.outcome is Outcome.SILENT, echo.detail
    else:
        # nftables rejects new traffic to a cluster IP that matched no service port
        assert echo.outcome is Outcome.REFUSED, echo.detail
        assert echo.detail.startswith("icmp6 1/4 "), echo.detail
