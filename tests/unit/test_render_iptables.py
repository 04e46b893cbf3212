from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import model as ipt_model
from proxy.iptables import names as ipt_names
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.iptables import save as ipt_save
from tests.unit.test_plan import NODE, make_plan, web, web_slice

TWO = (m.EP("10.244.1.5", NODE), m.EP("10.244.2.5", "node-b"))


def rules(*objs: dict[str, Any], **cfg: Any) -> ipt_model.IptablesRuleset:
    return ipt_render.render(make_plan(*objs, **cfg))


def sp_of(*objs: dict[str, Any], **cfg: Any):  # type: ignore[no-untyped-def]
    return make_plan(*objs, **cfg).service_port("default", "web", "http")


def test_cluster_ip_dispatch_masquerade_and_uniform_cascade() -> None:
    three = (*TWO, m.EP("10.244.2.6", "node-b"))
    rs = rules(web(), web_slice(*three))
    sp = sp_of(web(), web_slice(*three))
    svc = ipt_names.svc_chain(sp)
    assert (
        f'-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" '
        f"-m tcp --dport 80 -j {svc}"
    ) in rs.nat["KUBE-SERVICES"]
    chain = rs.nat[svc]
    assert (
        chain[0].startswith("! -s 10.244.0.0/16 -d 10.96.0.10/32") and "KUBE-MARK-MASQ" in chain[0]
    )
    assert "--probability 0.3333333333" in chain[1]
    assert "--probability 0.5000000000" in chain[2]
    assert "statistic" not in chain[3]
    sep = ipt_names.sep_chain(sp, "10.244.1.5:8080")
    assert rs.nat[sep] == (
        '-s 10.244.1.5/32 -m comment --comment "default/web:http" -j KUBE-MARK-MASQ',
        '-p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination '
        "10.244.1.5:8080",
    )


def test_masquerade_all_marks_every_cluster_ip_packet() -> None:
    rs = rules(web(), web_slice(*TWO), masquerade_all=True)
    svc = ipt_names.svc_chain(sp_of(web(), web_slice(*TWO)))
    assert rs.nat[svc][0].startswith("-d 10.96.0.10/32 -p tcp")


def test_no_endpoints_rejects_in_filter() -> None:
    rs = rules(web())
    assert rs.filter["KUBE-SERVICES"] == (
        '-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http has no endpoints" '
        "-m tcp --dport 80 -j REJECT",
    )
    assert not any(c.startswith("KUBE-SVC-") for c in rs.nat)


def test_internal_local_without_local_endpoints_drops() -> None:
    rs = rules(web(internal_policy="Local"), web_slice(TWO[1]))
    assert rs.filter["KUBE-SERVICES"][0].endswith("-j DROP")
    assert "has no local endpoints" in rs.filter["KUBE-SERVICES"][0]


def test_affinity_uses_recent_per_endpoint() -> None:
    rs = rules(web(affinity_seconds=300), web_slice(*TWO))
    sp = sp_of(web(affinity_seconds=300), web_slice(*TWO))
    svc = rs.nat[ipt_names.svc_chain(sp)]
    sep = ipt_names.sep_chain(sp, "10.244.1.5:8080")
    assert f"--rcheck --seconds 300 --reap --name {sep}" in svc[1]
    assert f"-m recent --set --name {sep}" in rs.nat[sep][1]


def test_external_ip_and_node_port_go_through_ext_with_masquerade() -> None:
    svc = web(
        type="NodePort",
        external_ips=["203.0.113.7"],
        ports=[m.Port(80, "http", target_port=8080, node_port=30080)],
    )
    rs = rules(svc, web_slice(*TWO))
    sp = sp_of(svc, web_slice(*TWO))
    ext = ipt_names.ext_chain(sp)
    assert any(
        r.startswith("-d 203.0.113.7/32") and r.endswith(f"-j {ext}")
        for r in rs.nat["KUBE-SERVICES"]
    )
    assert rs.nat["KUBE-NODEPORTS"] == (
        f'-p tcp -m comment --comment "default/web:http" -m tcp --dport 30080 -j {ext}',
    )
    assert rs.nat[ext] == (
        '-m comment --comment "masquerade traffic for default/web:http external destinations" '
        "-j KUBE-MARK-MASQ",
        f"-j {ipt_names.svc_chain(sp)}",
    )
    assert "nodeports" in rs.nat["KUBE-SERVICES"][-1]  # node ports are the last rule


def test_external_local_short_circuits_pods_and_node_and_keeps_source() -> None:
    svc = web(
        type="NodePort",
        external_policy="Local",
        ports=[m.Port(80, "http", target_port=8080, node_port=30080)],
    )
    sp = sp_of(svc, web_slice(*TWO))
    ext = ipt_render.render(make_plan(svc, web_slice(*TWO))).nat[ipt_names.ext_chain(sp)]
    assert ext[0].startswith("-s 10.244.0.0/16") and ext[0].endswith(ipt_names.svc_chain(sp))
    assert "--src-type LOCAL" in ext[1] and ext[1].endswith("KUBE-MARK-MASQ")
    assert "--src-type LOCAL" in ext[2] and ext[2].endswith(ipt_names.svc_chain(sp))
    assert ext[3] == f"-j {ipt_names.svl_chain(sp)}"
    assert not any("KUBE-MARK-MASQ" in r and "LOCAL" not in r for r in ext)


def test_external_local_without_local_endpoints_drops_external_traffic() -> None:
    svc = web(
        type="NodePort",
        external_policy="Local",
        ports=[m.Port(80, "http", target_port=8080, node_port=30080)],
    )
    rs = rules(svc, web_slice(TWO[1]))
    assert any("--dport 30080 -j DROP" in r for r in rs.filter["KUBE-EXTERNAL-SERVICES"])


def test_load_balancer_source_ranges() -> None:
    svc = web(
        type="LoadBalancer",
        lb_ips=["198.51.100.1"],
        source_ranges=["203.0.113.0/24"],
        ports=[m.Port(80, "http", target_port=8080, node_port=30080)],
    )
    rs = rules(svc, web_slice(*TWO))
    sp = sp_of(svc, web_slice(*TWO))
    fw, ext = ipt_names.fw_chain(sp), ipt_names.ext_chain(sp)
    assert any(
        r.startswith("-d 198.51.100.1/32") and r.endswith(f"-j {fw}")
        for r in rs.nat["KUBE-SERVICES"]
    )
    assert rs.nat[fw][0].startswith("-s 203.0.113.0/24") and rs.nat[fw][0].endswith(ext)
    assert rs.filter["KUBE-PROXY-FIREWALL"][0].startswith("-d 198.51.100.1/32")
    assert rs.filter["KUBE-PROXY-FIREWALL"][0].endswith("-j DROP")


def test_nodeport_addresses_primary_uses_explicit_destinations() -> None:
    from proxy.config import NodePortAddresses

    rs = rules(web(), nodeport_addresses=NodePortAddresses.parse("primary"))
    assert rs.nat["KUBE-SERVICES"][-1].startswith("-d 192.168.50.11/32")
    assert not rs.route_localnet and "KUBE-FIREWALL" not in rs.filter


def test_localhost_guard_only_with_localhost_node_ports() -> None:
    rs = rules(web())
    assert rs.route_localnet
    assert "block incoming localnet connections" in rs.filter["KUBE-FIREWALL"][0]


SAVED_NAT = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-OLDOLDOLDOLDOLD1 - [0:0]
:DOCKER - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j DOCKER
-A OUTPUT -j KUBE-SVC-OLDOLDOLDOLDOLD1
-A KUBE-SERVICES -d 10.96.0.9/32 -j KUBE-SVC-OLDOLDOLDOLDOLD1
-A DOCKER -i docker0 -j RETURN
COMMIT
"""


@pytest.mark.parametrize("every_rule", [True, False])
@pytest.mark.parametrize("batch", [1, 2048])
def test_restore_text_rewrites_ours_deletes_stale_and_leaves_others(
    every_rule: bool, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ipt_restore, "RESTORE_BATCH_LINES", batch)  # many pieces, or one per table
    rs = rules(web(), web_slice(*TWO))
    pieces = list(
        ipt_restore.restore_pieces(rs, ipt_save.parse_save(SAVED_NAT, every_rule=every_rule))
    )
    assert all(p.endswith("\n") for p in pieces) and len(pieces) >= (8 if batch == 1 else 4)
    text = "".join(pieces)
    nat = text.split("*nat\n", 1)[1]
    assert ":KUBE-SVC-OLDOLDOLDOLDOLD1 - [0:0]" in nat and "-X KUBE-SVC-OLDOLDOLDOLDOLD1" in nat
    assert "DOCKER" not in nat
    assert nat.count('-D PREROUTING -m comment --comment "kubernetes service portals"') == 1
    assert "-D OUTPUT -j KUBE-SVC-OLDOLDOLDOLDOLD1" in nat
    assert '-I OUTPUT 1 -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in nat
    assert "-I PREROUTING" not in nat


def test_what_the_tables_hold_is_needed_only_after_the_nat_rules() -> None:
    """A full sync saves the tables while the tool parses the nat rules: the function
    standing for the save is called once, when every nat rule is written."""
    rs = rules(web(), web_slice(*TWO))
    written: list[str] = []
    calls: list[str] = []

    def held() -> ipt_model.ExistingIptables:
        calls.append("".join(written))
        return ipt_save.parse_save(SAVED_NAT, every_rule=False)

    written.extend(ipt_restore.restore_pieces(rs, held))
    assert len(calls) == 1
    assert calls[0].startswith("*nat\n") and "COMMIT" not in calls[0]
    nat_rules = {f"-A {chain} {r}" for chain, specs in rs.nat.items() for r in specs}
    assert nat_rules <= set(calls[0].splitlines())
    assert "".join(written) == ipt_restore.restore_text(
        rs, ipt_save.parse_save(SAVED_NAT, every_rule=False)
    )


def test_lean_save_parse_keeps_chains_and_builtin_rules_only() -> None:
    full = ipt_save.parse_save(SAVED_NAT)
    lean = ipt_save.parse_save(SAVED_NAT, every_rule=False)
    assert ipt_save.parse_save(SAVED_NAT.encode(), every_rule=False) == lean  # a raw dump
    assert ipt_save.parse_save(SAVED_NAT.encode()) == full
    headless = ipt_save.parse_save(SAVED_NAT.split("\n", 1)[1], every_rule=False)
    assert headless.chains == {}  # without its first line, no table to put chains in
    assert lean.chains == full.chains
    assert lean.builtin_rules == full.builtin_rules
    assert len(lean.builtin_rules[("nat", "PREROUTING")]) == 3
    assert lean.rules == {}
    assert full.rules[("nat", "DOCKER")] == ("-i docker0 -j RETURN",)


def test_cleanup_text_removes_only_owned() -> None:
    saved = """*filter
:INPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -m conntrack --ctstate NEW -j KUBE-SERVICES
-A INPUT -j KUBE-KUBELET-CANARY
COMMIT
"""
    text = ipt_restore.cleanup_text(ipt_save.parse_save(saved))
    assert (
        "-X KUBE-SERVICES" in text
        and "-D INPUT -m conntrack --ctstate NEW -j KUBE-SERVICES" in text
    )
    assert "CANARY" not in text
    assert (
        ipt_restore.cleanup_text(ipt_save.parse_save("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"))
        == ""
    )


def test_cleanup_leaves_the_kubelets_firewall_chain() -> None:
    """KUBE-FIREWALL is the kubelet's martian-packet guard as well as ours: a cleanup
    (or an agent starting in nftables mode) removes our jumps to it, and the chain only
    when nothing else jumps there."""
    chain = """:KUBE-FIREWALL - [0:0]
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
"""
    ours = """-A INPUT -m comment --comment "kube-proxy localnet guard" -j KUBE-FIREWALL
-A OUTPUT -m comment --comment "kube-proxy localnet guard" -j KUBE-FIREWALL
"""
    kubelets = "-A INPUT -j KUBE-FIREWALL\n-A OUTPUT -j KUBE-FIREWALL\n"
    head = "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
    with_kubelet = ipt_restore.cleanup_text(
        ipt_save.parse_save(head + chain + kubelets + ours + "COMMIT\n")
    )
    assert "-X KUBE-FIREWALL" not in with_kubelet
    assert with_kubelet.count("-D ") == 2 and "kube-proxy localnet guard" in with_kubelet
    assert "-D INPUT -j KUBE-FIREWALL" not in with_kubelet
    only_kubelet = ipt_restore.cleanup_text(
        ipt_save.parse_save(head + chain + kubelets + "COMMIT\n")
    )
    assert only_kubelet == ""
    only_ours = ipt_restore.cleanup_text(ipt_save.parse_save(head + chain + ours + "COMMIT\n"))
    assert "-X KUBE-FIREWALL" in only_ours and only_ours.count("-D ") == 2


def test_render_is_deterministic() -> None:
    a = ipt_restore.restore_text(rules(web(), web_slice(*TWO)))
    b = ipt_restore.restore_text(rules(web(), web_slice(*reversed(TWO))))
    assert a == b


def test_mode_does_not_leak_into_iptables_rules() -> None:
    assert rules(web(), mode=ProxyMode.IPTABLES).nat["KUBE-POSTROUTING"]


def _endpoints(n: int) -> tuple[m.EP, ...]:
    return tuple(m.EP(f"10.244.{i // 250}.{i % 250 + 1}", NODE) for i in range(n))


def _slices(n: int) -> tuple[dict[str, Any], ...]:
    """``n`` endpoints of web, in slices of at most 1,000 (the API's bound)."""
    eps = _endpoints(n)
    return tuple(web_slice(*eps[i : i + 1000], name=f"web-{i}") for i in range(0, n, 1000))


def test_large_cluster_is_more_than_a_thousand_endpoints_in_all() -> None:
    at = make_plan(web(), web_slice(*_endpoints(ipt_render.LARGE_CLUSTER_ENDPOINTS)))
    over = make_plan(web(), *_slices(ipt_render.LARGE_CLUSTER_ENDPOINTS + 1))
    assert not ipt_render.large_cluster(at)
    assert ipt_render.large_cluster(over)


def test_large_cluster_drops_only_the_per_endpoint_comments() -> None:
    objs = (web(), *_slices(ipt_render.LARGE_CLUSTER_ENDPOINTS + 1))
    rs, sp = rules(*objs), sp_of(*objs)
    svc = rs.nat[ipt_names.svc_chain(sp)]
    assert 'comment "default/web:http cluster IP"' in svc[0]  # the masquerade rule keeps it
    assert all("comment" not in r for r in svc[1:])
    assert svc[1].startswith("-m statistic --mode random --probability")
    sep = ipt_names.sep_chain(sp, "10.244.0.1:8080")
    assert rs.nat[sep] == (
        "-s 10.244.0.1/32 -j KUBE-MARK-MASQ",
        "-p tcp -m tcp -j DNAT --to-destination 10.244.0.1:8080",
    )
    assert all("comment" in r for r in rs.nat["KUBE-SERVICES"])


def test_large_cluster_affinity_lookups_lose_their_comment_too() -> None:
    objs = (web(affinity_seconds=600), *_slices(ipt_render.LARGE_CLUSTER_ENDPOINTS + 1))
    svc = rules(*objs).nat[ipt_names.svc_chain(sp_of(*objs))]
    lookups = [r for r in svc if "--rcheck" in r]
    assert len(lookups) == ipt_render.LARGE_CLUSTER_ENDPOINTS + 1
    assert not any("comment" in r for r in lookups)


def test_crossing_the_large_cluster_threshold_renders_every_port_again() -> None:
    """The cache must not hand back a port rendered on the other side of it, even when the
    planner reuses the port's plan."""
    from proxy.source.file import build_state
    from proxy.tracker import PlanTracker

    cfg = ProxyConfig(NODE, cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    objs = [m.node(NODE, "192.168.50.11"), web(), web_slice(*_endpoints(10))]
    tracker = PlanTracker()
    small = tracker.update(build_state(objs, NODE).snapshot, cfg).plan
    sp = small.service_port("default", "web", "http")
    sep = ipt_names.sep_chain(sp, "10.244.0.1:8080")
    crowd = (
        m.service("other", "10.96.0.11", [m.Port(80, "http", target_port=8080)]),
        m.endpoint_slice(
            "other",
            _endpoints(ipt_render.LARGE_CLUSTER_ENDPOINTS),
            [("http", 8080, "TCP")],
            name="o-1",
        ),
    )
    snap = build_state([*objs, *crowd], NODE).snapshot
    update = tracker.update(snap, cfg, changed={("default", "other")})
    big = update.plan
    assert update.updated is not None and sp.key not in update.updated
    cache = ipt_render.RenderCache()
    assert "comment" in ipt_render.render(small, cache).nat[sep][0]
    assert "comment" not in ipt_render.render(big, cache, update.updated).nat[sep][0]
