"""Random valid states always render rules the kernel accepts (both backends)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import NodePortAddresses, ProxyConfig, ProxyMode
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.executor import Executor
from proxy.model import IPFamily
from proxy.nftables import diff as nft_diff
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
from proxy.plan import plan
from proxy.source.file import build_state
from tests.strategies import cluster_states

pytestmark = pytest.mark.netns

configs = st.fixed_dictionaries(
    {
        "masquerade_all": st.booleans(),
        "cluster_cidrs": st.sampled_from(
            [
                (),
                (ipaddress.ip_network("10.244.0.0/16"),),
                (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("fd00:10:244::/48")),
            ]
        ),
        "nodeport_addresses": st.sampled_from(
            [
                NodePortAddresses(),
                NodePortAddresses(primary=True),
                NodePortAddresses.parse("192.168.0.0/16,127.0.0.0/8"),
                NodePortAddresses.parse("fd00::/8,::1/128"),
            ]
        ),
    }
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(objs=cluster_states(), cfg=configs, family=st.sampled_from(list(IPFamily)))
def test_kernel_accepts_random_valid_states(
    netns: str, objs: list[dict[str, Any]], cfg: dict[str, Any], family: IPFamily
) -> None:
    state = build_state(objs, "node-a")
    executor = Executor(netns)
    hosts = tuple(
        ipaddress.ip_address(a)
        for a in ("127.0.0.1", "192.168.50.11", "::1", "fd00:192:168:50::11")
    )
    for mode in ProxyMode:
        config = ProxyConfig("node-a", mode=mode, host_addresses=hosts, **cfg)
        p = plan(state.snapshot, config, family)
        if mode is ProxyMode.NFTABLES:
            NftKernel(executor, family).apply(
                nft_diff.full_sync_text(nft_render.render(p)), check_only=True
            )
        else:
            IptablesKernel(executor, family, variant="nft").restore(
                ipt_restore.restore_text(ipt_render.render(p)), test=True
            )
