"""``explain --verify``'s reading of the kernel (pure): trace lines, conntrack entries, the
kernel's verdict, and where it differs from an explanation."""

from __future__ import annotations

import ipaddress

from proxy import manifests as m
from proxy.config import ProxyConfig
from proxy.explain.engine import Explanation, Verdict, explain
from proxy.explain.kernelcheck import MARKER_RULE, is_marker, trace_listener, trace_ruleset
from proxy.explain.packet import Entry, make_packet
from proxy.explain.trace import (
    KernelOutcome,
    TracedRule,
    chain_rules,
    classify,
    compare,
    packet_rules,
    packet_source_port,
    parse_conntrack,
    parse_nft_trace,
    saved_comments,
    with_comments,
)
from proxy.model import IPFamily
from proxy.plan import plan
from proxy.source.file import build_state

# what `nft monitor trace` printed for a pod's SYN to a ClusterIP (nftables mode); past
# routing the kernel traced the same packet under another id
NFT_LINES = """\
trace id 1f2e3d4c inet kpp-explain-trace prerouting packet: iif "veth-a3" ip saddr 10.244.1.5 ip daddr 10.96.0.10 ip protocol tcp tcp sport 43928 tcp dport 80 tcp flags == syn
trace id 1f2e3d4c inet kpp-explain-trace prerouting rule ip saddr 10.244.1.5 ip daddr 10.96.0.10 tcp dport 80 meta nftrace set 1 (verdict continue)
trace id 1f2e3d4c ip kube-proxy filter-prerouting-pre-dnat rule ct state new jump firewall-check (verdict jump firewall-check)
trace id 1f2e3d4c ip kube-proxy filter-prerouting-pre-dnat policy accept
trace id 1f2e3d4c ip kube-proxy services rule ip daddr . meta l4proto . th dport vmap @service-ips (verdict goto service-ULMVA6XW-default/web/tcp/http)
trace id 1f2e3d4c ip kube-proxy service-ULMVA6XW-default/web/tcp/http rule meta l4proto tcp dnat ip to numgen random mod 2 map @endpoints-tcp-a5 (verdict accept)
trace id 1f2e3d4c ip kube-proxy cluster-ips-check rule ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs" (verdict drop)
trace id 99999999 ip kube-proxy filter-forward rule ct state new jump service-endpoints-check (verdict jump service-endpoints-check)
""".splitlines()


def test_nft_trace_lines_become_the_packet_ruless_rules() -> None:
    rules = packet_rules(parse_nft_trace(NFT_LINES))
    assert [r.chain for r in rules] == [
        "filter-prerouting-pre-dnat",
        "filter-prerouting-pre-dnat",
        "services",
        "service-ULMVA6XW-default/web/tcp/http",
        "cluster-ips-check",
        "filter-forward",
    ]  # our tracing table left out; both trace ids
    assert rules[1].rule == "policy" and rules[1].verdict == "accept"
    assert rules[2].verdict == "goto service-ULMVA6XW-default/web/tcp/http"
    assert rules[4].comment == "Reject traffic to invalid ports of ClusterIPs"
    assert rules[4].rejects and not rules[4].drops
    assert packet_source_port(NFT_LINES) == 43928


def test_conntrack_lines_give_dnat_and_masquerade() -> None:
    plain = parse_conntrack(
        "tcp 6 118 SYN_SENT src=10.244.1.5 dst=10.96.0.10 sport=43928 dport=80 [UNREPLIED] "
        "src=10.244.2.4 dst=10.244.1.5 sport=80 dport=43928 mark=0 use=1"
    )
    assert plain is not None and plain.dnat == "10.244.2.4:80" and not plain.masqueraded
    # masqueraded to the address it already had: only the (fully random) port changed
    same = parse_conntrack(
        "tcp 6 118 SYN_SENT src=192.168.50.2 dst=10.96.0.10 sport=40000 dport=80 [UNREPLIED] "
        "src=10.244.2.4 dst=192.168.50.2 sport=80 dport=51234 mark=0 use=1"
    )
    assert same is not None and same.masqueraded
    v6 = parse_conntrack(
        "udp 17 29 src=fd00:10:244:1::5 dst=fd00:10:96::10 sport=5000 dport=53 [UNREPLIED] "
        "src=fd00:10:244:2::4 dst=fd00:10:244:1::5 sport=53 dport=5000 mark=0 use=1"
    )
    assert v6 is not None and v6.dnat == "[fd00:10:244:2::4]:53"
    routed = parse_conntrack(
        "icmp 1 29 src=10.244.1.5 dst=10.96.0.10 type=8 code=0 id=7 [UNREPLIED] "
        "src=10.96.0.10 dst=10.244.1.5 type=0 code=0 id=7 mark=0 use=1"
    )
    assert routed is not None and routed.dnat is None
    assert parse_conntrack("conntrack v1.4.7 (conntrack-tools): 0 flow entries") is None


def rule(chain: str, text: str, verdict: str, table: str = "kube-proxy") -> TracedRule:
    return TracedRule(table, chain, text, verdict)


def test_classify_reject_drop_dnat_and_routed() -> None:
    ours = ("kube-proxy",)
    reject = rule("reject-chain", 'reject comment "helper"', "drop")
    assert classify((reject,), None, ours).verdict is Verdict.REJECT
    drop = rule("firewall-X", "ip saddr != { 10.0.0.0/8 } drop", "drop")
    assert classify((drop,), None, ours).verdict is Verdict.DROP
    other = rule("input", "drop", "drop", table="someone-else")
    assert classify((other,), None, ours).verdict is Verdict.NOT_A_SERVICE
    entry = parse_conntrack(
        "tcp 6 1 SYN_SENT src=10.244.1.5 dst=10.96.0.10 sport=1 dport=80 "
        "src=10.244.2.4 dst=10.244.1.5 sport=80 dport=1"
    )
    masq = rule("masquerading", "meta mark & 0x4000 == 0x4000 masquerade fully-random", "accept")
    k = classify((masq,), entry, ours)
    assert k.verdict is Verdict.DNAT and k.endpoint == "10.244.2.4:80" and k.masqueraded
    # a rule that only mentions masquerading in its comment does not masquerade
    said = rule(
        "services", 'ip daddr @cluster-ips comment "masquerade clusterIP traffic"', "continue"
    )
    assert classify((said,), entry, ours).masqueraded is False
    ipt = rule("KUBE-SERVICES", "meta l4proto tcp ip daddr 10.96.0.10 tcp dport 80 reject", "drop",
               table="filter")  # fmt: skip
    assert classify((ipt,), None, ("KUBE-",)).verdict is Verdict.REJECT


def explained(dport: int = 80) -> Explanation:
    objs = [
        m.node("node-a", "192.168.50.11"),
        m.service("web", "10.96.0.10", [m.Port(80, "http")]),
        m.endpoint_slice("web", [m.EP("10.244.2.4", node="node-b")], [("http", 80, "TCP")]),
    ]
    state = build_state(objs, "node-a")
    cidr = (ipaddress.ip_network("10.244.0.0/16"),)
    p = plan(state.snapshot, ProxyConfig("node-a", cluster_cidrs=cidr), IPFamily.V4)
    return explain(p, make_packet("10.244.1.5", "10.96.0.10", "tcp", dport, Entry.POD))


def test_compare_names_each_difference() -> None:
    e = explained()
    ok = KernelOutcome(Verdict.DNAT, (), endpoint="10.244.2.4:80", masqueraded=False)
    assert compare(e, ok) == ()
    wrong_target = KernelOutcome(Verdict.DNAT, (), endpoint="10.244.9.9:80", masqueraded=False)
    assert "not one of the endpoints explained (10.244.2.4:80)" in compare(e, wrong_target)[0]
    masq = KernelOutcome(Verdict.DNAT, (), endpoint="10.244.2.4:80", masqueraded=True)
    assert "the kernel masqueraded it" in compare(e, masq)[0]
    dropped = KernelOutcome(Verdict.DROP, (), detail="dropped in x")
    assert compare(e, dropped) == ("the explanation says dnat, the kernel did drop (dropped in x)",)


def test_iptables_rules_get_their_comments_by_place() -> None:
    listing = """table ip nat {
\tchain KUBE-SERVICES {
\t\tmeta l4proto tcp ip daddr 10.96.0.10  tcp dport 80 counter packets 3 bytes 180 jump KUBE-SVC-A
\t\tfib daddr type local counter packets 0 bytes 0 jump KUBE-NODEPORTS
\t}
}"""
    save = (
        '-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" '
        "-m tcp --dport 80 -j KUBE-SVC-A\n"
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n"
    )
    traced = rule(
        "KUBE-SERVICES",
        "meta l4proto tcp ip daddr 10.96.0.10  tcp dport 80 counter packets 0 bytes 0 jump KUBE-SVC-A",
        "jump KUBE-SVC-A",
        table="nat",
    )
    second = rule("KUBE-SERVICES", "fib daddr type local counter packets 9 bytes 9 jump KUBE-NODEPORTS",
                  "jump KUBE-NODEPORTS", table="nat")  # fmt: skip
    out = with_comments(
        (traced, second), {"nat": chain_rules(listing)}, {"nat": saved_comments(save)}
    )
    assert [r.comment for r in out] == ["default/web:http cluster IP", None]


def test_trace_ruleset_and_listener_and_marker() -> None:
    tcp = make_packet("fd00::5", "fd00:10:96::10", "tcp", 80, Entry.POD)
    text = trace_ruleset(tcp)
    assert (
        "ip6 saddr fd00::5 ip6 daddr fd00:10:96::10 meta l4proto tcp th dport 80 ct state new"
        in text
    )
    assert text.count("meta nftrace set 1") == 3 and MARKER_RULE in text
    ping = make_packet("10.0.0.1", "10.96.0.10", "icmp", None, Entry.NODE)
    assert "meta l4proto icmp ct state new meta nftrace" in trace_ruleset(ping)
    header = (
        "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
    )
    assert trace_listener(header + "0000 12  28389      00000100 0 0 0 2 0 1\n")
    assert not trace_listener(header + "0000 12  28389      00000040 0 0 0 2 0 1\n")
    assert not trace_listener(header + "0000 0   28389      00000100 0 0 0 2 0 1\n")
    assert is_marker(
        'trace id 5 inet kpp-explain-trace output packet: oif "lo" ip saddr 127.0.0.1 '
        "ip daddr 127.0.0.1 ip protocol udp udp sport 4000 udp dport 9"
    )
    assert not is_marker(NFT_LINES[0])


def test_the_kernel_outcome_of_an_ipv6_reject() -> None:
    lines = [
        'trace id 1 ip6 kube-proxy reject-chain rule reject comment "helper for '
        '@no-endpoint-services / @no-endpoint-nodeports" (verdict drop)'
    ]
    k = classify(packet_rules(parse_nft_trace(lines)), None, ("kube-proxy",))
    assert k.verdict is Verdict.REJECT and "reject-chain" in k.detail
