"""Every Service behaviour of design.md section 3, as packets in network namespaces.

Two nodes (node-a, node-b) run kube-proxy-py with the same state, as every node of a
cluster would; pods a1, a2 (node-a) and b1, b2 (node-b) serve TCP and UDP port 80 and
answer with their name and the client address they saw; a3 is a client pod on node-a;
"outside" is a client on the LAN that routes ExternalIPs and LB IPs via node-a. Each test
runs in both modes; conntrack is flushed after every re-programming.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.harness import Outcome, ProbeResult, Topology
from proxy.host.spec import default_spec
from proxy.iptables import render as ipt_render
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.addresses import local_addresses
from proxy.kernel.executor import Executor
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
from proxy.plan import plan
from proxy.source.file import build_state

pytestmark = pytest.mark.netns

SPEC = default_spec()
IP = {p.name: p.ip for p in SPEC.pods}
POD_NODE = {p.name: p.node for p in SPEC.pods}
NODE_IP = {n.name: n.lan_ip for n in SPEC.nodes}
OUTSIDE = SPEC.clients[0].lan_ip
CLUSTER_CIDR = ipaddress.ip_network("10.244.0.0/16")
SERVERS = {"a1", "a2", "b1", "b2"}
CIP = "10.96.0.10"
EIP = "203.0.113.10"
LBIP = "198.51.100.10"
NODE_PORT = 30080
QUICK = 0.5  # timeout for probes that must get no answer
ANSWER = 3.0
"""Timeout for probes that must be answered: long enough for one TCP SYN retransmission
(after 1 s). Thousands of connections leave TIME_WAIT sockets in the pods; a new
connection that reuses a client port and lands on the same pod 4-tuple through another
VIP can have its first SYN ignored, which a real client survives by retransmitting."""

NODE_OBJS = [
    m.node("node-a", NODE_IP["node-a"], zone="z1", pod_cidr="10.244.1.0/24"),
    m.node("node-b", NODE_IP["node-b"], zone="z2", pod_cidr="10.244.2.0/24"),
]

# outcomes observed per mode, for the closing report (KPP_SCENARIO_LOG=path)
_REPORT: list[dict[str, str]] = []


def eps(*pods: str, **kw: Any) -> list[m.EP]:
    return [m.EP(IP[p], node=POD_NODE[p], **kw) for p in pods]


def web(
    pods: list[m.EP] | tuple[m.EP, ...] = (),
    *,
    name: str = "web",
    cip: str = CIP,
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
    svc = m.service(name, cip, ports, **kw)
    sl = m.endpoint_slice(name, pods, [("tcp", 80, "TCP"), ("udp", 80, "UDP")])
    return [svc, sl]


class Lab:
    """Programs both nodes from one state and probes from any namespace."""

    def __init__(self, topo: Topology, mode: ProxyMode) -> None:
        self.topo = topo
        self.mode = mode
        self._kernels: dict[str, IptablesKernel | NftKernel] = {}

    def kernel(self, node: str) -> IptablesKernel | NftKernel:
        if node not in self._kernels:
            executor = Executor(self.topo.ns(node))
            self._kernels[node] = (
                IptablesKernel(executor) if self.mode is ProxyMode.IPTABLES else NftKernel(executor)
            )
        return self._kernels[node]

    def program(self, *groups: list[dict[str, Any]], **cfg: Any) -> None:
        objs = [o for g in groups for o in g]
        for node in NODE_IP:
            state = build_state([*NODE_OBJS, *objs], node)
            assert state.problems == (), state.problems
            executor = Executor(self.topo.ns(node))
            config = ProxyConfig(
                node,
                mode=self.mode,
                cluster_cidrs=(CLUSTER_CIDR,),
                host_addresses=local_addresses(executor),
                **cfg,
            )
            p = plan(state.snapshot, config)
            k = self.kernel(node)
            if isinstance(k, IptablesKernel):
                k.full_sync(ipt_render.render(p))
            else:
                k.full_sync(nft_render.render(p))
        for node in NODE_IP:
            self.topo.flush_conntrack(node)

    def cleanup(self) -> None:
        for node in NODE_IP:
            executor = Executor(self.topo.ns(node))
            NftKernel(executor).cleanup()
            IptablesKernel(executor, variant="nft").cleanup()

    # -- probes ------------------------------------------------------------------------
    def tcp(self, src: str, dst: str, port: int = 80, **kw: Any) -> ProbeResult:
        kw.setdefault("timeout", ANSWER)
        return self._log(src, f"tcp {dst}:{port}", self.topo.prober(src).tcp(dst, port, **kw))

    def udp(self, src: str, dst: str, port: int = 80, **kw: Any) -> ProbeResult:
        return self._log(src, f"udp {dst}:{port}", self.topo.prober(src).udp(dst, port, **kw))

    def many(self, src: str, dst: str, port: int = 80, count: int = 60) -> Counter[str]:
        results = self.topo.prober(src).tcp_many(dst, port, count, timeout=ANSWER)
        assert all(r.outcome is Outcome.ANSWERED for r in results), {
            r.detail for r in results if r.outcome is not Outcome.ANSWERED
        }
        counts = Counter(r.endpoint or "?" for r in results)
        self._log(src, f"{count}x tcp {dst}:{port}", None, dict(counts))
        return counts

    def sources(self, src: str, dst: str, port: int = 80, count: int = 20) -> set[str | None]:
        return {
            r.seen_source for r in self.topo.prober(src).tcp_many(dst, port, count, timeout=ANSWER)
        }

    def _log(
        self, src: str, what: str, r: ProbeResult | None, counts: Mapping[str, float] | None = None
    ) -> ProbeResult:
        entry = {"mode": self.mode.value, "from": src, "probe": what}
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
        for prefix in ("203.0.113.0/24", "198.51.100.0/24"):
            t.add_route("outside", prefix, NODE_IP["node-a"])
        yield t
    log = os.environ.get("KPP_SCENARIO_LOG")
    if log:
        Path(log).write_text(json.dumps(_REPORT, indent=1))


@pytest.fixture(scope="module", params=[ProxyMode.IPTABLES, ProxyMode.NFTABLES], ids=str)
def mode_lab(topo: Topology, request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab = Lab(topo, request.param)
    lab.cleanup()
    yield lab
    lab.cleanup()


@pytest.fixture
def lab(mode_lab: Lab, request: pytest.FixtureRequest) -> Lab:
    _REPORT.append({"mode": mode_lab.mode.value, "test": request.node.originalname})
    return mode_lab


# ---------------------------------------------------------------------------------------
# ClusterIP


def test_pod_to_cluster_ip_reaches_every_endpoint_without_masquerade(lab: Lab) -> None:
    lab.program(web(eps("a1", "a2", "b1", "b2")))
    counts = lab.many("a3", CIP)
    assert set(counts) == SERVERS
    assert lab.sources("a3", CIP) == {IP["a3"]}  # pod sources are not masqueraded
    udp = [lab.udp("a3", CIP) for _ in range(20)]
    assert all(r.outcome is Outcome.ANSWERED for r in udp)
    assert {r.endpoint for r in udp} <= SERVERS and len({r.endpoint for r in udp}) > 1
    assert {r.seen_source for r in udp} == {IP["a3"]}


def test_hairpin_is_masqueraded(lab: Lab) -> None:
    lab.program(web(eps("a1")))
    r = lab.tcp("a1", CIP)
    assert r.outcome is Outcome.ANSWERED and r.endpoint == "a1"
    assert r.seen_source != IP["a1"]  # without SNAT the reply would never leave the pod
    assert lab.udp("a1", CIP).endpoint == "a1"


def test_node_to_cluster_ip_goes_through_output(lab: Lab) -> None:
    lab.program(web(eps("a1", "b1")))
    assert set(lab.many("node-a", CIP, count=40)) == {"a1", "b1"}
    assert lab.udp("node-a", CIP).outcome is Outcome.ANSWERED


def test_masquerade_all(lab: Lab) -> None:
    lab.program(web(eps("b1")), masquerade_all=True)
    assert lab.sources("a3", CIP) == {NODE_IP["node-a"]}


def test_spread_over_four_endpoints_passes_chi_square(lab: Lab) -> None:
    lab.program(web(eps("a1", "a2", "b1", "b2")))
    counts = lab.many("a3", CIP, count=2000)
    expected = 2000 / 4
    chi2 = sum((counts.get(p, 0) - expected) ** 2 / expected for p in SERVERS)
    # survival function of the chi-square distribution with 3 degrees of freedom
    p_value = math.erfc(math.sqrt(chi2 / 2)) + math.sqrt(2 * chi2 / math.pi) * math.exp(-chi2 / 2)
    lab._log("a3", "chi-square", None, {"chi2": round(chi2, 2), "p_milli": round(p_value * 1000)})
    assert p_value > 0.001, (counts, chi2, p_value)


def test_session_affinity_pins_a_client(lab: Lab) -> None:
    lab.program(web(eps("a1", "a2", "b1", "b2"), affinity_seconds=600))
    counts = lab.many("a3", CIP, count=30)
    assert len(counts) == 1
    first = next(iter(counts))
    assert set(lab.many("node-a", CIP, count=10)) <= SERVERS  # another client may differ
    assert set(lab.many("a3", CIP, count=10)) == {first}
    udp = {lab.udp("a3", CIP).endpoint for _ in range(10)}
    assert len(udp) == 1


def test_session_affinity_survives_reapply(lab: Lab) -> None:
    objs = web(eps("a1", "a2", "b1", "b2"), affinity_seconds=600)
    lab.program(objs)
    (first,) = set(lab.many("a3", CIP, count=5))
    lab.program(objs)  # same state again: the affinity entries must survive
    assert set(lab.many("a3", CIP, count=20)) == {first}


def test_named_target_port(lab: Lab) -> None:
    svc = m.service("named", CIP, [m.Port(8000, "web", "TCP", target_port="http")])
    sl = m.endpoint_slice("named", eps("b2"), [("web", 80, "TCP")])
    lab.program([svc, sl])
    r = lab.tcp("a3", CIP, 8000)
    assert r.outcome is Outcome.ANSWERED and r.endpoint == "b2"


def test_unknown_port_and_icmp_to_a_cluster_ip(lab: Lab) -> None:
    lab.program(web(eps("a1", "b1")))
    unknown = lab.tcp("a3", CIP, 81, timeout=QUICK)
    syn = lab._log("a3", f"tcp-syn {CIP}:81", lab.topo.prober("a3").tcp_syn(CIP, 81, timeout=QUICK))
    ping = lab._log("a3", f"icmp-echo {CIP}", lab.topo.prober("a3").icmp_echo(CIP, timeout=QUICK))
    if lab.mode is ProxyMode.IPTABLES:
        # nothing matches: routed to the default gateway and lost
        assert unknown.outcome is syn.outcome is ping.outcome is Outcome.SILENT
    else:
        # nftables rejects new traffic to a cluster IP that no service port claims
        assert unknown.outcome is syn.outcome is ping.outcome is Outcome.REFUSED
        assert "3/3" in ping.detail


# ---------------------------------------------------------------------------------------
# no endpoints, policies, topology, terminating


def test_no_endpoints_rejects_tcp_and_udp(lab: Lab) -> None:
    lab.program(web([], node_port=NODE_PORT, external_ips=[EIP]))
    assert lab.tcp("a3", CIP).outcome is Outcome.REFUSED
    assert lab.udp("a3", CIP).outcome is Outcome.REFUSED
    assert lab.tcp("node-a", CIP).outcome is Outcome.REFUSED
    assert lab.tcp("outside", NODE_IP["node-a"], NODE_PORT).outcome is Outcome.REFUSED
    assert lab.udp("outside", NODE_IP["node-b"], NODE_PORT).outcome is Outcome.REFUSED
    assert lab.tcp("outside", EIP).outcome is Outcome.REFUSED


def test_internal_traffic_policy_local(lab: Lab) -> None:
    lab.program(web(eps("a1", "b1", "b2"), internal_policy="Local"))
    assert set(lab.many("a3", CIP, count=20)) == {"a1"}
    lab.program(web(eps("b1", "b2"), internal_policy="Local"))
    assert lab.tcp("a3", CIP, timeout=QUICK).outcome is Outcome.SILENT  # DROP, not REJECT
    assert lab.udp("a3", CIP, timeout=QUICK).outcome is Outcome.SILENT


def test_topology_hints_keep_traffic_in_zone(lab: Lab) -> None:
    hinted = [
        m.EP(IP["a1"], node="node-a", zone="z1", zone_hints=("z1",)),
        m.EP(IP["b1"], node="node-b", zone="z2", zone_hints=("z2",)),
    ]
    lab.program(web(hinted))
    assert set(lab.many("a3", CIP, count=30)) == {"a1"}
    unhinted = [*hinted, m.EP(IP["b2"], node="node-b", zone="z2")]
    lab.program(web(unhinted))  # one endpoint without hints: hints are ignored
    assert set(lab.many("a3", CIP, count=60)) == {"a1", "b1", "b2"}


def test_terminating_endpoints_are_a_fallback(lab: Lab) -> None:
    term = {"ready": False, "serving": True, "terminating": True}
    lab.program(web([*eps("a1"), *eps("b1", **term)]))
    assert set(lab.many("a3", CIP, count=30)) == {"a1"}
    lab.program(web(eps("a2", "b1", **term)))
    assert set(lab.many("a3", CIP, count=40)) == {"a2", "b1"}
    gone = {"ready": False, "serving": False, "terminating": True}
    lab.program(web(eps("a2", "b1", **gone)))
    assert lab.tcp("a3", CIP).outcome is Outcome.REFUSED


# ---------------------------------------------------------------------------------------
# NodePort, ExternalIP, LoadBalancer


def test_node_port_cluster_policy_from_outside_through_any_node(lab: Lab) -> None:
    lab.program(web(eps("a1", "b1"), node_port=NODE_PORT))
    for node, ip in NODE_IP.items():
        counts = lab.many("outside", ip, NODE_PORT, count=30)
        assert set(counts) == {"a1", "b1"}, node
        assert lab.sources("outside", ip, NODE_PORT) == {ip}  # masqueraded to the node
        r = lab.udp("outside", ip, NODE_PORT)
        assert r.outcome is Outcome.ANSWERED and r.seen_source == ip


def test_node_port_local_policy_keeps_the_client_source(lab: Lab) -> None:
    lab.program(web(eps("a1", "a2", "b1"), node_port=NODE_PORT, external_policy="Local"))
    assert set(lab.many("outside", NODE_IP["node-a"], NODE_PORT, count=30)) == {"a1", "a2"}
    assert lab.sources("outside", NODE_IP["node-a"], NODE_PORT) == {OUTSIDE}
    assert set(lab.many("outside", NODE_IP["node-b"], NODE_PORT, count=10)) == {"b1"}
    assert lab.udp("outside", NODE_IP["node-b"], NODE_PORT).seen_source == OUTSIDE
    # pods short-circuit to every endpoint; the node itself is masqueraded
    assert set(lab.many("a3", NODE_IP["node-a"], NODE_PORT, count=40)) == {"a1", "a2", "b1"}
    assert lab.sources("node-a", NODE_IP["node-a"], NODE_PORT) <= {NODE_IP["node-a"]}


def test_node_port_local_policy_without_local_endpoints_drops(lab: Lab) -> None:
    lab.program(web(eps("a1"), node_port=NODE_PORT, external_policy="Local"))
    assert lab.tcp("outside", NODE_IP["node-b"], NODE_PORT, timeout=QUICK).outcome is (
        Outcome.SILENT
    )
    assert lab.tcp("outside", NODE_IP["node-a"], NODE_PORT).endpoint == "a1"
    # pods on node-b still reach the service through node-b's NodePort
    assert lab.tcp("b2", NODE_IP["node-b"], NODE_PORT).endpoint == "a1"


def test_localhost_node_ports(lab: Lab) -> None:
    lab.program(web(eps("b1"), node_port=NODE_PORT))
    r = lab.tcp("node-a", "127.0.0.1", NODE_PORT)
    if lab.mode is ProxyMode.IPTABLES:
        assert r.outcome is Outcome.ANSWERED and r.endpoint == "b1"
    else:
        assert r.outcome is Outcome.REFUSED  # nftables never serves NodePorts on localhost
    assert lab.tcp("node-a", NODE_IP["node-a"], NODE_PORT).endpoint == "b1"


def test_external_ip(lab: Lab) -> None:
    lab.program(web(eps("a1", "b1"), external_ips=[EIP]))
    assert set(lab.many("outside", EIP, count=30)) == {"a1", "b1"}
    assert lab.sources("outside", EIP) == {NODE_IP["node-a"]}
    assert lab.tcp("a3", EIP).outcome is Outcome.ANSWERED
    assert lab.udp("outside", EIP).outcome is Outcome.ANSWERED


def test_external_ip_local_policy_keeps_source(lab: Lab) -> None:
    lab.program(
        web(
            eps("a2", "b1"),
            external_ips=[EIP],
            external_policy="Local",
            type="NodePort",
            node_port=NODE_PORT,
        )
    )
    assert set(lab.many("outside", EIP, count=20)) == {"a2"}
    assert lab.sources("outside", EIP) == {OUTSIDE}


def lb(ranges: list[str], pods: tuple[str, ...] = ("a1", "b1")) -> list[dict[str, Any]]:
    return web(
        eps(*pods),
        type="LoadBalancer",
        node_port=NODE_PORT,
        lb_ips=[LBIP],
        source_ranges=ranges,
        external_ips=[EIP],
    )


def test_load_balancer_ip(lab: Lab) -> None:
    lab.program(lb([]))
    assert set(lab.many("outside", LBIP, count=30)) == {"a1", "b1"}
    assert lab.udp("outside", LBIP).outcome is Outcome.ANSWERED


def test_load_balancer_source_ranges_allowed_and_blocked(lab: Lab) -> None:
    lab.program(lb([f"{OUTSIDE}/32"]))
    assert lab.tcp("outside", LBIP).outcome is Outcome.ANSWERED
    assert lab.tcp("a3", LBIP, timeout=QUICK).outcome is Outcome.SILENT  # pods are filtered too
    lab.program(lb(["10.0.0.0/8"]))
    assert lab.tcp("outside", LBIP, timeout=QUICK).outcome is Outcome.SILENT
    assert lab.udp("outside", LBIP, timeout=QUICK).outcome is Outcome.SILENT
    assert lab.tcp("a3", LBIP).outcome is Outcome.ANSWERED
    # only the LB IP is filtered: the NodePort and the ExternalIP are not
    assert lab.tcp("outside", NODE_IP["node-a"], NODE_PORT).outcome is Outcome.ANSWERED
    assert lab.tcp("outside", EIP).outcome is Outcome.ANSWERED


def test_load_balancer_source_range_containing_the_node_allows_the_node(lab: Lab) -> None:
    lab.program(lb(["192.168.50.0/24"]))
    assert lab.tcp("node-a", LBIP).outcome is Outcome.ANSWERED
    assert lab.tcp("outside", LBIP).outcome is Outcome.ANSWERED


def test_load_balancer_ip_mode_proxy_is_left_to_the_load_balancer(lab: Lab) -> None:
    objs = web(
        eps("a1"), type="LoadBalancer", node_port=NODE_PORT, lb_ips=[LBIP], lb_ip_mode="Proxy"
    )
    lab.program(objs)
    assert lab.tcp("outside", LBIP, timeout=QUICK).outcome is Outcome.SILENT
    assert lab.tcp("outside", NODE_IP["node-a"], NODE_PORT).endpoint == "a1"


# ---------------------------------------------------------------------------------------
# lifecycle


def test_skipped_services_get_no_rules(lab: Lab) -> None:
    other = web(
        eps("a1"),
        name="other",
        cip="10.96.0.50",
        labels={"service.kubernetes.io/service-proxy-name": "someone-else"},
    )
    headless = web(eps("a2"), name="hl", cip="None")
    extname = m.service("ext", "", [m.Port(80)], type="ExternalName")
    extname["spec"]["externalName"] = "db.example.com"
    lab.program(other, headless, [extname], web(eps("b1")))
    assert lab.tcp("a3", "10.96.0.50", timeout=QUICK).outcome is Outcome.SILENT
    assert lab.tcp("a3", CIP).endpoint == "b1"
    assert lab.tcp("a3", IP["a2"]).endpoint == "a2"  # headless: clients use pod IPs


def test_reapply_with_changed_endpoints(lab: Lab) -> None:
    lab.program(web(eps("a1", "a2")))
    assert set(lab.many("a3", CIP, count=30)) == {"a1", "a2"}
    lab.program(web(eps("b2")))
    assert set(lab.many("a3", CIP, count=20)) == {"b2"}
    lab.program(web(eps("a2", "b1")))
    assert set(lab.many("a3", CIP, count=40)) == {"a2", "b1"}


def test_cleanup_removes_service_routing(lab: Lab) -> None:
    lab.program(web(eps("a1")))
    assert lab.tcp("a3", CIP).endpoint == "a1"
    lab.cleanup()
    assert lab.tcp("a3", CIP, timeout=QUICK).outcome is Outcome.SILENT
    ns = lab.topo.ns("node-a")
    text = (
        lab.topo.run("node-a", ["iptables-save"]).stdout
        + lab.topo.run("node-a", ["nft", "list", "ruleset"]).stdout
    )
    assert "KUBE-" not in text and "kube-proxy" not in text, ns
