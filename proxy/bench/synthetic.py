"""The synthetic cluster ``bench sync`` and its memory probe plan and render."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy import manifests
from proxy.config import ProxyConfig, ProxyMode, parse_cidrs
from proxy.iptables import model as ipt_model
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.nftables import diff as nft_diff
from proxy.nftables import model as nft_model
from proxy.nftables import render as nft_render
from proxy.plan import Plan, plan
from proxy.source.file import LoadedState, build_state

NODE = "node-a"
CLUSTER_CIDR = "10.128.0.0/9"


def objects(services: int, endpoints: int) -> list[dict[str, Any]]:
    return manifests.synthetic_cluster(services, endpoints, node_name=NODE)


def parse(objs: list[dict[str, Any]]) -> LoadedState:
    return build_state(objs, NODE)


def config(mode: ProxyMode) -> ProxyConfig:
    return ProxyConfig(NODE, mode=mode, cluster_cidrs=parse_cidrs(CLUSTER_CIDR, "--cluster-cidr"))


@dataclass(frozen=True)
class Rendered:
    plan: Plan
    ruleset: ipt_model.IptablesRuleset | nft_model.NftRuleset
    text: str
    """the full-sync text for an empty kernel"""

    @property
    def rules(self) -> int:
        if isinstance(self.ruleset, nft_model.NftRuleset):
            return self.ruleset.rule_count + self.ruleset.element_count
        return self.ruleset.rule_count


def plan_and_render(state: LoadedState, mode: ProxyMode) -> Rendered:
    """Plan, render and write the full-sync text: what an agent's full sync computes."""
    p = plan(state.snapshot, config(mode))
    if mode is ProxyMode.NFTABLES:
        rs_n = nft_render.render(p)
        return Rendered(p, rs_n, nft_diff.full_sync_text(rs_n))
    rs_i = ipt_render.render(p)
    return Rendered(p, rs_i, ipt_restore.restore_text(rs_i))
