"""The lab of real nodes the walkthrough, add-on, agent and differential tests share (one
per package run)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.nodelab import NodeLab, ip_family


@pytest.fixture(scope="package")
def node_lab(k8s_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeLab]:
    """One lab of real nodes for the package's tests: node-1 and node-2 run
    kube-proxy-py's DaemonSet, node-upstream upstream kube-proxy's (``--compare``).
    Started in iptables mode (which sets route_localnet on the nodes beforehand, so both
    modes can be tested on it), dual-stack unless ``KPP_DIFF_IP_FAMILY`` says otherwise
    (``tests.e2e.nodelab.ip_family``); each test module configures the agents it needs."""
    state_dir = tmp_path_factory.mktemp("node-lab") / "state"
    args = ("--nodes", "2", "--compare", "--mode", "iptables", "--ip-family", ip_family())
    lab = NodeLab.up(k8s_bin, state_dir, *args)
    try:
        yield lab
    finally:
        lab.down()
