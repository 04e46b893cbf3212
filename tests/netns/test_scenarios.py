"""Every Service behaviour of design.md section 3, as packets in network namespaces.

Two nodes (node-a, node-b) run kube-proxy-py with the same state, as every node of a
cluster would; pods a1, a2 (node-a) and b1, b2 (node-b) serve TCP and UDP port 80 and
answer with their name and the client address they saw; a3 is a client pod on node-a;
"outside" is a client on the LAN that routes ExternalIPs and LB IPs via node-a. The
topology is dual-stack, so one serves every test in IPv4 and in IPv6: per family the
Services, EndpointSlices and addresses are the IPv4 ones or their IPv6 twins
(:func:`proxy.host.spec.v6_twin`: ClusterIP 10.96.0.10 is fd00:10:96::10), and each node
is programmed with that family's plan only. Each test runs in both modes; conntrack is
flushed after every re-programming.

Every probe is also explained (``kube-proxy-py explain``, from the plan of the node the
packet enters) and traced in that node's kernel (nftrace / xtables TRACE): a test fails
when the kernel did something else than the explanation says (``explain --verify`` over
every scenario). A burst of connections is checked through one more traced connection.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.explain import kernelcheck, report
from proxy.explain.engine import NodeView, explain
from proxy.explain.packet import Entry, Packet
from proxy.harness import Outcome, ProbeResult, Topology
from proxy.host.spec import default_spec, pick, v6_twin
from proxy.iptables import render as ipt_render
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.addresses import local_addresses
from proxy.kernel.executor import Executor
from proxy.model import IPFamily, Protocol
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
from proxy.plan import Plan, plan
from proxy.source.file import build_state

pytestmark = pytest.mark.netns

SPEC = default_spec((4, 6))
FAMILIES = (IPFamily.V4, IPFamily.V6)
NODES = tuple(n.name for n in SPEC.nodes)
POD_NODE = {p.name: p.node for p in SPEC.pods}
CLUSTER_CIDRS = (
    ipaddress.ip_network("10.244.0.0/16"),
    ipaddress.ip_network(v6_twin("10.244.0.0/16")),
)
SERVERS = {"a1", "a2", "b1", "b2"}
NODE_PORT = 30080
PORT_UNREACHABLE = {IPFamily.V4: "icmp 3/3", IPFamily.V6: "icmp6 1/4"}
QUICK = 0.5  # timeout for probes that must get no answer
ANSWER = 3.0
"""Timeout for probes that must be answered: long enough for one TCP SYN retransmission
(after 1 s). Thousands of connections leave TIME_WAIT sockets in the pods; a new
connection that reuses a client port and lands on the same pod 4-tuple through another
VIP can have its first SYN ignored, which a real client survives by retransmitting."""

NODE_OBJS = [
    m.node(n.name, n.lan_ips, zone=zone, pod_cidr=n.pod_cidrs)
    for n, zone in zip(SPEC.nodes, ("z1", "z2"), strict=True)
]

# outcomes observed per mode, for the closing report (KPP_SCENARIO_LOG=path)
_REPORT: list[dict[str, str]] = []
# every probe explained and checked against the kernel
_CHECKS: list[dict[str, Any]] = []


@dataclass(frozen=True)
class Addresses:
    """The addresses of one IP family: the IPv4 ones, or their IPv6 twins."""

    family: IPFamily
    ip: dict[str, str]
    """Pod name to its address."""
    node_ip: dict[str, str]
    outside: str
    localhost: str

    def of(self, ipv4: str) -> str:
        """An IPv4 address or CIDR of the tests, in this family."""
        return ipv4 if self.family is IPFamily.V4 else v6_twin(ipv4)

    def host(self, ip: str) -> str:
        """``ip`` as a one-address CIDR."""
        return f"{ip}/{32 if self.family is IPFamily.V4 else 128}"

    @property
    def cip(self) -> str:
        return self.of("10.96.0.10")

    @property
    def eip(self) -> str:
        return self.of("203.0.113.10")

    @property
    def lbip(self) -> str:
        return self.of("198.51.100.10")


def addresses(family: IPFamily) -> Addresses:
    v = 4 if family is IPFamily.V4 else 6
    return Addresses(
        family,
        ip={p.name: pick(p.ips, v) for p in SPEC.pods},
        node_ip={n.name: pick(n.lan_ips, v) for n in SPEC.nodes},
        outside=pick(SPEC.clients[0].lan_ips, v),
        localhost="127.0.0.1" if v == 4 else "::1",
    )


class Lab:
    """Programs both nodes from one state in one IP family and probes from any namespace."""

    def __init__(self, topo: Topology, mode: ProxyMode, family: IPFamily) -> None:
        self.topo = topo
        self.mode = mode
        self.family = family
        self.a = addresses(family)
        self._kernels: dict[str, IptablesKernel | NftKernel] = {}
        self.plans: dict[str, Plan] | None = None
        """Each node's plan, while it is what the kernel holds (None: not programmed)."""
        self.services: tuple[Any, ...] = ()
        self.local: dict[str, NodeView] = {}

    # -- the family's objects ------------------------------------------------------------
    @property
    def ip(self) -> dict[str, str]:
        return self.a.ip

    @property
    def node_ip(self) -> dict[str, str]:
        return self.a.node_ip

    @property
    def outside(self) -> str:
        return self.a.outside

    @property
    def cip(self) -> str:
        return self.a.cip

    @property
    def eip(self) -> str:
        return self.a.eip

    @property
    def lbip(self) -> str:
        return self.a.lbip

    def eps(self, *pods: str, **kw: Any) -> list[m.EP]:
        return [m.EP(self.ip[p], node=POD_NODE[p], **kw) for p in pods]

    def service(self, name: str, cip: str, ports: list[m.Port], **kw: Any) -> dict[str, Any]:
        """A single-stack Service of the family (``ipFamilies`` as the API defaults it)."""
        if cip not in ("", "None"):
            kw.setdefault("ip_families", [self.family.value])
        return m.service(name, cip, ports, **kw)

    def slice(
        self, name: str, pods: list[m.EP] | tuple[m.EP, ...], ports: list[tuple[str, int, str]]
    ) -> dict[str, Any]:
        return m.endpoint_slice(name, pods, ports, address_type=self.family.value)

    def web(
        self,
        pods: list[m.EP] | tuple[m.EP, ...] = (),
        *,
        name: str = "web",
        cip: str | None = None,
        node_port: int | None = None,
        **kw: Any,
    ) -> list[dict[str, Any]]:
        """A Service with TCP and UDP port 80 and its EndpointSlice."""
        ports = [
            m.Port(80, "tcp", "TCP", node_port=node_port),
            m.Port(80, "udp", "UDP", node_port=node_port),
        ]
        if node_port is not None and "type" not in kw:
            kw["type"] = "NodePort"
        svc = self.service(name, self.cip if cip is None else cip, ports, **kw)
        sl = self.slice(name, pods, [("tcp", 80, "TCP"), ("udp", 80, "UDP")])
        return [svc, sl]

    # -- kernels -------------------------------------------------------------------------
    def kernel(self, node: str) -> IptablesKernel | NftKernel:
        if node not in self._kernels:
            executor = Executor(self.topo.ns(node))
            self._kernels[node] = (
                IptablesKernel(executor, self.family)
                if self.mode is ProxyMode.IPTABLES
                else NftKernel(executor, self.family)
            )
        return self._kernels[node]

    def program(self, *groups: list[dict[str, Any]], **cfg: Any) -> None:
        objs = [o for g in groups for o in g]
        self.plans = {}
        for node in NODES:
            state = build_state([*NODE_OBJS, *objs], node)
            assert state.problems == (), state.problems
            executor = Executor(self.topo.ns(node))
            config = ProxyConfig(
                node,
                mode=self.mode,
                cluster_cidrs=CLUSTER_CIDRS,
                host_addresses=local_addresses(executor),
                **cfg,
            )
            p = plan(state.snapshot, config, self.family)
            self.plans[node] = p
            self.services = state.snapshot.services
            self.local[node] = NodeView(frozenset(config.host_addresses))
            k = self.kernel(node)
            if isinstance(k, IptablesKernel):
                k.full_sync(ipt_render.render(p))
            else:
                k.full_sync(nft_render.render(p))
        for node in NODES:
            self.topo.flush_conntrack(node)

    def cleanup(self) -> None:
        """Remove every mode's rules of both families."""
        self.plans = None
        for node in NODES:
            executor = Executor(self.topo.ns(node))
            for family in FAMILIES:
                NftKernel(executor, family).cleanup()
                IptablesKernel(executor, family, variant="nft").cleanup()

    # -- probes ------------------------------------------------------------------------
    def tcp(self, src: str, dst: str, port: int = 80, **kw: Any) -> ProbeResult:
        kw.setdefault("timeout", ANSWER)
        r = self.traced(
            src, dst, port, Protocol.TCP, lambda: self.topo.prober(src).tcp(dst, port, **kw)
        )
        return self._log(src, f"tcp {dst}:{port}", r)

    def udp(self, src: str, dst: str, port: int = 80, **kw: Any) -> ProbeResult:
        r = self.traced(
            src, dst, port, Protocol.UDP, lambda: self.topo.prober(src).udp(dst, port, **kw)
        )
        return self._log(src, f"udp {dst}:{port}", r)

    def syn(self, src: str, dst: str, port: int, timeout: float) -> ProbeResult:
        """A SYN crafted with scapy."""
        prober = self.topo.prober(src)
        r = self.traced(
            src, dst, port, Protocol.TCP, lambda: prober.tcp_syn(dst, port, timeout=timeout)
        )
        return self._log(src, f"tcp-syn {dst}:{port}", r)

    def ping(self, src: str, dst: str, timeout: float) -> ProbeResult:
        """An ICMP(v6) echo request crafted with scapy."""
        prober = self.topo.prober(src)
        r = self.traced(src, dst, None, None, lambda: prober.icmp_echo(dst, timeout=timeout))
        return self._log(src, f"icmp-echo {dst}", r)

    # -- explain --verify ------------------------------------------------------------
    def entering(self, src: str, dst: str) -> tuple[str, Entry]:
        """The node whose rules the packet meets first, and how it enters them."""
        if src in NODES:
            return src, Entry.NODE
        if src in POD_NODE:
            return POD_NODE[src], Entry.POD
        # the outside client: to a node's own address, or through node-a (its routes)
        node = next((n for n, ip in self.node_ip.items() if ip == dst), "node-a")
        return node, Entry.EXTERNAL

    def source(self, src: str, node: str, entry: Entry, dst: str) -> str:
        if entry is Entry.POD:
            return self.ip[src]
        if entry is Entry.EXTERNAL:
            return self.outside
        route = self.topo.run(node, ["ip", "-j", "route", "get", dst]).stdout
        return str(json.loads(route)[0]["prefsrc"])

    def traced(
        self,
        src: str,
        dst: str,
        port: int | None,
        proto: Protocol | None,
        send: Callable[[], ProbeResult],
    ) -> ProbeResult:
        """``send()``, with the packet explained from the plan of the node it enters and
        traced in that node's kernel: the test fails where the two differ."""
        if self.plans is None:
            return send()
        node, entry = self.entering(src, dst)
        ip = ipaddress.ip_address
        packet = Packet(ip(self.source(src, node, entry, dst)), ip(dst), proto, port, entry)
        why = explain(self.plans[node], packet, node=self.local[node], services=self.services)
        sent: list[ProbeResult] = []
        check = kernelcheck.check_in(
            self.topo.ns(node), self.mode, why, lambda: sent.append(send())
        )
        _CHECKS.append({"mode": self.mode.value, "packet": str(packet), "verdict": why.verdict.value,
                        "agrees": check.agrees})  # fmt: skip
        assert check.agrees, (
            f"on {node}: {packet}\n"
            + report.to_text(why)
            + kernelcheck.to_text(check)
            + "monitor:\n"
            + "\n".join(check.monitor)
        )
        return sent[0]

    def many(self, src: str, dst: str, port: int = 80, count: int = 60) -> Counter[str]:
        self.tcp(src, dst, port)  # one traced connection checks the rules the burst meets
        results = self.topo.prober(src).tcp_many(dst, port, count, timeout=ANSWER)
        assert all(r.outcome is Outcome.ANSWERED for r in results), {
            r.detail for r in results if r.outcome is not Outcome.ANSWERED
        }
        counts = Counter(r.endpoint or "?" for r in results)
        self._log(src, f"{count}x tcp {dst}:{port}", None, dict(counts))
        return counts

    def sources(self, src: str, dst: str, port: int = 80, count: int = 20) -> set[str | None]:
        self.tcp(src, dst, port)
        return {
            r.seen_source for r in self.topo.prober(src).tcp_many(dst, port, count, timeout=ANSWER)
        }

    def _log(
        self, src: str, what: str, r: ProbeResult | None, counts: Mapping[str, float] | None = None
    ) -> ProbeResult:
        entry = {"mode": self.mode.value, "family": self.family.value, "from": src}
        entry["probe"] = what
        entry["result"] = (
            json.dumps(counts)
            if r is None
            else (
                f"{r.outcome.value} {r.endpoint or ''} saw={r.seen_source or ''} {r.detail}".strip()
            )
        )
        _REPORT.append(entry)
        return r  # type: ignore[return-value]


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(SPEC) as t:
        for family in FAMILIES:
            a = addresses(family)
            for prefix in ("203.0.113.0/24", "198.51.100.0/24"):
                t.add_route("outside", a.of(prefix), a.node_ip["node-a"])
        yield t
    log = os.environ.get("KPP_SCENARIO_LOG")
    if log:
        Path(log).write_text(json.dumps(_REPORT, indent=1))
        Path(log).with_suffix(".explained.json").write_text(json.dumps(_CHECKS, indent=1))


@pytest.fixture(scope="module", params=FAMILIES, ids=str)
def family(request: pytest.FixtureRequest) -> IPFamily:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=[ProxyMode.IPTABLES, ProxyMode.NFTABLES], ids=str)
def mode_lab(topo: Topology, family: IPFamily, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(topo, request.param, family)
    lab.cleanup()
    yield lab
    lab.cleanup()


@pytest.fixture
def lab(mode_lab: Lab, request: pytest.FixtureRequest) -> Lab:
    _REPORT.append(
        {
            "mode": mode_lab.mode.value,
            "family": mode_lab.family.value,
            "test": request.node.originalname,
        }
    )
    return mode_lab


# ---------------------------------------------------------------------------------------
# ClusterIP


def test_pod_to_cluster_ip_reaches_every_endpoint_without_masquerade(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "a2", "b1", "b2")))
    counts = lab.many("a3", lab.cip)
    assert set(counts) == SERVERS
    assert lab.sources("a3", lab.cip) == {lab.ip["a3"]}  # pod sources are not masqueraded
    udp = [lab.udp("a3", lab.cip) for _ in range(20)]
    assert all(r.outcome is Outcome.ANSWERED for r in udp)
    assert {r.endpoint for r in udp} <= SERVERS and len({r.endpoint for r in udp}) > 1
    assert {r.seen_source for r in udp} == {lab.ip["a3"]}


def test_hairpin_is_masqueraded(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1")))
    r = lab.tcp("a1", lab.cip)
    assert r.outcome is Outcome.ANSWERED and r.endpoint == "a1"
    assert r.seen_source != lab.ip["a1"]  # without SNAT the reply would never leave the pod
    assert lab.udp("a1", lab.cip).endpoint == "a1"


def test_node_to_cluster_ip_goes_through_output(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "b1")))
    assert set(lab.many("node-a", lab.cip, count=40)) == {"a1", "b1"}
    assert lab.udp("node-a", lab.cip).outcome is Outcome.ANSWERED


def test_masquerade_all(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("b1")), masquerade_all=True)
    assert lab.sources("a3", lab.cip) == {lab.node_ip["node-a"]}


# The balancing rules are the same in both families but for the addresses, and 2000
# connections cost seconds per mode: the spread is measured in IPv4 only.
@pytest.mark.parametrize("family", [IPFamily.V4], indirect=True, ids=str)
def test_spread_over_four_endpoints_passes_chi_square(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "a2", "b1", "b2")))
    counts = lab.many("a3", lab.cip, count=2000)
    expected = 2000 / 4
    chi2 = sum((counts.get(p, 0) - expected) ** 2 / expected for p in SERVERS)
    # survival function of the chi-square distribution with 3 degrees of freedom
    p_value = math.erfc(math.sqrt(chi2 / 2)) + math.sqrt(2 * chi2 / math.pi) * math.exp(-chi2 / 2)
    lab._log("a3", "chi-square", None, {"chi2": round(chi2, 2), "p_milli": round(p_value * 1000)})
    assert p_value > 0.001, (counts, chi2, p_value)


def test_session_affinity_pins_a_client(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "a2", "b1", "b2"), affinity_seconds=600))
    counts = lab.many("a3", lab.cip, count=30)
    assert len(counts) == 1
    first = next(iter(counts))
    assert set(lab.many("node-a", lab.cip, count=10)) <= SERVERS  # another client may differ
    assert set(lab.many("a3", lab.cip, count=10)) == {first}
    udp = {lab.udp("a3", lab.cip).endpoint for _ in range(10)}
    assert len(udp) == 1


def test_session_affinity_survives_reapply(lab: Lab) -> None:
    objs = lab.web(lab.eps("a1", "a2", "b1", "b2"), affinity_seconds=600)
    lab.program(objs)
    (first,) = set(lab.many("a3", lab.cip, count=5))
    lab.program(objs)  # same state again: the affinity entries must survive
    assert set(lab.many("a3", lab.cip, count=20)) == {first}


def test_named_target_port(lab: Lab) -> None:
    svc = lab.service("named", lab.cip, [m.Port(8000, "web", "TCP", target_port="http")])
    sl = lab.slice("named", lab.eps("b2"), [("web", 80, "TCP")])
    lab.program([svc, sl])
    r = lab.tcp("a3", lab.cip, 8000)
    assert r.outcome is Outcome.ANSWERED and r.endpoint == "b2"


def test_unknown_port_and_icmp_to_a_cluster_ip(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "b1")))
    unknown = lab.tcp("a3", lab.cip, 81, timeout=QUICK)
    syn = lab.syn("a3", lab.cip, 81, timeout=QUICK)
    ping = lab.ping("a3", lab.cip, timeout=QUICK)
    if lab.mode is ProxyMode.IPTABLES:
        # nothing matches: routed to the default gateway and lost
        assert unknown.outcome is syn.outcome is ping.outcome is Outcome.SILENT
    else:
        # nftables rejects new traffic to a cluster IP that no service port claims, with
        # an ICMP(v6) port unreachable
        assert unknown.outcome is syn.outcome is ping.outcome is Outcome.REFUSED
        assert ping.detail.startswith(PORT_UNREACHABLE[lab.family]), ping.detail


# ---------------------------------------------------------------------------------------
# no endpoints, policies, topology, terminating


def test_no_endpoints_rejects_tcp_and_udp(lab: Lab) -> None:
    lab.program(lab.web([], node_port=NODE_PORT, external_ips=[lab.eip]))
    assert lab.tcp("a3", lab.cip).outcome is Outcome.REFUSED
    udp = lab.udp("a3", lab.cip)
    # REJECT answers with an ICMP port unreachable (ICMPv6 type 1 code 4 in IPv6)
    assert udp.outcome is Outcome.REFUSED
    assert udp.detail.startswith(PORT_UNREACHABLE[lab.family]), udp.detail
    assert lab.tcp("node-a", lab.cip).outcome is Outcome.REFUSED
    assert lab.tcp("outside", lab.node_ip["node-a"], NODE_PORT).outcome is Outcome.REFUSED
    assert lab.udp("outside", lab.node_ip["node-b"], NODE_PORT).outcome is Outcome.REFUSED
    assert lab.tcp("outside", lab.eip).outcome is Outcome.REFUSED


def test_internal_traffic_policy_local(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "b1", "b2"), internal_policy="Local"))
    assert set(lab.many("a3", lab.cip, count=20)) == {"a1"}
    lab.program(lab.web(lab.eps("b1", "b2"), internal_policy="Local"))
    assert lab.tcp("a3", lab.cip, timeout=QUICK).outcome is Outcome.SILENT  # DROP, not REJECT
    assert lab.udp("a3", lab.cip, timeout=QUICK).outcome is Outcome.SILENT


def test_topology_hints_keep_traffic_in_zone(lab: Lab) -> None:
    hinted = [
        m.EP(lab.ip["a1"], node="node-a", zone="z1", zone_hints=("z1",)),
        m.EP(lab.ip["b1"], node="node-b", zone="z2", zone_hints=("z2",)),
    ]
    lab.program(lab.web(hinted))
    assert set(lab.many("a3", lab.cip, count=30)) == {"a1"}
    unhinted = [*hinted, m.EP(lab.ip["b2"], node="node-b", zone="z2")]
    lab.program(lab.web(unhinted))  # one endpoint without hints: hints are ignored
    assert set(lab.many("a3", lab.cip, count=60)) == {"a1", "b1", "b2"}


def test_terminating_endpoints_are_a_fallback(lab: Lab) -> None:
    term = {"ready": False, "serving": True, "terminating": True}
    lab.program(lab.web([*lab.eps("a1"), *lab.eps("b1", **term)]))
    assert set(lab.many("a3", lab.cip, count=30)) == {"a1"}
    lab.program(lab.web(lab.eps("a2", "b1", **term)))
    assert set(lab.many("a3", lab.cip, count=40)) == {"a2", "b1"}
    gone = {"ready": False, "serving": False, "terminating": True}
    lab.program(lab.web(lab.eps("a2", "b1", **gone)))
    assert lab.tcp("a3", lab.cip).outcome is Outcome.REFUSED


# ---------------------------------------------------------------------------------------
# NodePort, ExternalIP, LoadBalancer


def test_node_port_cluster_policy_from_outside_through_any_node(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "b1"), node_port=NODE_PORT))
    for node, ip in lab.node_ip.items():
        counts = lab.many("outside", ip, NODE_PORT, count=30)
        assert set(counts) == {"a1", "b1"}, node
        assert lab.sources("outside", ip, NODE_PORT) == {ip}  # masqueraded to the node
        r = lab.udp("outside", ip, NODE_PORT)
        assert r.outcome is Outcome.ANSWERED and r.seen_source == ip


def test_node_port_local_policy_keeps_the_client_source(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "a2", "b1"), node_port=NODE_PORT, external_policy="Local"))
    assert set(lab.many("outside", lab.node_ip["node-a"], NODE_PORT, count=30)) == {"a1", "a2"}
    assert lab.sources("outside", lab.node_ip["node-a"], NODE_PORT) == {lab.outside}
    assert set(lab.many("outside", lab.node_ip["node-b"], NODE_PORT, count=10)) == {"b1"}
    assert lab.udp("outside", lab.node_ip["node-b"], NODE_PORT).seen_source == lab.outside
    # pods short-circuit to every endpoint; the node itself is masqueraded
    assert set(lab.many("a3", lab.node_ip["node-a"], NODE_PORT, count=40)) == {"a1", "a2", "b1"}
    assert lab.sources("node-a", lab.node_ip["node-a"], NODE_PORT) <= {lab.node_ip["node-a"]}


def test_node_port_local_policy_without_local_endpoints_drops(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1"), node_port=NODE_PORT, external_policy="Local"))
    assert lab.tcp("outside", lab.node_ip["node-b"], NODE_PORT, timeout=QUICK).outcome is (
        Outcome.SILENT
    )
    assert lab.tcp("outside", lab.node_ip["node-a"], NODE_PORT).endpoint == "a1"
    # pods on node-b still reach the service through node-b's NodePort
    assert lab.tcp("b2", lab.node_ip["node-b"], NODE_PORT).endpoint == "a1"


def test_localhost_node_ports(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("b1"), node_port=NODE_PORT))
    r = lab.tcp("node-a", lab.a.localhost, NODE_PORT)
    if lab.mode is ProxyMode.IPTABLES and lab.family is IPFamily.V4:
        # served on 127.0.0.1 (route_localnet=1)
        assert r.outcome is Outcome.ANSWERED and r.endpoint == "b1"
    else:
        # nftables never serves NodePorts on localhost; nor does iptables on ::1, as
        # upstream's proxier ("! -d ::1/128": IPv6 has no route_localnet): the node's own
        # stack answers, and nothing listens there
        assert r.outcome is Outcome.REFUSED, r.detail
    assert lab.tcp("node-a", lab.node_ip["node-a"], NODE_PORT).endpoint == "b1"


def test_external_ip(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "b1"), external_ips=[lab.eip]))
    assert set(lab.many("outside", lab.eip, count=30)) == {"a1", "b1"}
    assert lab.sources("outside", lab.eip) == {lab.node_ip["node-a"]}
    assert lab.tcp("a3", lab.eip).outcome is Outcome.ANSWERED
    assert lab.udp("outside", lab.eip).outcome is Outcome.ANSWERED


def test_external_ip_local_policy_keeps_source(lab: Lab) -> None:
    lab.program(
        lab.web(
            lab.eps("a2", "b1"),
            external_ips=[lab.eip],
            external_policy="Local",
            type="NodePort",
            node_port=NODE_PORT,
        )
    )
    assert set(lab.many("outside", lab.eip, count=20)) == {"a2"}
    assert lab.sources("outside", lab.eip) == {lab.outside}


def lb(lab: Lab, ranges: list[str], pods: tuple[str, ...] = ("a1", "b1")) -> list[dict[str, Any]]:
    return lab.web(
        lab.eps(*pods),
        type="LoadBalancer",
        node_port=NODE_PORT,
        lb_ips=[lab.lbip],
        source_ranges=ranges,
        external_ips=[lab.eip],
    )


def test_load_balancer_ip(lab: Lab) -> None:
    lab.program(lb(lab, []))
    assert set(lab.many("outside", lab.lbip, count=30)) == {"a1", "b1"}
    assert lab.udp("outside", lab.lbip).outcome is Outcome.ANSWERED


def test_load_balancer_source_ranges_allowed_and_blocked(lab: Lab) -> None:
    lab.program(lb(lab, [f"{lab.a.host(lab.outside)}"]))
    assert lab.tcp("outside", lab.lbip).outcome is Outcome.ANSWERED
    assert lab.tcp("a3", lab.lbip, timeout=QUICK).outcome is Outcome.SILENT  # pods are filtered too
    lab.program(lb(lab, [lab.a.of("10.0.0.0/8")]))
    assert lab.tcp("outside", lab.lbip, timeout=QUICK).outcome is Outcome.SILENT
    assert lab.udp("outside", lab.lbip, timeout=QUICK).outcome is Outcome.SILENT
    assert lab.tcp("a3", lab.lbip).outcome is Outcome.ANSWERED
    # only the LB IP is filtered: the NodePort and the ExternalIP are not
    assert lab.tcp("outside", lab.node_ip["node-a"], NODE_PORT).outcome is Outcome.ANSWERED
    assert lab.tcp("outside", lab.eip).outcome is Outcome.ANSWERED


def test_load_balancer_source_range_containing_the_node_allows_the_node(lab: Lab) -> None:
    lab.program(lb(lab, [lab.a.of("192.168.50.0/24")]))
    assert lab.tcp("node-a", lab.lbip).outcome is Outcome.ANSWERED
    assert lab.tcp("outside", lab.lbip).outcome is Outcome.ANSWERED


def test_load_balancer_ip_mode_proxy_is_left_to_the_load_balancer(lab: Lab) -> None:
    objs = lab.web(
        lab.eps("a1"),
        type="LoadBalancer",
        node_port=NODE_PORT,
        lb_ips=[lab.lbip],
        lb_ip_mode="Proxy",
    )
    lab.program(objs)
    assert lab.tcp("outside", lab.lbip, timeout=QUICK).outcome is Outcome.SILENT
    assert lab.tcp("outside", lab.node_ip["node-a"], NODE_PORT).endpoint == "a1"


# ---------------------------------------------------------------------------------------
# lifecycle


def test_skipped_services_get_no_rules(lab: Lab) -> None:
    other = lab.web(
        lab.eps("a1"),
        name="other",
        cip=lab.a.of("10.96.0.50"),
        labels={"service.kubernetes.io/service-proxy-name": "someone-else"},
    )
    headless = lab.web(lab.eps("a2"), name="hl", cip="None")
    extname = m.service("ext", "", [m.Port(80)], type="ExternalName")
    extname["spec"]["externalName"] = "db.example.com"
    lab.program(other, headless, [extname], lab.web(lab.eps("b1")))
    assert lab.tcp("a3", lab.a.of("10.96.0.50"), timeout=QUICK).outcome is Outcome.SILENT
    assert lab.tcp("a3", lab.cip).endpoint == "b1"
    assert lab.tcp("a3", lab.ip["a2"]).endpoint == "a2"  # headless: clients use pod IPs


def test_reapply_with_changed_endpoints(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1", "a2")))
    assert set(lab.many("a3", lab.cip, count=30)) == {"a1", "a2"}
    lab.program(lab.web(lab.eps("b2")))
    assert set(lab.many("a3", lab.cip, count=20)) == {"b2"}
    lab.program(lab.web(lab.eps("a2", "b1")))
    assert set(lab.many("a3", lab.cip, count=40)) == {"a2", "b1"}


def test_cleanup_removes_service_routing(lab: Lab) -> None:
    lab.program(lab.web(lab.eps("a1")))
    assert lab.tcp("a3", lab.cip).endpoint == "a1"
    lab.cleanup()
    assert lab.tcp("a3", lab.cip, timeout=QUICK).outcome is Outcome.SILENT
    ns = lab.topo.ns("node-a")
    text = (
        lab.topo.run("node-a", ["iptables-save"]).stdout
        + lab.topo.run("node-a", ["ip6tables-save"]).stdout
        + lab.topo.run("node-a", ["nft", "list", "ruleset"]).stdout
    )
    assert "KUBE-" not in text and "kube-proxy" not in text, ns
