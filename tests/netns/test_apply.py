"""`apply` and `cleanup` against the real kernel, in a namespace of the test's own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy import manifests as m

pytestmark = pytest.mark.netns

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my-nginx.yaml"


def sh(ns: str, *cmd: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], input=stdin, capture_output=True, text=True, check=True
    ).stdout


def kpp(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def apply(ns: str, mode: str, state: Path | str, *extra: str) -> subprocess.CompletedProcess[str]:
    proc = kpp(
        ns,
        "apply",
        "--state",
        str(state),
        "--mode",
        mode,
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "10.244.0.0/16",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def snapshot(ns: str, mode: str) -> str:
    """The observable ruleset, without timestamps and counters."""
    if mode == "nftables":
        return sh(ns, "nft", "list", "ruleset")
    text = sh(ns, "iptables-save")
    return "\n".join(
        re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")
    )


def write_state(tmp: Path, objs: list[dict[str, Any]]) -> Path:
    path = tmp / f"state-{len(list(tmp.iterdir()))}.json"
    path.write_text(json.dumps(m.as_list(objs)))
    return path


def add_foreign_rules(ns: str) -> None:
    sh(ns, "iptables", "-t", "nat", "-N", "DOCKER")
    sh(ns, "iptables", "-t", "nat", "-A", "PREROUTING", "-j", "DOCKER")
    sh(ns, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    sh(
        ns,
        "nft",
        "-f",
        "-",
        stdin="table ip other {\n chain c {\n"
        "  type filter hook input priority 0\n  tcp dport 22 accept\n"
        " }\n}\n",
    )


def foreign_intact(ns: str) -> None:
    ipt = sh(ns, "iptables-save")
    assert "-A PREROUTING -j DOCKER" in ipt and ":DOCKER - " in ipt
    assert "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT" in ipt
    assert "tcp dport 22 accept" in sh(ns, "nft", "list", "table", "ip", "other")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_apply_is_idempotent_replaces_exactly_ours_and_cleans_up(
    netns: str, mode: str, tmp_path: Path
) -> None:
    add_foreign_rules(netns)
    apply(netns, mode, EXAMPLE)
    first = snapshot(netns, mode)
    assert "10.244.2.11" in first
    apply(netns, mode, EXAMPLE)
    assert snapshot(netns, mode) == first, "re-applying the same state changed the ruleset"
    foreign_intact(netns)

    # changed state: my-nginx loses an endpoint; the NodePort service goes away entirely
    changed = write_state(
        tmp_path,
        [
            m.node("node-a", "192.168.50.11"),
            m.service("my-nginx", "10.96.0.80", [m.Port(80)]),
            m.endpoint_slice("my-nginx", [m.EP("10.244.1.11", "node-a")], [("", 80, "TCP")]),
        ],
    )
    apply(netns, mode, changed)
    after = snapshot(netns, mode)
    assert "10.244.2.11" not in after and "10.244.1.11" in after
    assert "my-nginx-nodeport" not in after and "30080" not in after
    foreign_intact(netns)

    proc = kpp(netns, "cleanup", "--mode", mode)
    assert proc.returncode == 0, proc.stderr
    left = snapshot(netns, "iptables") + snapshot(netns, "nftables")
    assert "KUBE-" not in left and "kube-proxy" not in left
    foreign_intact(netns)
    proc = kpp(netns, "cleanup", "--mode", mode)
    assert proc.returncode == 0 and "none found" in proc.stderr


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_apply_skips_invalid_objects_and_programs_the_rest(
    netns: str, mode: str, tmp_path: Path
) -> None:
    state = write_state(
        tmp_path,
        [
            m.node("node-a", "192.168.50.11"),
            m.service("good", "10.96.0.98", [m.Port(80)]),
            m.endpoint_slice("good", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")]),
            m.service("bad", "10.96.0.99", [m.Port(80, protocol="ICMP")]),
        ],
    )
    proc = apply(netns, mode, state)
    assert "skipped Service default/bad: spec.ports[0].protocol: unknown protocol 'ICMP'" in (
        proc.stderr
    )
    rules = snapshot(netns, mode)
    assert "10.244.1.5" in rules and "10.96.0.99" not in rules
    strict = kpp(
        netns,
        "apply",
        "--state",
        str(state),
        "--mode",
        mode,
        "--hostname-override",
        "node-a",
        "--strict",
    )
    assert strict.returncode == 1


def test_iptables_rules_read_back_as_rendered(netns: str) -> None:
    """What iptables-save prints is rule for rule what we rendered (modulo number formats)."""
    from proxy.config import ProxyConfig, parse_cidrs
    from proxy.iptables import render as ipt_render
    from proxy.iptables import save as ipt_save
    from proxy.plan import plan
    from proxy.source.file import load_state

    apply(netns, "iptables", EXAMPLE)
    state = load_state(str(EXAMPLE), "node-a")
    rs = ipt_render.render(
        plan(state.snapshot, ProxyConfig("node-a", cluster_cidrs=parse_cidrs("10.244.0.0/16", "x")))
    )
    saved = ipt_save.parse_save(sh(netns, "iptables-save"))

    def norm(rule: str) -> str:
        return re.sub(r"--probability \d\.\d+", "--probability P", rule)

    for table, chains in rs.tables().items():
        for chain, rules in chains.items():
            assert [norm(r) for r in saved.rules[(table, chain)]] == [norm(r) for r in rules]
    for j in rs.jumps:
        assert saved.builtin_rules[(j.table, j.chain)].count(j.spec) == 1


def test_legacy_backend_is_detected_and_used(netns: str) -> None:
    """A host whose kubelet left its hint chain in legacy iptables gets legacy rules."""
    from proxy.iptables.kernel import detect_variant
    from proxy.kernel.executor import Executor

    executor = Executor(netns)
    assert detect_variant(executor) == "nft"  # empty host: nft
    sh(netns, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    assert detect_variant(executor) == "legacy"
    apply(netns, "iptables", EXAMPLE)
    assert "KUBE-SVC-" in sh(netns, "iptables-legacy-save", "-t", "nat")
    assert "KUBE-SVC-" not in sh(netns, "iptables-nft-save", "-t", "nat")
    assert kpp(netns, "cleanup", "--mode", "iptables").returncode == 0
    assert "KUBE-SVC-" not in sh(netns, "iptables-legacy-save", "-t", "nat")


def test_legacy_restore_waits_for_the_xtables_lock(netns: str) -> None:
    """Another iptables user holding /run/xtables.lock delays us instead of failing us."""
    import time

    # (iptables 1.8.9 waits by default too; we pass -w 5 so a stuck holder bounds our wait
    # to 5 s, as upstream does, and the sync fails and is retried instead of hanging)
    sh(netns, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    holder = subprocess.Popen(["flock", "-x", "/run/xtables.lock", "sleep", "1.5"])
    try:
        time.sleep(0.2)
        apply(netns, "iptables", EXAMPLE)
        assert holder.poll() is not None, "applied while another process held the lock"
    finally:
        holder.wait()
    assert "KUBE-SVC-" in sh(netns, "iptables-legacy-save", "-t", "nat")


def test_nftables_takes_over_a_table_with_other_base_chain_priorities(netns: str) -> None:
    """Upstream kube-proxy (or an older layout) left table ip kube-proxy with base chains at
    other priorities; nft cannot change a priority in place, so we replace those chains."""
    sh(
        netns,
        "nft",
        "-f",
        "-",
        stdin=(
            "table ip kube-proxy {\n"
            " chain filter-input {\n  type filter hook input priority -110\n }\n"
            " chain filter-output-post-dnat {\n  type filter hook output priority -90\n }\n"
            " chain services {\n }\n"
            "}\n"
        ),
    )
    apply(netns, "nftables", EXAMPLE)
    listing = sh(netns, "nft", "list", "table", "ip", "kube-proxy")
    assert (
        "chain filter-input {\n\t\ttype filter hook input priority filter; policy accept;"
        in listing
    )
    assert "filter-output-post-dnat" not in listing
    assert "10.244.2.11" in listing


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_apply_programs_both_families_of_a_dual_stack_state(
    netns: str, mode: str, tmp_path: Path
) -> None:
    state = write_state(
        tmp_path,
        [
            m.node("node-a", "192.168.50.11", "fd00:192:168:50::11"),
            m.service("web", "10.96.0.20", [m.Port(80)], secondary_cluster_ip="fd00:10:96::20"),
            m.service("v6", "fd00:10:96::30", [m.Port(80)]),
            m.endpoint_slice("web", [m.EP("10.244.1.5", "node-a")], [("", 80, "TCP")]),
            m.endpoint_slice(
                "web",
                [m.EP("fd00:10:244:1::5", "node-a")],
                [("", 80, "TCP")],
                name="web-v6",
                address_type="IPv6",
            ),
        ],
    )
    proc = apply(netns, mode, state, "--cluster-cidr", "10.244.0.0/16,fd00:10:244::/48")
    assert "IPv4: 1 service ports" in proc.stderr and "IPv6: 2 service ports" in proc.stderr
    v6 = sh(netns, "nft", "list", "ruleset") if mode == "nftables" else sh(netns, "ip6tables-save")
    assert "fd00:10:96::20" in v6 and "fd00:10:96::30" in v6 and "fd00:10:244:1::5" in v6
    assert "fd00" not in snapshot(netns, "iptables")

    # one family only, as asked: the other half of each Service is said to be left out
    proc = apply(netns, mode, state, "--ip-family", "ipv4")
    assert "not programmed: default/v6: skipped: IPv6 only" in proc.stderr
    assert "default/web: partly programmed" in proc.stderr

    proc = kpp(netns, "cleanup", "--mode", mode)
    assert proc.returncode == 0, proc.stderr
    left = sh(netns, "nft", "list", "ruleset") + sh(netns, "ip6tables-save")
    assert "kube-proxy" not in left and "KUBE-" not in left
