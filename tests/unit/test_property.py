"""Property tests that need no kernel: the planner never crashes, whatever it is fed."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from proxy.backends import iptables as ipt
from proxy.backends import nftables as nft
from proxy.config import ProxyConfig, ProxyMode
from proxy.plan import plan
from proxy.source.file import build_state
from tests.strategies import cluster_states, corrupted


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_random_invalid_objects_never_crash_the_planner(obj: dict[str, Any]) -> None:
    state = build_state([obj], "node-a")
    for mode in ProxyMode:
        p = plan(state.snapshot, ProxyConfig("node-a", mode=mode), problems=state.problems)
        ipt.restore_text(ipt.render(p))
        nft.full_sync_text(nft.render(p))
    for problem in state.problems:
        text = str(problem)
        assert ": " in text and problem.field and problem.message


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_states())
def test_random_valid_states_have_no_problems(objs: list[dict[str, Any]]) -> None:
    state = build_state(objs, "node-a")
    assert state.problems == ()
