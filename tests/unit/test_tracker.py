"""The plan tracker: what changed is planned again, the rest reused, and the service
ports that may differ are named for the renderers."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import render as ipt_render
from proxy.model import IPFamily
from proxy.nftables import diff as nft_diff
from proxy.nftables import render as nft_render
from proxy.plan import plan
from proxy.source.file import build_state
from proxy.tracker import PlanTracker

NODE = "node-a"
NFT = ProxyConfig(NODE, mode=ProxyMode.NFTABLES)


def _endpoint_change(objs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """``objs`` with the EndpointSlice of Service ``name`` down to one new endpoint."""
    out = []
    for o in objs:
        labels = o.get("metadata", {}).get("labels", {})
        if o["kind"] == "EndpointSlice" and labels.get("kubernetes.io/service-name") == name:
            o = {**o, "endpoints": [{"addresses": ["10.200.0.7"], "nodeName": "node-b"}]}
        out.append(o)
    return out


def test_the_first_update_is_the_full_plan_and_names_no_ports() -> None:
    snap = build_state(m.synthetic_cluster(10, 2), NODE).snapshot
    update = PlanTracker().update(snap, NFT, changed=set())
    assert update.plan == plan(snap, NFT) and update.updated is None


def test_an_endpoint_change_replans_only_its_service_in_place() -> None:
    skipped = m.service("odd", "None", [m.Port(80, "http")], namespace="bench")
    objs = [*m.synthetic_cluster(40, 3), skipped]
    tracker = PlanTracker()
    before = tracker.update(build_state(objs, NODE).snapshot, NFT).plan
    snap = build_state(_endpoint_change(objs, "svc-7"), NODE).snapshot
    key = ("bench", "svc-7")
    update = tracker.update(snap, NFT, changed={key})
    after, full = update.plan, plan(snap, NFT)
    assert after == full and tracker.last is after
    assert len(after.skipped) == 1
    assert before.endpoint_count == after.endpoint_count + 2  # 3 endpoints became 1
    # only svc-7's port is named, with its new plan; the others' plans are the last ones
    sp = after.service_port("bench", "svc-7", "http")
    assert update.updated == {sp.key: sp}
    kept = [p for p in after.service_ports if p.name != "svc-7"]
    last = [p for p in before.service_ports if p.name != "svc-7"]
    assert all(p is b for p, b in zip(kept, last, strict=True))
    # the renderers render that port again and nothing else; the nftables transaction
    # built from it equals a diff of the whole tables
    ncache, icache = nft_render.RenderCache(), ipt_render.RenderCache()
    ra = nft_render.render(before, ncache)
    ipt_render.render(before, icache)
    renders = ncache.renders, icache.renders
    rb = nft_render.render(after, ncache, update.updated)
    assert ipt_render.render(after, icache, update.updated) == ipt_render.render(full)
    assert (ncache.renders, icache.renders) == (renders[0] + 1, renders[1] + 1)
    assert rb.updated == frozenset({sp.key}) and rb == nft_render.render(full)
    text = nft_diff.incremental_text(ra, rb)
    assert text == nft_diff.diff_text(nft_render.render(before), nft_render.render(full))
    assert "10.200.0.7" in text


def test_a_service_that_becomes_skipped_is_planned_over_all_services() -> None:
    objs = m.synthetic_cluster(10, 2)
    tracker = PlanTracker()
    before = tracker.update(build_state(objs, NODE).snapshot, NFT).plan
    changed = [
        {**o, "spec": {**o["spec"], "type": "ExternalName", "externalName": "x.example"}}
        if o["kind"] == "Service" and o["metadata"]["name"] == "svc-3"
        else o
        for o in objs
    ]
    snap = build_state(changed, NODE).snapshot
    update = tracker.update(snap, NFT, changed={("bench", "svc-3")})
    assert update.plan == plan(snap, NFT)
    assert [s.ref.name for s in update.plan.skipped] == ["svc-3"]
    gone = [sp.key for sp in before.service_ports if sp.name == "svc-3"]
    assert gone and update.updated == dict.fromkeys(gone)


def test_a_conflict_names_the_ports_it_changes_in_services_that_did_not_change() -> None:
    """``a`` gains the external IP ``z`` holds: ``a`` sorts first and takes it, so ``z``'s
    port changes too although ``z`` did not."""
    node = m.node(NODE, "192.168.50.11")

    def objs(a_ips: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            node,
            m.service("a", "10.96.0.1", [m.Port(80, "http")], external_ips=a_ips),
            m.service("z", "10.96.0.2", [m.Port(80, "http")], external_ips=["203.0.113.9"]),
            m.service("other", "10.96.0.3", [m.Port(80, "http")]),
        ]

    cfg = ProxyConfig(NODE, mode=ProxyMode.IPTABLES)
    tracker = PlanTracker()
    before = tracker.update(build_state(objs(()), NODE).snapshot, cfg).plan
    snap = build_state(objs(("203.0.113.9",)), NODE).snapshot
    update = tracker.update(snap, cfg, changed={("default", "a")})
    full = plan(snap, cfg)
    assert update.plan == full and len(full.problems) == 1
    a, z = full.service_port("default", "a", "http"), full.service_port("default", "z", "http")
    assert update.updated == {a.key: a, z.key: z}
    cache = ipt_render.RenderCache()
    ipt_render.render(before, cache)
    assert ipt_render.render(full, cache, update.updated) == ipt_render.render(full)
    # and back: the conflict goes, z gets its IP again
    back = tracker.update(build_state(objs(()), NODE).snapshot, cfg, changed={("default", "a")})
    assert back.plan == before and back.updated is not None and set(back.updated) == {a.key, z.key}


def test_a_node_change_unknown_changes_or_a_reset_plan_everything() -> None:
    objs = m.synthetic_cluster(5, 2)
    tracker = PlanTracker()
    tracker.update(build_state(objs, NODE).snapshot, NFT)
    assert tracker.update(build_state(objs, NODE).snapshot, NFT, changed=set()).updated == {}
    moved = [
        {**o, "metadata": {**o["metadata"], "labels": {"topology.kubernetes.io/zone": "z9"}}}
        if o["kind"] == "Node" and o["metadata"]["name"] == NODE
        else o
        for o in objs
    ]
    snap = build_state(moved, NODE).snapshot
    assert snap.node is not None and snap.node.zone == "z9"
    update = tracker.update(snap, NFT, changed=set())
    assert update.updated is None and update.plan == plan(snap, NFT)
    assert tracker.update(snap, NFT).updated is None  # changes unknown
    tracker.reset()
    assert tracker.last is None and tracker.update(snap, NFT, changed=set()).updated is None


@pytest.mark.parametrize("family", list(IPFamily))
def test_dual_stack_services_are_planned_in_place_in_each_family(family: IPFamily) -> None:
    """Each family's tracker replans a changed dual-stack Service in place, and its plan
    equals a full plan of that family (nothing of the other family leaks in)."""

    def dual(name: str, n: int, port: int) -> dict[str, Any]:
        return m.service(
            name, f"10.96.0.{n}", [m.Port(port, "http")], secondary_cluster_ip=f"fd00:96::{n}"
        )

    node = m.node(NODE, "192.168.50.11", "fd00::11")
    tracker = PlanTracker()
    before = tracker.update(
        build_state([node, dual("a", 1, 80), dual("c", 3, 80)], NODE).snapshot, NFT, family
    )
    assert {sp.cluster_ip.version for sp in before.plan.service_ports} == {
        4 if family is IPFamily.V4 else 6
    }
    snap = build_state([node, dual("a", 1, 81), dual("c", 3, 80)], NODE).snapshot
    update = tracker.update(snap, NFT, family, changed={("default", "a")})
    assert update.plan == plan(snap, NFT, family)
    assert update.updated is not None and {k[1] for k in update.updated} == {"a"}
