"""Fault 3: etcd compacts under the watch while the agents miss changes.

Each agent reaches the API server through a TCP proxy in its namespace
(:mod:`tests.faults.tcpproxy`). The proxies cut the agents off (connections reset, new
ones refused); meanwhile a Service is deleted, one created and an EndpointSlice changed,
etcd is compacted to its latest revision and the API server restarted (its new watch
cache starts after the compaction, so the agents' resourceVersion is gone for good).
When the proxies heal, each reflector's watch gets 410 Expired, it relists and diffs: the
rules must end up exactly as the API says (deletion removed, changes programmed, nothing
else), without losing a connection meanwhile.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.infra import API_SERVER, NODES, Changes, FaultLab, Report, log_lines, metric
from tests.faults.tcpproxy import StallingProxy

pytestmark = [pytest.mark.e2e, pytest.mark.netns, pytest.mark.faults]


def test_compaction_while_cut_off_leads_to_a_relist(lab: FaultLab, report: Report) -> None:
    proxies = {n: StallingProxy(lab.topo.ns(n), API_SERVER) for n in NODES}
    try:
        for n in NODES:
            lab.restart_agent(n, kubeconfig=lab.proxied_kubeconfig(n, proxies[n].port))
        changes = Changes(lab, "compact")
        changes.setup(NODES)
        agents = {n: lab.agent(n) for n in NODES}
        start = time.time()
        for p in proxies.values():
            p.cut()
        changes.during()
        cp = lab.cluster.control_plane
        revision = cp.compact_etcd()
        cp.restart_apiserver()
        for p in proxies.values():
            p.heal()
        healed = time.time()
        recovered = changes.recover(NODES, healed)
        api = lab.api_services()
        for n in NODES:  # exactly the Services of the API, no more, no less
            assert lab.cluster_ips(n) == api, f"{n}: rules differ from the API's Services"
        lab.streams.settle()
        failures = []
        for n in NODES:
            text = lab.metrics(n)
            relists = log_lines(
                agents[n].log_text(),
                r"watch resourceVersion expired; relisting|list resourceVersion unavailable"
                r"|msg=relisted",
                start,
            )
            row = report.add(
                "etcd compacted + API restart while cut off (410, relist)",
                lab,
                n,
                start,
                healed,
                recover_s=recovered[n],
                metrics={
                    "api_errors_expired": metric(
                        text, "kubeproxy_py_api_errors_total", reason="expired"
                    ),
                    "compacted_revision": revision,
                },
                logs=relists[:4],
                notes="recover = proxies heal → relist and changes made while cut off "
                "programmed (includes the reflectors' backoff)",
            )
            assert row.metrics["api_errors_expired"] > 0, "no 410 seen"
            assert any("expired" in line for line in relists), relists
            if row.failed:
                failures.append(f"{n}: {row}")
        changes.cleanup()
        assert not failures, failures
    finally:
        for p in proxies.values():
            p.close()
