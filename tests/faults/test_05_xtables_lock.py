"""Fault 5: another program holds the xtables lock for 30 s (iptables legacy mode).

``ip netns exec`` shares the host's ``/run``, so ``/run/xtables.lock`` would be the
host's lock: holding it would stall every iptables-legacy user on the machine. iptables
1.8.9 takes the lock file's name from ``XTABLES_LOCKFILE`` (the ``XT_LOCK_NAME`` of
other write-ups is not read by this version; checked with strace), so node-a's agent and
this test use a private lock file, and a ``flock`` process holds that for 30 s.

Meanwhile changes are made: the agent's restores wait 5 s (``-w 5``) and fail, the syncs
are retried; the rules in the kernel keep working. After the release the changes are
programmed, and the failures are counted.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.faults.infra import NODE_FOR_MODE, Changes, FaultLab, Report, log_lines, metric

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.faults]

HOLD = 30.0


def failures(text: str) -> float:
    return metric(text, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total") + metric(
        text, "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total"
    )


@pytest.mark.iptables_variant("legacy")
def test_xtables_lock_held_for_30s(lab: FaultLab, report: Report) -> None:
    node = NODE_FOR_MODE["iptables"]
    changes = Changes(lab, "xlock")
    changes.setup([node])
    agent = lab.agent(node)
    before = lab.metrics(node)
    holder = subprocess.Popen(
        ["flock", "--exclusive", str(lab.lockfile), "sh", "-c", f"echo held; sleep {HOLD}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.time()
        changes.during()
        holder.wait(HOLD + 10)
        end = time.time()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    recovered = changes.recover([node], end)
    lab.streams.settle()
    after = lab.metrics(node)
    log = agent.log_text()
    drift = log_lines(log, r"changed by someone else", start)
    row = report.add(
        f"xtables lock held {HOLD:.0f} s",
        lab,
        node,
        start,
        end,
        recover_s=recovered[node],
        metrics={
            "restore_failures": failures(after) - failures(before),
            "drift_repairs": metric(after, "kubeproxy_py_ruleset_drift_repairs_total")
            - metric(before, "kubeproxy_py_ruleset_drift_repairs_total"),
        },
        logs=log_lines(log, r"sync failed|xtables lock", start)[:3] + drift[:1],
        notes="recover = lock released → changes made during the hold programmed",
    )
    changes.cleanup()
    assert agent.alive()
    assert row.metrics["restore_failures"] > 0, "the failed restores were not counted"
    assert log_lines(log, r"holding the xtables lock", start), "the lock is not named in the log"
    assert row.failed == 0, row
    assert recovered[node] < 10, "changes made during the hold took long after the release"


@pytest.mark.iptables_variant("legacy")
def test_lock_timeout_is_reported_as_what_it_is(lab: FaultLab) -> None:
    node = NODE_FOR_MODE["iptables"]
    agent = lab.agent(node)
    changes = Changes(lab, "xlock2")
    changes.setup([node])
    holder = subprocess.Popen(
        ["flock", "--exclusive", str(lab.lockfile), "sh", "-c", "echo held; sleep 12"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        start = time.time()
        changes.during()
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    changes.recover([node], time.time())
    changes.cleanup()
    log = agent.log_text()
    assert log_lines(log, r"holding the xtables lock", start)
    false_claims = log_lines(
        log, r"committed part of the transaction|WAS changed|changed by someone else", start
    )
    assert not false_claims, false_claims
