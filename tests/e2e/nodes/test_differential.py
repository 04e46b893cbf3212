"""Differential tests: kube-proxy-py and upstream kube-proxy, probe for probe, on real nodes.

One lab of real nodes (kubelet + containerd, ``lab up --compare``): ``node-1`` runs
kube-proxy-py as the pods of its DaemonSet, ``node-upstream`` runs upstream kube-proxy
(the same v1.37.2 the lab builds) as the pods of its own, both with the same settings, in
iptables mode and then in nftables mode (changed as an operator changes it, then a
rolling restart).

    client    ── node-1 (kube-proxy-py)  ── a1 a2 (serve TCP+UDP 80)  a3 (client)
                     │ LAN │
    outside-b ── node-upstream (upstream) ── b1 b2 (serve TCP+UDP 80)  b3 (client)

Every scenario (the probe scenarios of tests/netns/test_scenarios.py) is written through
the API twice, once per side, each the mirror image of the other: selectorless Services
with hand-written EndpointSlices whose "near" endpoints are on the probing side's node
and "far" ones on the other node (node-1 is in zone-a, node-upstream in zone-b). The same
probes are sent from the a-side through node-1 and from the b-side through node-upstream;
the b-side's observations are translated across the mirror (b1→a1, node-upstream→node-1,
outside-b→client, pod and Service addresses to the a-side ones) and must equal the
a-side's: the set of endpoints reached, the source address the endpoint saw (masquerade or
not), and for unanswered probes how they failed (ICMP type/code and sender, RST, timeout
or EPERM). Pod addresses come from the nodes' CNI, so the mirror learns them when the
pods run.

IP families: the lab is dual-stack (what CI runs), ``KPP_DIFF_IP_FAMILY=ipv6`` makes it
IPv6-only and ``ipv4`` IPv4-only (see ``tests.e2e.nodelab.ip_family``); both
implementations run a proxier per family. Each scenario is built once per family: IPv4 addresses or their IPv6
twins (``v6_twin``: node and pod addresses as the lab gives them, ExternalIPs
fd00:203:0:113::N, LB IPs fd00:198:51:100::N, ClusterIPs in fd00:10:96::/112). In a
dual-stack run the two builds are written at once, as PreferDualStack Services with both
families' ClusterIPs, ExternalIPs, LB IPs and source ranges and an EndpointSlice per
family (the IPv6 one named ``…-v6``), so one write and one sentinel wait serve both
families' probes (sent at the same time, a prober per namespace and family); an
IPv6-only run writes SingleStack IPv6 Services. Every probe is compared within its family.

A difference is a failure unless it is one of the INTENDED_DIFFERENCES below, each
documented with its reason in docs/differences.md; a listed difference that no longer
shows up fails too, so the list stays true.

No sleeps: after a scenario's objects are written, a sentinel Service and EndpointSlice
(one per family) are written last and both nodes are probed on each family's ClusterIP
until they serve the sentinel's new port with its new endpoint. Watches are ordered per
resource type, so both agents (each family's proxier: upstream syncs them apart) have
then programmed everything written before it.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy import manifests as m
from proxy.demo.labexplain import LabView
from proxy.harness import Outcome, Prober, ProbeResult
from proxy.host.process import python_argv, run_command
from proxy.host.spec import v6_twin
from proxy.iptables.kernel import VARIANT_ENV
from proxy.lab.cluster import wait_for
from proxy.lab.metallb import STATIC_CLASS
from proxy.lab.topology import host_port, versions_of
from tests.conftest import throwaway_netns
from tests.e2e.nodelab import PROXY, UPSTREAM, NodeLab, ip_family, workload_pod

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

JSON = dict[str, Any]
MODES = ("iptables", "nftables")
MIN_SYNC = "0s"
"""The same setting for both implementations (minSyncPeriod, --iptables-min-sync-period):
sync at once after every change."""
QUICK = 0.5
"""First timeout of a probe; an unanswered one is retried with CONFIRM before it counts."""
CONFIRM = 1.5
"""Long enough for one TCP SYN retransmission (after 1 s): see tests/netns/test_scenarios.py."""
ANSWER = 3.0
"""Timeout of the repeated probes that follow an answered one."""
RETRIES = 2
"""Extra rounds for a repeated probe whose endpoint sets differ (random spread)."""
REPO = Path(__file__).resolve().parents[3]
DIFFERENCES_DOC = REPO / "docs" / "differences.md"


# ---------------------------------------------------------------------------------------
# the mirror topology

VERSIONS: tuple[int, ...] = versions_of(ip_family())
"""The IP families of this run, primary first (``KPP_DIFF_IP_FAMILY``; CI: IPv4)."""
FAMILY = {4: "IPv4", 6: "IPv6"}


def in_family(ipv4: str, version: int) -> str:
    """An IPv4 address or CIDR of the scenarios, or its IPv6 twin (``v6_twin``)."""
    return ipv4 if version == 4 else v6_twin(ipv4)


@dataclass(frozen=True)
class Side:
    """One half of the mirror: a node, its pods and its outside client; addresses are
    written in IPv4, each with its IPv6 twin (the lab's addressing)."""

    key: str
    node: str
    node_ipv4: str
    pod_cidr_prefix: str
    outside: str
    outside_ipv4: str
    zone: str
    implementation: str
    agent: tuple[str, str]
    """(namespace, name) of the DaemonSet running the implementation."""

    def pod(self, n: int) -> str:
        return f"{self.key}{n}"

    def node_ip(self, version: int = 4) -> str:
        """The node's InternalIP of that family."""
        return in_family(self.node_ipv4, version)

    def outside_ip(self, version: int = 4) -> str:
        return in_family(self.outside_ipv4, version)

    def pod_cidr(self, version: int = 4) -> str:
        return in_family(f"{self.pod_cidr_prefix}.0/24", version)

    def pod_ip(self, n: int, version: int = 4) -> str:
        """The pod's address of that family: the one its node's CNI gave it once the pods
        run (a placeholder in the pod CIDR until then, for the tests without a cluster)."""
        placeholder = in_family(f"{self.pod_cidr_prefix}.{10 + n}", version)
        return POD_IPS.get((self.pod(n), version), placeholder)

    def gateway(self, version: int = 4) -> str:
        """The node's bridge address: masqueraded traffic to a local pod comes from it."""
        return in_family(f"{self.pod_cidr_prefix}.1", version)


A = Side("a", "node-1", "192.168.50.11", "10.244.1", "client", "192.168.50.100", "zone-a",
         "kube-proxy-py", PROXY)  # fmt: skip
B = Side("b", "node-upstream", "192.168.50.30", "10.244.30", "outside-b", "192.168.50.101",
         "zone-b", "upstream", UPSTREAM)  # fmt: skip
SIDES = (A, B)
OTHER = {A.key: B, B.key: A}
SERVING = (1, 2)
"""Pods n=1, 2 of each side serve TCP and UDP port 80 (both families); pod 3 is a client."""
CLIENT = 3
ZONE_LABEL = "topology.kubernetes.io/zone"
SERVICE_CIDRS = {4: "10.96.0.0/16", 6: "fd00:10:96::/112"}
ROUTED_TO_NODE = {
    v: (SERVICE_CIDRS[v], in_family("203.0.113.0/24", v), in_family("198.51.100.0/24", v))
    for v in (4, 6)
}
"""What each outside client routes via its own node, per family: ClusterIPs, ExternalIPs,
LB IPs."""
POD_SIDE = {s.pod(n): s for s in SIDES for n in (*SERVING, CLIENT)}
POD_IPS: dict[tuple[str, int], str] = {}
"""(pod name, IP version) -> address, filled in when the lab's pods run."""


def _mirror_pairs() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = [
        (A.node, B.node),
        (A.outside, B.outside),
        (A.zone, B.zone),
        *((A.pod(n), B.pod(n)) for n in (*SERVING, CLIENT)),
    ]
    for v in (4, 6):
        pairs += [
            (A.node_ip(v), B.node_ip(v)),
            (A.gateway(v), B.gateway(v)),
            (A.outside_ip(v), B.outside_ip(v)),
            *((A.pod_ip(n, v), B.pod_ip(n, v)) for n in (*SERVING, CLIENT)),
        ]
    return pairs


def _add_pairs(table: dict[str, str], pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    for a, b in pairs:
        table[a], table[b] = b, a
    return table


MIRROR = _add_pairs({}, _mirror_pairs())
"""a-side word ↔ b-side word (an involution); scenario addresses are added as built.
IPv6 addresses in canonical form."""
_ADDRESS = re.compile(
    r"\b\d{1,3}(?:\.\d{1,3}){3}\b"  # IPv4
    r"|(?<![\w:])[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}(?![\w:])"  # IPv6
)


def learn_pod_ips(ips: Mapping[tuple[str, int], str]) -> None:
    """The pods' real addresses replace the placeholders, in the mirror too."""
    for n in (*SERVING, CLIENT):
        for v in (4, 6):
            for old in (A.pod_ip(n, v), B.pod_ip(n, v)):
                MIRROR.pop(old, None)
    POD_IPS.update(ips)
    _add_pairs(MIRROR, _mirror_pairs())


def _mirror_address(word: str) -> str:
    try:
        canonical = str(ipaddress.ip_address(word))
    except ValueError:
        return word
    return MIRROR.get(canonical, word)


def mirror(text: str) -> str:
    """``text`` with every known name or address replaced by its mirror image."""
    if text in MIRROR:
        return MIRROR[text]
    return _ADDRESS.sub(lambda match: _mirror_address(match.group(0)), text)


# ---------------------------------------------------------------------------------------
# scenarios: objects and probes as seen from one side, in one IP family


@dataclass(frozen=True)
class Probe:
    """``count`` probes of one kind; ``pinned``: compare how many endpoints answered
    (session affinity picks one at random), not which."""

    label: str
    src: str
    kind: str  # tcp | udp | ping | http
    dst: str
    port: int = 80
    count: int = 1
    pinned: bool = False
    family: str = "IPv4"


@dataclass
class Ctx:
    """Names and addresses of scenario number ``number`` for one side of the mirror, in
    IP ``version``: its Services have ClusterIPs, ExternalIPs, LB IPs and source ranges of
    that family, its EndpointSlices that addressType, its probes that family's addresses.
    :func:`built` merges a scenario's two families into dual-stack objects."""

    number: int
    side: Side
    version: int = 4
    objects: list[JSON] = field(default_factory=list)
    """What is written first (created or replaced)."""
    later: list[list[JSON]] = field(default_factory=list)
    """Further stages, each written once both agents handled the one before."""
    probes: list[Probe] = field(default_factory=list)

    @property
    def stages(self) -> list[list[JSON]]:
        return [self.objects, *self.later]

    @property
    def family(self) -> str:
        return FAMILY[self.version]

    # -- who -------------------------------------------------------------------------------
    @property
    def far_side(self) -> Side:
        return OTHER[self.side.key]

    @property
    def node(self) -> str:
        return self.side.node

    @property
    def node_ip(self) -> str:
        return self.side.node_ip(self.version)

    @property
    def outside(self) -> str:
        return self.side.outside

    @property
    def outside_ip(self) -> str:
        return self.side.outside_ip(self.version)

    @property
    def localhost(self) -> str:
        return "127.0.0.1" if self.version == 4 else "::1"

    def near(self, n: int) -> str:
        return self.side.pod(n)

    def far(self, n: int) -> str:
        return self.far_side.pod(n)

    @property
    def client(self) -> str:
        return self.side.pod(CLIENT)

    # -- addresses (both sides' values are registered in MIRROR) ---------------------------
    def _pair(self, a: str, b: str) -> str:
        MIRROR[a], MIRROR[b] = b, a
        return (a, b)[SIDES.index(self.side)]

    def v(self, ipv4: str) -> str:
        """An address or CIDR written in IPv4, in this family."""
        return in_family(ipv4, self.version)

    def host_range(self, ip: str) -> str:
        """A source range of one address."""
        return f"{ip}/{32 if self.version == 4 else 128}"

    def cip(self, j: int = 0) -> str:
        a, b = (10 + 2 * j, 11 + 2 * j)
        if self.version == 4:
            return self._pair(f"10.96.{self.number}.{a}", f"10.96.{self.number}.{b}")
        # fd00:10:96::/112 has one group left: the scenario's number, then two digits
        return self._pair(f"fd00:10:96::{self.number}{a:02d}", f"fd00:10:96::{self.number}{b:02d}")

    def _last_octet(self, j: int) -> int:
        assert 0 <= j < 6 and self.number < 21, "out of ExternalIP / LB IP addresses"
        return 12 * self.number + 2 * j

    def eip(self, j: int = 0) -> str:
        last = self._last_octet(j)
        return self._pair(self.v(f"203.0.113.{last}"), self.v(f"203.0.113.{last + 1}"))

    def lb_ip(self, j: int = 0) -> str:
        last = self._last_octet(j)
        return self._pair(self.v(f"198.51.100.{last}"), self.v(f"198.51.100.{last + 1}"))

    def _port(self, base: int) -> int:
        assert self.number < 24, "node ports would run into health check node ports"
        return int(self._pair(str(base), str(base + 1)))

    def node_port(self, j: int = 0, protocol: str = "TCP") -> int:
        """Unique per scenario, service (j < 10), protocol and side (30040-30999); the
        same in both families (a dual-stack Service has one node port per port)."""
        return self._port(30000 + 40 * self.number + 2 * j + (20 if protocol == "UDP" else 0))

    def hc_port(self, j: int = 0) -> int:
        """Unique per scenario, service (j < 20) and side (31040-31999)."""
        return self._port(31000 + 40 * self.number + 2 * j)

    def name(self, base: str) -> str:
        """A Service's name; its EndpointSlice is named ``<name>-abc12`` (the IPv6 one
        of a dual-stack Service ``…-v6``)."""
        a, b = f"{base}-{self.number}-a", f"{base}-{self.number}-b"
        for suffix in ("-abc12", "-abc12-v6", "-v6"):
            self._pair(f"{a}{suffix}", f"{b}{suffix}")
        return self._pair(a, b)

    # -- objects ---------------------------------------------------------------------------
    def ep(self, pod: str, **kw: Any) -> m.EP:
        side = POD_SIDE[pod]
        kw.setdefault("zone", side.zone)
        return m.EP(side.pod_ip(int(pod[1:]), self.version), node=side.node, **kw)

    def web(
        self,
        base: str,
        endpoints: Sequence[m.EP] | None,
        *,
        j: int = 0,
        protocols: Sequence[str] = ("TCP", "UDP"),
        node_port: bool = False,
        cluster_ip: str | None = None,
        **kw: Any,
    ) -> str:
        """A Service with port 80 per protocol (cluster IP ``cip(j)``, node ports
        ``node_port(j, protocol)``, an eTP Local load balancer's health check node port
        ``hc_port(j)``) and, unless ``endpoints`` is None, its EndpointSlice; the
        Service's name."""
        name = self.name(base)
        ports = [
            m.Port(80, p.lower(), p, node_port=self.node_port(j, p) if node_port else None)
            for p in protocols
        ]
        if node_port and "type" not in kw:
            kw["type"] = "NodePort"
        if kw.get("type") == "LoadBalancer" and kw.get("external_policy") == "Local":
            # Never leave it to the API server: a random health check node port can take
            # a node port a later Service of the scenario names (HTTP 422 "already allocated").
            kw.setdefault("health_check_node_port", self.hc_port(j))
        cip = self.cip(j) if cluster_ip is None else cluster_ip
        self.objects.append(m.service(name, cip, ports, **kw))
        if endpoints is not None:
            slice_ports = [(p.lower(), 80, p) for p in protocols]
            self.objects.append(m.endpoint_slice(name, endpoints, slice_ports))
        return name

    def probe(
        self,
        label: str,
        src: str,
        kind: str,
        dst: str,
        port: int = 80,
        count: int = 1,
        *,
        pinned: bool = False,
    ) -> None:
        self.probes.append(Probe(label, src, kind, dst, port, count, pinned, self.family))

    def finish(self) -> None:
        """Slices of an IPv6 build hold IPv6 addresses (the scenarios write them as
        ``m.endpoint_slice``'s default addressType)."""
        if self.version == 6:
            for obj in (o for stage in self.stages for o in stage):
                if obj["kind"] == "EndpointSlice" and obj["addressType"] == "IPv4":
                    obj["addressType"] = "IPv6"


@dataclass(frozen=True)
class Scenario:
    id: str
    summary: str
    build: Callable[[Ctx], None]


SCENARIOS: list[Scenario] = []


def scenario(id: str, summary: str) -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    def register(build: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        SCENARIOS.append(Scenario(id, summary, build))
        return build

    return register


def number_of(scen: Scenario) -> int:
    return SCENARIOS.index(scen) + 1


@dataclass(frozen=True)
class Built:
    """A scenario for one side in the run's families: the objects of each stage and
    every family's probes."""

    stages: list[list[JSON]]
    probes: list[Probe]


PER_FAMILY = {"clusterIPs", "externalIPs", "loadBalancerSourceRanges", "ipFamilies"}
"""Service spec fields a dual-stack merge joins (the rest must be equal in both builds)."""


def _dual_service(v4: JSON, v6: JSON) -> JSON:
    """One PreferDualStack Service from the IPv4 and IPv6 builds of the same Service."""
    if v4["spec"].get("clusterIP", "") in ("", "None"):  # ExternalName, headless: no family
        assert v4 == v6, f"{v4['metadata']['name']}: the builds differ"
        return v4
    s4, s6 = v4["spec"], v6["spec"]
    skip = {"clusterIP", "ipFamilyPolicy", *PER_FAMILY}
    same4 = {k: v for k, v in s4.items() if k not in skip}
    same6 = {k: v for k, v in s6.items() if k not in skip}
    assert same4 == same6, f"{v4['metadata']['name']}: {same4} != {same6}"
    assert v4["metadata"] == v6["metadata"], v4["metadata"]
    spec = dict(s4)
    spec["clusterIPs"] = [s4["clusterIP"], s6["clusterIP"]]
    spec["ipFamilies"] = ["IPv4", "IPv6"]
    spec["ipFamilyPolicy"] = "PreferDualStack"
    for key in ("externalIPs", "loadBalancerSourceRanges"):
        if key in s4 or key in s6:
            spec[key] = [*s4.get(key, []), *s6.get(key, [])]
    merged = {**v4, "spec": spec}
    if "status" in v4 or "status" in v6:
        ingress = [
            *v4.get("status", {}).get("loadBalancer", {}).get("ingress", []),
            *v6.get("status", {}).get("loadBalancer", {}).get("ingress", []),
        ]
        merged["status"] = {"loadBalancer": {"ingress": ingress}}
    return merged


def _dual_stage(v4: Sequence[JSON], v6: Sequence[JSON]) -> list[JSON]:
    """A stage of both builds: each Service dual-stack, each EndpointSlice in its family
    (the IPv6 ones renamed ``…-v6``; an FQDN slice once)."""
    services6 = {o["metadata"]["name"]: o for o in v6 if o["kind"] == "Service"}
    assert len(services6) == sum(o["kind"] == "Service" for o in v4), "the builds differ"
    merged = [_dual_service(o, services6[o["metadata"]["name"]]) if o["kind"] == "Service"
              else o for o in v4]  # fmt: skip
    for obj in v6:
        if obj["kind"] != "EndpointSlice":
            continue
        if obj["addressType"] == "FQDN":
            assert obj in v4, obj["metadata"]["name"]
            continue
        renamed = copy.deepcopy(obj)
        renamed["metadata"]["name"] += "-v6"
        merged.append(renamed)
    return merged


def built(scen: Scenario, side: Side, versions: Sequence[int] = VERSIONS) -> Built:
    """``scen`` for ``side``: one build per family; two are merged into dual-stack
    Services (PreferDualStack, both ClusterIPs, ExternalIPs, LB IPs and source ranges of
    both families) with an EndpointSlice per family, and the probes of both."""
    ctxs = []
    for version in versions:
        ctx = Ctx(number_of(scen), side, version)
        scen.build(ctx)
        ctx.finish()
        ctxs.append(ctx)
    probes = [p for ctx in ctxs for p in ctx.probes]
    if len(ctxs) == 1:
        return Built(ctxs[0].stages, probes)
    v4, v6 = ctxs
    stages = [_dual_stage(s4, s6) for s4, s6 in zip(v4.stages, v6.stages, strict=True)]
    return Built(stages, probes)


@scenario("cluster-ip", "ClusterIP from a pod, the node and outside; unknown port; ping")
def _cluster_ip(c: Ctx) -> None:
    c.web("web", [c.ep(c.near(1)), c.ep(c.near(2)), c.ep(c.far(1)), c.ep(c.far(2))])
    cip = c.cip()
    c.probe("pod tcp", c.client, "tcp", cip, count=40)
    c.probe("pod udp", c.client, "udp", cip, count=24)
    c.probe("node tcp", c.node, "tcp", cip, count=24)
    c.probe("node udp", c.node, "udp", cip, count=12)
    c.probe("outside tcp", c.outside, "tcp", cip, count=24)
    c.probe("outside udp", c.outside, "udp", cip, count=12)
    c.probe("pod tcp unknown port", c.client, "tcp", cip, 81)
    c.probe("pod udp unknown port", c.client, "udp", cip, 81)
    c.probe("pod ping", c.client, "ping", cip)
    c.probe("node tcp unknown port", c.node, "tcp", cip, 81)
    c.probe("outside tcp unknown port", c.outside, "tcp", cip, 81)
    c.probe("outside ping", c.outside, "ping", cip)


@scenario("hairpin", "a pod reaching itself through its Service (ClusterIP and NodePort)")
def _hairpin(c: Ctx) -> None:
    c.web("self", [c.ep(c.near(1))], node_port=True)
    c.probe("hairpin tcp", c.near(1), "tcp", c.cip(), count=5)
    c.probe("hairpin udp", c.near(1), "udp", c.cip(), count=3)
    c.probe("hairpin node port tcp", c.near(1), "tcp", c.node_ip, c.node_port(), count=5)


@scenario("session-affinity", "sessionAffinity ClientIP pins each client to one endpoint")
def _affinity(c: Ctx) -> None:
    endpoints = [c.ep(c.near(1)), c.ep(c.near(2)), c.ep(c.far(1)), c.ep(c.far(2))]
    c.web("sticky", endpoints, node_port=True, affinity_seconds=600)
    cip = c.cip()
    c.probe("pod tcp", c.client, "tcp", cip, count=30, pinned=True)
    c.probe("pod udp", c.client, "udp", cip, count=10, pinned=True)
    c.probe("node tcp", c.node, "tcp", cip, count=10, pinned=True)
    c.probe("outside node port tcp", c.outside, "tcp", c.node_ip, c.node_port(), 20, pinned=True)


@scenario("target-ports", "named and numeric targetPorts, unmatched slice ports, one protocol")
def _target_ports(c: Ctx) -> None:
    named = c.name("named")
    c.objects += [
        m.service(named, c.cip(0), [m.Port(8000, "web", "TCP", target_port="http")]),
        m.endpoint_slice(named, [c.ep(c.far(2)), c.ep(c.near(1))], [("web", 80, "TCP")]),
    ]
    numeric = c.name("numeric")
    c.objects += [
        m.service(numeric, c.cip(1), [m.Port(8080, "tcp", "TCP", target_port=80)]),
        m.endpoint_slice(numeric, [c.ep(c.near(2)), c.ep(c.far(2))], [("tcp", 80, "TCP")]),
    ]
    unmatched = c.name("unmatched")
    c.objects += [
        m.service(unmatched, c.cip(2), [m.Port(80, "tcp", "TCP")]),
        m.endpoint_slice(unmatched, [c.ep(c.near(1))], [("other", 80, "TCP")]),
    ]
    c.web("udp-only", [c.ep(c.near(1)), c.ep(c.far(1))], j=3, protocols=("UDP",))
    multi = c.name("multi")
    c.objects += [  # two ports; the slice only has endpoints for the first
        m.service(multi, c.cip(4), [m.Port(80, "web", "TCP"), m.Port(81, "other", "TCP")]),
        m.endpoint_slice(multi, [c.ep(c.near(2)), c.ep(c.far(1))], [("web", 80, "TCP")]),
    ]
    c.probe("named target port", c.client, "tcp", c.cip(0), 8000, count=20)
    c.probe("numeric target port", c.client, "tcp", c.cip(1), 8080, count=20)
    c.probe("service port number, not target port", c.client, "tcp", c.cip(1), 80)
    c.probe("slice port name unmatched", c.client, "tcp", c.cip(2))
    c.probe("udp-only service udp", c.client, "udp", c.cip(3), count=12)
    c.probe("udp-only service tcp", c.client, "tcp", c.cip(3))
    c.probe("multi-port: port with endpoints", c.client, "tcp", c.cip(4), 80, count=20)
    c.probe("multi-port: port without endpoints", c.client, "tcp", c.cip(4), 81)


@scenario("no-endpoints", "REJECT for ClusterIP, NodePort, ExternalIP and LB IP without endpoints")
def _no_endpoints(c: Ctx) -> None:
    c.web(
        "empty",
        [],
        node_port=True,
        type="LoadBalancer",
        external_ips=[c.eip()],
        lb_ips=[c.lb_ip()],
    )
    c.web("sliceless", None, j=1)
    cip = c.cip()
    c.probe("pod tcp", c.client, "tcp", cip)
    c.probe("pod udp", c.client, "udp", cip)
    c.probe("node tcp", c.node, "tcp", cip)
    c.probe("node udp", c.node, "udp", cip)
    c.probe("outside node port tcp", c.outside, "tcp", c.node_ip, c.node_port())
    c.probe("outside node port udp", c.outside, "udp", c.node_ip, c.node_port(0, "UDP"))
    c.probe("pod node port tcp", c.client, "tcp", c.node_ip, c.node_port())
    c.probe("node node port tcp", c.node, "tcp", c.node_ip, c.node_port())
    c.probe("outside external ip tcp", c.outside, "tcp", c.eip())
    c.probe("outside external ip udp", c.outside, "udp", c.eip())
    c.probe("outside lb ip tcp", c.outside, "tcp", c.lb_ip())
    c.probe("pod lb ip tcp", c.client, "tcp", c.lb_ip())
    c.probe("no slice at all tcp", c.client, "tcp", c.cip(1))


@scenario("endpoint-conditions", "not-ready endpoints are not used; unset conditions mean ready")
def _conditions(c: Ctx) -> None:
    down = {"ready": False, "serving": False, "terminating": False}
    c.web("down", [c.ep(c.near(1), **down), c.ep(c.far(1), **down)])
    unset = [m.EP(c.ep(c.near(1)).ip, node=c.node, extra={"conditions": {}})]
    c.web("unset", [*unset, c.ep(c.far(2), **down)], j=1)
    c.probe("not ready tcp", c.client, "tcp", c.cip(0))
    c.probe("not ready udp", c.client, "udp", c.cip(0))
    c.probe("conditions unset tcp", c.client, "tcp", c.cip(1), count=10)


@scenario("slice-edge-cases", "one endpoint in two slices, per-slice ports, odd conditions")
def _slice_edge_cases(c: Ctx) -> None:
    gone = {"ready": False, "serving": False, "terminating": True}
    term = {"ready": False, "serving": True, "terminating": True}
    tcp = [("tcp", 80, "TCP")]
    dup = c.name("dup")
    c.objects += [  # a terminating copy of a ready endpoint in a second slice loses
        m.service(dup, c.cip(0), [m.Port(80, "tcp", "TCP")]),
        m.endpoint_slice(dup, [c.ep(c.near(1))], tcp),
        m.endpoint_slice(dup, [c.ep(c.near(1), **gone), c.ep(c.far(1), **term)], tcp,
                         name=c.name("dup-z")),
    ]  # fmt: skip
    reused = c.name("reused")
    c.objects += [  # a reused pod IP: the new pod's copy wins over the terminating one's
        m.service(reused, c.cip(7), [m.Port(80, "tcp", "TCP")]),
        m.endpoint_slice(reused, [c.ep(c.near(2), **term)], tcp),
        m.endpoint_slice(reused, [c.ep(c.near(2), ready=False, serving=False)], tcp,
                         name=c.name("reused-2")),
    ]  # fmt: skip
    ports = c.name("ports")
    c.objects += [  # the same port name with another number in another slice
        m.service(ports, c.cip(1), [m.Port(80, "tcp", "TCP")]),
        m.endpoint_slice(ports, [c.ep(c.near(1))], tcp),
        m.endpoint_slice(ports, [c.ep(c.far(1))], [("tcp", 81, "TCP")], name=c.name("ports-2")),
    ]
    fqdn = c.name("fqdn")
    c.objects += [  # an FQDN slice next to an IPv4 (IPv6) one
        m.service(fqdn, c.cip(2), [m.Port(80, "tcp", "TCP")]),
        m.endpoint_slice(fqdn, [c.ep(c.far(1))], tcp),
        m.endpoint_slice(fqdn, [m.EP("db.example.com")], tcp, name=c.name("fqdn-2"),
                         address_type="FQDN"),
    ]  # fmt: skip
    two = [c.ep(c.near(1)).ip, c.ep(c.near(2)).ip]
    c.web("two-addresses", [m.EP(two[0], node=c.node, extra={"addresses": two})], j=3)
    serving_unset = {"conditions": {"ready": False, "terminating": True}}
    c.web("serving-unset", [m.EP(two[0], node=c.node, extra=serving_unset)], j=4)
    c.web("ready-terminating", [c.ep(c.near(1), terminating=True), c.ep(c.far(1), **term)], j=5)
    c.web("serving-not-ready", [c.ep(c.near(1), ready=False, serving=True)], j=6)
    c.probe("ready copy wins over terminating copy", c.client, "tcp", c.cip(0), count=20)
    c.probe("not-ready copy wins over serving-terminating copy", c.client, "tcp", c.cip(7))
    c.probe("per-slice port numbers", c.client, "tcp", c.cip(1), count=30)
    c.probe("fqdn slice ignored", c.client, "tcp", c.cip(2), count=5)
    c.probe("first address of an endpoint", c.client, "tcp", c.cip(3), count=20)
    c.probe("serving unset means serving", c.client, "tcp", c.cip(4), count=5)
    c.probe("ready and terminating is ready", c.client, "tcp", c.cip(5), count=20)
    c.probe("serving but not ready nor terminating", c.client, "tcp", c.cip(6))


@scenario("policy-combinations", "traffic policies with terminating endpoints and topology")
def _policy_combinations(c: Ctx) -> None:
    term = {"ready": False, "serving": True, "terminating": True}
    c.web("itp-terminating", [c.ep(c.near(1), **term), c.ep(c.far(1))], j=0,
          internal_policy="Local")  # fmt: skip
    near_zone, far_zone = c.side.zone, c.far_side.zone
    hinted = [
        c.ep(c.near(1), zone_hints=(near_zone,)),
        c.ep(c.near(2), zone_hints=(far_zone,)),
        c.ep(c.far(1), zone_hints=(far_zone,)),
    ]
    c.web("etp-hints", hinted, j=1, node_port=True, external_policy="Local")
    c.web("etp-ranges", [c.ep(c.near(1)), c.ep(c.far(1))], j=2, node_port=True,
          type="LoadBalancer", external_policy="Local", lb_ips=[c.lb_ip(2)],
          source_ranges=[c.host_range(c.outside_ip)], health_check_node_port=c.hc_port(2))  # fmt: skip
    c.web("affinity-local", [c.ep(c.near(1)), c.ep(c.near(2)), c.ep(c.far(1))], j=3,
          node_port=True, external_policy="Local", affinity_seconds=300)  # fmt: skip
    c.probe("iTP Local: local terminating endpoint", c.client, "tcp", c.cip(0), count=10)
    c.probe("iTP Local: node, local terminating endpoint", c.node, "tcp", c.cip(0), count=10)
    c.probe("eTP Local + hints: pod via cluster ip", c.client, "tcp", c.cip(1), count=20)
    c.probe("eTP Local + hints: outside via node port", c.outside, "tcp",
            c.node_ip, c.node_port(1), count=30)  # fmt: skip
    c.probe("eTP Local + hints: pod via node port", c.client, "tcp",
            c.node_ip, c.node_port(1), count=30)  # fmt: skip
    c.probe("eTP Local + source range: outside", c.outside, "tcp", c.lb_ip(2), count=10)
    c.probe("eTP Local + source range: pod", c.client, "tcp", c.lb_ip(2))
    c.probe("affinity + eTP Local: outside", c.outside, "tcp",
            c.node_ip, c.node_port(3), count=10, pinned=True)  # fmt: skip
    c.probe("affinity + eTP Local: pod", c.client, "tcp", c.cip(3), count=10, pinned=True)


@scenario("internal-local", "internalTrafficPolicy Local: local endpoints only, else DROP")
def _internal_local(c: Ctx) -> None:
    c.web(
        "itp",
        [c.ep(c.near(1)), c.ep(c.far(1)), c.ep(c.far(2))],
        node_port=True,
        internal_policy="Local",
    )
    c.web("itp-remote", [c.ep(c.far(1)), c.ep(c.far(2))], j=1, internal_policy="Local")
    c.web("itp-none", [], j=2, internal_policy="Local")
    c.probe("pod tcp", c.client, "tcp", c.cip(0), count=20)
    c.probe("node tcp", c.node, "tcp", c.cip(0), count=10)
    c.probe("outside node port tcp (external: all endpoints)", c.outside, "tcp",
            c.node_ip, c.node_port(), count=30)  # fmt: skip
    c.probe("pod node port tcp (external: all endpoints)", c.client, "tcp",
            c.node_ip, c.node_port(), count=30)  # fmt: skip
    c.probe("only remote endpoints pod tcp", c.client, "tcp", c.cip(1))
    c.probe("only remote endpoints pod udp", c.client, "udp", c.cip(1))
    c.probe("only remote endpoints node tcp", c.node, "tcp", c.cip(1))
    c.probe("no endpoints pod tcp", c.client, "tcp", c.cip(2))


@scenario("topology", "topology hints (zones, nodes) and when they are ignored")
def _topology(c: Ctx) -> None:
    near_zone, far_zone = c.side.zone, c.far_side.zone
    hinted = [
        c.ep(c.near(1), zone_hints=(near_zone,)),
        c.ep(c.far(1), zone_hints=(far_zone,)),
    ]
    c.web("zones", hinted, j=0)
    c.web("partly-hinted", [*hinted, c.ep(c.far(2))], j=1)
    c.web(
        "other-zone",
        [c.ep(c.near(1), zone_hints=(far_zone,)), c.ep(c.far(1), zone_hints=(far_zone,))],
        j=2,
    )
    node_hinted = [
        c.ep(c.near(2), zone_hints=(near_zone,), node_hints=(c.node,)),
        c.ep(c.near(1), zone_hints=(near_zone,), node_hints=(c.far_side.node,)),
        c.ep(c.far(1), zone_hints=(far_zone,), node_hints=(c.far_side.node,)),
    ]
    c.web("nodes", node_hinted, j=3)
    c.probe("zone hints", c.client, "tcp", c.cip(0), count=20)
    c.probe("one endpoint without hints", c.client, "tcp", c.cip(1), count=40)
    c.probe("no hint for this zone", c.client, "tcp", c.cip(2), count=20)
    c.probe("node hints", c.client, "tcp", c.cip(3), count=30)


@scenario("terminating", "serving-terminating endpoints are the fallback when none is ready")
def _terminating(c: Ctx) -> None:
    term = {"ready": False, "serving": True, "terminating": True}
    gone = {"ready": False, "serving": False, "terminating": True}
    c.web("mixed", [c.ep(c.near(1)), c.ep(c.far(1), **term)], j=0)
    c.web("all-terminating", [c.ep(c.near(2), **term), c.ep(c.far(1), **term)], j=1)
    c.web("not-serving", [c.ep(c.near(2), **gone), c.ep(c.far(1), **gone)], j=2)
    c.web(
        "local-terminating",
        [c.ep(c.near(1), **term), c.ep(c.far(1))],
        j=3,
        node_port=True,
        external_policy="Local",
    )
    c.probe("ready and terminating", c.client, "tcp", c.cip(0), count=20)
    c.probe("only terminating", c.client, "tcp", c.cip(1), count=30)
    c.probe("terminating, not serving", c.client, "tcp", c.cip(2))
    c.probe("external local: terminating local endpoint", c.outside, "tcp",
            c.node_ip, c.node_port(3), count=10)  # fmt: skip
    c.probe("cluster ip of the eTP Local service", c.client, "tcp", c.cip(3), count=20)


@scenario("node-port", "NodePort with externalTrafficPolicy Cluster, localhost, unused port")
def _node_port(c: Ctx) -> None:
    c.web("np", [c.ep(c.near(1)), c.ep(c.far(1))], node_port=True)
    port = c.node_port()
    c.probe("outside tcp", c.outside, "tcp", c.node_ip, port, count=30)
    c.probe("outside udp", c.outside, "udp", c.node_ip, c.node_port(0, "UDP"), count=12)
    c.probe("pod tcp", c.client, "tcp", c.node_ip, port, count=20)
    c.probe("node tcp", c.node, "tcp", c.node_ip, port, count=20)
    c.probe("node udp", c.node, "udp", c.node_ip, c.node_port(0, "UDP"), count=8)
    c.probe("node localhost tcp", c.node, "tcp", c.localhost, port, count=10)
    c.probe("node localhost udp", c.node, "udp", c.localhost, c.node_port(0, "UDP"), count=4)
    c.probe("outside tcp unused node port", c.outside, "tcp", c.node_ip, 32700)
    c.probe("outside udp unused node port", c.outside, "udp", c.node_ip, 32700)


@scenario("node-port-local", "externalTrafficPolicy Local on NodePorts and health check ports")
def _node_port_local(c: Ctx) -> None:
    c.web(
        "local",
        [c.ep(c.near(1)), c.ep(c.near(2)), c.ep(c.far(1))],
        node_port=True,
        type="LoadBalancer",
        external_policy="Local",
        health_check_node_port=c.hc_port(0),
    )
    c.web(
        "remote",
        [c.ep(c.far(1))],
        j=1,
        node_port=True,
        type="LoadBalancer",
        external_policy="Local",
        health_check_node_port=c.hc_port(1),
    )
    c.web("none", [], j=2, node_port=True, external_policy="Local")
    local, remote, none = c.node_port(0), c.node_port(1), c.node_port(2)
    c.probe("outside tcp", c.outside, "tcp", c.node_ip, local, count=30)
    c.probe("outside udp", c.outside, "udp", c.node_ip, c.node_port(0, "UDP"), count=12)
    c.probe("pod tcp (short-circuit to all)", c.client, "tcp", c.node_ip, local, count=40)
    c.probe("node tcp", c.node, "tcp", c.node_ip, local, count=30)
    c.probe("node localhost tcp", c.node, "tcp", c.localhost, local, count=10)
    c.probe("health check port", c.outside, "http", c.node_ip, c.hc_port(0))
    c.probe("no local endpoint outside tcp", c.outside, "tcp", c.node_ip, remote)
    c.probe("no local endpoint outside udp", c.outside, "udp", c.node_ip, c.node_port(1, "UDP"))
    c.probe("no local endpoint pod tcp", c.client, "tcp", c.node_ip, remote, count=5)
    c.probe("no local endpoint node tcp", c.node, "tcp", c.node_ip, remote, count=5)
    c.probe("no local endpoint health check port", c.outside, "http", c.node_ip, c.hc_port(1))
    c.probe("no endpoints at all outside tcp", c.outside, "tcp", c.node_ip, none)
    c.probe("no endpoints at all pod tcp", c.client, "tcp", c.node_ip, none)


@scenario("external-ip", "ExternalIPs with externalTrafficPolicy Cluster and Local")
def _external_ip(c: Ctx) -> None:
    c.web("eip", [c.ep(c.near(1)), c.ep(c.far(1))], external_ips=[c.eip(0)])
    c.web(
        "eip-local",
        [c.ep(c.near(2)), c.ep(c.far(1))],
        j=1,
        external_ips=[c.eip(1)],
        node_port=True,
        external_policy="Local",
    )
    c.probe("outside tcp", c.outside, "tcp", c.eip(0), count=30)
    c.probe("outside udp", c.outside, "udp", c.eip(0), count=12)
    c.probe("pod tcp", c.client, "tcp", c.eip(0), count=20)
    c.probe("node tcp", c.node, "tcp", c.eip(0), count=20)
    c.probe("outside tcp unknown port", c.outside, "tcp", c.eip(0), 81)
    c.probe("outside ping", c.outside, "ping", c.eip(0))
    c.probe("local policy outside tcp", c.outside, "tcp", c.eip(1), count=20)
    c.probe("local policy pod tcp", c.client, "tcp", c.eip(1), count=30)
    c.probe("local policy node tcp", c.node, "tcp", c.eip(1), count=20)


@scenario("external-ip-conflict", "two Services claim one ExternalIP:port, then a change is made")
def _external_ip_conflict(c: Ctx) -> None:
    endpoints = [c.ep(c.near(1)), c.ep(c.far(1))]
    c.web("owner", endpoints, j=0, external_ips=[c.eip(0)])
    c.web("claimant", endpoints, j=1)
    stage = [o for o in c.objects if o["kind"] == "Service" and "claimant" in o["metadata"]["name"]]
    claimed = copy.deepcopy(stage[0])
    claimed["spec"]["externalIPs"] = [c.eip(0)]
    c.later.append([claimed])  # now both claim eip(0):80/TCP and UDP
    before = len(c.objects)
    c.web("newcomer", [c.ep(c.near(2)), c.ep(c.far(2))], j=2)
    c.later[0] += c.objects[before:]
    del c.objects[before:]
    c.probe("the claimed external ip", c.outside, "tcp", c.eip(0), count=20)
    c.probe("the claimant's cluster ip", c.client, "tcp", c.cip(1), count=20)
    c.probe("a Service created during the conflict", c.client, "tcp", c.cip(2), count=20)


@scenario("load-balancer", "LB IPs: source ranges, node in range, ipMode Proxy, eTP Local")
def _load_balancer(c: Ctx) -> None:
    def lb(base: str, j: int, ranges: Sequence[str], **kw: Any) -> None:
        endpoints = kw.pop("endpoints", [c.ep(c.near(1)), c.ep(c.far(1))])
        c.web(base, endpoints, j=j, node_port=True, type="LoadBalancer",
              lb_ips=[c.lb_ip(j)], source_ranges=ranges, external_ips=[c.eip(j)], **kw)  # fmt: skip

    lb("open", 0, [])
    lb("allowed", 1, [c.host_range(c.outside_ip)])
    lb("blocked", 2, [c.v("10.0.0.0/8")])
    lb("node-range", 3, [c.v("192.168.50.0/24")])
    lb("proxy-mode", 4, [], lb_ip_mode="Proxy", endpoints=[c.ep(c.near(1))])
    lb("local", 5, [], external_policy="Local",
       endpoints=[c.ep(c.near(2)), c.ep(c.far(1)), c.ep(c.far(2))])  # fmt: skip
    c.probe("outside tcp", c.outside, "tcp", c.lb_ip(0), count=30)
    c.probe("outside udp", c.outside, "udp", c.lb_ip(0), count=12)
    c.probe("pod tcp", c.client, "tcp", c.lb_ip(0), count=20)
    c.probe("node tcp", c.node, "tcp", c.lb_ip(0), count=20)
    c.probe("source range allows outside tcp", c.outside, "tcp", c.lb_ip(1), count=10)
    c.probe("source range blocks pod tcp", c.client, "tcp", c.lb_ip(1))
    c.probe("source range blocks node tcp", c.node, "tcp", c.lb_ip(1))
    c.probe("source range blocks outside tcp", c.outside, "tcp", c.lb_ip(2))
    c.probe("source range blocks outside udp", c.outside, "udp", c.lb_ip(2))
    c.probe("source range allows pod tcp", c.client, "tcp", c.lb_ip(2), count=10)
    c.probe("source range: node port not filtered", c.outside, "tcp",
            c.node_ip, c.node_port(2), count=10)  # fmt: skip
    c.probe("source range: external ip not filtered", c.outside, "tcp", c.eip(2), count=10)
    c.probe("range containing the node: node tcp", c.node, "tcp", c.lb_ip(3), count=10)
    c.probe("range containing the node: outside tcp", c.outside, "tcp", c.lb_ip(3), count=10)
    c.probe("ipMode Proxy outside tcp", c.outside, "tcp", c.lb_ip(4))
    c.probe("ipMode Proxy pod tcp", c.client, "tcp", c.lb_ip(4))
    c.probe("ipMode Proxy node port still works", c.outside, "tcp",
            c.node_ip, c.node_port(4), count=5)  # fmt: skip
    c.probe("local policy outside tcp", c.outside, "tcp", c.lb_ip(5), count=20)
    c.probe("local policy pod tcp", c.client, "tcp", c.lb_ip(5), count=40)
    c.probe("local policy node tcp", c.node, "tcp", c.lb_ip(5), count=40)


@scenario("skipped", "headless, ExternalName, service-proxy-name and headless-label objects")
def _skipped(c: Ctx) -> None:
    proxy_name = {"service.kubernetes.io/service-proxy-name": "someone-else"}
    c.web("other-proxy", [c.ep(c.near(1))], j=0, labels=proxy_name)
    c.web("headless-label", [c.ep(c.near(1))], j=1,
          labels={"service.kubernetes.io/headless": ""})  # fmt: skip
    c.web("headless", [c.ep(c.near(2))], j=9, cluster_ip="None")
    ext = m.service(c.name("extname"), "", [m.Port(80)], type="ExternalName")
    ext["spec"]["externalName"] = "db.example.com"
    c.objects.append(ext)
    c.web("served", [c.ep(c.far(1))], j=2)
    c.web("headless-slice", [c.ep(c.near(1))], j=3)
    c.objects[-1]["metadata"]["labels"]["service.kubernetes.io/headless"] = ""
    c.web("proxy-name-slice", [c.ep(c.near(2))], j=4)
    c.objects[-1]["metadata"]["labels"].update(proxy_name)
    c.probe("service-proxy-name pod tcp", c.client, "tcp", c.cip(0))
    c.probe("service-proxy-name node tcp", c.node, "tcp", c.cip(0))
    c.probe("headless label pod tcp", c.client, "tcp", c.cip(1))
    c.probe("an ordinary service next to them", c.client, "tcp", c.cip(2), count=5)
    c.probe("slice labelled headless", c.client, "tcp", c.cip(3))
    c.probe("slice labelled service-proxy-name", c.client, "tcp", c.cip(4), count=5)
    c.probe("unallocated cluster ip pod tcp", c.client, "tcp", c.cip(5))
    c.probe("unallocated cluster ip node tcp", c.node, "tcp", c.cip(5))


# ---------------------------------------------------------------------------------------
# intended differences (each one explained in docs/differences.md)


@dataclass(frozen=True)
class Difference:
    """A difference kube-proxy-py means to have: in ``scenario``'s probe labelled
    ``probe``, in ``mode`` (or "both") and IP ``family`` ("IPv4", "IPv6" or "both"), the
    two observations as Observation.render() prints them (upstream's translated to the
    a-side's names)."""

    id: str
    scenario: str
    probe: str
    mode: str
    ours: str
    upstream: str
    reason: str
    family: str = "both"


INTENDED_DIFFERENCES: tuple[Difference, ...] = ()


# ---------------------------------------------------------------------------------------
# observing


@dataclass(frozen=True)
class Observation:
    """What a probe's repetitions showed: which endpoints answered and which source
    addresses they saw; ``outcomes``: everything else (how unanswered probes failed,
    echo replies, HTTP statuses)."""

    outcomes: frozenset[str] = frozenset()
    endpoints: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    pinned: bool = False

    @classmethod
    def of(cls, results: Sequence[ProbeResult], pinned: bool) -> Observation:
        outcomes: set[str] = set()
        endpoints: set[str] = set()
        sources: set[str] = set()
        for r in results:
            if r.outcome is Outcome.ANSWERED and r.detail.startswith("echo-reply"):
                outcomes.add(f"answered: {r.detail}")
            elif r.outcome is Outcome.ANSWERED and r.detail.startswith("HTTP "):
                outcomes.add(f"answered: http {r.detail.split()[1]}")
            elif r.outcome is Outcome.ANSWERED:
                endpoints.add(r.endpoint or f"? ({r.detail})")
                sources.add(r.seen_source or "?")
            elif r.outcome is Outcome.SILENT:
                outcomes.add("silent: " + ("EPERM" if r.detail.startswith("EPERM") else "timeout"))
            else:
                outcomes.add(f"{r.outcome.value}: {r.detail}")
        return cls(frozenset(outcomes), frozenset(endpoints), frozenset(sources), pinned)

    def mirrored(self) -> Observation:
        return Observation(
            frozenset(mirror(f) for f in self.outcomes),
            frozenset(mirror(e) for e in self.endpoints),
            frozenset(mirror(s) for s in self.sources),
            self.pinned,
        )

    def merged(self, other: Observation) -> Observation:
        return Observation(
            self.outcomes | other.outcomes,
            self.endpoints | other.endpoints,
            self.sources | other.sources,
            self.pinned,
        )

    @property
    def silent(self) -> bool:
        return any(f.startswith("silent") for f in self.outcomes)

    @property
    def heard(self) -> bool:
        """Something answered: an endpoint, an ICMP error, a RST, an HTTP status."""
        return bool(self.endpoints) or any(not f.startswith("silent") for f in self.outcomes)

    def render(self) -> str:
        parts = sorted(self.outcomes)
        if self.endpoints:
            if self.pinned:
                who = f"{len(self.endpoints)} endpoint(s)"
            else:
                who = ",".join(sorted(self.endpoints))
            parts.append(f"answered by {who} seeing source {','.join(sorted(self.sources))}")
        return "; ".join(parts) or "nothing"


# ---------------------------------------------------------------------------------------
# the differential lab


def _one(prober: Prober, probe: Probe, timeout: float) -> ProbeResult:
    if probe.kind == "tcp":
        return prober.tcp(probe.dst, probe.port, timeout=timeout)
    if probe.kind == "udp":
        return prober.udp(probe.dst, probe.port, timeout=timeout)
    if probe.kind == "ping":
        return prober.icmp_echo(probe.dst, timeout=timeout)
    if probe.kind == "http":
        return prober.http(probe.dst, probe.port, keepalive=False, timeout=timeout)[0]
    raise ValueError(f"unknown probe kind {probe.kind!r}")


def run_probe(prober: Prober, probe: Probe, count: int | None = None) -> list[ProbeResult]:
    """One probe from ``prober``'s namespace (retried once with a longer timeout when
    unanswered); unless that one got no answer at all (a DROP: the repetitions would only
    add timeouts), the remaining repetitions."""
    first = _one(prober, probe, QUICK)
    if first.outcome is Outcome.SILENT:
        first = _one(prober, probe, CONFIRM)
    total = probe.count if count is None else count
    if first.outcome is Outcome.SILENT or total <= 1:
        return [first]
    rest = total - 1
    if probe.kind == "tcp":
        more = prober.tcp_many(probe.dst, probe.port, rest, timeout=ANSWER)
    else:
        more = [_one(prober, probe, ANSWER) for _ in range(rest)]
    return [first, *more]


@dataclass(frozen=True)
class Comparison:
    probe: Probe
    ours: Observation
    upstream: Observation
    """Mirrored into the a-side's words."""

    @property
    def same(self) -> bool:
        if self.ours.pinned:
            return (self.ours.outcomes, len(self.ours.endpoints), _node(self.ours.sources)) == (
                self.upstream.outcomes,
                len(self.upstream.endpoints),
                _node(self.upstream.sources),
            )
        return self.ours == self.upstream


def _node(sources: frozenset[str]) -> frozenset[str]:
    """Sources with the node's two addresses as one: a masqueraded packet leaves with the
    bridge's address towards a local pod and with the LAN one towards a remote pod, and
    session affinity picks one of them at random."""
    bridge = {A.gateway(v): A.node_ip(v) for v in (4, 6)}
    return frozenset(bridge.get(s, s) for s in sources)


def _random_ports(obj: JSON) -> list[str]:
    """The ports of a Service the API server would pick at random. A scenario names every
    port: a random one can take a port another Service of the scenario names."""
    spec = obj.get("spec", {})
    if obj["kind"] != "Service" or spec.get("type") not in ("NodePort", "LoadBalancer"):
        return []
    missing = [f"ports[{i}].nodePort" for i, p in enumerate(spec["ports"]) if "nodePort" not in p]
    local_lb = spec["type"] == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"
    if local_lb and "healthCheckNodePort" not in spec:
        missing.append("healthCheckNodePort")
    return missing


SENTINEL_IPS = {4: "10.96.0.200", 6: "fd00:10:96::200"}
"""The sentinel's ClusterIPs: outside every scenario's (``Ctx.cip``)."""


class Differential:
    """The cluster of one mode and the scenario loader."""

    FIELD_MANAGER = "kpp-differential"

    def __init__(self, cluster: NodeLab, mode: str) -> None:
        self.cluster = cluster
        self.mode = mode
        self.round = 0
        self.written: list[str] = []
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2 * len(VERSIONS))
        self.family_probers: dict[tuple[str, str], Prober] = {}
        """The probers of the families after the first: a namespace's prober serialises
        its calls, and each family's probes run at the same time as the other's."""

    # -- API writes ------------------------------------------------------------------------
    @staticmethod
    def path(obj: JSON) -> str:
        ns = obj["metadata"].get("namespace", "default")
        name = obj["metadata"]["name"]
        if obj["kind"] == "Service":
            return f"/api/v1/namespaces/{ns}/services/{name}"
        return f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}"

    def write(self, obj: JSON) -> None:
        """Create or update ``obj`` (server-side apply); a Service's status as well."""
        assert not _random_ports(obj), f"{obj['metadata']['name']}: {_random_ports(obj)}"
        body = {k: v for k, v in obj.items() if k != "status"}
        if body.get("spec", {}).get("type") == "LoadBalancer":
            # The scenario writes the load balancer's status itself: keep MetalLB out.
            body["spec"] = {**body["spec"], "loadBalancerClass": STATIC_CLASS}
        api = self.cluster.api
        path = self.path(obj)
        api("PATCH", f"{path}?fieldManager={self.FIELD_MANAGER}&force=true", body,
            content_type="application/apply-patch+yaml")  # fmt: skip
        if "status" in obj:
            api("PATCH", f"{path}/status", {"status": obj["status"]},
                content_type="application/merge-patch+json")  # fmt: skip

    def load(self, stages: Sequence[Sequence[JSON]]) -> None:
        """Replace the previous scenario's objects by the stages' objects, one stage after
        the other once both agents programmed the one before; return once both agents
        programmed the last one, with both nodes' conntrack tables empty."""
        for path in self.written:
            self.cluster.api("DELETE", path, ok=(200, 202, 404))
        self.written = []
        for objects in stages:
            for kind in ("Service", "EndpointSlice"):
                for obj in objects:
                    if obj["kind"] == kind:
                        self.write(obj)
                        if self.path(obj) not in self.written:
                            self.written.append(self.path(obj))
            self.barrier()
        for side in SIDES:
            self.cluster.flush_conntrack(side.node)

    def barrier(self) -> None:
        """Write the sentinel last; wait until both nodes serve its new state in every
        family (upstream syncs each family's proxier on its own)."""
        self.round += 1
        port = 20000 + self.round
        target = (A, B)[self.round % 2].pod(1)
        ips = [SENTINEL_IPS[v] for v in VERSIONS]
        ports = [m.Port(port, "tcp", target_port=80)]
        self.write(m.service("sentinel", ips[0], ports, cluster_ips=ips))
        for v in VERSIONS:
            name = "sentinel" if v == VERSIONS[0] else "sentinel-v6"
            self.write(m.endpoint_slice("sentinel", [Ctx(0, A, v).ep(target)],
                                        [("tcp", 80, "TCP")], name=name,
                                        address_type=FAMILY[v]))  # fmt: skip
        for side in SIDES:
            prober = self.cluster.prober(side.node)
            for ip in ips:

                def served(prober: Prober = prober, ip: str = ip) -> bool:
                    return prober.tcp(ip, port, timeout=0.3).endpoint == target

                what = f"{side.implementation} on {side.node} to serve {host_port(ip, port)}"
                try:
                    wait_for(served, 60, what=f"{what} with {target}")
                except TimeoutError as exc:
                    raise AssertionError(f"{exc}\n{self.log_tail(side)}") from exc

    # -- probing ---------------------------------------------------------------------------
    def prober(self, probe: Probe) -> Prober:
        if probe.family == FAMILY[VERSIONS[0]]:
            return self.cluster.prober(probe.src)
        key = (probe.src, probe.family)
        if key not in self.family_probers:
            self.family_probers[key] = Prober(self.cluster.ns(probe.src))
        return self.family_probers[key]

    def probe_both(
        self, pairs: Sequence[tuple[Probe, Probe]], count: int | None = None
    ) -> list[tuple[list[ProbeResult], list[ProbeResult]]]:
        """Each pair's a-side probe through node-a and b-side probe through node-b: the
        two sides, and each side's families, at the same time."""
        families = sorted({pair[0].family for pair in pairs})
        for probe in (p for pair in pairs for p in pair):  # a new prober starts a worker:
            self.prober(probe)  # not in the threads

        def side(i: int, family: str) -> list[list[ProbeResult]]:
            return [run_probe(self.prober(pair[i]), pair[i], count)
                    for pair in pairs if pair[i].family == family]  # fmt: skip

        futures = {(i, f): self.pool.submit(side, i, f) for i in (0, 1) for f in families}
        results: dict[tuple[int, str], Iterator[list[ProbeResult]]] = {
            key: iter(future.result()) for key, future in futures.items()
        }
        return [
            (next(results[0, pair[0].family]), next(results[1, pair[1].family])) for pair in pairs
        ]

    def compare(self, scen: Scenario) -> list[Comparison]:
        a, b = built(scen, A), built(scen, B)
        assert [(p.family, p.label) for p in a.probes] == [(p.family, p.label) for p in b.probes]
        stages = [[*sa, *sb] for sa, sb in zip(a.stages, b.stages, strict=True)]
        self.load(stages)
        pairs = list(zip(a.probes, b.probes, strict=True))
        comparisons = []
        for (pa, pb), (ra, rb) in zip(pairs, self.probe_both(pairs), strict=True):
            ours = Observation.of(ra, pa.pinned)
            upstream = Observation.of(rb, pb.pinned).mirrored()
            comparisons.append(Comparison(pa, ours, upstream))
        for _ in range(RETRIES):
            # A random spread can miss an endpoint on one side: probe those again.
            again = [
                i
                for i, c in enumerate(comparisons)
                if not c.same and c.probe.count > 1 and not c.probe.pinned
                and not c.ours.silent and not c.upstream.silent
            ]  # fmt: skip
            if not again:
                break
            redo = self.probe_both([pairs[i] for i in again])
            for i, (ra, rb) in zip(again, redo, strict=True):
                c = comparisons[i]
                ours = c.ours.merged(Observation.of(ra, False))
                upstream = c.upstream.merged(Observation.of(rb, False).mirrored())
                comparisons[i] = Comparison(c.probe, ours, upstream)
        return comparisons

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for prober in self.family_probers.values():
            prober.close()

    # -- the agents ------------------------------------------------------------------------
    def restarts(self) -> dict[str, int]:
        """Container restarts of each side's agent pod."""
        return {
            side.node: self.cluster.agent_pod(side.node, side.agent)["status"]["containerStatuses"][
                0
            ]["restartCount"]
            for side in SIDES
        }

    def log_tail(self, side: Side, lines: int = 30) -> str:
        text = self.cluster.agent_log(side.node, side.agent)
        return f"{side.implementation} on {side.node}:\n" + "\n".join(text.splitlines()[-lines:])


def configure(lab: NodeLab, mode: str) -> None:
    """Both implementations in ``mode``, syncing at once after every change."""
    lab.configure_agents(mode, MIN_SYNC)
    lab.configure_upstream(mode, f"--iptables-min-sync-period={MIN_SYNC}")
    for side in SIDES:  # (upstream's DaemonSet has no readiness probe: wait for it here)

        def serving(side: Side = side) -> bool:
            return lab.node_http(side.node, "http://127.0.0.1:10249/proxyMode")[1] == mode

        wait_for(serving, 60, what=f"{side.implementation} on {side.node} in {mode} mode")


def side_pods(side: Side) -> list[JSON]:
    return [workload_pod(side.pod(n), side.node, serve=n in SERVING) for n in (*SERVING, CLIENT)]


@pytest.fixture(scope="module")
def mirror_lab(node_lab: NodeLab) -> Iterator[NodeLab]:
    """The lab's node-1 and node-upstream as the two sides: zones, a second outside
    client, routes to Service addresses, the pods (their addresses learned)."""
    lab = node_lab
    assert versions_of(lab.state.ip_family) == VERSIONS, (lab.state.ip_family, VERSIONS)
    for side in SIDES:  # the addresses the mirror is written with
        record = lab.state.node(side.node)
        assert record is not None, side.node
        assert record.lan_ips == tuple(side.node_ip(v) for v in VERSIONS), record
        assert record.pod_cidrs == tuple(side.pod_cidr(v) for v in VERSIONS), record
    zone = lab.api("GET", f"/api/v1/nodes/{B.node}")["metadata"]["labels"].get(ZONE_LABEL)
    lab.kubectl("label", "node", B.node, f"{ZONE_LABEL}={B.zone}", "--overwrite")
    if B.outside not in lab.extra_clients:
        lab.add_client(B.outside, *(B.outside_ip(v) for v in VERSIONS))
    added: list[tuple[str, str]] = []
    for side in SIDES:
        routed = {
            str(ipaddress.ip_network(r["dst"]))
            for v in VERSIONS
            for r in json.loads(lab.run(side.outside, ["ip", f"-{v}", "-j", "route"]).stdout)
            if r["dst"] != "default"
        }
        for v in VERSIONS:
            for prefix in ROUTED_TO_NODE[v]:
                lab.route(side.outside, prefix, side.node_ip(v))
                if prefix not in routed:
                    added.append((side.outside, prefix))
    pods = [pod for side in SIDES for pod in side_pods(side)]
    for pod in pods:  # names another module may have used
        lab.wait_pod_gone(pod["metadata"]["name"])
    lab.create_pods(pods)
    learned: dict[tuple[str, int], str] = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        for entry in lab.get("pod", name)["status"]["podIPs"]:
            ip = ipaddress.ip_address(entry["ip"])
            learned[name, ip.version] = str(ip)
        assert {v for n, v in learned if n == name} == set(VERSIONS), (name, learned)
    learn_pod_ips(learned)
    yield lab
    for pod in pods:
        lab.delete_pod(pod["metadata"]["name"], force=True)
    # what a lab of the package's other modules has: the outside clients' own routes,
    # node-upstream's own zone
    for outside, prefix in added:
        lab.run(outside, ["ip", "route", "del", prefix])
    lab.kubectl("label", "node", B.node, f"{ZONE_LABEL}={zone}" if zone else f"{ZONE_LABEL}-",
                "--overwrite")  # fmt: skip


@pytest.fixture(scope="module", params=MODES)
def diff(mirror_lab: NodeLab, request: pytest.FixtureRequest) -> Iterator[Differential]:
    mode: str = request.param
    configure(mirror_lab, mode)
    lab = Differential(mirror_lab, mode)
    before = lab.restarts()
    try:
        yield lab
    finally:
        lab.close()
        sentinel = [lab.path({"kind": kind, "metadata": {"name": name}})
                    for kind, name in (("Service", "sentinel"), ("EndpointSlice", "sentinel"),
                                       ("EndpointSlice", "sentinel-v6"))]  # fmt: skip
        for path in [*lab.written, *sentinel]:
            lab.cluster.api("DELETE", path, ok=(200, 202, 404))
        assert lab.restarts() == before, "\n".join(lab.log_tail(side) for side in SIDES)


# ---------------------------------------------------------------------------------------
# the tests


def _report(mode: str, scen: Scenario, comparisons: Sequence[Comparison]) -> str:
    lines = [f"{mode} / {scen.id}:"]
    for c in comparisons:
        p = c.probe
        mark = "same" if c.same else "DIFFERENT"
        target = f"{p.kind} {host_port(p.dst, p.port)} x{p.count}"
        lines.append(f"  [{mark}] {p.family} {p.label}: {p.src} -> {target}")
        lines.append(f"      kube-proxy-py: {c.ours.render()}")
        if not c.same:
            lines.append(f"      upstream:      {c.upstream.render()}")
    return "\n".join(lines)


def check(
    mode: str,
    scenario_id: str,
    comparisons: Sequence[Comparison],
    table: Sequence[Difference] = INTENDED_DIFFERENCES,
) -> list[str]:
    """What is wrong with a scenario's comparisons: a difference the table does not
    list, or a listed one that did not show up exactly as listed (in each family it lists
    that the run probes)."""
    families = {c.probe.family for c in comparisons}
    expected = {
        (family, d.probe): d
        for d in table
        if d.scenario == scenario_id and d.mode in (mode, "both")
        for family in (FAMILY.values() if d.family == "both" else [d.family])
        if family in families or not comparisons
    }
    problems = []
    for c in comparisons:
        listed = expected.pop((c.probe.family, c.probe.label), None)
        if listed is None:
            if not c.same:
                problems.append(f"unlisted difference in {c.probe.family} {c.probe.label!r}")
            continue
        seen = (c.ours.render(), c.upstream.render())
        if c.same or seen != (listed.ours, listed.upstream):
            problems.append(
                f"{listed.id} ({c.probe.label!r}) listed as ours={listed.ours!r} "
                f"upstream={listed.upstream!r}, observed ours={seen[0]!r} upstream={seen[1]!r}"
            )
    problems += [f"{d.id}: no {f} probe labelled {d.probe!r}" for (f, _), d in expected.items()]
    return problems


@pytest.mark.parametrize("scen", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_same_outcomes_as_upstream(diff: Differential, scen: Scenario) -> None:
    comparisons = diff.compare(scen)
    report = _report(diff.mode, scen, comparisons)
    print(report)  # shown with -s or -rP: every probe and what both implementations did
    problems = check(diff.mode, scen.id, comparisons) + unheard(comparisons)
    assert not problems, "\n".join(problems) + "\n\n" + report


def test_upstreams_rules_become_ours_in_one_sync(diff: Differential, tmp_path: Path) -> None:
    """Migration (docs/deploy.md): upstream's rules as they stand on node-upstream, after
    the scenarios, are loaded into a throwaway namespace; one ``kube-proxy-py apply`` of
    the lab's objects there (what the agent's first full sync does) leaves exactly the
    rules it writes into an empty namespace: every upstream chain, set and map it does
    not use gone, none of its own missing or different (the jumps from the built-in
    chains included). Left behind, as the doc says: nftables chain comments, upstream's
    empty KUBE-PROXY-CANARY chains, and what is kubelet's."""
    lab = diff.cluster
    items = LabView(lab.state).objects()  # Services, EndpointSlices, Nodes, as lab explain
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    loads: list[tuple[list[str], str]] = []

    def upstream_wrote() -> bool:
        loads[:] = upstream_rules(lab, diff.mode)
        return any("KUBE-SVC-" in t or "service-" in t for _, t in loads)

    wait_for(upstream_wrote, 60, what=f"upstream's {diff.mode} rules on {B.node}")
    for i, (_, text) in enumerate(loads):
        (tmp_path / f"upstream-{i}.txt").write_text(text)  # kept by pytest for a failure
    with throwaway_netns("take") as take, throwaway_netns("fresh") as fresh:
        # upstream counts invalid and localhost-NodePort packets in nfacct objects its
        # rules name: they must exist for the rules to load
        for name in sorted({n for _, t in loads for n in re.findall(r"--nfacct-name\s+(\S+)", t)}):
            run_command(["ip", "netns", "exec", take, "nfacct", "add", name])
        for argv, text in loads:
            done = run_command(["ip", "netns", "exec", take, *argv], input=text, check=False)
            assert done.returncode == 0, f"{done.stderr} (the input is in {tmp_path})"
        for ns in (take, fresh):
            run_command(
                ["ip", "netns", "exec", ns, "env", f"{VARIANT_ENV}=nft",
                 *python_argv("proxy", "apply", "--mode", diff.mode, "--state", str(state),
                              "--hostname-override", B.node)],
                timeout=120,
            )  # fmt: skip
        took, wrote = (our_rules(ns, diff.mode) for ns in (take, fresh))
    assert took.keys() >= wrote.keys(), sorted(wrote.keys() - took.keys())
    different = [k for k in wrote if took[k] != wrote[k]]
    assert not different, "\n".join(f"{k}:\n  took {took[k]}\n  wrote {wrote[k]}"
                                     for k in different[:5])  # fmt: skip
    left = sorted(k for k in took.keys() - wrote.keys() if not _not_upstreams(k))
    assert not left, left


def upstream_rules(lab: NodeLab, mode: str) -> list[tuple[list[str], str]]:
    """What node-upstream's kube-proxy wrote, as (restore command, its input) pairs."""
    if mode == "nftables":
        listings = [
            lab.run(B.node, ["nft", "list", "table", fam, "kube-proxy"], check=False).stdout
            for fam in ("ip", "ip6")
        ]
        return [(["nft", "-f", "-"], text) for text in listings if text]
    return [
        ([f"{tool}-nft-restore"], lab.run(B.node, [f"{tool}-nft-save"]).stdout)
        for tool in ("iptables", "ip6tables")
    ]


def our_rules(ns: str, mode: str) -> dict[str, str]:
    """kube-proxy's rules in ``ns``, comparable: nftables chains, sets and maps of both
    ``kube-proxy`` tables by name (without handles and comments; elements sorted);
    iptables chains of both families by table and name, each with its rules in order."""
    out: dict[str, str] = {}
    if mode == "nftables":
        for fam in ("ip", "ip6"):
            listing = run_command(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", fam,
                                   "kube-proxy"], check=False).stdout  # fmt: skip
            for item in json.loads(listing or '{"nftables": []}')["nftables"]:
                for kind, body in item.items():
                    if kind not in ("chain", "set", "map", "rule"):
                        continue
                    body = {k: v for k, v in body.items() if k not in ("handle", "comment")}
                    if kind == "rule":
                        key = f"{fam} rules {body['chain']}"
                        out[key] = out.get(key, "") + json.dumps(body["expr"], sort_keys=True)
                    else:
                        body["elem"] = sorted(json.dumps(e, sort_keys=True)
                                              for e in body.get("elem", []))  # fmt: skip
                        out[f"{fam} {kind} {body['name']}"] = json.dumps(body, sort_keys=True)
        return out
    for tool in ("iptables", "ip6tables"):
        table = ""
        dump = run_command(["ip", "netns", "exec", ns, f"{tool}-nft-save"]).stdout
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                out.setdefault(f"{tool} {table} {line[1:].split()[0]}", "")
            elif line.startswith("-A ") and not _not_upstreams(line.split()[-1]):
                chain = line.split()[1]
                key = f"{tool} {table} {chain}"
                out[key] = out.get(key, "") + line + "\n"
    return out


KUBELETS_OR_CANARY = frozenset(
    {"KUBE-PROXY-CANARY", "KUBE-KUBELET-CANARY", "KUBE-FIREWALL", "KUBE-IPTABLES-HINT"}
)
"""Upstream's empty canary chain; kubelet's canary, its localnet firewall and its hint of
which iptables backend the node uses."""


def _not_upstreams(key: str) -> bool:
    """A chain (or a rule's jump target) the comparison leaves alone: a built-in chain
    holding only others' rules (a fresh namespace has none), kubelet's, or upstream's
    empty canary."""
    name = key.split()[-1]
    return name in KUBELETS_OR_CANARY or (name.isupper() and not name.startswith("KUBE-"))


def unheard(comparisons: Sequence[Comparison]) -> list[str]:
    """The families in which neither implementation got any answer (an endpoint's, an
    ICMP error, a RST): equal, but a sign of a broken lab (routes, addresses), not of
    equal behaviour. Every scenario has probes that are answered."""
    problems = []
    for family in sorted({c.probe.family for c in comparisons}):
        mine = [c for c in comparisons if c.probe.family == family]
        if not any(c.ours.heard for c in mine) or not any(c.upstream.heard for c in mine):
            problems.append(f"{family}: no probe got any answer on one side")
    return problems


def test_intended_differences_are_documented() -> None:
    doc = DIFFERENCES_DOC.read_text()
    ids = {s.id for s in SCENARIOS}
    for d in INTENDED_DIFFERENCES:
        assert d.scenario in ids and d.mode in (*MODES, "both"), d
        assert d.family in (*FAMILY.values(), "both"), d
        assert d.reason and d.ours != d.upstream, d
        row = [line for line in doc.splitlines() if f"`{d.id}`" in line]
        assert row, f"{d.id} is not in {DIFFERENCES_DOC}"
        for text in (d.scenario, d.probe, d.mode, d.family):
            assert text in row[0], f"{d.id}: {text!r} missing from its row in the doc"
    documented = set(re.findall(r"^\| `(D\d+)` \|", doc, re.MULTILINE))
    assert documented == {d.id for d in INTENDED_DIFFERENCES}, documented


def _mirrored(value: Any) -> Any:
    """A JSON-like value translated across the mirror (dict keys stay)."""
    if isinstance(value, dict):
        return {k: _mirrored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mirrored(v) for v in value]
    if isinstance(value, str):
        return mirror(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(MIRROR.get(str(value), value))
    return value


def test_scenarios_are_mirror_images() -> None:
    """Each b-side scenario is the a-side one translated across the mirror, so that the
    two sides' outcomes are comparable at all."""
    for versions in ((4,), (6,), (4, 6)):
        for scen in SCENARIOS:
            a, b = built(scen, A, versions), built(scen, B, versions)
            assert a.stages != b.stages, scen.id
            assert _mirrored(b.stages) == a.stages, (scen.id, versions)
            b_probes = [_mirrored(dataclasses.asdict(p)) for p in b.probes]
            assert b_probes == [dataclasses.asdict(p) for p in a.probes], (scen.id, versions)
            assert {p.family for p in a.probes} == {FAMILY[v] for v in versions}, scen.id


def test_check_flags_unlisted_and_vanished_differences() -> None:
    """The comparison logic itself, on made-up observations (no cluster)."""
    probe = Probe("pod tcp", "a3", "tcp", "10.96.1.10")
    a1 = Observation(endpoints=frozenset({"a1"}), sources=frozenset({"10.244.1.13"}))
    refused = Observation(outcomes=frozenset({"refused: icmp 3/3 from 192.168.50.11"}))
    same, different = Comparison(probe, a1, a1), Comparison(probe, a1, refused)
    listed = Difference("D0", "cluster-ip", "pod tcp", "nftables", a1.render(),
                        refused.render(), "made up")  # fmt: skip
    assert check("iptables", "cluster-ip", [same], ()) == []
    assert check("iptables", "cluster-ip", [different], ()) == [
        "unlisted difference in IPv4 'pod tcp'"
    ]
    assert check("nftables", "cluster-ip", [different], (listed,)) == []
    assert check("iptables", "cluster-ip", [different], (listed,)) != []  # other mode
    assert "D0" in check("nftables", "cluster-ip", [same], (listed,))[0]  # no longer differs
    assert "D0" in check("nftables", "cluster-ip", [], (listed,))[0]  # probe gone
    v6 = dataclasses.replace(probe, dst="fd00:10:96::110", family="IPv6")
    different6 = Comparison(v6, a1, refused)
    only6 = dataclasses.replace(listed, family="IPv6")
    assert check("nftables", "cluster-ip", [different6], (only6,)) == []
    assert check("nftables", "cluster-ip", [different6], (listed,)) == []  # "both"
    assert check("nftables", "cluster-ip", [different], (only6,)) != []  # other family
    assert "D0" in check("nftables", "cluster-ip", [different6, same], (listed,))[0]
    timeout = Observation(outcomes=frozenset({"silent: timeout"}))
    assert unheard([different, different6]) == []
    assert unheard([different, Comparison(v6, timeout, timeout)]) == [
        "IPv6: no probe got any answer on one side"
    ]
    assert unheard([Comparison(v6, timeout, a1)]) != []
    pinned = Probe("pod tcp", "a3", "tcp", "10.96.1.10", count=10, pinned=True)
    one = Observation(endpoints=frozenset({"a1"}), pinned=True)
    other = Observation(endpoints=frozenset({"b1"}), pinned=True)
    assert Comparison(pinned, one, other).same
    both = Observation(endpoints=frozenset({"a1", "b1"}), pinned=True)
    assert not Comparison(pinned, one, both).same


def test_mirror_translates_names_and_addresses() -> None:
    assert mirror("a1") == "b1" and mirror("node-upstream") == "node-1"
    assert mirror("icmp 3/3 from 192.168.50.30") == "icmp 3/3 from 192.168.50.11"
    assert mirror("192.168.50.101/32") == "192.168.50.100/32"
    assert mirror("zone-a") == "zone-b" and mirror("10.244.30.1") == "10.244.1.1"
    assert mirror("icmp6 1/4 from fd00:192:168:50::30") == "icmp6 1/4 from fd00:192:168:50::11"
    assert mirror("fd00:10:244:30::1") == "fd00:10:244:1::1"
    assert mirror("fd00:192:168:50::101/128") == "fd00:192:168:50::100/128"
    assert mirror("echo-reply from fd00:10:96::1") == "echo-reply from fd00:10:96::1"  # unknown
    a3, b3 = A.pod_ip(CLIENT), B.pod_ip(CLIENT)
    observed = Observation(frozenset(), frozenset({"b1", "a2"}), frozenset({b3}))
    assert observed.mirrored() == Observation(frozenset(), frozenset({"a1", "b2"}), frozenset({a3}))
