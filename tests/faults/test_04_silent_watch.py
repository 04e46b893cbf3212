"""Fault 4: the watch streams go silent without closing (TCP open, no bytes, no bookmark).

Each agent reaches the API server through a TCP proxy in its namespace; the agents run
with ``KUBE_PROXY_PY_WATCH_IDLE_TIMEOUT=4``. The proxies stall every open connection
(nothing relayed, nothing closed; new connections still work, as behind a middlebox that
hung one flow). Changes are made at once. Each agent must notice that its watches are
silent (metric ``kubeproxy_py_api_errors_total{reason="silent"}``, log "watch silent"),
close them, watch again on a new connection from its last resourceVersion, and program
the changes. With a 4 s idle timeout, quiet (healthy) watches are also reopened every
4 s: that is the price of the small value the test needs, not of the fault.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.infra import API_SERVER, NODES, Changes, FaultLab, Report, log_lines, metric
from tests.faults.tcpproxy import StallingProxy

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.faults]

IDLE = 4


def silent(text: str) -> float:
    return metric(text, "kubeproxy_py_api_errors_total", reason="silent")


def test_silent_watch_is_detected_and_reopened(lab: FaultLab, report: Report) -> None:
    proxies = {n: StallingProxy(lab.topo.ns(n), API_SERVER) for n in NODES}
    try:
        for n in NODES:
            lab.restart_agent(
                n,
                kubeconfig=lab.proxied_kubeconfig(n, proxies[n].port),
                env={"KUBE_PROXY_PY_WATCH_IDLE_TIMEOUT": str(IDLE)},
            )
        changes = Changes(lab, "silent")
        changes.setup(NODES)
        agents = {n: lab.agent(n) for n in NODES}
        before = {n: silent(lab.metrics(n)) for n in NODES}
        start = time.time()
        stalled = {n: proxies[n].stall() for n in NODES}
        changes.during()
        done = lab.wait_rules_each(NODES, changes.done, 60, "changes made during the stall")
        end = max(done.values())
        recovered = changes.recover(NODES, end)
        lab.streams.settle()
        failures = []
        for n in NODES:
            p = proxies[n]
            detected = min(p.stall_closes) - start if p.stall_closes else None
            row = report.add(
                f"watch silent (stalled TCP), idle timeout {IDLE} s",
                lab,
                n,
                start,
                end,
                recover_s=done[n] - start,
                metrics={
                    "api_errors_silent": silent(lab.metrics(n)) - before[n],
                    "stalled_connections": stalled[n],
                    "closed_by_agent": len(p.stall_closes),
                    "detected_after_s": round(detected, 2) if detected is not None else -1,
                    "after_change_s": round(recovered[n], 2),
                },
                logs=log_lines(agents[n].log_text(), r"watch silent", start)[:3],
                notes="recover = stall → changes made at the stall programmed; "
                "after_change_s = a later change",
            )
            assert stalled[n] >= 1, f"{n}: no watch connection was open to stall"
            assert detected is not None and detected < IDLE + 3, f"{n}: stall not detected"
            assert row.metrics["api_errors_silent"] > 0
            assert log_lines(agents[n].log_text(), r"watch silent", start)
            if row.failed:
                failures.append(f"{n}: {row}")
        changes.cleanup()
        assert not failures, failures
    finally:
        for p in proxies.values():
            p.close()
