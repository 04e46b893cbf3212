"""Fixtures of the fault-injection suite: one cluster for the whole package.

The results table (JSON and Markdown) is written to ``$KPP_FAULTS_RESULTS`` (a file
path) or to ``results.json`` in a new temporary directory; the path is printed at the
end of the run.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.harness import Topology
from proxy.lab.cluster import LabCluster, lab_spec
from tests.e2e.conftest import k8s_bin
from tests.faults.infra import (
    CLIENT_POD,
    NODE_IP,
    NODES,
    SERVERS,
    FaultLab,
    Report,
    endpoints_of,
    service,
    spec,
)

__all__ = ["k8s_bin"]

RESULTS_ENV = "KPP_FAULTS_RESULTS"
_REPORT_KEY = pytest.StashKey[Report]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault-injection suite (tests/faults; real kernel, real API server)"
    )
    config.addinivalue_line(
        "markers", "iptables_variant(name): node-a's agent uses iptables nft or legacy"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    report = terminalreporter.config.stash.get(_REPORT_KEY, None)
    if report is None or not report.rows:
        return
    terminalreporter.section("fault-injection results")
    table = report.path.with_suffix(".md").read_text().split("\n\n", 1)[0]
    terminalreporter.write_line(table)
    terminalreporter.write_line(f"results: {report.path} (and {report.path.with_suffix('.md')})")


@pytest.fixture(scope="package")
def report(request: pytest.FixtureRequest) -> Report:
    path = os.environ.get(RESULTS_ENV)
    target = (
        Path(path)
        if path
        else Path(tempfile.mkdtemp(prefix="kube-proxy-py-faults-")) / "results.json"
    )
    rep = Report(target)
    request.config.stash[_REPORT_KEY] = rep
    return rep


@pytest.fixture(scope="package")
def fault_lab(k8s_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultLab]:
    workdir = tmp_path_factory.mktemp("faults")
    with LabCluster(k8s_bin, Topology(lab_spec(spec())), workdir=workdir / "lab") as cluster:
        lab = FaultLab(cluster, workdir)
        try:
            for pod in SERVERS:
                cluster.create_pod(pod, {"app": "web"})
            lab.apply(service("steady", "steady", selector={"app": "web"}, node_port=True))
            lab.steady_ip = cluster.service_ip("steady")
            lab.steady_port = cluster.node_port("steady")
            for node in NODES:
                lab.start_agent(node)
            lab.wait_rules(
                NODES,
                lambda n, text: lab.endpoints(n, "steady", text) == endpoints_of(SERVERS),
                60,
                "steady programmed with its four endpoints",
            )
            for node in NODES:
                lab.streams.start(CLIENT_POD[node], {f"{node}/cluster-ip": (lab.steady_ip, 80)})
            lab.streams.start(
                "outside",
                {f"{node}/node-port": (NODE_IP[node], lab.steady_port) for node in NODES},
            )
            start = time.time()
            while lab.streams.first_success_after("node-a", start) is None or (
                lab.streams.first_success_after("node-b", start) is None
            ):
                if time.time() - start > 30:
                    raise TimeoutError("the steady streams never got an answer")
                time.sleep(0.1)
            yield lab
        finally:
            lab.streams.stop()


@pytest.fixture
def lab(fault_lab: FaultLab, request: pytest.FixtureRequest) -> Iterator[FaultLab]:
    """The shared lab, node-a's agent using the iptables variant the test is marked with
    (``@pytest.mark.iptables_variant("legacy")``; default ``nft``); afterwards both agents
    run again with the suite's flags and environment."""
    marker = request.node.get_closest_marker("iptables_variant")
    fault_lab.use_iptables_variant(marker.args[0] if marker else "nft")
    yield fault_lab
    fault_lab.reset()
