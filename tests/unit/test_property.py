"""Property tests that need no kernel: the planner never crashes, whatever it is fed."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.nftables import diff as nft_diff
from proxy.nftables import render as nft_render
from proxy.plan import plan
from proxy.source.file import build_state
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
@given(cluster_states(), cluster_states())
def test_incremental_plan_equals_full_plan(
    a: list[dict[str, Any]], b: list[dict[str, Any]]
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
        before = plan(state_a.snapshot, cfg)
        changed = _changed_keys(state_a.snapshot, state_b.snapshot)
        incremental = plan(state_b.snapshot, cfg, previous=before, changed=changed)
        full = plan(state_b.snapshot, cfg)
        assert incremental.service_ports == full.service_ports
        assert incremental.problems == full.problems and incremental.skipped == full.skipped
        # rendering with fragments cached from A gives what a fresh render of B gives
        ipt_cache, nft_cache = ipt_render.RenderCache(), nft_render.RenderCache()
        ipt_render.render(before, ipt_cache)
        nft_render.render(before, nft_cache)
        assert ipt_render.render(incremental, ipt_cache) == ipt_render.render(full)
        nft_before = nft_render.render(before, nft_render.RenderCache())
        nft_after = nft_render.render(incremental, nft_cache)
        assert nft_after == nft_render.render(full)
        # the diff that compares only changed fragments writes what a diff of the
        # whole tables writes
        fast = nft_diff.incremental_text(
            nft_render.render(before, nft_cache_b := nft_render.RenderCache()),
            nft_render.render(incremental, nft_cache_b),
        )
        whole = nft_diff.diff_text(nft_before, nft_after)
        assert _lines(fast) == _lines(whole)
        # and reusing really happened for what did not change
        reused = [k for k in before.by_service if k not in changed and k in full.by_service]
        assert all(incremental.by_service[k] is before.by_service[k] for k in reused)
