"""The proxier's sync decisions against the real kernel: incremental between full syncs,
full at start, on Node changes and every sync period (which repairs deleted rules)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import manifests as m
from proxy.agent.proxier import Proxier, SyncResult
from proxy.agent.state import ClusterState
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables.kernel import CANARY_CHAIN, VARIANT_ENV, IptablesKernel
from proxy.kernel.executor import Executor
from proxy.model import IPFamily

pytestmark = pytest.mark.netns
ROOT = str(Path(__file__).resolve().parents[2])


class Recorder:
    def __init__(self) -> None:
        self.results: list[SyncResult] = []
        self.failures: list[str] = []

    def sync_done(self, result: SyncResult) -> None:
        self.results.append(result)

    def last(self) -> SyncResult:
        """The newest sync's result (a call: each assert reads the sync it just made)."""
        return self.results[-1]

    def sync_failed(self, mode: ProxyMode, full: bool, error: str, family: IPFamily) -> None:
        self.failures.append(error)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def listing(ns: str, mode: ProxyMode, variant: str = "nft") -> str:
    argv = (
        ["nft", "-s", "list", "ruleset"]
        if mode is ProxyMode.NFTABLES
        else [f"iptables-{variant}-save"]
    )
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True
    ).stdout


def legacy_proxier(
    netns: str, monkeypatch: pytest.MonkeyPatch, cluster_cidr: str
) -> tuple[Proxier, ClusterState, Recorder, Clock]:
    """An iptables-mode proxier on node-a writing legacy iptables into ``netns``."""
    monkeypatch.setenv(VARIANT_ENV, "legacy")
    clock = Clock()
    state = ClusterState("node-a")
    rec = Recorder()
    cfg = ProxyConfig(
        "node-a", mode=ProxyMode.IPTABLES,
        cluster_cidrs=(ipaddress.ip_network(cluster_cidr),),
    )  # fmt: skip
    proxier = Proxier(
        cfg, state, sync_period=30, observer=rec, executor=Executor(netns), clock=clock
    )
    return proxier, state, rec, clock


@pytest.mark.parametrize("mode", list(ProxyMode), ids=str)
def test_full_and_incremental_syncs(netns: str, mode: ProxyMode) -> None:
    clock = Clock()
    state = ClusterState("node-a")
    rec = Recorder()
    cfg = ProxyConfig("node-a", mode=mode, cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    proxier = Proxier(
        cfg, state, sync_period=30, observer=rec, executor=Executor(netns), clock=clock
    )
    state.handle("Node", "ADDED", m.node("node-a", "192.168.50.11", zone="z1"))
    state.handle("Service", "ADDED", m.service("web", "10.96.0.10", [m.Port(80)]))
    sl = m.endpoint_slice("web", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")])
    state.handle("EndpointSlice", "ADDED", sl)

    assert proxier.sync_proxy_rules() and rec.last().full  # the first sync is full
    assert "10.244.1.5" in listing(netns, mode)

    sl["endpoints"].append(m.EP("10.244.2.7", "node-b").render())
    state.handle("EndpointSlice", "MODIFIED", sl)
    clock.now += 5
    assert proxier.sync_proxy_rules() and not rec.last().full and rec.last().changed
    assert "10.244.2.7" in listing(netns, mode)

    clock.now += 5
    assert proxier.sync_proxy_rules() and not rec.last().full and not rec.last().changed

    state.handle("Node", "MODIFIED", m.node("node-a", "192.168.50.11", zone="z2"))
    clock.now += 5
    assert proxier.sync_proxy_rules() and rec.last().full  # the Node changed

    clock.now += 31
    assert proxier.sync_proxy_rules() and not rec.last().full  # a sync period alone: incremental

    # someone deletes our rules: the nf_tables generation moves, the next sync is full
    if mode is ProxyMode.NFTABLES:
        cmd = ["nft", "flush", "map", "ip", "kube-proxy", "service-ips"]
    else:
        cmd = ["iptables", "-t", "nat", "-F", "KUBE-SERVICES"]
    subprocess.run(["ip", "netns", "exec", netns, *cmd], check=True)
    gone = listing(netns, mode)
    assert "10.96.0.10 . tcp . 80" not in gone and "-A KUBE-SERVICES -d 10.96.0.10/32" not in gone
    clock.now += 1
    assert proxier.sync_proxy_rules() and rec.last().full
    text = listing(netns, mode)
    assert (
        ("10.96.0.10 . tcp . 80" in text)
        if mode is ProxyMode.NFTABLES
        else ("-A KUBE-SERVICES -d 10.96.0.10/32" in text)
    )
    clock.now += 1
    assert proxier.sync_proxy_rules() and not rec.last().full  # our own commits are not drift

    clock.now += 3601
    assert proxier.sync_proxy_rules() and rec.last().full  # hourly, as upstream
    assert rec.failures == []


def test_deleting_stale_counters_is_not_taken_for_drift(netns: str) -> None:
    """nftables with --metrics-service-counters: the counters' thread deletes an element
    no service port owns (a deleted Service's) in a transaction of its own, which moves
    the nf_tables generation; the proxier knows it as its own, so the next sync stays
    incremental (someone else's commit would make it full)."""
    clock = Clock()
    state = ClusterState("node-a")
    rec = Recorder()
    cfg = ProxyConfig("node-a", mode=ProxyMode.NFTABLES, service_counters=True)
    proxier = Proxier(
        cfg, state, sync_period=30, observer=rec, executor=Executor(netns), clock=clock
    )
    state.handle("Node", "ADDED", m.node("node-a", "192.168.50.11"))
    state.handle("Service", "ADDED", m.service("web", "10.96.0.10", [m.Port(80)]))
    assert proxier.sync_proxy_rules() and rec.last().full
    left = "10.96.0.99 . tcp . 81"  # what a deleted Service's packets left behind
    nft = ["ip", "netns", "exec", netns, "nft"]
    element = f"{{ {left} counter packets 1 bytes 60 }}"  # as a packet's `update` makes it
    subprocess.run([*nft, "add", "element", "ip", "kube-proxy", "traffic-reject", element],
                   check=True)  # fmt: skip
    clock.now += 1
    assert proxier.sync_proxy_rules() and rec.last().full  # someone else's commit
    assert proxier.traffic() == [] and left in listing(netns, ProxyMode.NFTABLES)
    assert proxier.traffic() == [] and left not in listing(netns, ProxyMode.NFTABLES)
    clock.now += 1
    assert proxier.sync_proxy_rules() and not rec.last().full  # ours: not drift
    assert rec.failures == []


def test_legacy_iptables_canary_brings_a_full_sync(
    netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Legacy iptables has no generation counter: a full sync declares a canary chain with
    one rule in the mangle, filter and nat tables, listed once a sync period; a flush of a
    table's rules (which upstream's empty canaries survive) or a deleted canary brings a
    full sync."""
    proxier, state, rec, clock = legacy_proxier(netns, monkeypatch, "10.244.0.0/16")
    state.handle("Node", "ADDED", m.node("node-a", "192.168.50.11"))
    state.handle("Service", "ADDED", m.service("web", "10.96.0.10", [m.Port(80)]))
    sl = m.endpoint_slice("web", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")])
    state.handle("EndpointSlice", "ADDED", sl)
    assert proxier.sync_proxy_rules() and rec.last().full
    text = listing(netns, ProxyMode.IPTABLES, "legacy")
    assert text.count(f"-A {CANARY_CHAIN} -j RETURN") == 3  # mangle, filter and nat
    served = "-A KUBE-SERVICES -d 10.96.0.10/32"
    assert served in text
    for _ in range(2):  # a sync period with the canaries standing: incremental
        clock.now += 20
        assert proxier.sync_proxy_rules() and not rec.last().full

    def ipt(*args: str) -> None:
        subprocess.run(["ip", "netns", "exec", netns, "iptables-legacy", *args], check=True)

    for damage in (("-t", "nat", "-F"), ("-t", "filter", "-F", CANARY_CHAIN)):
        ipt(*damage)
        assert served not in listing(netns, ProxyMode.IPTABLES, "legacy") or damage[1] == "filter"
        clock.now += 31
        assert proxier.sync_proxy_rules() and rec.last().full, damage
        assert served in listing(netns, ProxyMode.IPTABLES, "legacy")
    ipt("-t", "mangle", "-F", CANARY_CHAIN)
    ipt("-t", "mangle", "-X", CANARY_CHAIN)
    clock.now += 31
    assert proxier.sync_proxy_rules() and rec.last().full
    text = listing(netns, ProxyMode.IPTABLES, "legacy")
    assert served in text and f":{CANARY_CHAIN} - " in text
    clock.now += 31
    assert proxier.sync_proxy_rules() and not rec.last().full

    assert IptablesKernel(Executor(netns)).cleanup()
    text = listing(netns, ProxyMode.IPTABLES, "legacy")
    assert "KUBE-" not in text
    assert rec.failures == []


def test_large_cluster_rules_read_back_and_skip_the_hourly_full_sync(
    netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 1,000 endpoint chains: the kernel holds the comment-less per-endpoint rules
    exactly as rendered, and, as upstream, only drift (not the hour) brings a full sync."""
    import re

    from proxy.iptables import render as ipt_render
    from proxy.iptables import save as ipt_save

    proxier, state, rec, clock = legacy_proxier(netns, monkeypatch, "10.128.0.0/9")
    for obj in m.synthetic_cluster(101, 10):
        state.handle(obj["kind"], "ADDED", obj)
    assert proxier.sync_proxy_rules() and rec.last().full
    last = proxier.last_plan
    assert last is not None and ipt_render.large_cluster(last)

    saved = ipt_save.parse_save(listing(netns, ProxyMode.IPTABLES, "legacy"))
    rendered = ipt_render.render(last)

    def norm(rule: str) -> str:
        return re.sub(r"--probability \d\.\d+", "--probability P", rule)

    for chain, rules in rendered.nat.items():
        assert [norm(r) for r in saved.rules[("nat", chain)]] == [norm(r) for r in rules]
    seps = [r for (t, c), rs in saved.rules.items() if c.startswith("KUBE-SEP-") for r in rs]
    assert len(seps) == 2 * 1010 and not any("comment" in r for r in seps)

    clock.now += 3601
    assert proxier.sync_proxy_rules() and not rec.last().full  # no hourly full sync
    subprocess.run(["ip", "netns", "exec", netns, "iptables-legacy", "-t", "nat", "-F"],
                   check=True)  # fmt: skip
    clock.now += 31
    assert proxier.sync_proxy_rules() and rec.last().full  # drift still brings one
    assert rec.failures == []


READ_ONLY_SYSCTL_SCRIPT = """
import ipaddress, json, subprocess, sys
subprocess.run(["mount", "--bind", "/proc/sys", "/proc/sys"], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", "/proc/sys"], check=True)
from proxy import manifests as m
from proxy.agent.proxier import Proxier
from proxy.agent.state import ClusterState
from proxy.config import ProxyConfig, ProxyMode
from proxy.kernel.executor import Executor
state = ClusterState("node-a")
cfg = ProxyConfig("node-a", mode=ProxyMode.IPTABLES,
                  cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
proxier = Proxier(cfg, state, sync_period=30, executor=Executor(sys.argv[1]))
state.handle("Node", "ADDED", m.node("node-a", "192.168.50.11"))
state.handle("Service", "ADDED", m.service("web", "10.96.0.10", [m.Port(80, node_port=30080)],
                                          type="NodePort"))
state.handle("EndpointSlice", "ADDED", m.endpoint_slice(
    "web", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")]))
print(json.dumps([proxier.sync_proxy_rules(), proxier.sync_proxy_rules(), proxier.config.localhost_nodeports]))
"""


def test_read_only_proc_sys_turns_off_localhost_nodeports_only(netns: str) -> None:
    """A non-privileged container sees /proc/sys read-only: route_localnet cannot be set.
    The agent then programs every rule except the localhost NodePorts (it does not retry
    the sysctl for ever with no rules at all)."""
    before = subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-n", "net.ipv4.conf.all.route_localnet"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert before == "0"
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
         READ_ONLY_SYSCTL_SCRIPT, netns],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second, localhost = json.loads(done.stdout.strip().splitlines()[-1])
    assert (first, second, localhost) == (False, True, False)
    assert "NodePorts on 127.0.0.1 are turned off" in done.stderr
    rules = listing(netns, ProxyMode.IPTABLES)
    assert "10.96.0.10/32" in rules and "--dport 30080" in rules
    # NodePorts are matched off loopback only, as upstream does without localhost ones
    assert "! -d 127.0.0.0/8" in rules.split("*nat", 1)[1]
    assert "block incoming localnet connections" not in rules
    after = subprocess.run(
        ["ip", "netns", "exec", netns, "sysctl", "-n", "net.ipv4.conf.all.route_localnet"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert after == "0"
