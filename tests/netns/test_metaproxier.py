"""The meta-proxier against the real kernel: one proxier per IP family in one network
namespace, both tables (``ip``/``ip6 kube-proxy``, iptables/ip6tables) from one sync,
each family written only when its part changed, and one family's commits never taken by
the other for someone else's (nf_tables has one generation counter per namespace)."""

from __future__ import annotations

import ipaddress
import subprocess

import pytest

from proxy import manifests as m
from proxy.agent.metaproxier import MetaProxier
from proxy.agent.proxier import Proxier, SyncResult
from proxy.agent.state import ClusterState
from proxy.config import ProxyConfig, ProxyMode
from proxy.kernel.executor import Executor
from proxy.model import IPFamily
from proxy.modes import supported_families

pytestmark = pytest.mark.netns
CIDRS = (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:10:244::/48"))


class Recorder:
    def __init__(self) -> None:
        self.results: list[SyncResult] = []

    def sync_done(self, result: SyncResult) -> None:
        self.results.append(result)

    def sync_failed(self, mode: ProxyMode, full: bool, error: str, family: IPFamily) -> None:
        raise AssertionError(f"{family} sync failed: {error}")

    def take(self) -> dict[IPFamily, SyncResult]:
        """The results since the last take, by family."""
        out = {r.plan.family: r for r in self.results}
        assert len(out) == len(self.results), "one result per family and sync"
        self.results.clear()
        return out


def run(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True
    ).stdout


def listing(ns: str, mode: ProxyMode, family: IPFamily) -> str:
    if mode is ProxyMode.NFTABLES:
        table = "ip" if family is IPFamily.V4 else "ip6"
        return run(ns, "nft", "list", "table", table, "kube-proxy")
    return run(ns, "iptables-nft-save" if family is IPFamily.V4 else "ip6tables-nft-save")


@pytest.mark.parametrize("mode", list(ProxyMode), ids=str)
def test_dual_stack_node_programs_both_families_from_one_sync(netns: str, mode: ProxyMode) -> None:
    state = ClusterState("node-a")
    rec = Recorder()
    cfg = ProxyConfig("node-a", mode=mode, cluster_cidrs=CIDRS)
    executor = Executor(netns)
    meta = MetaProxier(
        state,
        [
            Proxier(cfg, state, 30, rec, executor=executor, family=family)
            for family in (IPFamily.V4, IPFamily.V6)
        ],
    )
    state.handle("Node", "ADDED", m.node("node-a", "192.168.50.11", "fd00:192:168:50::11"))
    svc = m.service("web", "10.96.0.10", [m.Port(80)], secondary_cluster_ip="fd00:10:96::10")
    state.handle("Service", "ADDED", svc)
    v4 = m.endpoint_slice("web", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")])
    v6 = m.endpoint_slice(
        "web",
        [m.EP("fd00:10:244:1::5", "node-a")],
        [("", 80, "TCP")],
        name="web-v6",
        address_type="IPv6",
    )
    state.handle("EndpointSlice", "ADDED", v4)
    state.handle("EndpointSlice", "ADDED", v6)

    assert meta.sync_proxy_rules()
    first = rec.take()
    assert set(first) == {IPFamily.V4, IPFamily.V6} and all(r.full for r in first.values())
    v4_rules, v6_rules = listing(netns, mode, IPFamily.V4), listing(netns, mode, IPFamily.V6)
    assert "10.96.0.10" in v4_rules and "10.244.1.5" in v4_rules and "fd00" not in v4_rules
    assert "fd00:10:96::10" in v6_rules and "fd00:10:244:1::5" in v6_rules
    assert "10.96.0.10" not in v6_rules

    # an IPv6 endpoint change: only the IPv6 proxier has something to write, and
    # neither takes the other's commits for someone else's change
    v6["endpoints"].append(m.EP("fd00:10:244:2::7", "node-b").render())
    state.handle("EndpointSlice", "MODIFIED", v6)
    assert meta.sync_proxy_rules()
    second = rec.take()
    assert not second[IPFamily.V4].full and not second[IPFamily.V4].changed
    assert not second[IPFamily.V6].full and second[IPFamily.V6].changed
    assert not any(r.drift for r in second.values())
    assert "fd00:10:244:2::7" in listing(netns, mode, IPFamily.V6)

    # a Service change reaches both, incrementally
    svc["spec"]["ports"][0]["port"] = 8080
    state.handle("Service", "MODIFIED", svc)
    assert meta.sync_proxy_rules()
    third = rec.take()
    assert all(not r.full and r.changed and not r.drift for r in third.values())

    # someone else's commit is seen by both families, and both repair theirs
    run(netns, "nft", "add", "table", "inet", "someone-else")
    assert meta.sync_proxy_rules()
    fourth = rec.take()
    assert all(r.full and r.drift for r in fourth.values())


@pytest.mark.parametrize("mode", list(ProxyMode), ids=str)
def test_a_node_without_ipv6_programs_ipv4_only(netns: str, mode: ProxyMode) -> None:
    executor = Executor(netns)
    assert supported_families(executor, mode) == {IPFamily.V4: None, IPFamily.V6: None}
    run(netns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
    support = supported_families(executor, mode)
    assert support[IPFamily.V4] is None
    assert support[IPFamily.V6] == "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6=1)"
