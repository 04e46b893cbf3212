"""Every kernel change is one transaction, even when iptables-restore commits per table
(issue 14), and apply/cleanup leave no other mode's rules behind.

iptables-restore commits each table at its COMMIT: when a later table is refused (here:
a stale chain of ours that a foreign rule still references), the earlier one is live. The
committed table must be put back, route_localnet too, and the message must say so.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import model as ipt_model
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.executor import Executor, KernelError
from proxy.plan import plan
from proxy.source.file import build_state
from tests.netns.test_apply import EXAMPLE, apply, kpp, sh, write_state

pytestmark = pytest.mark.netns

STALE = "KUBE-SVC-STALESTALESTALE"
VARIANTS = [v for v in ("legacy", "nft") if Executor.available(f"iptables-{v}-restore")]


def table(ns: str, variant: str, name: str) -> str:
    text = sh(ns, f"iptables-{variant}-save", "-t", name)
    return "\n".join(
        re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")
    )


def nat(ns: str, variant: str) -> str:
    return table(ns, variant, "nat")


def apply_variant(ns: str, variant: str, state: Path) -> subprocess.CompletedProcess[str]:
    """``apply --mode iptables`` with the given iptables backend."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, "env", f"KUBE_PROXY_PY_IPTABLES={variant}",
         sys.executable, "-m", "proxy", "apply", "--state", str(state), "--mode", "iptables",
         "--hostname-override", "node-a"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def pin_stale_chain(ns: str, variant: str) -> None:
    """A chain of ours in filter that a foreign chain jumps to: deleting it is refused."""
    tool = f"iptables-{variant}"
    sh(ns, tool, "-N", STALE)
    sh(ns, tool, "-N", "FOREIGN")
    sh(ns, tool, "-A", "FOREIGN", "-j", STALE)


@pytest.mark.parametrize("variant", VARIANTS)
def test_apply_refused_in_filter_puts_nat_back(netns: str, tmp_path: Path, variant: str) -> None:
    first = apply_variant(netns, variant, EXAMPLE)
    assert first.returncode == 0, first.stderr
    pin_stale_chain(netns, variant)
    sh(netns, "sysctl", "-q", "-w", "net.ipv4.conf.all.route_localnet=0")
    before = nat(netns, variant)
    more = m.service("more", "10.96.0.77", [m.Port(80, "http", node_port=30077)], type="NodePort")
    state = write_state(tmp_path, [m.node("node-a", "192.168.50.11"), more])
    proc = apply_variant(netns, variant, state)
    assert proc.returncode == 3, proc.stderr
    assert "the nat table had already been committed and was restored" in proc.stderr
    assert "nothing is changed" in proc.stderr
    assert nat(netns, variant) == before, "the committed nat table was not put back"
    assert "10.96.0.77" not in nat(netns, variant)
    assert sh(netns, "sysctl", "-n", "net.ipv4.conf.all.route_localnet").strip() == "0"
    # once the foreign rule lets go, the same apply goes through whole
    sh(netns, f"iptables-{variant}", "-F", "FOREIGN")
    proc = apply_variant(netns, variant, state)
    assert proc.returncode == 0, proc.stderr
    assert "10.96.0.77" in sh(netns, f"iptables-{variant}-save")  # no endpoints: filter


def _ruleset(*services: str) -> ipt_model.IptablesRuleset:
    """Services with one endpoint each, except ``nobody`` (no endpoints: a filter rule)."""
    objs = [m.node("node-a", "192.168.50.11")]
    for i, name in enumerate(services):
        objs.append(m.service(name, f"10.96.0.{10 + i}", [m.Port(80, "http")]))
        if name != "nobody":
            ep = m.EP(f"10.244.1.{10 + i}", "node-a")
            objs.append(m.endpoint_slice(name, [ep], [("http", 80, "TCP")]))
    p = plan(build_state(objs, "node-a").snapshot, ProxyConfig("node-a", mode=ProxyMode.IPTABLES))
    return ipt_render.render(p)


@pytest.mark.parametrize("variant", VARIANTS)
def test_partial_sync_refused_in_nat_puts_filter_back(netns: str, variant: str) -> None:
    """A partial restore writes filter, then nat: nat refused, filter must be put back."""
    kernel = IptablesKernel(Executor(netns), variant=variant)
    old = _ruleset("a", "nobody")
    old = dataclasses.replace(old, nat={**old.nat, STALE: ()})
    new = _ruleset("a")
    kernel.full_sync(old)
    sh(netns, f"iptables-{variant}", "-t", "nat", "-N", "FOREIGN")
    sh(netns, f"iptables-{variant}", "-t", "nat", "-A", "FOREIGN", "-j", STALE)
    before = table(netns, variant, "filter")
    assert "10.96.0.11" in before  # nobody's REJECT rule
    change = ipt_restore.partial_restore(old, new)
    assert change.text.index("*filter") < change.text.index("*nat")
    assert f"-X {STALE}" in change.text
    with pytest.raises(KernelError) as info:
        kernel.apply_partial(change)
    assert info.value.committed == ("filter",) and info.value.rolled_back
    assert table(netns, variant, "filter") == before


def test_apply_in_one_mode_removes_the_other_modes_rules(netns: str) -> None:
    apply(netns, "nftables", EXAMPLE)
    assert "table ip kube-proxy" in sh(netns, "nft", "list", "tables")
    proc = apply(netns, "iptables", EXAMPLE)
    assert "removed the nftables rules of the other mode" in proc.stderr
    assert "kube-proxy" not in sh(netns, "nft", "list", "tables")
    proc = apply(netns, "nftables", EXAMPLE)
    assert "removed the iptables" in proc.stderr
    assert "KUBE-" not in sh(netns, "iptables-save")
    assert kpp(netns, "cleanup").returncode == 0


@pytest.mark.parametrize("mode", ["nftables", "iptables"])
def test_longest_valid_names_are_accepted_by_the_kernel(
    netns: str, tmp_path: Path, mode: str
) -> None:
    """A Service with 63-character namespace, name and port name, one with endpoints and
    one without (the API accepts both): nft refused the whole transaction before the
    comments were cut to its 128 characters (kubernetes/kubernetes#139515)."""
    from tests.unit.test_hostile_input import NAME63, NS63, PORT63, long_named

    empty = m.service(
        NAME63[:-1] + "q", "10.96.0.51", [m.Port(80, PORT63, node_port=30051)],
        namespace=NS63, type="NodePort",
    )  # fmt: skip
    state = write_state(tmp_path, [m.node("node-a", "192.168.50.11"), *long_named(), empty])
    apply(netns, mode, state)
    listing = (
        sh(netns, "nft", "list", "ruleset") if mode == "nftables" else sh(netns, "iptables-save")
    )
    assert f"{NS63}/{NAME63}" in listing and "10.96.0.51" in listing
