"""Stale UDP conntrack cleanup against the real kernel, in both modes.

A UDP "flow" is pinned by its source port (``sport``): while its conntrack entry lives,
every datagram of it follows the entry, not the rules. Each test first shows that
without cleanup the flow still goes to the old place (so the test can fail), then that
after ``ConntrackCleaner.cleanup()`` the same flow reaches the new endpoint, and that
nothing else in the table was touched. Conntrack is flushed (with the CLI: test-only)
at the start of each test so that entry counts are exact.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import manifests as m
from proxy.backends import iptables as ipt
from proxy.backends import nftables as nft
from proxy.config import ProxyConfig, ProxyMode
from proxy.conntrack import ConntrackCleaner, ConntrackError, FlowEntry, udp_targets
from proxy.harness import Outcome, Topology, default_spec
from proxy.kernel.addresses import local_addresses
from proxy.kernel.iptables import IptablesKernel
from proxy.kernel.nftables import NftKernel
from proxy.kernel.runner import Runner
from proxy.plan import Plan, plan
from proxy.source.file import build_state

pytestmark = pytest.mark.netns

SPEC = default_spec()
IP = {p.name: p.ip for p in SPEC.pods}
POD_NODE = {p.name: p.node for p in SPEC.pods}
NODE_IP = {n.name: n.lan_ip for n in SPEC.nodes}
NODES = [m.node(n.name, n.lan_ip, pod_cidr=n.pod_cidr) for n in SPEC.nodes]
CLUSTER_CIDR = ipaddress.ip_network("10.244.0.0/16")
DNS_VIP = "10.96.0.53"
OTHER_VIP = "10.96.0.99"
NODE_PORT = 30053
QUICK = 0.5  # timeout for probes that must not be answered by an endpoint


def dns(*pods: str, node_port: int | None = NODE_PORT) -> list[dict[str, Any]]:
    """UDP 53 and TCP 53 to the pods' port 80 (their workload servers)."""
    ports = [
        m.Port(53, "dns", "UDP", 80, node_port=node_port),
        m.Port(53, "dns-tcp", "TCP", 80, node_port=node_port and node_port + 1),
    ]
    svc = m.service("dns", DNS_VIP, ports, type="NodePort" if node_port else "ClusterIP")
    eps = [m.EP(IP[p], node=POD_NODE[p]) for p in pods]
    return [svc, m.endpoint_slice("dns", eps, [("dns", 80, "UDP"), ("dns-tcp", 80, "TCP")])]


def other() -> list[dict[str, Any]]:
    """Another UDP service, always served by a2."""
    svc = m.service("other", OTHER_VIP, [m.Port(99, "u", "UDP", 80)])
    eps = [m.EP(IP["a2"], node="node-a")]
    return [svc, m.endpoint_slice("other", eps, [("u", 80, "UDP")])]


class Lab:
    """Programs both nodes from one state, without touching conntrack."""

    def __init__(self, topo: Topology, mode: ProxyMode) -> None:
        self.topo = topo
        self.mode = mode

    def program(self, *groups: list[dict[str, Any]]) -> dict[str, Plan]:
        objs = [o for g in groups for o in g]
        plans: dict[str, Plan] = {}
        for node in NODE_IP:
            state = build_state([*NODES, *objs], node)
            assert state.problems == (), state.problems
            runner = Runner(self.topo.ns(node))
            config = ProxyConfig(
                node,
                mode=self.mode,
                cluster_cidrs=(CLUSTER_CIDR,),
                host_addresses=local_addresses(runner),
            )
            p = plan(state.snapshot, config)
            if self.mode is ProxyMode.IPTABLES:
                IptablesKernel(runner).sync(ipt.render(p))
            else:
                NftKernel(runner).sync(nft.render(p))
            plans[node] = p
        return plans

    def cleanup_rules(self) -> None:
        for node in NODE_IP:
            runner = Runner(self.topo.ns(node))
            NftKernel(runner).cleanup()
            IptablesKernel(runner, variant="nft").cleanup()

    def cleaner(self, node: str = "node-a") -> ConntrackCleaner:
        return ConntrackCleaner(self.topo.ns(node))

    def udp(self, src: str, dst: str, port: int, sport: int, timeout: float = 1.0) -> Any:
        return self.topo.prober(src).udp(dst, port, sport=sport, timeout=timeout)

    def tcp_entries(self, node: str = "node-a") -> list[str]:
        out = self.topo.run(node, ["conntrack", "-L", "-p", "tcp"], check=False).stdout
        return sorted(" ".join(w for w in line.split() if "=" in w) for line in out.splitlines())


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(SPEC) as t:
        yield t


@pytest.fixture(scope="module", params=[ProxyMode.IPTABLES, ProxyMode.NFTABLES], ids=str)
def mode_lab(topo: Topology, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(topo, request.param)
    lab.cleanup_rules()
    yield lab
    lab.cleanup_rules()


@pytest.fixture
def lab(mode_lab: Lab) -> Lab:
    for node in NODE_IP:
        mode_lab.topo.flush_conntrack(node)
    return mode_lab


def by_flow(entries: list[FlowEntry]) -> dict[tuple[str, int], FlowEntry]:
    return {(e.orig_src, e.orig_sport): e for e in entries}


# ---------------------------------------------------------------------------------------


def test_cluster_ip_flow_moves_to_the_new_endpoint_and_nothing_else_is_touched(lab: Lab) -> None:
    lab.program(dns("a1"), other())
    assert lab.udp("a3", DNS_VIP, 53, sport=41001).endpoint == "a1"
    # flows that must survive the cleanup
    assert lab.udp("a3", OTHER_VIP, 99, sport=41002).endpoint == "a2"  # another UDP service
    assert lab.udp("a3", IP["a1"], 80, sport=41003).endpoint == "a1"  # no service at all
    assert lab.topo.prober("a3").tcp(DNS_VIP, 53).endpoint == "a1"  # TCP, same service

    plans = lab.program(dns("b1"), other())
    # the flow is pinned: without cleanup it still reaches the removed endpoint
    assert lab.udp("a3", DNS_VIP, 53, sport=41001).endpoint == "a1"

    cleaner = lab.cleaner()
    before = by_flow(cleaner.dump_udp())
    tcp_before = lab.tcp_entries()
    assert tcp_before, "the TCP connection left no conntrack entry"
    assert cleaner.cleanup(udp_targets(plans["node-a"])) == 1

    after = by_flow(cleaner.dump_udp())
    assert set(before) - set(after) == {(IP["a3"], 41001)}
    assert {k: after[k] for k in after if k != (IP["a3"], 41001)} == {
        k: v for k, v in before.items() if k != (IP["a3"], 41001)
    }
    assert lab.tcp_entries() == tcp_before
    # a second cleanup finds nothing
    assert cleaner.cleanup(udp_targets(plans["node-a"])) == 0

    r = lab.udp("a3", DNS_VIP, 53, sport=41001)
    assert r.outcome is Outcome.ANSWERED and r.endpoint == "b1"
    assert lab.udp("a3", OTHER_VIP, 99, sport=41002).endpoint == "a2"


def test_node_port_flow_from_outside_moves_to_the_new_endpoint(lab: Lab) -> None:
    node_a = NODE_IP["node-a"]
    lab.program(dns("a1"), other())
    assert lab.udp("outside", node_a, NODE_PORT, sport=41011).endpoint == "a1"

    plans = lab.program(dns("b1"), other())
    assert lab.udp("outside", node_a, NODE_PORT, sport=41011).endpoint == "a1"

    assert lab.cleaner().cleanup(udp_targets(plans["node-a"])) == 1
    r = lab.udp("outside", node_a, NODE_PORT, sport=41011)
    assert r.outcome is Outcome.ANSWERED and r.endpoint == "b1"


def test_flows_sent_before_the_service_had_endpoints_reach_them_after_cleanup(lab: Lab) -> None:
    node_a = NODE_IP["node-a"]
    # the service exists in the API but this node has no rules for it yet (other rules
    # exist, so conntrack tracks the node's traffic): the datagrams are not DNATed
    lab.program(other())
    assert lab.udp("a3", DNS_VIP, 53, sport=41021, timeout=QUICK).outcome is not Outcome.ANSWERED
    assert (
        lab.udp("outside", node_a, NODE_PORT, sport=41022, timeout=QUICK).outcome
        is not Outcome.ANSWERED
    )
    # no endpoints: rejected before conntrack confirms the entry, so nothing is left
    lab.program(dns(), other())
    assert lab.udp("a3", DNS_VIP, 53, sport=41023).outcome is Outcome.REFUSED
    assert (IP["a3"], 41023) not in by_flow(lab.cleaner().dump_udp())

    plans = lab.program(dns("b1"), other())
    # the old entries still win over the new rules
    assert lab.udp("a3", DNS_VIP, 53, sport=41021, timeout=QUICK).endpoint is None
    assert lab.udp("outside", node_a, NODE_PORT, sport=41022, timeout=QUICK).endpoint is None
    # a flow that started after the sync is DNATed correctly and must survive
    assert lab.udp("a3", DNS_VIP, 53, sport=41024).endpoint == "b1"

    targets = udp_targets(plans["node-a"])
    dns_target = [t for t in targets if t.service == "default/dns:dns"]
    assert lab.cleaner().cleanup(targets, newly_served=dns_target) == 2

    assert lab.udp("a3", DNS_VIP, 53, sport=41021).endpoint == "b1"
    assert lab.udp("outside", node_a, NODE_PORT, sport=41022).endpoint == "b1"
    assert lab.udp("a3", DNS_VIP, 53, sport=41024).endpoint == "b1"
    assert (IP["a3"], 41024) in by_flow(lab.cleaner().dump_udp())


def test_cleaner_never_changes_our_namespace_and_refuses_missing_ones(topo: Topology) -> None:
    def inode() -> int:
        return os.stat("/proc/thread-self/ns/net").st_ino

    mine = inode()
    cleaner = ConntrackCleaner(topo.ns("node-a"))
    cleaner.dump_udp()
    seen: list[int] = []

    def in_thread() -> None:
        cleaner.dump_udp()
        seen.append(inode())

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert inode() == mine and seen == [mine]

    missing = f"{topo.id}-missing"
    with pytest.raises(ConntrackError, match="does not exist"):
        ConntrackCleaner(missing).dump_udp()
    assert inode() == mine
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert missing not in listed  # pyroute2 was not allowed to create it
