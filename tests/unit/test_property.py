"""Property tests that need no kernel: the planner never crashes, whatever it is fed."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.model import IPFamily
from proxy.nftables import diff as nft_diff
from proxy.nftables import render as nft_render
from proxy.plan import plan
from proxy.source.file import build_state
from proxy.tracker import PlanTracker
from tests.strategies import cluster_states, corrupted


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_random_invalid_objects_never_crash_the_planner(obj: dict[str, Any]) -> None:
    state = build_state([obj], "node-a")
    for mode in ProxyMode:
        p = plan(state.snapshot, ProxyConfig("node-a", mode=mode), problems=state.problems)
        ipt_restore.restore_text(ipt_render.render(p))
        nft_diff.full_sync_text(nft_render.render(p))
    for problem in state.problems:
        text = str(problem)
        assert ": " in text and problem.field and problem.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_states())
def test_random_valid_states_have_no_problems(objs: list[dict[str, Any]]) -> None:
    state = build_state(objs, "node-a")
    assert state.problems == ()


def _changed_keys(a: Any, b: Any) -> set[tuple[str, str]]:
    """What ClusterState would report: Services whose object or slices differ."""
    sa = {(s.namespace, s.name): s for s in a.services}
    sb = {(s.namespace, s.name): s for s in b.services}
    keys = {k for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k)}

    def slices(snap: Any) -> dict[tuple[str, str], list[Any]]:
        out: dict[tuple[str, str], list[Any]] = {}
        for sl in snap.slices:
            out.setdefault((sl.namespace, sl.service_name), []).append(sl)
        return {k: sorted(v, key=lambda x: x.name) for k, v in out.items()}

    la, lb = slices(a), slices(b)
    keys |= {k for k in la.keys() | lb.keys() if la.get(k) != lb.get(k)}
    return keys


def _lines(script: str) -> list[str]:
    """A transaction's commands in a canonical order, element lists sorted."""
    out = []
    for line in script.splitlines():
        head, brace, rest = line.partition(" { ")
        if brace and "element" in head:
            line = head + " { " + ", ".join(sorted(rest.rstrip(" }").split(", "))) + " }"
        out.append(line)
    return sorted(out)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_states(), cluster_states(), st.sampled_from(list(IPFamily)))
def test_incremental_plan_equals_full_plan(
    a: list[dict[str, Any]], b: list[dict[str, Any]], family: IPFamily
) -> None:
    b = [a[0], *b[1:]]  # the same Node (a Node change means a full plan anyway)
    # B keeps some of A's objects unchanged, so reuse has something to reuse
    b += [
        o
        for i, o in enumerate(a[1:])
        if i % 2 == 0
        and o["kind"] == "Service"
        and all(x.get("metadata", {}).get("name") != o["metadata"]["name"] for x in b)
    ]
    for mode in ProxyMode:
        cfg = ProxyConfig("node-a", mode=mode)
        state_a, state_b = build_state(a, "node-a"), build_state(b, "node-a")
        tracker = PlanTracker()
        before = tracker.update(state_a.snapshot, cfg, family).plan
        changed = _changed_keys(state_a.snapshot, state_b.snapshot)
        update = tracker.update(state_b.snapshot, cfg, family, changed=changed)
        incremental, updated = update.plan, update.updated
        full = plan(state_b.snapshot, cfg, family)
        assert incremental == full
        # the tracker names every service port that differs, with its plan now
        assert updated is not None
        old_ports = {sp.key: sp for sp in before.service_ports}
        new_ports = {sp.key: sp for sp in full.service_ports}
        differ = {
            k for k in old_ports.keys() | new_ports.keys() if old_ports.get(k) != new_ports.get(k)
        }
        assert differ <= updated.keys()
        assert all(sp == new_ports.get(k) for k, sp in updated.items())
        if not before.problems and not full.problems:  # no conflict: the changed Services'
            assert {k[:2] for k in updated} <= changed  # ports only, the rest reused
            reused = [sp for sp in incremental.service_ports if sp.key[:2] not in changed]
            assert all(sp is old_ports[sp.key] for sp in reused)
        # rendering with fragments cached from A gives what a fresh render of B gives,
        # and renders again only the updated service ports (nftables: and those whose
        # endpoint map slots moved)
        ipt_cache, nft_cache = ipt_render.RenderCache(), nft_render.RenderCache()
        ipt_render.render(before, ipt_cache)
        nft_before = nft_render.render(before, nft_cache)
        renders = ipt_cache.renders, nft_cache.renders
        assert ipt_render.render(incremental, ipt_cache, updated) == ipt_render.render(full)
        nft_after = nft_render.render(incremental, nft_cache, updated)
        assert nft_after == nft_render.render(full)
        present = {k for k, sp in updated.items() if sp is not None}
        assert ipt_cache.renders - renders[0] == len(present)
        assert nft_after.updated is not None and nft_after.updated >= updated.keys()
        assert nft_cache.renders - renders[1] == len(nft_after.updated & new_ports.keys())
        # the diff that compares only the updated fragments writes what a diff of the
        # whole tables writes
        fast = nft_diff.incremental_text(nft_before, nft_after)
        whole = nft_diff.diff_text(nft_before, nft_after)
        assert _lines(fast) == _lines(whole)
        # and so does the one that compares every fragment (a ruleset rendered anew)
        fresh = nft_render.render(full)
        assert fresh.updated is None
        assert _lines(nft_diff.incremental_text(nft_before, fresh)) == _lines(whole)
