"""Stale UDP conntrack cleanup against the real kernel, in both modes.

A UDP "flow" is pinned by its source port (``sport``): while its conntrack entry lives,
every datagram of it follows the entry, not the rules. Each test first shows that
without cleanup the flow still goes to the old place (so the test can fail), then that
after ``ConntrackCleaner.cleanup()`` the same flow reaches the new endpoint, and that
nothing else in the table was touched. Conntrack is flushed (with the CLI: test-only)
at the start of each test so that entry counts are exact.

The tests after those work on the netlink client itself (``proxy.kernel.ctnetlink``) in
a fresh namespace, with entries created over ctnetlink by the test (``IPCTNL_MSG_CT_NEW``,
as ``conntrack -I`` does): the kernel's protocol filter, IPv6, thousands of deletions at
once, entries already gone, a dump of 60,000 entries read both ways (the fixed-layout
fast path and the generic attribute walk), an interrupted dump.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.conntrack import ConntrackCleaner, ConntrackError, FlowEntry, UdpTarget, udp_targets
from proxy.harness import Outcome, Topology
from proxy.host.spec import default_spec
from proxy.iptables import render as ipt_render
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel import ctnetlink as ct
from proxy.kernel.addresses import local_addresses
from proxy.kernel.executor import Executor
from proxy.kernel.nfnetlink import NLM_F_CREATE, attr, be32, nest
from proxy.model import IPFamily
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
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
            executor = Executor(self.topo.ns(node))
            config = ProxyConfig(
                node,
                mode=self.mode,
                cluster_cidrs=(CLUSTER_CIDR,),
                host_addresses=local_addresses(executor),
            )
            p = plan(state.snapshot, config)
            if self.mode is ProxyMode.IPTABLES:
                IptablesKernel(executor).full_sync(ipt_render.render(p))
            else:
                NftKernel(executor).full_sync(nft_render.render(p))
            plans[node] = p
        return plans

    def cleanup_rules(self) -> None:
        for node in NODE_IP:
            executor = Executor(self.topo.ns(node))
            NftKernel(executor).cleanup()
            IptablesKernel(executor, variant="nft").cleanup()

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
    assert missing not in listed  # it was not created


# ---------------------------------------------------------------------------------------
# the netlink client, on entries the test creates

NLM_F_EXCL = 0x200
CTA_PROTOINFO_TCP = CTA_PROTOINFO_TCP_STATE = 1
TCP_CONNTRACK_ESTABLISHED = 3
UDP, TCP = socket.IPPROTO_UDP, socket.IPPROTO_TCP
V4, V6 = socket.AF_INET, socket.AF_INET6


@dataclasses.dataclass(frozen=True)
class Fake:
    """A conntrack entry to create: ``src:sport -> dst:dport``, answered by
    ``reply_src:reply_sport`` (the endpoint it was DNATed to; default: ``dst:dport``)."""

    family: int
    src: str
    dst: str
    sport: int
    dport: int
    proto: int = UDP
    reply_src: str | None = None
    reply_sport: int | None = None

    def request(self) -> ct.Request:
        rsrc = self.reply_src or self.dst
        rsport = self.reply_sport or self.dport
        f, p = self.family, self.proto
        payload = nest(
            ct.CTA_TUPLE_ORIG, ct.tuple_attrs(f, self.src, self.dst, p, self.sport, self.dport)
        )
        payload += nest(
            ct.CTA_TUPLE_REPLY, ct.tuple_attrs(f, rsrc, self.src, p, rsport, self.sport)
        )
        payload += be32(ct.CTA_STATUS, ct.IPS_CONFIRMED | ct.IPS_ASSURED | ct.IPS_SEEN_REPLY)
        payload += be32(ct.CTA_TIMEOUT, 600)
        if p == TCP:
            state = attr(CTA_PROTOINFO_TCP_STATE, bytes([TCP_CONNTRACK_ESTABLISHED]))
            payload += nest(ct.CTA_PROTOINFO, nest(CTA_PROTOINFO_TCP, state))
        return ct.Request(ct.IPCTNL_MSG_CT_NEW, f, payload, NLM_F_CREATE | NLM_F_EXCL)

    def flow(self) -> FlowEntry:
        """The entry as the cleaner reads it back (addresses in canonical spelling)."""
        return FlowEntry(
            str(ipaddress.ip_address(self.src)),
            str(ipaddress.ip_address(self.dst)),
            self.sport,
            self.dport,
            str(ipaddress.ip_address(self.reply_src or self.dst)),
            self.reply_sport or self.dport,
            IPFamily.V4 if self.family == V4 else IPFamily.V6,
        )


def create(netns: str, fakes: Sequence[Fake]) -> None:
    with ct.CtNetlinkSocket(netns) as sock:
        codes = sock.send([f.request() for f in fakes])
    assert codes == [0] * len(fakes), {os.strerror(c) for c in codes if c}


def udp4(n: int) -> list[Fake]:
    """n UDP entries to 198.19.0.1:53 from distinct ip:port pairs of 198.18.0.0/16."""
    return [
        Fake(
            V4,
            f"198.18.{i // 50_000}.{(i // 250) % 200 + 1}",
            "198.19.0.1",
            1024 + i % 250 * 200 + i // 50_000,
            53,
        )
        for i in range(n)
    ]


def raw_dump(netns: str, family: int) -> ct.UdpDump[ct.Flow]:
    with ct.CtNetlinkSocket(netns) as sock:
        return sock.dump_udp(family, lambda *flow: flow)


def test_the_kernel_filters_the_dump_on_udp(netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    udp = udp4(300)
    tcp = [Fake(V4, "198.18.9.1", "198.19.0.2", 2000 + i, 80, TCP) for i in range(200)]
    other_family = [Fake(V6, "fd00::1", "fd00::2", 3000 + i, 53) for i in range(50)]
    create(netns, [*udp, *tcp, *other_family])

    dump = raw_dump(netns, V4)
    # only the UDP entries of the family crossed the socket (Linux 5.8+ filters)
    assert dump.returned == len(udp) and not dump.interrupted
    assert {FlowEntry(*flow, IPFamily.V4) for flow in dump.flows} == {f.flow() for f in udp}
    assert set(ConntrackCleaner(netns).dump_udp([IPFamily.V4])) == {f.flow() for f in udp}

    # a kernel that refuses the filter (here: an unknown filter flag) is asked again
    # without it; the UDP check on our side keeps the answer the same
    refused = struct.pack("=I", 1 << 31)
    monkeypatch.setattr(ct, "UDP_FILTER", ct.UDP_FILTER[:-4] + refused)
    dump = raw_dump(netns, V4)
    assert dump.returned == len(udp) + len(tcp)
    assert {FlowEntry(*flow, IPFamily.V4) for flow in dump.flows} == {f.flow() for f in udp}


def test_ipv6_entries_are_read_deleted_and_cleaned(netns: str) -> None:
    vip, old, new = "fd00:96::53", "fd00:244:1::11", "fd00:244:2::11"
    stale = [
        Fake(V6, "fd00:244:1::13", vip, 4000 + i, 53, reply_src=old, reply_sport=5353)
        for i in range(20)
    ]
    kept = [
        Fake(V6, "fd00:244:1::13", vip, 5000 + i, 53, reply_src=new, reply_sport=5353)
        for i in range(20)
    ]
    unrelated = [Fake(V6, "fd00:244:1::13", "fd00:0:0:0:0:0:0:99", 6000, 99)]  # a long spelling
    ipv4 = udp4(10)
    create(netns, [*stale, *kept, *unrelated, *ipv4])

    cleaner = ConntrackCleaner(netns)
    six = cleaner.dump_udp([IPFamily.V6])
    assert set(six) == {f.flow() for f in [*stale, *kept, *unrelated]}
    assert all(e.family is IPFamily.V6 for e in six)
    assert "fd00::99" in {e.orig_dst for e in six}  # the kernel's bytes, canonical text

    target = UdpTarget("default/dns6:dns", frozenset({vip}), 53, None, frozenset({(new, 5353)}))
    assert cleaner.cleanup([target]) == len(stale)
    assert set(cleaner.dump_udp()) == {f.flow() for f in [*kept, *unrelated, *ipv4]}
    assert cleaner.delete([unrelated[0].flow()]) == 1
    assert set(cleaner.dump_udp([IPFamily.V6])) == {f.flow() for f in kept}


def test_thousands_of_entries_are_deleted_at_once(
    netns: str, caplog: pytest.LogCaptureFixture
) -> None:
    fakes = udp4(5000)
    create(netns, fakes)
    cleaner = ConntrackCleaner(netns)
    assert len(cleaner.dump_udp([IPFamily.V4])) == 5000

    doomed = [f.flow() for f in fakes[::2]] + [f.flow() for f in fakes[1:1000:2]]
    with caplog.at_level(logging.ERROR, logger="proxy.conntrack"):
        assert cleaner.delete(doomed) == len(doomed) == 3000  # 12 datagrams of requests
    assert not caplog.records
    assert set(cleaner.dump_udp([IPFamily.V4])) == {f.flow() for f in fakes[1001::2]}
    count = subprocess.run(
        ["ip", "netns", "exec", netns, "conntrack", "-C"], capture_output=True, text=True
    )
    assert count.stdout.strip() == "2000"


def test_an_entry_already_gone_is_not_an_error(
    netns: str, caplog: pytest.LogCaptureFixture
) -> None:
    fakes = udp4(10)
    create(netns, fakes)
    cleaner = ConntrackCleaner(netns)
    entries = cleaner.dump_udp([IPFamily.V4])
    never = Fake(V4, "198.18.200.1", "198.19.0.1", 9999, 53).flow()
    with caplog.at_level(logging.ERROR, logger="proxy.conntrack"):
        assert cleaner.delete(entries[:4]) == 4
        # gone meanwhile (deleted above, or never there): ENOENT, not counted, not logged
        assert cleaner.delete([*entries[:4], never, *entries[4:]]) == 6
        assert cleaner.delete(entries) == 0
    assert not caplog.records
    with ct.CtNetlinkSocket(netns) as sock:
        codes = sock.delete(
            V4, [(e.orig_src, e.orig_dst, e.orig_sport, e.orig_dport) for e in entries[:2]]
        )
    assert codes == [errno.ENOENT] * 2


def test_a_large_dump_reads_the_same_on_the_fast_and_the_generic_path(
    netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = udp4(60_000)
    fakes += [Fake(V6, f"fd00:18::{i % 100:x}", "fd00:19::1", 1024 + i, 53) for i in range(3000)]
    create(netns, fakes)
    expected = {f.flow() for f in fakes}
    fast = ConntrackCleaner(netns).dump_udp()
    assert len(fast) == 63_000 and set(fast) == expected

    # a template that never matches sends every entry through the attribute walk
    for family, layout in list(ct._LAYOUTS.items()):
        monkeypatch.setitem(ct._LAYOUTS, family, dataclasses.replace(layout, template=-1))
    generic = ConntrackCleaner(netns).dump_udp()
    assert generic == fast


def test_answers_lost_to_a_full_receive_buffer_count_as_enobufs(netns: str) -> None:
    fakes = udp4(600)
    create(netns, fakes)
    flows = [(f.src, f.dst, f.sport, f.dport) for f in fakes]
    with ct.CtNetlinkSocket(netns) as sock:
        sock._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a few answers
        codes = sock.delete(V4, flows)
        assert set(codes) == {0, errno.ENOBUFS}, set(codes)
        # the socket is still usable, and the kernel did delete every entry
        sock._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        assert sock.delete(V4, flows[:10]) == [errno.ENOENT] * 10
    assert ConntrackCleaner(netns).dump_udp() == []


def test_an_interrupted_dump_is_used_as_far_as_it_got(
    netns: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fakes = udp4(2000)
    create(netns, fakes)
    feed = ct.UdpDump.feed
    seen: list[int] = []

    def interrupted(self: ct.UdpDump[Any], data: bytes) -> None:
        """The kernel's datagrams, the third one flagged NLM_F_DUMP_INTR, as when the
        table changed while it was being dumped (hard to make happen on purpose)."""
        seen.append(len(data))
        if len(seen) == 3:
            flags = struct.unpack_from("=H", data, 6)[0] | 0x10
            data = data[:6] + struct.pack("=H", flags) + data[8:]
        feed(self, data)

    monkeypatch.setattr(ct.UdpDump, "feed", interrupted)
    with caplog.at_level(logging.WARNING, logger="proxy.conntrack"):
        entries = ConntrackCleaner(netns).dump_udp([IPFamily.V4])
    assert len(seen) > 3
    assert set(entries) == {f.flow() for f in fakes}
    assert [r.getMessage() for r in caplog.records] == [
        "conntrack dump interrupted; continuing with a partial list"
    ]


def test_without_cap_net_admin_the_error_says_so(netns: str) -> None:
    """The kernel refuses the dump (EPERM) to a process without CAP_NET_ADMIN."""
    code = (
        "from proxy.conntrack import ConntrackCleaner, ConntrackError\n"
        "try:\n    ConntrackCleaner().dump_udp()\n"
        "except ConntrackError as exc:\n    print(exc)\n"
    )
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    out = subprocess.run(
        ["ip", "netns", "exec", netns, *nobody, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert out.stdout.strip() == (
        "reading conntrack in this network namespace needs CAP_NET_ADMIN (run as root or "
        "grant the capability)"
    ), out.stderr
