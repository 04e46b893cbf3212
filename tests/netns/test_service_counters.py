"""``--metrics-service-counters`` against the real kernel, in both modes: packets and
bytes per Service port and verdict, counted by the rules, read back by the mode's writer
and exported on /metrics; unchanged by a sync that does not touch the Service."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.harness import Outcome, Topology
from proxy.host.spec import default_spec
from proxy.kernel.addresses import local_addresses
from proxy.kernel.executor import Executor
from proxy.metrics import ProxyMetrics
from proxy.model import IPFamily
from proxy.modes import mode_for, remove_rules
from proxy.plan import Plan, plan
from proxy.source.file import build_state
from proxy.traffic import TrafficSample

pytestmark = pytest.mark.netns

SPEC = default_spec()
IP = {p.name: p.ip for p in SPEC.pods}
NODES = [m.node(n.name, n.lan_ip, pod_cidr=n.pod_cidr) for n in SPEC.nodes]
NODE_A_IP = SPEC.nodes[0].lan_ip


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(SPEC) as t:
        t.add_route("outside", "198.51.100.0/24", NODE_A_IP)
        yield t


def objects(web_eps: tuple[str, ...] = ("a1", "b1"), other: bool = False) -> list[dict[str, Any]]:
    ports = [m.Port(80, "http"), m.Port(80, "dns", "UDP")]
    web = m.service("web", "10.96.0.10", ports, namespace="shop")
    eps = [m.EP(IP[p], node="node-a" if p.startswith("a") else "node-b") for p in web_eps]
    empty = m.service("empty", "10.96.0.11", [m.Port(8080)], namespace="shop")
    lb = m.service("lb", "10.96.0.12", [m.Port(80, node_port=30080)], type="LoadBalancer",
                   lb_ips=["198.51.100.10"], source_ranges=["10.0.0.0/8"], namespace="shop")  # fmt: skip
    out = [
        *NODES,
        web,
        m.endpoint_slice("web", eps, [("http", 80, "TCP"), ("dns", 80, "UDP")], namespace="shop"),
        empty,
        lb,
        m.endpoint_slice("lb", eps[:1], [("", 80, "TCP")], namespace="shop", name="lb-1"),
    ]
    if other:
        out.append(m.service("other", "10.96.0.13", [m.Port(81)], namespace="shop"))
    return out


class Node:
    def __init__(self, topo: Topology, mode: ProxyMode) -> None:
        self.topo, self.mode = topo, mode
        self.executor = Executor(topo.ns("node-a"))
        self.mode_impl = mode_for(mode)
        self.writer = self.mode_impl.writer(self.executor, IPFamily.V4)
        self.render = self.mode_impl.renderer()
        self.last: Any = None
        self.plan: Plan | None = None

    def program(self, objs: list[dict[str, Any]], *, full: bool) -> None:
        state = build_state(objs, "node-a")
        assert state.problems == ()
        config = ProxyConfig(
            "node-a",
            mode=self.mode,
            cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),),
            host_addresses=local_addresses(self.executor),
            service_counters=True,
        )
        self.plan = plan(state.snapshot, config, IPFamily.V4)
        ruleset = self.render(self.plan, None)
        if full or self.last is None:
            self.writer.full_sync(ruleset)
        else:
            self.writer.apply(self.mode_impl.diff(self.last, ruleset))
        self.last = ruleset

    def traffic(self) -> dict[tuple[str, str, str], TrafficSample]:
        """The counters that counted something (iptables also lists its rules at 0)."""
        assert self.plan is not None
        samples = self.writer.traffic(self.plan)
        return {(s.service, s.port, s.verdict): s for s in samples if s.packets}


@pytest.fixture(params=list(ProxyMode), ids=str)
def node(topo: Topology, request: pytest.FixtureRequest) -> Iterator[Node]:
    n = Node(topo, request.param)
    yield n
    remove_rules(n.executor, list(ProxyMode))
    topo.flush_conntrack("node-a")


def test_dnat_reject_and_drop_are_counted_per_service_port(node: Node, topo: Topology) -> None:
    node.program(objects(), full=True)
    assert node.traffic() == {}  # nothing counted yet
    a3 = topo.prober("a3")
    answered = a3.tcp_many("10.96.0.10", 80, 5, timeout=3.0)
    assert all(r.outcome is Outcome.ANSWERED for r in answered)
    assert a3.udp("10.96.0.10", 80, timeout=3.0).outcome is Outcome.ANSWERED
    refused = [a3.tcp("10.96.0.11", 8080, timeout=3.0) for _ in range(3)]
    assert all(r.outcome is Outcome.REFUSED for r in refused)
    outside = topo.prober("outside")
    blocked = outside.tcp("198.51.100.10", 80, timeout=0.5)
    assert blocked.outcome is Outcome.SILENT  # not in 10.0.0.0/8
    got = node.traffic()
    dnat = got[("web", "http", "dnat")]
    # each connection: SYN, SYN-ACK, ACK, request, reply, FINs and ACKs, both ways
    assert dnat.packets >= 5 * 6 and dnat.bytes > dnat.packets * 40
    udp = got[("web", "dns", "dnat")]
    assert udp.packets == 2  # the datagram and its answer
    assert got[("empty", "8080", "reject")].packets == 3  # one SYN each, refused at once
    drop = got[("lb", "80", "drop")]
    assert drop.packets >= 1  # the SYN (and its retransmissions while the probe waited)
    assert set(got) == {
        ("web", "http", "dnat"),
        ("web", "dns", "dnat"),
        ("empty", "8080", "reject"),
        ("lb", "80", "drop"),
    }


def test_counts_outlast_syncs_that_do_not_touch_the_service(node: Node, topo: Topology) -> None:
    node.program(objects(), full=True)
    a3 = topo.prober("a3")
    assert all(r.outcome is Outcome.ANSWERED for r in a3.tcp_many("10.96.0.10", 80, 3))
    before = node.traffic()[("web", "http", "dnat")].packets
    node.program(objects(other=True), full=False)  # another Service came: a partial sync
    assert node.traffic()[("web", "http", "dnat")].packets == before
    if node.mode is ProxyMode.NFTABLES:
        # nftables keeps them through a full sync too (the packets made the elements)
        node.program(objects(other=True), full=True)
        assert node.traffic()[("web", "http", "dnat")].packets == before
    assert all(r.outcome is Outcome.ANSWERED for r in a3.tcp_many("10.96.0.10", 80, 2))
    assert node.traffic()[("web", "http", "dnat")].packets > before


def test_exported_as_prometheus_counters(node: Node, topo: Topology) -> None:
    node.program(objects(), full=True)
    topo.prober("a3").tcp("10.96.0.10", 80, timeout=3.0)
    metrics = ProxyMetrics(mode=node.mode, process_metrics=False)
    metrics.count_service_traffic(lambda: node.writer.traffic(node.plan))  # type: ignore[arg-type]
    text = metrics.render().decode()
    labels = '{namespace="shop",port="http",service="web",verdict="dnat"}'
    values = dict(ln.rsplit(" ", 1) for ln in text.splitlines() if not ln.startswith("#"))
    assert float(values[f"kubeproxy_py_service_packets_total{labels}"]) >= 5
    assert float(values[f"kubeproxy_py_service_bytes_total{labels}"]) > 5 * 40


def test_a_deleted_services_counters_leave_the_ruleset(topo: Topology) -> None:
    """nftables: the element a deleted Service's packets made is deleted at the second
    reading that finds it without a service port (not an hour later), in a transaction
    the writer reports as its own; a new Service on the same address starts from zero."""
    node = Node(topo, ProxyMode.NFTABLES)

    def counted() -> str:
        listing = node.executor.run(["nft", "list", "set", "ip", "kube-proxy", "traffic-reject"])
        return listing.stdout

    try:
        node.program(objects(other=True), full=True)
        a3 = topo.prober("a3")
        assert a3.tcp("10.96.0.13", 81, timeout=3.0).outcome is Outcome.REFUSED
        assert a3.tcp("10.96.0.11", 8080, timeout=3.0).outcome is Outcome.REFUSED
        assert node.traffic()[("other", "81", "reject")].packets == 1
        assert "10.96.0.13 . tcp . 81" in counted()
        node.program(objects(), full=False)  # the Service "other" is deleted
        assert ("other", "81", "reject") not in node.traffic()
        assert "10.96.0.13 . tcp . 81" in counted()  # one reading: maybe not synced yet
        assert node.writer.take_own_writes() == []
        node.traffic()
        assert "10.96.0.13" not in counted()
        assert "10.96.0.11 . tcp . 8080" in counted()  # a live Service's count stays
        writes = node.writer.take_own_writes()
        assert len(writes) == 1 and writes[0][0] != writes[0][1], writes
        node.program(objects(other=True), full=False)  # back, same address and port
        assert a3.tcp("10.96.0.13", 81, timeout=3.0).outcome is Outcome.REFUSED
        assert node.traffic()[("other", "81", "reject")].packets == 1
    finally:
        remove_rules(node.executor, list(ProxyMode))
        topo.flush_conntrack("node-a")


def test_the_kernel_takes_the_traffic_tree_of_spread_addresses(topo: Topology) -> None:
    """nf_tables refuses chains reachable more than 16 jumps deep: the iptables counting
    tree for addresses that split at every bit is taken as it is, by the nft backend."""
    objs: list[dict[str, Any]] = list(NODES)
    base = int(ipaddress.ip_address("10.96.0.0"))
    cips = [str(ipaddress.ip_address(base + (1 << b))) for b in range(16)]
    cips += [f"10.96.0.{i}" for i in range(3, 40, 2)] + ["203.0.113.60"]
    objs += [m.service(f"s{i}", cip, [m.Port(80)]) for i, cip in enumerate(dict.fromkeys(cips))]
    n = Node(topo, ProxyMode.IPTABLES)
    try:
        n.program(objs, full=True)  # raises if iptables-nft-restore refuses it
        assert n.plan is not None and len(n.plan.service_ports) == len(set(cips))
    finally:
        remove_rules(n.executor, list(ProxyMode))
