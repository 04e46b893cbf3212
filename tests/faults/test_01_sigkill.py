"""Fault 1: the agent is SIGKILLed at chosen points of a sync, and restarted.

The shim (:mod:`tests.faults.shim`) kills the agent at its next transaction (the
start-up full sync, or a partial iptables restore): before the tool runs, while the tool
reads its input, or after the tool committed; then random kills while EndpointSlices
churn (nftables partial syncs go over netlink, no tool to hook). After each kill the test
starts a new agent at once, as the DaemonSet would. The rules stay in the kernel while no
agent runs, so the streams must not lose a connection; at the end the rules must be whole
(equal to what a clean restart writes) and hold every change made meanwhile.

A second test kills the agent in the middle of a large full sync (more than one 256 KiB
batch of input), between two writes to the tool's stdin.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.faults.infra import (
    NODE_FOR_MODE,
    SERVERS,
    Changes,
    FaultLab,
    Report,
    endpoint_slice,
    endpoints_of,
    log_lines,
    metric,
    service,
)

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.faults]

RESTORE_TOOL = {"iptables": "iptables-nft-restore", "nftables": "nft"}
BATCH = 1 << 18
"""proxy.kernel.executor._BATCH_BYTES: the agent writes a large input in batches of this."""


def kill_at_next_transaction(lab: FaultLab, node: str, action: str, arg: int = 0) -> float:
    """Restart the agent with the shim armed; its start-up full sync kills it. Returns
    when it was killed."""
    shim = lab.shims[node]
    before = len(shim.events())
    lab.stop_agent(node)
    agent = lab.start_agent(node, wait=False)
    shim.arm(action, agent.pid, arg)
    event = shim.wait_event(before + 1)
    agent.process.wait(10)
    return event.time


def churn(lab: FaultLab, tag: str, svc: str, stop: threading.Event) -> None:
    """Endpoint changes every ~0.3 s until ``stop``; ends with a2, b2."""
    sets = (["a1", "b1"], ["a2"], ["a1", "a2", "b2"], ["b1", "b2"])
    i = 0
    while not stop.is_set():
        lab.apply(endpoint_slice(svc, tag, sets[i % len(sets)]))
        i += 1
        stop.wait(0.3)
    lab.apply(endpoint_slice(svc, tag, ["a2", "b2"]))


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_sigkill_at_every_point_of_a_sync(lab: FaultLab, report: Report, mode: str) -> None:
    node = NODE_FOR_MODE[mode]
    shim = lab.shims[node]
    tag = f"kill-{mode[:3]}"
    changes = Changes(lab, tag)
    changes.setup([node])
    start = time.time()
    kills: list[str] = []
    # the start-up full sync (iptables: a partial restore too), killed at each point
    points = [("before", 0), ("bytes", 4096), ("after", 0)]
    for action, arg in points:
        kill_at_next_transaction(lab, node, action, arg)
        kills.append(f"full sync: {action}")
        lab.start_agent(node)
    if mode == "iptables":
        for action, arg in points:
            events = len(shim.events())
            shim.arm(action, lab.agent(node).pid, arg)
            lab.apply(endpoint_slice(changes.moved, tag, ["a1"] if action != "bytes" else ["b1"]))
            shim.wait_event(events + 1)
            lab.agent(node).process.wait(10)
            kills.append(f"partial sync: {action}")
            lab.start_agent(node)
    # random kills while endpoints churn; the other changes are made meanwhile
    stop = threading.Event()
    churner = threading.Thread(target=churn, args=(lab, tag, changes.moved, stop))
    churner.start()
    rng = random.Random(14)
    try:
        for i in range(4):
            time.sleep(rng.uniform(0.1, 1.2))
            lab.stop_agent(node, 9)
            kills.append("random")
            if i == 1:
                lab.kubectl("delete", "-n", "default", f"service/{changes.gone}",
                            f"endpointslice/{changes.gone}-faults")  # fmt: skip
                lab.apply(service(changes.new, tag), endpoint_slice(changes.new, tag, ["b1"]))
            last_kill = time.time()
            lab.start_agent(node)
    finally:
        stop.set()
        churner.join(30)
    lab.stop_agent(node, 9)
    last_kill = time.time()
    kills.append("random")
    changes.after()  # made while no agent runs
    lab.start_agent(node)
    recovered = lab.wait_rules(
        [node],
        lambda n, t: changes.done(n, t) and changes.after_done(n, t),
        60,
        "changes made during the kills programmed",
    )
    end = time.time()
    lab.streams.settle()
    text = lab.rules(node)
    assert lab.endpoints(node, "steady", text) == endpoints_of(SERVERS)
    assert lab.cluster_ips(node, text) == lab.api_services(), "stale or missing Services"
    # whole: what a clean restart (its full sync rewrites everything) leaves is the same
    whole = lab.canonical(node)
    lab.restart_agent(node)
    assert lab.canonical(node) == whole, "the rules after the kills differ from a clean sync"
    agent_log = lab.agent(node).log_text()
    metrics = lab.metrics(node)
    row = report.add(
        "SIGKILL during syncs, restart",
        lab,
        node,
        start,
        end,
        recover_s=recovered - last_kill,
        metrics={
            "kills": len(kills),
            "full_syncs_after_restart": metric(
                metrics, "kubeproxy_sync_full_proxy_rules_duration_seconds_count"
            ),
        },
        logs=log_lines(agent_log, r"msg=synced .*full=True")[:1],
        notes="; ".join(
            [f"{len(kills)} kills ({', '.join(dict.fromkeys(kills))})"]
            + [f"{e.tool} {e.action} rc={e.rc} input={e.bytes}B" for e in shim.events()[-6:]]
            + ["recover = last kill → change made while no agent ran is programmed"]
        ),
    )
    changes.cleanup()
    assert row.failed == 0, f"connections failed while agents were killed: {row}"


def bulk(tag: str, count: int) -> list[dict[str, object]]:
    objects: list[dict[str, object]] = []
    for i in range(count):
        name = f"{tag}-{i:03d}"
        objects += [service(name, tag), endpoint_slice(name, tag, list(SERVERS))]
    return objects


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_sigkill_between_two_batches_of_a_large_full_sync(
    lab: FaultLab, report: Report, mode: str
) -> None:
    node = NODE_FOR_MODE[mode]
    tag = f"bulk-{mode[:3]}"
    count = 250 if mode == "nftables" else 150  # more than one batch of input
    try:
        lab.create_many(bulk(tag, count))
        lab.wait_rules(
            [node],
            lambda n, t: (
                sum(s.startswith(f"default/{tag}-") for s in lab.cluster_ips(n, t)) == count
            ),
            90,
            f"{count} bulk services programmed",
        )
        killed = kill_at_next_transaction(lab, node, "bytes", BATCH)
        event = lab.shims[node].events()[-1]
        assert event.bytes == BATCH, f"input not larger than one batch: {event}"
        agent = lab.start_agent(node)  # at once, as a DaemonSet restarting the pod
        synced = lab.wait_synced(agent)
        ran = [e for e in lab.shims[node].events() if e.action == "bytes" and e.rc != "killed"]
        assert not ran, f"the tool outlived the agent and ran on a truncated input: {ran}"
        lab.streams.settle()
        row = report.add(
            f"SIGKILL between two input batches of a full sync ({count} Services)",
            lab,
            node,
            killed,
            synced + 0.5,
            recover_s=synced - killed,
            logs=log_lines(agent.log_text(), r"msg=synced .*full=True")[:1],
            notes=f"the agent was killed when {event.tool} had read {event.bytes} B (one "
            "batch); the tool died with it (parent-death signal) and committed nothing; "
            "recover = kill → restarted agent's first sync",
        )
    finally:
        lab.delete_tagged(tag)
    assert row.failed == 0, f"connections failed after the kill: {row}"
