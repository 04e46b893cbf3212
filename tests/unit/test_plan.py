"""The planner: every row of design.md section 3, as pure data."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import NodePortAddresses, ProxyConfig, ProxyMode
from proxy.model import IPFamily
from proxy.plan import Filter, NodePortTargets, Plan, TopologyMode, plan
from proxy.source.file import build_state

NODE = "node-a"


def make_plan(*objs: dict[str, Any], **cfg: Any) -> Plan:
    state = build_state([m.node(NODE, "192.168.50.11", zone="z1"), *objs], NODE)
    assert state.problems == ()
    cfg.setdefault("cluster_cidrs", (ipaddress.ip_network("10.244.0.0/16"),))
    return plan(state.snapshot, ProxyConfig(NODE, **cfg))


def web(**kw: Any) -> dict[str, Any]:
    ports = kw.pop("ports", [m.Port(80, "http", target_port=8080)])
    return m.service("web", "10.96.0.10", ports, **kw)


def web_slice(
    *eps: m.EP, ports: Any = (("http", 8080, "TCP"),), name: str = "web-1"
) -> dict[str, Any]:
    return m.endpoint_slice("web", eps, list(ports), name=name)


def ips(eps: Any) -> list[str]:
    return [str(e.ip) for e in eps]


def test_cluster_ip_uses_every_ready_endpoint() -> None:
    p = make_plan(web(), web_slice(m.EP("10.244.1.5", NODE), m.EP("10.244.2.5", "node-b")))
    sp = p.service_port("default", "web", "http")
    assert ips(sp.cluster_endpoints) == ["10.244.1.5", "10.244.2.5"]
    assert sp.reachable_endpoints == sp.cluster_endpoints
    assert sp.internal_filter is None and sp.uses_cluster_chain
    assert [e.port for e in sp.reachable_endpoints] == [8080, 8080]
    assert sp.service_port_name == "default/web:http"


def test_named_target_port_comes_from_the_slice_port_of_the_same_name() -> None:
    svc = web(ports=[m.Port(80, "http", target_port="web"), m.Port(443, "https")])
    sl = web_slice(m.EP("10.244.1.5", NODE), ports=(("http", 9376, "TCP"), ("https", 8443, "TCP")))
    p = make_plan(svc, sl)
    assert [e.port for e in p.service_port("default", "web", "http").reachable_endpoints] == [9376]
    assert [e.port for e in p.service_port("default", "web", "https").reachable_endpoints] == [8443]


def test_port_missing_from_the_slice_has_no_endpoints_and_rejects() -> None:
    p = make_plan(web(), web_slice(m.EP("10.244.1.5", NODE), ports=(("other", 1, "TCP"),)))
    sp = p.service_port("default", "web", "http")
    assert not sp.has_endpoints and sp.internal_filter is Filter.REJECT


def test_protocol_must_match_too() -> None:
    p = make_plan(web(), web_slice(m.EP("10.244.1.5", NODE), ports=(("http", 8080, "UDP"),)))
    assert not p.service_port("default", "web", "http").has_endpoints


def test_terminating_fallback_only_when_nothing_is_ready() -> None:
    term = m.EP("10.244.1.6", NODE, ready=False, serving=True, terminating=True)
    gone = m.EP("10.244.1.7", NODE, ready=False, serving=False, terminating=True)
    p = make_plan(web(), web_slice(m.EP("10.244.1.5", NODE), term, gone))
    assert ips(p.service_port("default", "web", "http").cluster_endpoints) == ["10.244.1.5"]
    p = make_plan(web(), web_slice(term, gone))
    assert ips(p.service_port("default", "web", "http").cluster_endpoints) == ["10.244.1.6"]


def test_not_ready_not_serving_means_no_endpoints() -> None:
    p = make_plan(web(), web_slice(m.EP("10.244.1.5", NODE, ready=False, serving=False)))
    assert p.service_port("default", "web", "http").internal_filter is Filter.REJECT


def test_topology_zone_hints() -> None:
    eps = (
        m.EP("10.244.1.5", NODE, zone="z1", zone_hints=("z1",)),
        m.EP("10.244.2.5", "node-b", zone="z2", zone_hints=("z2",)),
    )
    sp = make_plan(web(), web_slice(*eps)).service_port("default", "web", "http")
    assert sp.topology_mode is TopologyMode.PREFER_SAME_ZONE
    assert ips(sp.cluster_endpoints) == ["10.244.1.5"]


def test_topology_ignored_when_an_endpoint_lacks_hints() -> None:
    eps = (
        m.EP("10.244.1.5", NODE, zone="z1", zone_hints=("z1",)),
        m.EP("10.244.2.5", "node-b", zone="z2"),
    )
    sp = make_plan(web(), web_slice(*eps)).service_port("default", "web", "http")
    assert sp.topology_mode is TopologyMode.NONE
    assert len(sp.cluster_endpoints) == 2


def test_topology_ignored_when_no_hint_matches_our_zone() -> None:
    eps = (
        m.EP("10.244.2.5", "node-b", zone_hints=("z2",)),
        m.EP("10.244.3.5", "node-c", zone_hints=("z3",)),
    )
    sp = make_plan(web(), web_slice(*eps)).service_port("default", "web", "http")
    assert sp.topology_mode is TopologyMode.NONE and len(sp.cluster_endpoints) == 2


def test_node_hints_win_over_zone_hints() -> None:
    eps = (
        m.EP("10.244.1.5", NODE, zone_hints=("z1",), node_hints=(NODE,)),
        m.EP("10.244.1.6", "node-x", zone_hints=("z1",), node_hints=("node-x",)),
    )
    sp = make_plan(web(), web_slice(*eps)).service_port("default", "web", "http")
    assert sp.topology_mode is TopologyMode.PREFER_SAME_NODE
    assert ips(sp.cluster_endpoints) == ["10.244.1.5"]


def test_internal_traffic_policy_local() -> None:
    eps = (m.EP("10.244.1.5", NODE), m.EP("10.244.2.5", "node-b"))
    sp = make_plan(web(internal_policy="Local"), web_slice(*eps)).service_port(
        "default", "web", "http"
    )
    assert ips(sp.local_endpoints) == ["10.244.1.5"] and sp.cluster_endpoints == ()
    assert not sp.uses_cluster_chain and sp.uses_local_chain and sp.internal_filter is None
    sp = make_plan(web(internal_policy="Local"), web_slice(eps[1])).service_port(
        "default", "web", "http"
    )
    assert sp.internal_filter is Filter.DROP  # endpoints exist, none here
    sp = make_plan(web(internal_policy="Local")).service_port("default", "web", "http")
    assert sp.internal_filter is Filter.REJECT  # none anywhere


def test_external_traffic_policy_local_needs_an_external_path() -> None:
    # eTP=Local on a plain ClusterIP service has no meaning: the API refuses it, and so do we
    state = build_state([web(external_policy="Local")], NODE)
    assert [(p.field, p.message) for p in state.problems] == [
        ("spec.externalTrafficPolicy", "may only be set for externally-accessible services")
    ]
    assert state.snapshot.services == ()
    # with externalIPs the Service is externally accessible, and Local applies to them
    svc = web(external_policy="Local", external_ips=["203.0.113.9"])
    sp = make_plan(svc, web_slice(m.EP("10.244.2.5", "node-b")))
    assert sp.service_port("default", "web", "http").external_policy_local


def test_external_traffic_policy_local_node_port() -> None:
    svc = web(
        type="NodePort",
        ports=[m.Port(80, "http", target_port=8080, node_port=30080)],
        external_policy="Local",
    )
    eps = (m.EP("10.244.1.5", NODE), m.EP("10.244.2.5", "node-b"))
    sp = make_plan(svc, web_slice(*eps)).service_port("default", "web", "http")
    assert sp.external_policy_local and sp.uses_external_chain
    assert ips(sp.local_endpoints) == ["10.244.1.5"]
    assert len(sp.cluster_endpoints) == 2  # for pod/node short-circuit
    # only a LoadBalancer has a health check node port (the API refuses one elsewhere)
    assert sp.external_filter is None and sp.health_check_node_port is None
    sp = make_plan(svc, web_slice(eps[1])).service_port("default", "web", "http")
    assert sp.external_filter is Filter.DROP and sp.internal_filter is None
    assert sp.uses_external_chain  # short-circuit rules still apply


def test_external_local_with_only_terminating_local_endpoint_keeps_remote_ready_ones() -> None:
    svc = web(
        type="NodePort",
        ports=[m.Port(80, "http", target_port=8080, node_port=30080)],
        external_policy="Local",
    )
    eps = (
        m.EP("10.244.1.5", NODE, ready=False, serving=True, terminating=True),
        m.EP("10.244.2.5", "node-b"),
    )
    sp = make_plan(svc, web_slice(*eps)).service_port("default", "web", "http")
    assert ips(sp.local_endpoints) == ["10.244.1.5"]
    assert ips(sp.cluster_endpoints) == ["10.244.2.5"]
    assert ips(sp.reachable_endpoints) == ["10.244.1.5", "10.244.2.5"]


def test_duplicate_endpoint_across_slices_prefers_ready() -> None:
    a = web_slice(m.EP("10.244.1.5", NODE, ready=False, serving=False), name="web-a")
    b = web_slice(m.EP("10.244.1.5", NODE), name="web-b")
    sp = make_plan(web(), a, b).service_port("default", "web", "http")
    assert ips(sp.cluster_endpoints) == ["10.244.1.5"]


def test_slices_of_other_families_are_ignored() -> None:
    v6 = m.endpoint_slice(
        "web", [m.EP("fd00::5", NODE)], [("http", 8080, "TCP")], name="web-v6", address_type="IPv6"
    )
    sp = make_plan(web(), v6).service_port("default", "web", "http")
    assert not sp.has_endpoints


def test_skipped_services_are_listed_not_planned() -> None:
    headless = m.service("hl", "None", [m.Port(80)])
    extname = m.service("ext", "", [m.Port(80)], type="ExternalName")
    extname["spec"]["externalName"] = "db.example.com"
    p = make_plan(headless, extname)
    assert p.service_ports == ()
    assert sorted(s.ref.name for s in p.skipped) == ["ext", "hl"]


def test_load_balancer_source_ranges_allow_the_lb_ip_when_the_node_is_inside() -> None:
    svc = web(
        type="LoadBalancer",
        lb_ips=["198.51.100.1"],
        source_ranges=["192.168.50.0/24"],
        ports=[m.Port(80, "http", target_port=8080, node_port=30080)],
    )
    sp = make_plan(svc, web_slice(m.EP("10.244.1.5", NODE))).service_port("default", "web", "http")
    assert sp.uses_firewall
    assert [str(s) for s in sp.firewall_allowed_sources] == ["192.168.50.0/24", "198.51.100.1/32"]
    svc["spec"]["loadBalancerSourceRanges"] = ["203.0.113.0/24"]
    sp = make_plan(svc, web_slice(m.EP("10.244.1.5", NODE))).service_port("default", "web", "http")
    assert [str(s) for s in sp.firewall_allowed_sources] == ["203.0.113.0/24"]


def test_nodeport_addresses_defaults_per_mode() -> None:
    ipt = make_plan(web()).nodeports
    assert ipt.match_all_local and ipt.include_localhost
    nft = make_plan(web(), mode=ProxyMode.NFTABLES).nodeports
    assert not nft.match_all_local and [str(a) for a in nft.addresses] == ["192.168.50.11"]
    assert not nft.include_localhost


def test_nodeport_addresses_cidrs_pick_host_addresses() -> None:
    hosts = tuple(ipaddress.ip_address(a) for a in ("127.0.0.1", "192.168.50.11", "10.0.0.1"))
    t = make_plan(
        web(),
        nodeport_addresses=NodePortAddresses.parse("192.168.0.0/16,127.0.0.0/8"),
        host_addresses=hosts,
    ).nodeports
    assert [str(a) for a in t.addresses] == ["127.0.0.1", "192.168.50.11"] and t.include_localhost
    t = make_plan(web(), nodeport_addresses=NodePortAddresses.parse("primary")).nodeports
    assert [str(a) for a in t.addresses] == ["192.168.50.11"]
    t = make_plan(web(), nodeport_addresses=NodePortAddresses.parse("0.0.0.0/0")).nodeports
    assert t.match_all_local


@pytest.mark.parametrize("mode", list(ProxyMode))
def test_nodeport_addresses_per_family(mode: ProxyMode) -> None:
    """CIDRs of one family leave the other unrestricted (upstream); 'primary' picks the
    node's primary address of each family."""
    node = m.node(NODE, "192.168.50.11", "fd00:192:168:50::11")
    state = build_state([node, web()], NODE)
    hosts = tuple(ipaddress.ip_address(a) for a in ("192.168.50.11", "fd00:192:168:50::11"))

    def targets(npa: str, family: IPFamily) -> NodePortTargets:
        cfg = ProxyConfig(
            NODE, mode=mode, nodeport_addresses=NodePortAddresses.parse(npa), host_addresses=hosts
        )
        return plan(state.snapshot, cfg, family).nodeports

    assert [str(a) for a in targets("192.168.0.0/16", IPFamily.V4).addresses] == ["192.168.50.11"]
    assert targets("192.168.0.0/16", IPFamily.V6).match_all_local
    only6 = targets("fd00::/8", IPFamily.V6)
    assert [str(a) for a in only6.addresses] == ["fd00:192:168:50::11"]
    assert targets("fd00::/8", IPFamily.V4).match_all_local
    primary6 = targets("primary", IPFamily.V6)
    assert [str(a) for a in primary6.addresses] == ["fd00:192:168:50::11"]
    assert not primary6.include_localhost  # no route_localnet for IPv6


def test_plan_is_family_aware() -> None:
    dual = m.service("web", "10.96.0.10", [m.Port(80, "http", target_port=8080)])
    dual["spec"]["clusterIPs"] = ["10.96.0.10", "fd00:96::10"]
    v6 = m.endpoint_slice(
        "web", [m.EP("fd00::5", NODE)], [("http", 8080, "TCP")], name="web-v6", address_type="IPv6"
    )
    state = build_state([m.node(NODE, "192.168.50.11"), dual, v6], NODE)
    p6 = plan(state.snapshot, ProxyConfig(NODE), IPFamily.V6)
    sp = p6.service_port("default", "web", "http")
    assert str(sp.cluster_ip) == "fd00:96::10" and ips(sp.reachable_endpoints) == ["fd00::5"]
    assert sp.reachable_endpoints[0].address == "[fd00::5]:8080"


def test_conflicting_destinations_first_service_wins_and_is_reported() -> None:
    a = m.service(
        "a",
        "10.96.0.1",
        [m.Port(80, "http", node_port=30080)],
        type="NodePort",
        external_ips=["203.0.113.7"],
    )
    b = m.service(
        "b",
        "10.96.0.2",
        [m.Port(80, "http", node_port=30080)],
        type="NodePort",
        external_ips=["203.0.113.7", "203.0.113.8"],
    )
    dup_cip = m.service("c", "10.96.0.1", [m.Port(80, "web")])
    state = build_state([m.node(NODE, "192.168.50.11"), a, b, dup_cip], NODE)
    p = plan(state.snapshot, ProxyConfig(NODE))
    pa, pb = p.service_port("default", "a", "http"), p.service_port("default", "b", "http")
    assert [str(i) for i in pa.external_ips] == ["203.0.113.7"] and pa.node_port == 30080
    assert [str(i) for i in pb.external_ips] == ["203.0.113.8"] and pb.node_port is None
    assert [s.name for s in p.service_ports] == ["a", "b"]  # c lost its only destination
    texts = sorted(str(x) for x in p.problems)
    assert texts == [
        "default/b: spec.externalIPs: 203.0.113.7:80/TCP is already used by default/a:http; "
        "ignored here",
        "default/b: spec.ports.nodePort: 30080/TCP is already used by default/a:http; ignored here",
        "default/c: spec.clusterIP: 10.96.0.1:80/TCP is already used by default/a:http; "
        "ignored here",
    ]


def test_overlapping_source_ranges_are_merged() -> None:
    svc = web(
        type="LoadBalancer",
        lb_ips=["198.51.100.1"],
        source_ranges=["10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8"],
        ports=[m.Port(80, "http", target_port=8080, node_port=30080)],
    )
    sp = make_plan(svc, web_slice(m.EP("10.244.1.5", NODE))).service_port("default", "web", "http")
    assert [str(s) for s in sp.firewall_allowed_sources] == ["10.0.0.0/8"]


def test_a_reused_pod_ip_goes_by_the_new_pods_conditions() -> None:
    """The same ip:port in two slices: a non-terminating copy wins over a terminating one
    even when it is not ready (upstream; found by the differential test)."""
    old_pod = m.EP("10.244.1.5", NODE, ready=False, serving=True, terminating=True)
    new_pod = m.EP("10.244.1.5", NODE, ready=False)
    other = m.EP("10.244.2.5", "node-b", ready=False, serving=True, terminating=True)
    for order in ((old_pod, new_pod), (new_pod, old_pod)):
        p = make_plan(
            web(), web_slice(order[0], other, name="web-1"), web_slice(order[1], name="web-2")
        )
        sp = p.service_port("default", "web", "http")
        # the reused IP counts as not ready and not terminating: only the other
        # (serving, terminating) endpoint is the fallback
        assert ips(sp.cluster_endpoints) == ["10.244.2.5"], order
