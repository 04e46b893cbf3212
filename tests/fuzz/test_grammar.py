"""The rule-text grammar oracle of the fuzz targets, on known-good and known-bad text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.model import IPFamily
from proxy.nftables import diff as nft_diff
from proxy.nftables import render as nft_render
from proxy.plan import plan
from proxy.source.file import build_state, read_documents
from tests.fuzz import grammar
from tests.fuzz.seeds import state_objects

ROOT = Path(__file__).resolve().parents[2]
MODES = ("iptables", "nftables")


def _texts(objects: list[Any], mode: str) -> dict[str, str]:
    state = build_state(objects, "node-a")
    out = {}
    for fam in IPFamily:
        p = plan(state.snapshot, ProxyConfig("node-a", ProxyMode(mode)), fam, state.problems)
        if mode == "iptables":
            out[f"{fam}"] = ipt_restore.restore_text(ipt_render.render(p))
        else:
            out[f"{fam}"] = nft_diff.full_sync_text(nft_render.render(p))
    return out


EXAMPLES: dict[str, list[Any]] = {
    "my-nginx": list(read_documents((ROOT / "examples" / "my-nginx.yaml").read_text(), "ex")),
    **state_objects(),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_rendered_examples_are_inside_the_grammar(name: str, mode: str) -> None:
    for fam, text in _texts(list(EXAMPLES[name]), mode).items():
        assert text.strip()
        assert grammar.render_violations(text, mode) == [], f"{name} {fam}"


@pytest.mark.parametrize("mode", MODES)
def test_incremental_texts_are_inside_the_grammar(mode: str) -> None:
    objs = list(EXAMPLES["affinity-local-policies"])
    changed = [*objs, m.service("late", "10.96.1.1", [m.Port(53, "dns", "UDP")])]
    cfg = ProxyConfig("node-a", ProxyMode(mode))
    before = plan(build_state(objs, "node-a").snapshot, cfg)
    after = plan(build_state(changed, "node-a").snapshot, cfg)
    if mode == "iptables":
        text = ipt_restore.partial_restore_text(ipt_render.render(before), ipt_render.render(after))
        check = grammar.iptables_violations
    else:
        text = nft_diff.incremental_text(nft_render.render(before), nft_render.render(after))
        check = grammar.nft_violations
    assert text
    assert check(text) == []


def test_render_output_with_its_header_is_inside_the_grammar() -> None:
    header = "# kube-proxy-py 0.1.0 iptables rules for node node-a (IPv4): 1 service ports\n"
    body = _texts(list(EXAMPLES["my-nginx"]), "iptables")["IPv4"]
    assert grammar.render_violations(header + body, "iptables") == []


IPT_GOOD = (
    "*nat\n"
    ":KUBE-SERVICES - [0:0]\n"
    '-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/x: it\'s" '
    "-m tcp --dport 80 -j KUBE-SVC-ABCDEFGHIJKLMNOP\n"
    "-I PREROUTING 1 -j KUBE-SERVICES\n"
    "-X KUBE-SEP-ABCDEFGHIJKLMNOP\n"
    "COMMIT\n"
)


def _rules(violations: list[grammar.Violation]) -> set[str]:
    return {v.rule for v in violations}


def test_iptables_good_text() -> None:
    assert grammar.iptables_violations(IPT_GOOD) == []


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (IPT_GOOD.replace("default/x", "default/x\n-A INPUT -j DROP #"), "ipt-comment-syntax"),
        (IPT_GOOD.replace("default/x", 'default/"x'), "ipt-comment-syntax"),
        (IPT_GOOD.replace("default/x", "default\\x"), "ipt-comment-syntax"),
        (IPT_GOOD.replace("default/x", "x" * 256), "ipt-comment-too-long"),
        (IPT_GOOD.replace("default/x", "d\x1b[31m"), "control-char"),
        (IPT_GOOD.replace("default/x", "d\rx"), "control-char"),
        (IPT_GOOD.replace("default/x", "d\x7f"), "control-char"),
        (IPT_GOOD.replace(":KUBE-SERVICES", ":KUBE-" + "S" * 30), "ipt-chain-too-long"),
        (IPT_GOOD.replace("COMMIT\n", ""), "ipt-structure"),
        (IPT_GOOD.replace("-X KUBE", "-Z KUBE"), "ipt-line"),
        (IPT_GOOD.replace("-p tcp", '-p "tcp"'), "ipt-token"),
        (IPT_GOOD + "\n", "empty-line"),
        ("# header default/x\n-A INPUT -j DROP\n" + IPT_GOOD, "ipt-structure"),
        ("# node a\nb (IPv4)\n" + IPT_GOOD, "ipt-line"),
        (IPT_GOOD.replace('--comment "default/x: it\'s"', "--comment"), "ipt-comment-syntax"),
    ],
)
def test_iptables_violations(text: str, rule: str) -> None:
    assert rule in _rules(grammar.iptables_violations(text))


NFT_GOOD = (
    'add table ip kube-proxy { comment "rules for kube-proxy" ; }\n'
    "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n"
    "add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80\n"
    'add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "x" ; }\n'
    "flush chain ip kube-proxy nat-output\n"
    "add rule ip kube-proxy nat-output jump services\n"
    'add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports comment "NodePort traffic"\n'
    'add element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 comment "ns1/svc1:p80 cluster IP" : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }\n'
    "delete element ip kube-proxy service-ips { 10.96.0.2 . tcp . 80 }\n"
    "delete chain ip kube-proxy service-OLDOLDOL-ns1/old/tcp/p80\n"
)


def test_nft_good_text() -> None:
    assert grammar.nft_violations(NFT_GOOD) == []


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (NFT_GOOD.replace('comment "x"', 'comment "' + "x" * 129 + '"'), "nft-comment-too-long"),
        (NFT_GOOD.replace("ns1/svc1:p80 cluster IP", 'ns1/"svc1'), "nft-quote"),
        (NFT_GOOD.replace("ns1/svc1:p80 cluster IP", "ns1\\svc1"), "nft-comment-char"),
        (NFT_GOOD.replace("ns1/svc1:p80 cluster IP", "ns1\x00"), "control-char"),
        (
            NFT_GOOD.replace(
                "nat-output jump services", "nat-output jump services ; flush ruleset"
            ),
            "nft-semicolon",
        ),
        (NFT_GOOD.replace("jump services", "jump services # x"), "nft-hash"),
        (
            NFT_GOOD.replace("service-ULMVA6XW-ns1/svc1/tcp/p80\n", "service-" + "a" * 250 + "\n"),
            "nft-name-too-long",
        ),
        (NFT_GOOD.replace("service-ULMVA6XW-ns1/svc1/tcp/p80\n", "service-ä\n"), "nft-name"),
        (
            NFT_GOOD.replace(
                "add rule ip kube-proxy nat-output", "insert rule ip kube-proxy nat-output"
            ),
            "nft-line",
        ),
        (NFT_GOOD.replace("{ 10.96.0.2 . tcp . 80 }", "{ 10.96.0.2 . tcp . 80 "), "nft-line"),
        (NFT_GOOD.replace("jump services", "jump services }"), "nft-braces"),
        (NFT_GOOD.replace("jump services", "jump services ü"), "nft-char"),
        ("# node a\nb (IPv4)\n" + NFT_GOOD, "nft-line"),
    ],
)
def test_nft_violations(text: str, rule: str) -> None:
    assert rule in _rules(grammar.nft_violations(text))


def test_check_functions_raise_with_the_first_violation() -> None:
    with pytest.raises(grammar.GrammarError, match="ipt-comment-too-long"):
        grammar.check_iptables(IPT_GOOD.replace("default/x", "x" * 300))
    with pytest.raises(grammar.GrammarError, match="nft-line"):
        grammar.check_nft("bogus\n")
    with pytest.raises(grammar.GrammarError, match="control-char"):
        grammar.check_render("# a\tb\n" + IPT_GOOD, "iptables")
