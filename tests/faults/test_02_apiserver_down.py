"""Fault 2: the API server is down for 60 s (SIGKILL; etcd keeps running), then restarted.

Both agents (node-a iptables, node-b nftables) keep their rules and their process: the
streams lose nothing and ``/livez`` stays 200 while nothing changes. After the restart the
reflectors reconnect (jittered backoff, at most 30 s between attempts) and the changes
made after the restart — a deletion, an endpoint change, a new Service — are programmed.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.infra import NODES, Changes, FaultLab, Report, log_lines, metric

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.faults]

DOWN = 60.0


def api_errors(text: str) -> float:
    return metric(text, "kubeproxy_py_api_errors_total", reason="connection")


def test_apiserver_down_for_a_minute(lab: FaultLab, report: Report) -> None:
    changes = Changes(lab, "apidown")
    changes.setup(NODES)
    errors_before = {n: api_errors(lab.metrics(n)) for n in NODES}
    agents = {n: lab.agent(n) for n in NODES}
    cp = lab.cluster.control_plane
    start = time.time()
    os.kill(cp.pids["kube-apiserver"], signal.SIGKILL)
    livez: dict[str, list[int]] = {n: [] for n in NODES}
    while time.time() - start < DOWN:
        for n in NODES:
            livez[n].append(lab.health(n, "/livez"))
        time.sleep(4)
    cp.restart_apiserver()
    up = time.time()
    changes.during()
    recovered = changes.recover(NODES, up)
    api = lab.api_services()
    for n in NODES:
        assert lab.cluster_ips(n) == api, f"{n}: stale or missing Services"
    lab.streams.settle()
    failures = []
    for n in NODES:
        text = lab.metrics(n)
        row = report.add(
            "API server down 60 s, restarted",
            lab,
            n,
            start,
            up,
            recover_s=recovered[n],
            metrics={
                "api_errors_connection": api_errors(text) - errors_before[n],
                "livez_200": livez[n].count(200),
                "livez_checks": len(livez[n]),
            },
            logs=log_lines(agents[n].log_text(), r"request failed; retrying", start)[:2],
            notes="recover = API server ready → changes made then programmed "
            "(reflector backoff grows to 30 s while the server is down)",
        )
        assert agents[n].alive() and lab.agent(n) is agents[n], "the agent did not survive"
        assert set(livez[n]) == {200}, f"{n}: /livez answered {livez[n]} during the outage"
        assert row.metrics["api_errors_connection"] > 0, "API errors not counted"
        if row.failed:
            failures.append(f"{n}: {row}")
    changes.cleanup()
    assert not failures, failures
