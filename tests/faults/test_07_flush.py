"""Fault 7: another program flushes or deletes our rules.

nftables and nft-backed iptables: the kernel's nf_tables generation moves, and the next
periodic sync (every 5 s here) finds it moved and makes a full sync: repaired within one
sync period (plus the sync). Legacy iptables has no generation; the agent lists a canary
chain in the mangle table once a sync period: a firewall reload that replaces the tables
removes it and is repaired the same way, but ``iptables -t nat -F`` spares it and the
rules stay broken until the hourly full sync (README, "The node agent": as upstream) —
marked xfail(strict) so a fix shows up.

Connections made while the rules are gone fail: counted, not asserted.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.infra import (
    NODE_FOR_MODE,
    SERVERS,
    SYNC_PERIOD,
    FaultLab,
    Report,
    endpoints_of,
    log_lines,
    metric,
)

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.faults]

LEGACY = pytest.mark.iptables_variant("legacy")
FIREWALL_RELOAD = "*mangle\nCOMMIT\n*nat\nCOMMIT\n*filter\nCOMMIT\n"
CASES = [
    pytest.param(
        "iptables", "iptables-legacy -t nat -F", None,
        marks=LEGACY,
        id="legacy-nat-F",
    ),
    pytest.param(
        "iptables", "iptables-legacy-restore", FIREWALL_RELOAD, marks=LEGACY,
        id="legacy-firewall-reload",
    ),
    pytest.param("iptables", "iptables-nft -t nat -F KUBE-SERVICES", None, id="nft-nat-F-KUBE-SERVICES"),
    pytest.param("iptables", "iptables-nft -t nat -F", None, id="nft-nat-F"),
    pytest.param("nftables", "nft flush table ip kube-proxy", None, id="nft-flush-table"),
    pytest.param("nftables", "nft delete table ip kube-proxy", None, id="nft-delete-table"),
]  # fmt: skip


def repaired(lab: FaultLab, node: str, text: str) -> bool:
    return lab.endpoints(node, "steady", text) == endpoints_of(SERVERS)


@pytest.mark.parametrize(("mode", "command", "stdin"), CASES)
def test_rules_flushed_by_someone_else(
    lab: FaultLab, report: Report, mode: str, command: str, stdin: str | None
) -> None:
    node = NODE_FOR_MODE[mode]
    agent = lab.agent(node)
    drift_before = metric(lab.metrics(node), "kubeproxy_py_ruleset_drift_repairs_total")
    argv = command.split()
    if argv[0].startswith("iptables-legacy"):  # our private lock file, never the host's
        argv = ["env", f"XTABLES_LOCKFILE={lab.lockfile}", *argv[:1], "-w", "5", *argv[1:]]
    start = time.time()
    lab.topo.run(node, argv, input=stdin)
    assert not repaired(lab, node, lab.rules(node)), "the command removed nothing"
    fixed: float | None = None
    try:
        fixed = lab.wait_rules(
            [node], lambda n, t: repaired(lab, n, t), SYNC_PERIOD + 3, "rules repaired"
        )
    finally:
        end = fixed if fixed is not None else time.time()
        lab.streams.settle()
        text = lab.metrics(node)
        row = report.add(
            f"`{command}`" + (" (a firewall reload: all tables)" if stdin else ""),
            lab,
            node,
            start,
            end + 0.5,
            recover_s=None if fixed is None else fixed - start,
            metrics={
                "drift_repairs": metric(text, "kubeproxy_py_ruleset_drift_repairs_total")
                - drift_before
            },
            logs=log_lines(agent.log_text(), r"changed by someone else", start)[:1],
            notes="recover = command → rules repaired; failed connections are the ones "
            "made while the rules were missing"
            + ("" if fixed is not None else f" (NOT repaired within {SYNC_PERIOD + 3:.0f} s)"),
        )
    assert lab.cluster_ips(node) == lab.api_services()
    assert row.metrics["drift_repairs"] >= 1
    assert log_lines(agent.log_text(), r"changed by someone else", start)
