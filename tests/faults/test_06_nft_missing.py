"""Fault 6: ``nft`` missing from the agent's PATH (nftables mode, node-b).

First under a running agent: its incremental syncs go to nf_tables over netlink and do
not need the tool, so an endpoint change is still programmed. Then the agent is restarted
without it: its start-up full sync (``nft -f``) fails and is retried every second; the
rules the previous agent wrote keep working; the log names the missing tool, the failures
are counted and ``/livez`` turns 503 once a change waited two sync periods. When ``nft``
is back in the PATH (no restart) the next retry succeeds and the changes are programmed.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.infra import (
    NODE_FOR_MODE,
    SYNC_PERIOD,
    Changes,
    FaultLab,
    Report,
    endpoint_slice,
    log_lines,
    metric,
)

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.faults]


def failures(text: str) -> float:
    return metric(text, "kubeproxy_sync_proxy_rules_nftables_sync_failures_total")


def test_nft_missing_from_path(lab: FaultLab, report: Report) -> None:
    node = NODE_FOR_MODE["nftables"]
    shim = lab.shims[node]
    changes = Changes(lab, "nonft")
    changes.setup([node])
    shim.remove_tool("nft")
    # a running agent: incremental syncs do not need nft
    lab.apply(endpoint_slice(changes.moved, changes.tag, ["a2"]))
    lab.wait_rules(
        [node], lambda n, t: lab.programmed(n, changes.moved, ["a2"], t), 20, "netlink sync"
    )
    # a new agent without nft
    lab.stop_agent(node)
    start = time.time()
    agent = lab.start_agent(node, wait=False)
    deadline = time.time() + 30
    while not log_lines(agent.log_text(), r"sync failed"):
        assert time.time() < deadline and agent.alive(), agent.log_text()[-2000:]
        time.sleep(0.1)
    changes.during()
    livez = []
    while time.time() - start < 2 * SYNC_PERIOD + 4 and 503 not in livez:
        livez.append(lab.health(node, "/livez"))
        time.sleep(0.5)
    text = lab.metrics(node)
    assert not changes.done(node, lab.rules(node))  # nothing could be programmed
    shim.restore_tool("nft")
    end = time.time()
    recovered = changes.recover([node], end)
    lab.streams.settle()
    log = agent.log_text()
    errors = log_lines(log, r"sync failed", start)
    row = report.add(
        "nft missing from PATH (agent restarted without it)",
        lab,
        node,
        start,
        end,
        recover_s=recovered[node],
        metrics={"nftables_sync_failures": failures(text), "livez_503": livez.count(503)},
        logs=errors[:2],
        notes="recover = nft back in PATH (no restart) → changes programmed; an agent "
        "already running keeps programming incremental changes over netlink without nft",
    )
    changes.cleanup()
    assert any("No such file or directory" in e and "nft" in e for e in errors), errors[:3]
    assert row.metrics["nftables_sync_failures"] > 0
    assert 503 in livez, f"/livez never reported the stuck change: {livez}"
    assert lab.health(node, "/livez") == 200
    assert row.failed == 0, row
