"""``explain``: the verdict, the endpoints and the reasons for one packet, from the plan."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from proxy import cli
from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.explain import report
from proxy.explain.engine import Explanation, NodeView, Verdict, explain
from proxy.explain.engine import Path as SvcPath
from proxy.explain.packet import Entry, PacketError, make_packet
from proxy.model import IPFamily
from proxy.plan import plan
from proxy.source.file import build_state

NODE = "node-a"
NODE_IP = "192.168.50.11"
CIP = "10.96.0.10"
POD = "10.244.1.5"
OUTSIDE = "192.168.50.100"
LOCAL = NodeView(frozenset({ipaddress.ip_address(NODE_IP)}))


def why(
    objs: list[dict[str, Any]],
    src: str,
    dst: str,
    dport: int | None = 80,
    proto: str = "tcp",
    entry: Entry = Entry.POD,
    mode: ProxyMode = ProxyMode.NFTABLES,
    affinity: dict[str, int] | None = None,
    **cfg: Any,
) -> Explanation:
    state = build_state([m.node(NODE, NODE_IP, zone="z1"), *objs], NODE)
    assert state.problems == ()
    cfg.setdefault("cluster_cidrs", (ipaddress.ip_network("10.244.0.0/16"),))
    fam = IPFamily.of(ipaddress.ip_address(dst))
    p = plan(state.snapshot, ProxyConfig(NODE, mode=mode, **cfg), fam)
    pkt = make_packet(src, dst, proto, dport, entry)
    return explain(p, pkt, node=LOCAL, services=state.snapshot.services, affinity=affinity)


def web(eps: list[m.EP], **kw: Any) -> list[dict[str, Any]]:
    node_port = kw.pop("node_port", None)
    if node_port is not None:
        kw.setdefault("type", "NodePort")
    svc = m.service("web", CIP, [m.Port(80, "http", node_port=node_port)], **kw)
    return [svc, m.endpoint_slice("web", eps, [("http", 80, "TCP")])]


A1 = m.EP("10.244.1.6", node=NODE, zone="z1")
B1 = m.EP("10.244.2.4", node="node-b", zone="z2")
B2_TERMINATING = m.EP("10.244.2.9", node="node-b", ready=False, serving=True, terminating=True)


def kept(e: Explanation) -> dict[str, float]:
    return {ep.address: ep.probability for ep in e.endpoints if ep.kept}


def reason_of(e: Explanation, address: str) -> str:
    return next(ep.reason for ep in e.endpoints if ep.address == address)


# -- ClusterIP ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(ProxyMode))
def test_cluster_ip_from_a_pod_spreads_over_ready_endpoints_without_masquerade(
    mode: ProxyMode,
) -> None:
    e = why(web([A1, B1, B2_TERMINATING]), POD, CIP, mode=mode)
    assert e.verdict is Verdict.DNAT and e.path is SvcPath.CLUSTER_IP
    assert e.service == "default/web:http"
    assert kept(e) == {"10.244.1.6": 0.5, "10.244.2.4": 0.5}
    assert "used only when no endpoint is ready" in reason_of(e, "10.244.2.9")
    assert not e.masquerade and "inside --cluster-cidr" in e.masquerade_reason
    assert "keep-alive" in e.selection


def test_terminating_endpoints_are_kept_when_none_is_ready() -> None:
    e = why(web([B2_TERMINATING]), POD, CIP)
    assert kept(e) == {"10.244.2.9": 1.0}
    assert "terminating" in reason_of(e, "10.244.2.9")


def test_node_traffic_to_a_cluster_ip_is_masqueraded_outside_the_cluster_cidr() -> None:
    e = why(web([A1, B1]), NODE_IP, CIP, entry=Entry.NODE)
    assert e.verdict is Verdict.DNAT and e.masquerade
    assert "outside --cluster-cidr 10.244.0.0/16" in e.masquerade_reason
    assert why(web([B1]), POD, CIP, masquerade_all=True).masquerade


def test_hairpin_masquerades_only_the_way_back_to_the_client_itself() -> None:
    e = why(web([A1, B1]), "10.244.1.6", CIP)
    assert not e.masquerade
    assert {ep.address: ep.masquerade for ep in e.endpoints} == {
        "10.244.1.6": True,
        "10.244.2.4": False,
    }
    assert "hairpin" in e.masquerade_reason


@pytest.mark.parametrize(
    ("mode", "verdict"),
    [(ProxyMode.NFTABLES, Verdict.REJECT), (ProxyMode.IPTABLES, Verdict.NOT_A_SERVICE)],
)
def test_ping_and_an_unknown_port_of_a_cluster_ip(mode: ProxyMode, verdict: Verdict) -> None:
    ping = why(web([A1]), POD, CIP, dport=None, proto="icmp", mode=mode)
    assert ping.verdict is verdict and ping.service is None
    assert "ICMP carries no port" in ping.reason and "default/web" in ping.reason
    other = why(web([A1]), POD, CIP, dport=81, mode=mode)
    assert other.verdict is verdict and "no port 81/TCP" in other.reason
    if verdict is Verdict.REJECT:
        assert ping.reject_with == "icmp port-unreachable (type 3, code 3)"
        assert "cluster-ips-check" in " ".join(ping.steps)


def test_no_endpoints_rejects_with_port_unreachable_in_ipv6_too() -> None:
    svc = m.service("web", "fd00:10:96::10", [m.Port(80, "http")], ip_families=["IPv6"])
    e = why([svc], "fd00:10:244:1::5", "fd00:10:96::10")
    assert e.verdict is Verdict.REJECT and e.service == "default/web:http"
    assert e.reject_with == "icmpv6 port-unreachable (type 1, code 4)"
    assert "has no endpoint" in e.reason


def test_not_ready_endpoints_give_reject_with_their_reasons() -> None:
    gone = m.EP("10.244.2.4", node="node-b", ready=False, serving=False, terminating=True)
    e = why(web([gone, m.EP("10.244.2.5", node="node-b", ready=False)]), POD, CIP)
    assert e.verdict is Verdict.REJECT and "none of its 2 endpoint(s)" in e.reason
    assert reason_of(e, "10.244.2.4") == "terminating and no longer serving"
    assert reason_of(e, "10.244.2.5") == "not ready"


def test_internal_traffic_policy_local_without_a_local_endpoint_drops() -> None:
    e = why(web([B1], internal_policy="Local"), POD, CIP)
    assert e.verdict is Verdict.DROP and e.reject_with is None
    assert "internalTrafficPolicy Local" in e.reason
    assert "not this one" in reason_of(e, "10.244.2.4")
    ok = why(web([A1, B1], internal_policy="Local"), POD, CIP)
    assert kept(ok) == {"10.244.1.6": 1.0}


def test_topology_hints_filter_other_zones() -> None:
    a = m.EP("10.244.1.6", node=NODE, zone="z1", zone_hints=("z1",))
    b = m.EP("10.244.2.4", node="node-b", zone="z2", zone_hints=("z2",))
    e = why(web([a, b]), POD, CIP)
    assert kept(e) == {"10.244.1.6": 1.0}
    assert reason_of(e, "10.244.2.4") == "topology hints: for zone z2, and this node is in zone z1"
    assert "hinted for zone z1" in reason_of(e, "10.244.1.6")


def test_session_affinity_without_and_with_a_live_entry() -> None:
    objs = web([A1, B1], affinity_seconds=600)
    new = why(objs, POD, CIP)
    assert kept(new) == {"10.244.1.6": 0.5, "10.244.2.4": 0.5}
    assert "sessionAffinity ClientIP (600 s)" in new.selection and new.affinity is None
    pinned = why(objs, POD, CIP, affinity={"10.244.2.4:80": 321})
    assert kept(pinned) == {"10.244.1.6": 0.0, "10.244.2.4": 1.0}
    assert pinned.affinity is not None and pinned.affinity.seconds_left == 321
    assert "321 s left" in pinned.selection
    assert pinned.reason == "DNAT to 10.244.2.4:80 (session affinity)"


def test_skipped_service_and_a_pod_ip_are_not_services() -> None:
    labels = {"service.kubernetes.io/service-proxy-name": "someone-else"}
    other = m.service("other", "10.96.0.50", [m.Port(80)], labels=labels)
    e = why([other, *web([A1])], POD, "10.96.0.50")
    assert e.verdict is Verdict.NOT_A_SERVICE and "default/other is not programmed" in e.reason
    assert "someone-else" in e.reason
    pod = why(web([A1]), POD, "10.244.1.6")
    assert pod.verdict is Verdict.NOT_A_SERVICE and "endpoint (pod) of default/web" in pod.reason


# -- NodePort, ExternalIP, LoadBalancer ------------------------------------------------------


def test_node_port_cluster_policy_masquerades() -> None:
    e = why(web([A1, B1], node_port=30080), OUTSIDE, NODE_IP, 30080, entry=Entry.EXTERNAL)
    assert e.verdict is Verdict.DNAT and e.path is SvcPath.NODE_PORT and e.masquerade
    assert "externalTrafficPolicy Cluster" in e.masquerade_reason
    # nftables serves NodePorts on the primary IP only; iptables on any local address
    lo = why(web([A1], node_port=30080), "127.0.0.1", "127.0.0.1", 30080, entry=Entry.NODE)
    assert lo.verdict is Verdict.NOT_A_SERVICE
    lo_ipt = why(
        web([A1], node_port=30080),
        "127.0.0.1",
        "127.0.0.1",
        30080,
        entry=Entry.NODE,
        mode=ProxyMode.IPTABLES,
    )
    assert lo_ipt.verdict is Verdict.DNAT


def test_node_port_local_policy_per_entry() -> None:
    objs = web([B1], node_port=30080, external_policy="Local")
    outside = why(objs, OUTSIDE, NODE_IP, 30080, entry=Entry.EXTERNAL)
    assert outside.verdict is Verdict.DROP and "node node-a has none" in outside.reason
    pod = why(objs, POD, NODE_IP, 30080, entry=Entry.POD)
    assert pod.verdict is Verdict.DNAT and not pod.masquerade
    assert "short-circuits" in " ".join(pod.steps)
    node = why(objs, NODE_IP, NODE_IP, 30080, entry=Entry.NODE)
    assert node.verdict is Verdict.DNAT and node.masquerade
    here = why(web([A1, B1], node_port=30080, external_policy="Local"), OUTSIDE, NODE_IP, 30080,
               entry=Entry.EXTERNAL)  # fmt: skip
    assert kept(here) == {"10.244.1.6": 1.0} and not here.masquerade


def test_load_balancer_source_ranges() -> None:
    objs = web([A1], type="LoadBalancer", node_port=30080, lb_ips=["198.51.100.10"],
               source_ranges=["192.168.50.100/32"])  # fmt: skip
    ok = why(objs, OUTSIDE, "198.51.100.10", entry=Entry.EXTERNAL)
    assert ok.verdict is Verdict.DNAT and ok.path is SvcPath.LOAD_BALANCER_IP
    blocked = why(objs, "192.168.50.101", "198.51.100.10", entry=Entry.EXTERNAL)
    assert blocked.verdict is Verdict.DROP and "loadBalancerSourceRanges" in blocked.reason
    # the NodePort of the same Service is not filtered
    assert why(objs, "192.168.50.101", NODE_IP, 30080, entry=Entry.EXTERNAL).verdict is (
        Verdict.DNAT
    )


def test_health_check_node_port_is_answered_by_the_node() -> None:
    objs = web([A1], type="LoadBalancer", node_port=30080, external_policy="Local",
               health_check_node_port=30500)  # fmt: skip
    e = why(objs, OUTSIDE, NODE_IP, 30500, entry=Entry.EXTERNAL)
    assert e.verdict is Verdict.NOT_A_SERVICE and "healthCheckNodePort" in e.reason


# -- output ---------------------------------------------------------------------------------


def test_json_has_the_documented_fields() -> None:
    e = why(web([A1, B2_TERMINATING]), POD, CIP)
    d = json.loads(report.to_json(e))
    assert d["schema"] == "kube-proxy-py/explain/v1"
    assert d["verdict"] == "dnat" and d["service"] == "default/web:http"
    assert d["endpoints"][0] == {
        "address": "10.244.1.6",
        "port": 80,
        "node": NODE,
        "kept": True,
        "reason": "ready",
        "probability": 1.0,
        "masquerade": False,
    }
    assert d["endpoints"][1]["kept"] is False and d["endpoints"][1]["probability"] == 0
    assert d["masquerade"] is False and d["reject_with"] is None
    assert d["packet"] == {"src": POD, "dst": CIP, "protocol": "tcp", "dport": 80, "entry": "pod"}
    ping = json.loads(report.to_json(why(web([A1]), POD, CIP, dport=None, proto="icmp")))
    assert ping["verdict"] == "reject" and ping["service"] is None and ping["endpoints"] == []


def test_text_names_the_verdict_and_every_endpoint() -> None:
    text = report.to_text(why(web([A1, B2_TERMINATING]), POD, CIP))
    assert "verdict     DNAT" in text
    assert "kept     10.244.1.6:80  100%" in text
    assert "filtered 10.244.2.9:80     -" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("10.0.0.1", "fd00::1", "tcp", 80), "different IP families"),
        (("10.0.0.1", "10.0.0.2", "icmp", 80), "ICMP carries no port"),
        (("10.0.0.1", "10.0.0.2", "tcp", None), "needs a destination port"),
        (("10.0.0.1", "10.0.0.2", "gre", 80), "is not one of tcp, udp, sctp, icmp"),
        (("nope", "10.0.0.2", "tcp", 80), "--src: 'nope' is not an IP address"),
    ],
)
def test_bad_packets_say_what_is_wrong(
    args: tuple[str, str, str, int | None], message: str
) -> None:
    src, dst, proto, dport = args
    with pytest.raises(PacketError, match=message):
        make_packet(src, dst, proto, dport, Entry.POD)


def test_cli_explain_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    objs = [m.node(NODE, NODE_IP), *web([A1, B1])]
    state.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    base = ["explain", "--state", str(state), "--hostname-override", NODE,
            "--cluster-cidr", "10.244.0.0/16", "--dst", CIP]  # fmt: skip
    assert cli.main([*base, "--src", POD, "--dport", "80", "-o", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["verdict"] == "dnat" and d["packet"]["entry"] == "pod" and d["mode"] == "nftables"
    # --entry defaults to node (and --src to the node's primary IP) when no --src is given
    assert cli.main([*base, "--dport", "80", "--mode", "iptables", "-o", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["packet"]["src"] == NODE_IP and d["packet"]["entry"] == "node" and d["masquerade"]
    assert cli.main([*base, "--src", POD, "--proto", "icmp"]) == 0
    assert "REJECT with icmp port-unreachable" in capsys.readouterr().out
    assert cli.main([*base, "--src", POD, "--proto", "icmp", "--dport", "80"]) == cli.EXIT_USAGE
    assert "ICMP carries no port" in capsys.readouterr().err
