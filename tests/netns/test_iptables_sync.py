"""iptables full sync against the real kernel: the tables are saved while the restore
input is written, and only the end of each table's input depends on the save."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import kernel as kernel_ipt
from proxy.iptables import model as ipt_model
from proxy.iptables import render as ipt_render
from proxy.iptables import save as ipt_save
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.executor import Executor, KernelError
from proxy.plan import plan
from proxy.source.file import build_state
from tests.conftest import netns_pair

pytestmark = pytest.mark.netns

VARIANTS = ["legacy", "nft"]


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    with netns_pair("sync", "ref") as names:
        yield names


def ruleset(*names: str) -> ipt_model.IptablesRuleset:
    """Services ``names`` (two endpoints each, one a NodePort) on node-a."""
    objs: list[dict[str, Any]] = [m.node("node-a", "192.168.50.11")]
    for i, name in enumerate(names):
        port = m.Port(80, "tcp", node_port=30080 + i)
        objs.append(m.service(name, f"10.96.0.{10 + i}", [port], type="NodePort"))
        eps = [m.EP(f"10.244.{i}.{k}", "node-a") for k in (5, 6)]
        objs.append(m.endpoint_slice(name, eps, [("tcp", 80, "TCP")]))
    cfg = ProxyConfig(
        "node-a", mode=ProxyMode.IPTABLES, cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),)
    )
    return ipt_render.render(plan(build_state(objs, "node-a").snapshot, cfg))


def saved(ns: str, variant: str) -> dict[tuple[str, str], tuple[str, ...]]:
    dump = subprocess.run(
        ["ip", "netns", "exec", ns, f"iptables-{variant}-save"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(ipt_save.parse_save(dump).rules)


def iptables(ns: str, variant: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, f"iptables-{variant}", *args], check=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sync_over_an_older_ruleset_equals_a_fresh_sync(
    pair: tuple[str, str], variant: str
) -> None:
    """Stale chains go, a duplicated and a stale jump are mended, other rules stay."""
    old, new = ruleset("web", "gone"), ruleset("web", "db")
    over, fresh = (IptablesKernel(Executor(ns), variant=variant) for ns in pair)
    over.full_sync(old)
    stale = {c for t in old.tables().values() for c in t} - {
        c for t in new.tables().values() for c in t
    }
    assert any(c.startswith("KUBE-SVC-") for c in stale)
    iptables(pair[0], variant, "-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES")  # a dup
    iptables(pair[0], variant, "-t", "nat", "-A", "OUTPUT", "-j", sorted(stale)[0])
    for k in (over, fresh):
        iptables(k.executor.netns or "", variant, "-t", "nat", "-A", "POSTROUTING", "-j", "ACCEPT")
    over.full_sync(new)
    fresh.full_sync(new)
    after = saved(pair[0], variant)
    assert after == saved(pair[1], variant)
    assert not stale & {c for (_, c) in after}
    assert after[("nat", "POSTROUTING")][-1] == "-j ACCEPT"  # someone else's rule stays


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_failed_save_commits_nothing(
    pair: tuple[str, str], variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = pair[0]
    k = IptablesKernel(Executor(ns), variant=variant)
    k.full_sync(ruleset("web", "gone"))
    before = saved(ns, variant)
    real = kernel_ipt._tool
    monkeypatch.setattr(
        kernel_ipt, "_tool", lambda f, v, verb: "false" if verb == "save" else real(f, v, verb)
    )
    with pytest.raises(KernelError) as err:
        k.full_sync(ruleset("web", "db"))
    assert err.value.argv[0] == "false"  # the save's failure, not the restore's
    assert saved(ns, variant) == before
    monkeypatch.undo()
    k.full_sync(ruleset("web", "db"))
    assert saved(ns, variant) != before
