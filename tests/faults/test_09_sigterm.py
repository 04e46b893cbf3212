"""Fault 9: SIGTERM in every state the agent can be in, as a DaemonSet rollout sends it.

The agent must end (exit status 0) in every state, without touching the rules: synced and
idle; in the middle of a transaction whose tool is stuck (the shim's ``stall``: the tool
read part of its input and hangs); waiting for its initial lists from an API server that
accepts connections and never answers (a TCP proxy stalling every connection); and while
the API server refuses it (backing off). The time from SIGTERM to exit is measured and
reported (the agent gives an orderly stop 1.5 s, then exits anyway); the test bounds the
wait generously, so a hang fails it without making it a timing assertion. A stuck tool
must die with the agent (parent-death signal), commit nothing, and leave no process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from proxy.lab.cluster import Agent
from tests.faults.infra import API_SERVER, NODE_FOR_MODE, FaultLab, Report, log_lines
from tests.faults.tcpproxy import StallingProxy

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.faults]

EXIT_BOUND = 10.0
"""Seconds a stopped agent may take before the test calls it a hang (a bound, not the
measured figure, which goes to the report)."""


def sigterm(agent: Agent) -> float:
    """SIGTERM the agent; seconds until it exited (exit status 0 required)."""
    began = time.monotonic()
    os.kill(agent.pid, signal.SIGTERM)
    try:
        code = agent.process.wait(EXIT_BOUND)
    except subprocess.TimeoutExpired:
        agent.process.kill()
        agent.process.wait(10)
        pytest.fail(f"agent on {agent.node} still running {EXIT_BOUND:.0f} s after SIGTERM")
    assert code == 0, f"exit status {code}:\n{agent.log_text()[-2000:]}"
    return time.monotonic() - began


def shim_processes(lab: FaultLab, node: str) -> list[str]:
    """Command lines of processes still running a wrapper from this node's shim."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(lab.shims[node].bin) in cmdline:
            found.append(cmdline)
    return found


def settled(lab: FaultLab, node: str) -> dict[str, str]:
    """The node's Services once its rules hold exactly the API's (an earlier test's
    deletions may still be on their way)."""
    api = lab.api_services()
    lab.wait_rules([node], lambda n, t: lab.cluster_ips(n, t) == api, 30, "rules settled")
    return api


def record(
    report: Report, lab: FaultLab, node: str, state: str, seconds: float, since: float
) -> None:
    report.add(
        f"SIGTERM: {state}",
        lab,
        node,
        since,
        time.time(),
        recover_s=None,
        metrics={"sigterm_to_exit_s": round(seconds, 3)},
        logs=log_lines(lab.agent(node).log_text(), r"signal received|took too long", since)[:2],
        notes="the agent's rules stay in place; connections are counted over the whole test",
    )


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_sigterm_when_synced_and_idle(lab: FaultLab, report: Report, mode: str) -> None:
    node = NODE_FOR_MODE[mode]
    before = settled(lab, node)
    since = time.time()
    seconds = sigterm(lab.agent(node))
    record(report, lab, node, "synced and idle", seconds, since)
    assert lab.cluster_ips(node) == before


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_sigterm_with_a_transaction_stuck_in_its_tool(
    lab: FaultLab, report: Report, mode: str
) -> None:
    node = NODE_FOR_MODE[mode]
    shim = lab.shims[node]
    before = settled(lab, node)
    events = len(shim.events())
    lab.stop_agent(node)
    since = time.time()
    agent = lab.start_agent(node, wait=False)
    shim.arm("stall", agent.pid, 1024)  # the start-up full sync: nft -f / iptables-restore
    event = shim.wait_event(events + 1)
    assert event.action == "stall"
    seconds = sigterm(agent)
    record(report, lab, node, f"full sync stuck in {event.tool}", seconds, since)
    assert log_lines(agent.log_text(), r"took too long", since), "the deadline did not fire"
    deadline = time.monotonic() + 5
    while shim_processes(lab, node) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not shim_processes(lab, node), "the stuck tool outlived the agent"
    assert lab.cluster_ips(node) == before, "the abandoned transaction changed the rules"


STATES: dict[str, Callable[[StallingProxy], object]] = {
    "waiting for the initial lists (API server hung)": lambda p: p.stall(new=True),
    "API server refusing connections (backing off)": lambda p: p.cut(),
}


@pytest.mark.parametrize("state", list(STATES))
def test_sigterm_while_the_api_server_does_not_answer(
    lab: FaultLab, report: Report, state: str
) -> None:
    node = NODE_FOR_MODE["nftables"]
    proxy = StallingProxy(lab.topo.ns(node), API_SERVER)
    try:
        before = settled(lab, node)
        STATES[state](proxy)
        lab.stop_agent(node)
        since = time.time()
        agent = lab.start_agent(
            node, kubeconfig=lab.proxied_kubeconfig(node, proxy.port), wait=False
        )
        time.sleep(3)  # it is listing (or backing off) by now
        assert agent.alive() and not log_lines(agent.log_text(), r"msg=synced ")
        seconds = sigterm(agent)
        record(report, lab, node, state, seconds, since)
        assert lab.cluster_ips(node) == before
    finally:
        proxy.close()
