"""The walkthroughs and the rolling update of tests/e2e/test_demo.py in iptables mode, on
this package's lab of real nodes instead of a lab of their own (one lab start less).

That lab is an iptables-mode ``lab up --nodes 2`` plus ``node-upstream`` (``--compare``).
This module runs first in the package (its name sorts first), on the lab as ``lab up``
left it: kube-proxy-py's ConfigMap as deployed (restored if it was changed). For as long
as it runs, ``node-upstream`` is cordoned (no pod of the walkthroughs lands where upstream
kube-proxy serves) and labelled ``node.kubernetes.io/exclude-from-external-load-balancers``
(MetalLB announces no LoadBalancer address from it): what the walkthroughs see is a
two-node iptables lab's. The walkthroughs wait until their namespaces are gone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from proxy.lab.topology import UPSTREAM_NODE
from tests.e2e import test_demo
from tests.e2e.nodelab import NodeLab

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

EXCLUDE_LB = "node.kubernetes.io/exclude-from-external-load-balancers"

# The same tests, run here with this module's `lab`.
test_rolling_update_under_load_loses_no_connection = (
    test_demo.test_rolling_update_under_load_loses_no_connection
)
test_every_walkthrough_passes = test_demo.test_every_walkthrough_passes


@pytest.fixture(scope="module")
def lab(node_lab: NodeLab) -> Iterator[test_demo.Lab]:
    node_lab.restore_agents()
    node_lab.kubectl("cordon", UPSTREAM_NODE)
    node_lab.kubectl("label", "node", UPSTREAM_NODE, f"{EXCLUDE_LB}=", "--overwrite")
    try:
        handle = test_demo.Lab(node_lab.state_dir)
        assert handle.state.mode == "iptables", handle.state.mode
        yield handle
    finally:
        node_lab.kubectl("label", "node", UPSTREAM_NODE, f"{EXCLUDE_LB}-")
        node_lab.kubectl("uncordon", UPSTREAM_NODE)
