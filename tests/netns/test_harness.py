"""The netns harness on its own (no kube-proxy rules): topology, workloads, probes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterator

import pytest

from proxy.harness import Outcome, Topology
from proxy.host.errors import HostError
from proxy.host.spec import (
    ClientSpec,
    NodeSpec,
    PodSpec,
    TopologySpec,
    default_spec,
    v6_twin,
    with_versions,
)

A1, A2, B1, B2 = "10.244.1.11", "10.244.1.12", "10.244.2.11", "10.244.2.12"
NODE_A, NODE_B, OUTSIDE = "192.168.50.11", "192.168.50.12", "192.168.50.100"
UNOWNED = "10.96.0.10"
HTTP = 8080
QUICK = 0.5  # timeout for probes expected to get no answer


def _spec() -> TopologySpec:
    """The default topology, with an HTTP port on the node-b pods."""
    spec = default_spec()
    pods = tuple(
        dataclasses.replace(p, http_ports=(HTTP,)) if p.node == "node-b" else p for p in spec.pods
    )
    return dataclasses.replace(spec, pods=pods)


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds network namespaces")
    with Topology(_spec()) as topology:
        yield topology


def _ns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- spec validation (no root needed) ------------------------------------------------


def test_spec_rejects_pod_outside_its_node_cidr() -> None:
    with pytest.raises(ValueError, match="outside node-a"):
        default_spec().with_pod(PodSpec("x1", "node-a", "10.244.2.99"))


def test_spec_rejects_duplicate_names_and_ips() -> None:
    with pytest.raises(ValueError, match="unique"):
        default_spec().with_pod(PodSpec("a1", "node-a", "10.244.1.99"))
    with pytest.raises(ValueError, match="share the ip"):
        default_spec().with_pod(PodSpec("x1", "node-a", A1))
    with pytest.raises(ValueError, match="reserved"):
        NodeSpec("lan", "192.168.50.20", "10.244.9.0/24")


# -- reachability without any proxy rules --------------------------------------------


@pytest.mark.netns
def test_pod_to_pod_across_nodes(topo: Topology) -> None:
    probe = topo.prober("a1")
    tcp = probe.tcp(B1, 80)
    assert (tcp.outcome, tcp.endpoint, tcp.seen_source) == (Outcome.ANSWERED, "b1", A1), tcp
    udp = probe.udp(B1, 80)
    assert (udp.outcome, udp.endpoint, udp.seen_source) == (Outcome.ANSWERED, "b1", A1), udp
    scapy_udp = probe.udp_scapy(B1, 80)
    assert (scapy_udp.endpoint, scapy_udp.seen_source) == ("b1", A1), scapy_udp
    syn = probe.tcp_syn(B2, 80)
    assert syn.outcome is Outcome.ANSWERED and syn.detail == f"SYN-ACK from {B2}:80", syn


@pytest.mark.netns
def test_pod_to_pod_on_the_same_node(topo: Topology) -> None:
    result = topo.prober("a1").tcp(A2, 80)
    assert (result.outcome, result.endpoint, result.seen_source) == (Outcome.ANSWERED, "a2", A1)


@pytest.mark.netns
def test_udp_source_port_is_fresh_unless_given(topo: Topology) -> None:
    probe = topo.prober("a1")
    fresh = {probe.udp(B1, 80).seen_port for _ in range(3)}
    assert len(fresh) == 3, fresh
    kept = {probe.udp(B1, 80, sport=40123).seen_port for _ in range(2)}
    kept |= {probe.udp_scapy(B1, 80, sport=40123).seen_port}
    assert kept == {40123}


@pytest.mark.netns
def test_pods_reach_nodes_and_the_outside_client(topo: Topology) -> None:
    probe = topo.prober("a3")
    for target in (NODE_A, NODE_B, OUTSIDE, B2):
        result = probe.icmp_echo(target)
        assert result.outcome is Outcome.ANSWERED, (target, result)
        assert result.detail == f"echo-reply from {target}"


@pytest.mark.netns
def test_closed_port_on_a_node_is_refused(topo: Topology) -> None:
    probe = topo.prober("outside")
    result = probe.tcp(NODE_A, 12345)
    assert result.outcome is Outcome.REFUSED, result
    syn = probe.tcp_syn(NODE_A, 12345)
    assert (syn.outcome, syn.detail) == (Outcome.REFUSED, f"RST from {NODE_A}:12345")


@pytest.mark.netns
def test_unowned_address_is_silent(topo: Topology) -> None:
    """The LAN router drops what is not for itself: no ICMP error comes back."""
    probe = topo.prober("a3")
    assert probe.icmp_echo(UNOWNED, timeout=QUICK).outcome is Outcome.SILENT
    assert probe.tcp_syn(UNOWNED, 80, timeout=QUICK).outcome is Outcome.SILENT
    assert probe.tcp(UNOWNED, 80, timeout=QUICK).outcome is Outcome.SILENT


@pytest.mark.netns
def test_udp_without_server_is_refused(topo: Topology) -> None:
    probe = topo.prober("a1")
    result = probe.udp(B1, 9999)
    assert (result.outcome, result.detail) == (Outcome.REFUSED, f"icmp 3/3 from {B1}")
    scapy_result = probe.udp_scapy(B1, 9999)
    assert (scapy_result.outcome, scapy_result.detail) == (Outcome.REFUSED, f"icmp 3/3 from {B1}")


REJECTS = """table ip kpp_harness_reject {
 chain forward {
  type filter hook forward priority 0;
  ip daddr 10.96.0.10 tcp dport 80 reject with icmp type port-unreachable
  ip daddr 10.96.0.10 tcp dport 81 reject with icmp type admin-prohibited
  ip daddr 10.96.0.10 tcp dport 82 reject with tcp reset
  ip daddr 10.96.0.10 udp dport 80 reject with icmp type port-unreachable
  ip daddr 10.96.0.10 udp dport 81 reject with icmp type host-unreachable
  ip daddr 10.96.0.10 icmp type echo-request reject with icmp type net-prohibited
 }
}
"""


@pytest.mark.netns
def test_rejections_are_classified(topo: Topology) -> None:
    """REFUSED for RST and port-unreachable, UNREACHABLE for other ICMP errors, with the
    ICMP sender in the detail; many in a row (no ICMP rate limit turns them silent)."""
    topo.run("node-a", ["nft", "-f", "-"], input=REJECTS)
    topo.add_route("outside", "10.96.0.0/12", NODE_A)
    try:
        probe = topo.prober("outside")
        refused, unreachable = Outcome.REFUSED, Outcome.UNREACHABLE
        port_unreachable, from_node = "icmp 3/3", f"from {NODE_A}"
        for _ in range(3):
            seen = [
                probe.tcp(UNOWNED, 80),
                probe.tcp_syn(UNOWNED, 80),
                probe.udp(UNOWNED, 80),
                probe.udp_scapy(UNOWNED, 80),
            ]
            assert {(r.outcome, r.detail) for r in seen} == {
                (refused, f"{port_unreachable} {from_node}")
            }, seen
        assert probe.tcp(UNOWNED, 81).detail == f"icmp 3/13 {from_node}"
        assert probe.tcp_syn(UNOWNED, 81).outcome is unreachable
        assert (probe.udp(UNOWNED, 81).outcome, probe.udp_scapy(UNOWNED, 81).outcome) == (
            unreachable,
            unreachable,
        )
        echo = probe.icmp_echo(UNOWNED)
        assert (echo.outcome, echo.detail) == (unreachable, f"icmp 3/9 {from_node}")
        rst = probe.tcp(UNOWNED, 82)
        assert (rst.outcome, rst.detail) == (refused, "connection refused (RST)")
        assert probe.tcp_syn(UNOWNED, 82).detail == f"RST from {UNOWNED}:82"
        assert [r.outcome for r in probe.http(UNOWNED, 80, requests=2)] == [refused] * 2
    finally:
        topo.del_route("outside", "10.96.0.0/12")
        topo.run("node-a", ["nft", "delete", "table", "ip", "kpp_harness_reject"], check=False)


@pytest.mark.netns
def test_http_keepalive_uses_one_connection(topo: Topology) -> None:
    probe = topo.prober("outside")
    kept = probe.http(B1, HTTP, requests=4)
    assert [r.endpoint for r in kept] == ["b1"] * 4, kept
    assert {r.seen_source for r in kept} == {OUTSIDE}
    assert len({r.seen_port for r in kept}) == 1, "keep-alive must reuse the connection"
    fresh = probe.http(B1, HTTP, requests=4, keepalive=False)
    assert [r.outcome for r in fresh] == [Outcome.ANSWERED] * 4
    assert len({r.seen_port for r in fresh}) == 4, "one connection per request"


@pytest.mark.netns
def test_workload_serves_ipv6(topo: Topology) -> None:
    """The topology is IPv4, but workloads and socket probes speak IPv6 (on loopback)."""
    probe = topo.prober("b1")
    results = [probe.tcp("::1", 80), probe.udp("::1", 80), *probe.http("::1", HTTP)]
    assert {(r.outcome, r.endpoint, r.seen_source) for r in results} == {
        (Outcome.ANSWERED, "b1", "::1")
    }, results
    assert probe.udp("::1", 9999).detail == "icmp6 1/4 from ::1"


@pytest.mark.netns
def test_many_connections_in_one_call(topo: Topology) -> None:
    results = topo.prober("outside").tcp_many(A1, 80, 300)
    assert {(r.outcome, r.endpoint) for r in results} == {(Outcome.ANSWERED, "a1")}
    assert len({r.seen_port for r in results}) == 300


# -- runtime changes -----------------------------------------------------------------


@pytest.mark.netns
def test_stopped_servers_refuse(topo: Topology) -> None:
    probe = topo.prober("a1")
    topo.set_pod_servers("b2", False)
    try:
        assert probe.tcp(B2, 80).outcome is Outcome.REFUSED
        assert probe.udp(B2, 80).outcome is Outcome.REFUSED
    finally:
        topo.set_pod_servers("b2", True)
    assert probe.tcp(B2, 80).endpoint == "b2"


@pytest.mark.netns
def test_add_and_remove_pod(topo: Topology) -> None:
    pod = PodSpec("b3", "node-b", "10.244.2.13", tcp_ports=(80, 81), udp_ports=())
    topo.add_pod(pod)
    namespace = topo.ns("b3")
    try:
        assert topo.pod("b3") == pod
        result = topo.prober("a1").tcp(pod.ip, 81)
        assert (result.endpoint, result.seen_source) == ("b3", A1), result
        from_pod = topo.prober("b3").tcp(A2, 80)
        assert (from_pod.endpoint, from_pod.seen_source) == ("a2", pod.ip), from_pod
    finally:
        topo.remove_pod("b3")
    assert namespace not in _ns_list().split()
    assert "b3" not in {p.name for p in topo.spec.pods}
    assert topo.prober("a1").tcp(pod.ip, 81, timeout=QUICK).outcome is Outcome.SILENT


@pytest.mark.netns
def test_scapy_sees_route_changes(topo: Topology) -> None:
    probe = topo.prober("outside")
    assert probe.icmp_echo(A1).outcome is Outcome.ANSWERED
    topo.del_route("outside", "10.244.1.0/24")
    try:
        assert probe.icmp_echo(A1, timeout=QUICK).outcome is Outcome.SILENT
        assert probe.tcp(A1, 80).outcome is Outcome.UNREACHABLE  # ENETUNREACH, locally
    finally:
        topo.add_route("outside", "10.244.1.0/24", NODE_A)
    assert probe.icmp_echo(A1).outcome is Outcome.ANSWERED


@pytest.mark.netns
def test_flush_conntrack_only_touches_one_namespace(topo: Topology) -> None:
    track = "table ip kpp_harness_test {\n chain c {\n  type filter hook forward priority 0\n"
    track += "  ct state new counter\n }\n}\n"
    for node in ("node-a", "node-b"):
        topo.run(node, ["nft", "-f", "-"], input=track)
    try:
        assert topo.prober("a1").udp(B1, 80).endpoint == "b1"

        def flows(node: str) -> str:
            return topo.run(node, ["conntrack", "-L", "-p", "udp", "--dport", "80"]).stdout

        assert B1 in flows("node-a") and B1 in flows("node-b")
        topo.flush_conntrack("node-a")
        assert B1 not in flows("node-a")
        assert B1 in flows("node-b")
    finally:
        for node in ("node-a", "node-b"):
            topo.run(node, ["nft", "delete", "table", "ip", "kpp_harness_test"], check=False)


# -- ownership and cleanup -----------------------------------------------------------


@pytest.mark.netns
def test_refuses_namespaces_it_does_not_own(topo: Topology) -> None:
    with pytest.raises(HostError, match="already exist"):
        Topology(topo.spec, id=topo.id).up()
    assert topo.ns("a1") in _ns_list().split()
    assert topo.prober("a1").tcp(B1, 80).endpoint == "b1"


@pytest.mark.netns
def test_down_removes_namespaces_and_processes_even_on_failure() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: builds network namespaces")
    spec = TopologySpec(
        nodes=(NodeSpec("n1", "192.168.50.11", "10.244.1.0/24"),),
        pods=(PodSpec("p1", "n1", "10.244.1.11", http_ports=(HTTP,)),),
        clients=(ClientSpec("c1", "192.168.50.100"),),
    )
    topology = Topology(spec)
    with pytest.raises(RuntimeError, match="boom"), topology:
        assert topology.prober("c1").tcp("10.244.1.11", 80).endpoint == "p1"
        topology.popen("p1", ["sleep", "600"])
        namespaces, pids = topology.namespaces, topology.started_pids
        assert len(namespaces) == 4 and len(pids) == 3
        assert all(_alive(p) for p in pids)
        raise RuntimeError("boom")
    assert topology.id not in _ns_list()
    assert topology.namespaces == ()
    assert not [p for p in pids if _alive(p)]
    assert not topology.is_up


# -- IPv6 ------------------------------------------------------------------------------

A1_6, B1_6, B2_6 = (v6_twin(ip) for ip in (A1, B1, B2))
NODE_A6, NODE_B6, OUTSIDE6 = (v6_twin(ip) for ip in (NODE_A, NODE_B, OUTSIDE))
ROUTER6, UNOWNED6 = v6_twin("192.168.50.1"), v6_twin(UNOWNED)


@pytest.fixture(scope="module")
def topo6() -> Iterator[Topology]:
    """An IPv6-only topology: two nodes with one pod each, and the outside client."""
    if os.geteuid() != 0:
        pytest.skip("needs root: builds network namespaces")
    spec = TopologySpec(
        nodes=(
            NodeSpec("node-a", NODE_A, "10.244.1.0/24"),
            NodeSpec("node-b", NODE_B, "10.244.2.0/24"),
        ),
        pods=(PodSpec("a1", "node-a", A1), PodSpec("b1", "node-b", B1)),
        clients=(ClientSpec("outside", OUTSIDE),),
    )
    with Topology(with_versions(spec, (6,))) as topology:
        yield topology


@pytest.mark.netns
def test_ipv6_pod_to_pod_across_nodes(topo6: Topology) -> None:
    assert "inet " not in topo6.run("a1", ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    probe = topo6.prober("a1")
    tcp = probe.tcp(B1_6, 80)
    assert (tcp.outcome, tcp.endpoint, tcp.seen_source) == (Outcome.ANSWERED, "b1", A1_6), tcp
    udp = probe.udp(B1_6, 80)
    assert (udp.outcome, udp.endpoint, udp.seen_source) == (Outcome.ANSWERED, "b1", A1_6), udp
    scapy_udp = probe.udp_scapy(B1_6, 80)
    assert (scapy_udp.endpoint, scapy_udp.seen_source) == ("b1", A1_6), scapy_udp
    syn = probe.tcp_syn(B1_6, 80)
    assert (syn.outcome, syn.detail) == (Outcome.ANSWERED, f"SYN-ACK from {B1_6}:80"), syn
    for target in (NODE_A6, NODE_B6, OUTSIDE6):
        echo = probe.icmp_echo(target)
        assert (echo.outcome, echo.detail) == (Outcome.ANSWERED, f"echo-reply from {target}")
    outside = topo6.prober("outside")
    back = outside.tcp(A1_6, 80)
    assert (back.endpoint, back.seen_source) == ("a1", OUTSIDE6), back
    # the LAN router answers for itself (it has no route to the pods)
    assert outside.icmp_echo(ROUTER6).detail == f"echo-reply from {ROUTER6}"


REJECTS6 = f"""table ip6 kpp_harness_reject {{
 chain forward {{
  type filter hook forward priority 0;
  ip6 daddr {UNOWNED6} tcp dport 80 reject with icmpv6 type port-unreachable
  ip6 daddr {UNOWNED6} tcp dport 81 reject with icmpv6 type admin-prohibited
  ip6 daddr {UNOWNED6} tcp dport 82 reject with tcp reset
  ip6 daddr {UNOWNED6} udp dport 80 reject
  ip6 daddr {UNOWNED6} udp dport 81 reject with icmpv6 type no-route
  ip6 daddr {UNOWNED6} icmpv6 type echo-request reject with icmpv6 type admin-prohibited
 }}
}}
"""


@pytest.mark.netns
def test_ipv6_rejections_are_classified(topo6: Topology) -> None:
    """ICMPv6 port unreachable (1/4) and RST are REFUSED, other ICMPv6 errors (1/1
    admin-prohibited, 1/0 no route) UNREACHABLE, the type and code in the detail; many
    in a row; and what the LAN router does not own is dropped silently."""
    topo6.run("node-a", ["nft", "-f", "-"], input=REJECTS6)
    topo6.add_route("outside", v6_twin("10.96.0.0/16"), NODE_A6)
    try:
        probe = topo6.prober("outside")
        refused, unreachable = Outcome.REFUSED, Outcome.UNREACHABLE
        port_unreachable = f"icmp6 1/4 from {NODE_A6}"
        for _ in range(3):
            seen = [
                probe.tcp(UNOWNED6, 80),
                probe.tcp_syn(UNOWNED6, 80),
                probe.udp(UNOWNED6, 80),
                probe.udp_scapy(UNOWNED6, 80),
            ]
            assert {(r.outcome, r.detail) for r in seen} == {(refused, port_unreachable)}, seen
        prohibited = [probe.tcp(UNOWNED6, 81), probe.tcp_syn(UNOWNED6, 81)]
        prohibited.append(probe.icmp_echo(UNOWNED6))
        assert {(r.outcome, r.detail) for r in prohibited} == {
            (unreachable, f"icmp6 1/1 from {NODE_A6}")
        }, prohibited
        no_route = [probe.udp(UNOWNED6, 81), probe.udp_scapy(UNOWNED6, 81)]
        assert {(r.outcome, r.detail) for r in no_route} == {
            (unreachable, f"icmp6 1/0 from {NODE_A6}")
        }, no_route
        rst = probe.tcp(UNOWNED6, 82)
        assert (rst.outcome, rst.detail) == (refused, "connection refused (RST)")
        assert probe.tcp_syn(UNOWNED6, 82).detail == f"RST from {UNOWNED6}:82"
        # not rejected: node-a routes it to the LAN router, which drops it without a word
        assert probe.tcp_syn(UNOWNED6, 83, timeout=QUICK).outcome is Outcome.SILENT
    finally:
        topo6.del_route("outside", v6_twin("10.96.0.0/16"))
        topo6.run("node-a", ["nft", "delete", "table", "ip6", "kpp_harness_reject"], check=False)


@pytest.mark.netns
def test_ipv6_add_pod(topo6: Topology) -> None:
    pod = PodSpec("b2", "node-b", B2_6, tcp_ports=(80,), udp_ports=())
    topo6.add_pod(pod)
    try:
        result = topo6.prober("a1").tcp(B2_6, 80)
        assert (result.endpoint, result.seen_source) == ("b2", A1_6), result
    finally:
        topo6.remove_pod("b2")
    assert topo6.prober("a1").tcp(B2_6, 80, timeout=QUICK).outcome is Outcome.SILENT
