from __future__ import annotations

from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.nftables import diff as nft_diff
from proxy.nftables import endpointmaps
from proxy.nftables import model as nft_model
from proxy.nftables import names as nft_names
from proxy.nftables import render as nft_render
from proxy.nftables.statements import NumgenMatch
from tests.unit.test_plan import NODE, make_plan, web, web_slice

TWO = (m.EP("10.244.1.5", NODE), m.EP("10.244.2.5", "node-b"))


def render(*objs: dict[str, Any], **cfg: Any) -> nft_model.NftRuleset:
    cfg.setdefault("mode", ProxyMode.NFTABLES)
    return nft_render.render(make_plan(*objs, **cfg))


def sp_of(*objs: dict[str, Any]):  # type: ignore[no-untyped-def]
    return make_plan(*objs, mode=ProxyMode.NFTABLES).service_port("default", "web", "http")


def elements(rs: nft_model.NftRuleset, name: str) -> dict[str, str]:
    """Elements as nft prints them: key text → data text (empty in a set)."""
    out = {}
    for e in rs.sets[name].elements:
        data = e.text().partition(" : ")[2] if e.value is not None else ""
        out[e.key_text()] = data
    return out


def rules(rs: nft_model.NftRuleset, chain: str) -> tuple[str, ...]:
    return tuple(r.text() for r in rs.chains[chain].rules)


def test_cluster_ip_map_element_and_endpoint_map() -> None:
    rs = render(web(), web_slice(*TWO))
    sp = sp_of(web(), web_slice(*TWO))
    svc = nft_names.service_chain(sp)
    assert elements(rs, nft_names.SERVICE_IPS) == {"10.96.0.10 . tcp . 80": f"goto {svc}"}
    assert elements(rs, nft_names.CLUSTER_IPS) == {"10.96.0.10": ""}
    emap = endpointmaps.map_name(svc, "tcp")
    base = endpointmaps.home(svc) * endpointmaps.WINDOW
    assert rules(rs, svc) == (
        f"meta l4proto tcp dnat to numgen random mod 2 offset {base} map @{emap}",
    )
    assert elements(rs, emap) == {
        str(base): "10.244.1.5 . 8080",
        str(base + 1): "10.244.2.5 . 8080",
    }
    assert {e.comment for e in rs.sets[emap].elements} == {"default/web:http"}
    assert rs.sets[emap].spec() == "typeof numgen random mod 1 : ip daddr . tcp dport ;"
    # a map only while some chain uses it
    assert not any(n.startswith("endpoints-") for n in render(web(), web_slice(TWO[1])).sets)
    # no per-endpoint chains without affinity
    assert not any(c.startswith("endpoint-") for c in rs.chains)
    # one masquerade rule for all cluster IPs, before the dispatch
    assert rules(rs, nft_names.SERVICES)[0] == (
        "ip daddr @cluster-ips ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x00004000"
        ' comment "masquerade clusterIP traffic from outside cluster"'
    )
    # hairpin: only the local endpoint
    assert elements(rs, nft_names.HAIRPIN_CONNECTIONS) == {
        "10.244.1.5 . 10.244.1.5 . tcp . 8080": ""
    }


def test_single_endpoint_needs_no_map() -> None:
    rs = render(web(), web_slice(TWO[1]))
    svc = nft_names.service_chain(sp_of(web(), web_slice(TWO[1])))
    assert rules(rs, svc) == ("meta l4proto tcp dnat to 10.244.2.5:8080",)


def test_no_endpoints_reject_and_local_drop() -> None:
    rs = render(web())
    assert elements(rs, nft_names.NO_ENDPOINT_SERVICES) == {
        "10.96.0.10 . tcp . 80": "goto reject-chain"
    }
    rs = render(web(internal_policy="Local"), web_slice(TWO[1]))
    assert elements(rs, nft_names.NO_ENDPOINT_SERVICES) == {"10.96.0.10 . tcp . 80": "drop"}


def test_unknown_port_on_cluster_ip_is_rejected() -> None:
    rs = render(web())
    assert any("@cluster-ips reject" in r for r in rules(rs, nft_names.CLUSTER_IPS_CHECK))


def test_affinity_sets_and_updates() -> None:
    rs = render(web(affinity_seconds=60), web_slice(*TWO))
    sp = sp_of(web(affinity_seconds=60), web_slice(*TWO))
    aff = nft_names.affinity_set(sp, "10.244.1.5:8080")
    assert rs.sets[aff].timeout == 60 and rs.sets[aff].dynamic
    ep = nft_names.endpoint_chain(sp, "10.244.1.5:8080")
    assert rules(rs, ep) == (
        f"update @{aff} {{ ip saddr }}",
        "meta l4proto tcp dnat to 10.244.1.5:8080",
    )
    assert rules(rs, nft_names.service_chain(sp))[0] == f"ip saddr @{aff} goto {ep}"


def test_node_ports_default_to_primary_ip_and_never_localhost() -> None:
    svc = web(type="NodePort", ports=[m.Port(80, "http", target_port=8080, node_port=30080)])
    rs = render(svc, web_slice(*TWO))
    assert elements(rs, nft_names.NODEPORT_IPS) == {"192.168.50.11": ""}
    ext = nft_names.external_chain(sp_of(svc, web_slice(*TWO)))
    assert elements(rs, nft_names.SERVICE_NODEPORTS) == {"tcp . 30080": f"goto {ext}"}


def test_firewall_for_source_ranges() -> None:
    svc = web(
        type="LoadBalancer",
        lb_ips=["198.51.100.1"],
        source_ranges=["203.0.113.0/24"],
        ports=[m.Port(80, "http", target_port=8080, node_port=30080)],
    )
    rs = render(svc, web_slice(*TWO))
    fw = nft_names.firewall_chain(sp_of(svc, web_slice(*TWO)))
    assert elements(rs, nft_names.FIREWALL_IPS) == {"198.51.100.1 . tcp . 80": f"goto {fw}"}
    assert rules(rs, fw) == ("ip saddr != { 203.0.113.0/24 } drop",)


def test_full_sync_deletes_stale_and_keeps_affinity_entries() -> None:
    rs = render(web(affinity_seconds=60), web_slice(*TWO))
    sp = sp_of(web(affinity_seconds=60), web_slice(*TWO))
    aff = nft_names.affinity_set(sp, "10.244.1.5:8080")
    existing = nft_model.ExistingNft(
        table_exists=True,
        chains=frozenset({"service-OLD-x", *rs.chains}),
        sets={aff: 60, "affinity-OLD": 10, nft_names.CLUSTER_IPS: None},
        maps=frozenset({nft_names.SERVICE_IPS, "old-map"}),
    )
    text = nft_diff.full_sync_text(rs, existing)
    assert "flush chain ip kube-proxy service-OLD-x\n" in text
    assert "delete chain ip kube-proxy service-OLD-x\n" in text
    assert "delete set ip kube-proxy affinity-OLD\n" in text
    assert "delete map ip kube-proxy old-map\n" in text
    assert f"flush set ip kube-proxy {aff}" not in text
    assert f"delete set ip kube-proxy {aff}" not in text
    # flushes come before deletes, deletes before the new rules
    assert (
        text.index("flush chain ip kube-proxy service-OLD-x")
        < text.index("delete chain ip kube-proxy service-OLD-x")
        < text.index("add rule")
    )


def test_changed_affinity_timeout_recreates_the_set() -> None:
    rs = render(web(affinity_seconds=60), web_slice(*TWO))
    aff = nft_names.affinity_set(
        sp_of(web(affinity_seconds=60), web_slice(*TWO)), "10.244.1.5:8080"
    )
    text = nft_diff.full_sync_text(rs, nft_model.ExistingNft(True, frozenset(), sets={aff: 30}))
    assert f"delete set ip kube-proxy {aff}" in text
    assert text.index(f"delete set ip kube-proxy {aff}") < text.index(
        f"add set ip kube-proxy {aff}"
    )


def test_cascade_is_uniform() -> None:
    from fractions import Fraction

    for n in range(1, 12):
        conds = nft_render.cascade(n)
        assert conds[-1] == ()
        assert [c for c in conds[:-1]] == [(NumgenMatch(n - i, 0),) for i in range(n - 1)]
        left = Fraction(1)
        for i, c in enumerate(conds):
            p = Fraction(1, n - i) if c else Fraction(1)
            assert left * p == Fraction(1, n)  # each target gets exactly 1/n overall
            left *= 1 - p


def test_incremental_render_moves_colliding_chains_like_a_full_render(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every chain in one map at one home window: a new Service's chain takes the place
    of the chains sorting after it; the incremental rendering and transaction must move
    them exactly as a full rendering lays them out."""
    from proxy.plan import plan
    from proxy.source.file import build_state
    from proxy.tracker import PlanTracker

    monkeypatch.setattr(endpointmaps, "BUCKETS", 1)
    monkeypatch.setattr(endpointmaps, "HOMES", 1)
    cfg = ProxyConfig("node-a", mode=ProxyMode.NFTABLES)
    pool = m.synthetic_cluster(40, 3)

    def service_of(o: dict[str, Any]) -> str:
        meta = o["metadata"]
        return str(meta.get("labels", {}).get("kubernetes.io/service-name", meta["name"]))

    chains = {
        sp.name: nft_names.service_chain(sp)
        for sp in plan(build_state(pool, "node-a").snapshot, cfg).service_ports
    }
    old = [f"svc-{i}" for i in range(12)]
    # a newcomer whose chain sorts before most of the others takes their place
    new = min((n for n in chains if n not in old), key=chains.__getitem__)
    assert sum(chains[new] < chains[o] for o in old) >= 3
    objs = [o for o in pool if service_of(o) in old]
    tracker = PlanTracker()
    before = tracker.update(build_state(objs, "node-a").snapshot, cfg).plan
    cache = nft_render.RenderCache()
    ra = nft_render.render(before, cache)
    snap = build_state([o for o in pool if service_of(o) in (*old, new)], "node-a").snapshot
    update = tracker.update(snap, cfg, changed={("bench", new)})
    assert update.updated is not None and len(update.updated) == 1
    rb = nft_render.render(update.plan, cache, update.updated)
    full = nft_render.render(plan(snap, cfg))
    assert rb == full
    offsets = sorted(int(e.key[0]) for e in full.sets["endpoints-tcp-00"].elements)
    assert len(offsets) == 13 * 3 and offsets[0] == 0
    # the chains that moved were rendered again: the ruleset names them too
    assert rb.updated is not None
    assert len(rb.updated) == 1 + sum(chains[new] < chains[o] for o in old)

    def statements(text: str) -> list[str]:  # order aside: fragments come in map order
        return sorted(
            head + "{ " + ", ".join(sorted(body.rstrip(" }").split(", "))) + " }" if body else head
            for head, _, body in (line.partition("{ ") for line in text.splitlines())
        )

    inc = statements(nft_diff.incremental_text(ra, rb))
    assert inc == statements(nft_diff.diff_text(nft_render.render(before), full))
    assert any(line.startswith("delete element ip kube-proxy endpoints-tcp-00") for line in inc)
