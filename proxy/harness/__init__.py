"""Netns test harness: a topology of nodes, pods and outside clients built from network
namespaces, workload servers in the pods, and probes sent from any namespace.

    from proxy.harness import Outcome, Topology
    from proxy.host.spec import default_spec

    with Topology(default_spec()) as topo:
        result = topo.prober("a1").tcp("10.244.2.11", 80)
        assert result.outcome is Outcome.ANSWERED and result.endpoint == "b1"

The nodes, pods and clients are described with :mod:`proxy.host.spec`; the namespaces
and links are built by :class:`proxy.host.network.Network`, which Topology extends. The
names below are imported on first use, so that ``python -m proxy.harness.workload``
and ``python -m proxy.harness.worker`` (started once per pod / namespace) stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.harness.errors import HarnessError, ProbeError
    from proxy.harness.probe import Prober
    from proxy.harness.result import Outcome, ProbeResult
    from proxy.harness.topology import Topology

_EXPORTS = {
    "HarnessError": "errors",
    "Outcome": "result",
    "ProbeError": "errors",
    "ProbeResult": "result",
    "Prober": "probe",
    "Topology": "topology",
}

__all__ = [
    "HarnessError",
    "Outcome",
    "ProbeError",
    "ProbeResult",
    "Prober",
    "Topology",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
