"""Removing kube-proxy-py's rules: the one place that knows every mode and variant.

Used by ``kube-proxy-py cleanup``, ``run --cleanup``, ``apply`` and the agent (which, like
upstream, removes the other mode's rules when it starts: a node switched from iptables to
nftables must not keep DNAT rules nobody updates).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from proxy.config import ProxyMode
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.runner import Runner
from proxy.model import IPFamily
from proxy.nftables.kernel import NftKernel

log = logging.getLogger(__name__)

IPTABLES_VARIANTS = ("nft", "legacy")


def remove_rules(
    runner: Runner, modes: Iterable[ProxyMode], family: IPFamily = IPFamily.V4
) -> list[str]:
    """Remove our rules of ``modes`` (iptables: both variants whose tools are installed);
    returns what held rules, e.g. ``["iptables (legacy)", "nftables"]``. A refusal raises
    :class:`~proxy.kernel.runner.KernelError` (what was removed before stays removed)."""
    removed: list[str] = []
    for mode in modes:
        if mode is ProxyMode.IPTABLES:
            for variant in IPTABLES_VARIANTS:
                if not Runner.available(f"iptables-{variant}-restore"):
                    continue
                if IptablesKernel(runner, family, variant).cleanup():
                    removed.append(f"iptables ({variant})")
        elif Runner.available("nft") and NftKernel(runner, family).cleanup():
            removed.append("nftables")
    return removed


def other_modes(mode: ProxyMode) -> tuple[ProxyMode, ...]:
    return tuple(m for m in ProxyMode if m is not mode)
