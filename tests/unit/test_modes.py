"""Every proxy mode behind one protocol: the registry, and the pure half of each mode
agreeing with its package's renderer and transactions."""

from __future__ import annotations

import pytest

from proxy import manifests as m
from proxy.config import ProxyMode
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.modes import mode_for, other_modes
from proxy.nftables import diff as nft_diff
from proxy.nftables import render as nft_render
from tests.unit.test_plan import NODE, make_plan, web, web_slice

ONE = (m.EP("10.244.1.5", NODE),)
TWO = (*ONE, m.EP("10.244.2.5", "node-b"))


@pytest.mark.parametrize("mode", list(ProxyMode))
def test_the_registry_has_one_mode_object_per_proxy_mode(mode: ProxyMode) -> None:
    assert mode_for(mode).proxy_mode is mode
    assert mode_for(mode) is mode_for(mode)
    assert mode not in other_modes(mode) and len(other_modes(mode)) == len(ProxyMode) - 1


def test_full_sync_text_is_the_packages_own() -> None:
    p = make_plan(web(), web_slice(*TWO), mode=ProxyMode.NFTABLES)
    nft = mode_for(ProxyMode.NFTABLES)
    assert nft.full_sync_text(nft.renderer()(p, None)) == nft_diff.full_sync_text(
        nft_render.render(p)
    )
    p = make_plan(web(), web_slice(*TWO), mode=ProxyMode.IPTABLES)
    ipt = mode_for(ProxyMode.IPTABLES)
    assert ipt.full_sync_text(ipt.renderer()(p, None)) == ipt_restore.restore_text(
        ipt_render.render(p)
    )


@pytest.mark.parametrize("mode", list(ProxyMode))
def test_diff_is_empty_without_a_change_and_writes_one(mode: ProxyMode) -> None:
    impl = mode_for(mode)
    render = impl.renderer()
    before = render(make_plan(web(), web_slice(*ONE), mode=mode), None)
    same = render(make_plan(web(), web_slice(*ONE), mode=mode), None)
    after = render(make_plan(web(), web_slice(*TWO), mode=mode), None)
    assert not impl.diff(before, same)
    change = impl.diff(before, after)
    assert change and "10.244.2.5" in (change.text if mode is ProxyMode.IPTABLES else change.text())


def test_only_iptables_skips_periodic_full_syncs_in_large_clusters() -> None:
    small = make_plan(web(), web_slice(*TWO), mode=ProxyMode.IPTABLES)
    assert all(mode_for(mode).periodic_full_sync(small) for mode in ProxyMode)
