"""Which UDP conntrack entries are stale after a sync: the pure part of proxy.conntrack."""

from __future__ import annotations

import ipaddress
from typing import Any

from proxy import manifests as m
from proxy.config import ProxyConfig
from proxy.conntrack import FlowEntry, UdpTarget, classify, stale_entries, udp_targets
from proxy.model import IPFamily
from proxy.plan import Plan, plan
from proxy.source.file import build_state

NODE = "node-a"
VIP = "10.96.0.53"
CLIENT = "10.244.1.13"
A1 = ("10.244.1.11", 5353)
B1 = ("10.244.2.11", 5353)


def make_plan(*objs: dict[str, Any]) -> Plan:
    state = build_state([m.node(NODE, "192.168.50.11"), *objs], NODE)
    assert state.problems == ()
    return plan(
        state.snapshot, ProxyConfig(NODE, cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    )


def target(
    serving: set[tuple[str, int]],
    *,
    ips: tuple[str, ...] = (VIP,),
    port: int = 53,
    node_port: int | None = None,
    service: str = "kube-system/dns:dns",
) -> UdpTarget:
    return UdpTarget(service, frozenset(ips), port, node_port, frozenset(serving))


def flow(
    dst: str = VIP,
    dport: int = 53,
    reply: tuple[str, int] = A1,
    *,
    src: str = CLIENT,
    sport: int = 40000,
) -> FlowEntry:
    family = IPFamily.of(ipaddress.ip_address(dst))
    return FlowEntry(src, dst, sport, dport, reply[0], reply[1], family)


# ---------------------------------------------------------------------------------------
# udp_targets


def test_udp_targets_take_udp_ports_with_every_service_ip_and_the_node_port() -> None:
    svc = m.service(
        "dns",
        VIP,
        [m.Port(53, "dns", "UDP", 5353, node_port=30053), m.Port(53, "dns-tcp", "TCP", 5353)],
        namespace="kube-system",
        type="LoadBalancer",
        external_ips=["203.0.113.10"],
        lb_ips=["198.51.100.10"],
    )
    sl = m.endpoint_slice(
        "dns",
        [m.EP(A1[0], NODE), m.EP(B1[0], "node-b")],
        [("dns", 5353, "UDP"), ("dns-tcp", 5353, "TCP")],
        namespace="kube-system",
    )
    (t,) = udp_targets(make_plan(svc, sl))
    assert t.service == "kube-system/dns:dns" and t.object == "kube-system/dns"
    assert t.ips == {VIP, "203.0.113.10", "198.51.100.10"}
    assert (t.port, t.node_port, t.family) == (53, 30053, IPFamily.V4)
    assert t.serving == {A1, B1}


def test_serving_ignores_policy_topology_and_terminating_but_not_serving_false() -> None:
    # eTP=Local on a node with only remote endpoints: the rules DNAT external traffic
    # nowhere, but a flow already going to a serving endpoint is not stale (upstream)
    svc = m.service(
        "dns",
        VIP,
        [m.Port(53, "dns", "UDP", 5353, node_port=30053)],
        type="NodePort",
        external_policy="Local",
    )
    term = m.EP("10.244.2.12", "node-b", ready=False, serving=True, terminating=True)
    dead = m.EP("10.244.2.13", "node-b", ready=False, serving=False, terminating=True)
    sl = m.endpoint_slice("dns", [m.EP(B1[0], "node-b"), term, dead], [("dns", 5353, "UDP")])
    (t,) = udp_targets(make_plan(svc, sl))
    assert t.serving == {B1, ("10.244.2.12", 5353)}


def test_udp_port_without_endpoints_has_an_empty_serving_set() -> None:
    svc = m.service("dns", VIP, [m.Port(53, "dns", "UDP")])
    (t,) = udp_targets(make_plan(svc))
    assert t.serving == frozenset()


# ---------------------------------------------------------------------------------------
# stale_entries


def test_flow_to_a_removed_endpoint_is_stale_and_to_a_current_one_is_not() -> None:
    gone, kept = flow(reply=A1, sport=1), flow(reply=B1, sport=2)
    assert stale_entries([gone, kept], [target({B1})]) == [gone]


def test_same_ip_other_port_is_not_a_serving_endpoint() -> None:
    e = flow(reply=(B1[0], 8053))
    assert stale_entries([e], [target({B1})]) == [e]


def test_flow_that_was_never_dnated_is_stale_once_the_port_has_endpoints() -> None:
    # sent while the service had no rules: reply source is the VIP itself
    e = flow(reply=(VIP, 53))
    assert stale_entries([e], [target({B1})]) == [e]


def test_port_without_serving_endpoints_is_left_alone() -> None:
    e = flow(reply=(VIP, 53))
    assert stale_entries([e], [target(set(), node_port=30053)]) == []
    np = flow("192.168.50.11", 30053, ("192.168.50.11", 30053))
    assert stale_entries([np], [target(set(), node_port=30053)]) == []


def test_external_and_load_balancer_ips_are_service_ips_too() -> None:
    t = target({B1}, ips=(VIP, "203.0.113.10", "198.51.100.10"))
    eip = flow("203.0.113.10", reply=A1, sport=1)
    lb = flow("198.51.100.10", reply=("198.51.100.10", 53), sport=2)
    ok = flow("198.51.100.10", reply=B1, sport=3)
    assert stale_entries([eip, lb, ok], [t]) == [eip, lb]


def test_node_port_matches_any_destination_address() -> None:
    t = target({B1}, node_port=30053)
    node_ip = flow("192.168.50.11", 30053, A1, sport=1)
    localhost = flow("127.0.0.1", 30053, ("127.0.0.1", 30053), sport=2)
    ok = flow("192.168.50.11", 30053, B1, sport=3)
    assert stale_entries([node_ip, localhost, ok], [t]) == [node_ip, localhost]


def test_other_traffic_is_untouched() -> None:
    t = target({B1}, node_port=30053)
    entries = [
        flow("10.96.0.99", 53, A1, sport=1),  # another IP on the same port
        flow(VIP, 54, A1, sport=2),  # the VIP on another port
        flow(A1[0], A1[1], A1, sport=3),  # straight to the removed pod
        flow("192.168.50.11", 30054, A1, sport=4),  # another node port
    ]
    assert stale_entries(entries, [t]) == []


def test_service_ip_flow_is_judged_only_by_its_own_service() -> None:
    # a ClusterIP port that happens to equal another service's NodePort
    vip_port = target({A1}, port=30053, service="default/a:u")
    other = target({B1}, ips=("10.96.0.60",), node_port=30053, service="default/b:u")
    ok = flow(VIP, 30053, A1, sport=1)
    gone = flow(VIP, 30053, B1, sport=2)
    via_node_port = flow("192.168.50.11", 30053, A1, sport=3)
    assert classify([ok, gone, via_node_port], [vip_port, other]) == [
        (gone, "default/a:u"),
        (via_node_port, "default/b:u"),
    ]


def test_families_are_separate_and_ipv6_spellings_are_canonical() -> None:
    v6 = target({("fd00:10:244:1::11", 5353)}, ips=("fd00:10:96::53",), node_port=30053)
    assert v6.family is IPFamily.V6
    kept = flow("fd00:10:96:0::53", reply=("fd00:10:244:1:0::11", 5353), src="fd00::1", sport=1)
    gone = flow("fd00:10:96::53", reply=("fd00:10:244:1::12", 5353), src="fd00::1", sport=2)
    v4_on_v6_node_port = flow("192.168.50.11", 30053, A1, sport=3)
    assert stale_entries([kept, gone, v4_on_v6_node_port], [v6]) == [gone]


def test_newly_served_ports_are_judged_like_targets() -> None:
    never_dnated = flow(reply=(VIP, 53), sport=1)
    fresh = flow(reply=B1, sport=2)  # DNATed by the new rules: must survive
    assert stale_entries([never_dnated, fresh], [], newly_served=[target({B1})]) == [never_dnated]


def test_targets_sharing_a_destination_union_their_endpoints() -> None:
    a = target({A1}, service="default/a:u")
    b = target({B1}, service="default/b:u")
    assert stale_entries([flow(reply=A1), flow(reply=B1, sport=2)], [a, b]) == []
