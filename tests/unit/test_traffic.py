"""``--metrics-service-counters`` without root: what each mode renders, how readings
become samples per Service port and verdict, and the /metrics collector."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from proxy import manifests as m
from proxy.agent.options.parse import parse_run_args
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import render as ipt_render
from proxy.iptables.save import counted_samples
from proxy.metrics import ProxyMetrics, ServiceTrafficCollector
from proxy.model import IPFamily
from proxy.nftables import render as nft_render
from proxy.nftables.diff import full_sync_text
from proxy.plan import Plan, plan
from proxy.source.file import build_state
from proxy.traffic import (
    Monotonic,
    TrafficSample,
    attribute,
    merged,
    nft_set_counts,
    owners,
    parse_counted_comment,
)

ip = ipaddress.ip_address


def make_plan(mode: ProxyMode, counters: bool = True, family: IPFamily = IPFamily.V4) -> Plan:
    v6 = family is IPFamily.V6
    objs: list[dict[str, Any]] = [
        m.node("node-a", "fd00::11" if v6 else "192.168.50.11"),
        m.service(
            "web",
            "fd00::10" if v6 else "10.96.0.10",
            [m.Port(80, "http", node_port=30080)],
            type="LoadBalancer",
            lb_ips=["fd00::99" if v6 else "198.51.100.10"],
            source_ranges=["fd00::/120" if v6 else "10.0.0.0/8"],
            ip_families=[family.value],
        ),
        m.endpoint_slice(
            "web",
            [m.EP("fd00::6" if v6 else "10.244.1.6", node="node-a")],
            [("http", 80, "TCP")],
            address_type=family.value,
        ),
        m.service(
            "empty", "fd00::11" if v6 else "10.96.0.11", [m.Port(8080)], ip_families=[family.value]
        ),
    ]
    state = build_state(objs, "node-a")
    assert state.problems == ()
    return plan(state.snapshot, ProxyConfig("node-a", mode=mode, service_counters=counters), family)


def test_nftables_counts_in_dynamic_sets_and_routes_drops_through_the_drop_chain() -> None:
    text = full_sync_text(nft_render.render(make_plan(ProxyMode.NFTABLES)))
    for name in ("traffic-dnat", "traffic-reject", "traffic-drop"):
        assert (
            f"add set ip kube-proxy {name} {{ type ipv4_addr . inet_proto . inet_service ; flags dynamic,timeout ; size 65536 ; timeout 3600s"
            in text
        )
    counting = (
        "ct status dnat meta l4proto { tcp, udp, sctp } update @traffic-dnat "
        "{ ct original ip daddr . meta l4proto . ct original proto-dst counter }"
    )
    for chain in ("filter-forward", "filter-input", "filter-output"):
        lines = [
            ln for ln in text.splitlines() if ln.startswith(f"add rule ip kube-proxy {chain} ")
        ]
        assert lines[0].endswith(counting)  # first: before anything accepts or rejects
    assert "update @traffic-reject { ip daddr . meta l4proto . th dport counter }" in text
    assert "add rule ip kube-proxy drop-chain drop" in text
    assert "10.96.0.11 . tcp . 8080 comment" in text and "goto reject-chain" in text
    fw = [ln for ln in text.splitlines() if " firewall-" in ln and "saddr" in ln]
    assert fw and all(ln.endswith("goto drop-chain") for ln in fw)
    off = full_sync_text(nft_render.render(make_plan(ProxyMode.NFTABLES, counters=False)))
    assert "traffic-" not in off and "drop-chain" not in off


def test_nftables_ipv6_counts_ip6_destinations() -> None:
    text = full_sync_text(nft_render.render(make_plan(ProxyMode.NFTABLES, family=IPFamily.V6)))
    assert "type ipv6_addr . inet_proto . inet_service" in text
    assert "ct original ip6 daddr . meta l4proto . ct original proto-dst counter" in text


def test_iptables_counts_in_a_chain_per_service_port() -> None:
    p = make_plan(ProxyMode.IPTABLES)
    rs = ipt_render.render(p)
    flt = rs.filter
    web = p.service_port("default", "web", "http")
    cnt = next(c for c in flt if c.startswith("KUBE-CNT-") and any("web:http" in r for r in flt[c]))
    assert flt[cnt] == (
        '-m conntrack --ctstate DNAT -m comment --comment "default/web:http dnat" -j RETURN',
        '-m comment --comment "default/web:http drop" -j DROP',
    )
    empty = next(c for c in flt if c.startswith("KUBE-CNT-") and c != cnt)
    assert flt[empty] == (
        '-m conntrack --ctstate DNAT -m comment --comment "default/empty:#8080 dnat" -j RETURN',
        '-m comment --comment "default/empty:#8080 reject" -j REJECT',
    )
    assert flt["KUBE-SERVICE-TRAFFIC"] == (
        f"-p tcp -m conntrack --ctorigdst {web.cluster_ip} --ctorigdstport 80 -g {cnt}",
        f"-p tcp -m conntrack --ctorigdst 10.96.0.11 --ctorigdstport 8080 -g {empty}",
        f"-p tcp -m conntrack --ctorigdst 198.51.100.10 --ctorigdstport 80 -g {cnt}",
        "-j KUBE-NODEPORT-TRAFFIC",
    )
    assert flt["KUBE-NODEPORT-TRAFFIC"] == (
        f"-p tcp -m conntrack --ctstate DNAT --ctorigdstport 30080 -g {cnt}",
    )
    # the reject of the Service without endpoints goes through its counting chain
    rejects = [r for r in flt["KUBE-SERVICES"] if "10.96.0.11" in r]
    assert len(rejects) == 1 and rejects[0].endswith(f"-j {empty}")
    jumps = [j for j in rs.jumps if j.spec.endswith("-j KUBE-SERVICE-TRAFFIC")]
    assert [j.chain for j in jumps] == ["INPUT", "FORWARD", "OUTPUT"]
    assert rs.jumps[:3] == tuple(jumps)  # first in each chain
    off = ipt_render.render(make_plan(ProxyMode.IPTABLES, counters=False))
    assert not [c for c in off.filter if "TRAFFIC" in c or c.startswith("KUBE-CNT-")]


def test_attribute_gives_each_destination_to_its_service_port() -> None:
    p = make_plan(ProxyMode.NFTABLES)
    counts = {
        "dnat": {
            (ip("10.96.0.10"), "tcp", 80): (10, 1000),
            (ip("198.51.100.10"), "tcp", 80): (5, 500),
            (ip("192.168.50.11"), "tcp", 30080): (2, 200),  # the NodePort
            (ip("10.96.0.99"), "tcp", 80): (7, 700),  # a Service gone: left out
        },
        "reject": {(ip("10.96.0.11"), "tcp", 8080): (3, 180)},
    }
    assert attribute(owners(p), counts) == [
        TrafficSample("default", "empty", "8080", "reject", 3, 180),
        TrafficSample("default", "web", "http", "dnat", 17, 1700),
    ]


def test_merged_sums_families() -> None:
    a = [TrafficSample("ns", "web", "http", "dnat", 1, 10)]
    b = [
        TrafficSample("ns", "web", "http", "dnat", 2, 20),
        TrafficSample("ns", "x", "1", "drop", 1, 1),
    ]
    assert merged([a, b]) == [
        TrafficSample("ns", "web", "http", "dnat", 3, 30),
        TrafficSample("ns", "x", "1", "drop", 1, 1),
    ]


def test_nft_json_and_iptables_save_readings() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"set": {"name": "traffic-dnat", "elem": [
                {"elem": {"val": {"concat": ["10.96.0.10", "tcp", 80]}, "expires": 3599,
                          "counter": {"packets": 12, "bytes": 1400}}},
                {"elem": {"val": {"concat": ["fd00::10", "udp", 53]},
                          "counter": {"packets": 2, "bytes": 120}}},
                {"elem": {"val": "garbage"}},
            ]}},
        ]
    }  # fmt: skip
    assert nft_set_counts(json.loads(json.dumps(listing))) == {
        (ip("10.96.0.10"), "tcp", 80): (12, 1400),
        (ip("fd00::10"), "udp", 53): (2, 120),
    }
    save = (
        "*filter\n:KUBE-CNT-ABC - [0:0]\n"
        '[7:700] -A KUBE-CNT-ABC -m conntrack --ctstate DNAT -m comment --comment "ns/web:http dnat" -j RETURN\n'
        '[1:60] -A KUBE-CNT-ABC -m comment --comment "ns/web:http drop" -j DROP\n'
        '[3:180] -A KUBE-CNT-DEF -m comment --comment "ns/db:#5432 reject" -j REJECT\n'
        '[9:9] -A KUBE-SERVICES -m comment --comment "ns/x:y dnat" -j RETURN\n'
        "COMMIT\n"
    )
    assert counted_samples(save) == [
        TrafficSample("ns", "db", "5432", "reject", 3, 180),
        TrafficSample("ns", "web", "http", "dnat", 7, 700),
        TrafficSample("ns", "web", "http", "drop", 1, 60),
    ]
    assert parse_counted_comment("ns/web:http dnat") == ("ns", "web", "http", "dnat")
    assert parse_counted_comment("ns/web:http accept") is None
    assert parse_counted_comment("web dnat") is None


def test_collector_serves_the_latest_reading_and_survives_a_failed_one() -> None:
    calls: list[int] = []

    def read() -> list[TrafficSample]:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("nft: no such file")
        return [TrafficSample("ns", "web", "http", "dnat", len(calls), 10)]

    c = ServiceTrafficCollector(read, interval=3600)
    assert c.samples() == []
    c.start()  # a first reading at once; the thread waits an hour for the next
    assert c.samples()[0].packets == 1
    assert c.samples()[0].packets == 1 and len(calls) == 1  # a scrape reads nothing
    c.refresh()
    assert c.samples()[0].packets == 1 and len(calls) == 2  # failed: the last reading
    c.refresh()
    assert c.samples()[0].packets == 3
    c.stop()
    metrics = ProxyMetrics(mode=ProxyMode.NFTABLES, process_metrics=False)
    metrics.count_service_traffic(lambda: [TrafficSample("ns", "web", "http", "drop", 4, 40)])
    metrics.count_service_traffic(lambda: [])  # once: a second registration is ignored
    text = metrics.render().decode()
    assert (
        'kubeproxy_py_service_packets_total{namespace="ns",port="http",service="web",'
        'verdict="drop"} 4.0'
    ) in text
    assert (
        'kubeproxy_py_service_bytes_total{namespace="ns",port="http",service="web",'
        'verdict="drop"} 40.0'
    ) in text
    assert metrics.traffic is not None
    metrics.traffic.stop()


@pytest.mark.parametrize(("argv", "want"), [([], False), (["--metrics-service-counters"], True),
                                            (["--metrics-service-counters=false"], False)])  # fmt: skip
def test_the_flag(argv: list[str], want: bool) -> None:
    opts = parse_run_args(["--hostname-override", "node-a", *argv], env={})
    assert opts.service_counters is want and opts.proxy_config().service_counters is want


def test_iptables_dispatches_by_address_prefix_in_a_tree() -> None:
    """1,000 Services: a packet meets about 2·log2(1000/16) + 16 rules, not 1,000, and
    every destination is reached (followed here as the kernel would)."""
    objs: list[dict[str, Any]] = [m.node("node-a", "192.168.50.11")]
    for i in range(1000):
        cip = f"10.96.{(i * 37) % 256}.{(i * 11) % 250 + 1}"
        objs.append(m.service(f"s{i}", cip, [m.Port(80)]))
    state = build_state(objs, "node-a")
    assert state.problems == ()
    p = plan(state.snapshot, ProxyConfig("node-a", mode=ProxyMode.IPTABLES, service_counters=True))
    flt = ipt_render.render(p).filter

    def follow(ip: str) -> tuple[str, int]:
        chain, compared = "KUBE-SERVICE-TRAFFIC", 0
        while True:
            for rule in flt[chain]:
                compared += 1
                words = rule.split()
                if "--ctorigdst" not in words:
                    raise AssertionError(f"{ip} fell through {chain}")
                where = words[words.index("--ctorigdst") + 1]
                if ipaddress.ip_address(ip) in ipaddress.ip_network(where):
                    target = words[-1]
                    if target.startswith("KUBE-CNT-"):
                        return target, compared
                    chain = target
                    break
            else:
                raise AssertionError(f"{ip}: no rule in {chain}")

    worst = 0
    for sp in p.service_ports:
        target, compared = follow(str(sp.cluster_ip))
        assert flt[target][0].startswith(
            '-m conntrack --ctstate DNAT -m comment --comment "default/s'
        )
        worst = max(worst, compared)
    assert worst <= 2 * 7 + 16 + 1, worst
    trees = [c for c in flt if c.startswith("KUBE-TRF-")]
    assert trees and all(flt[c][-1] == "-j KUBE-NODEPORT-TRAFFIC" for c in trees)


def test_monotonic_totals_survive_restarts_and_expiry_and_forget_what_is_gone() -> None:
    m: Monotonic[str] = Monotonic()
    keep_all = lambda key: True  # noqa: E731
    assert m.update({"a": (10, 100), "b": (1, 10)}, keep_all) == {"a": (10, 100), "b": (1, 10)}
    # a restarted (its rule rewritten): what it had counted is kept
    assert m.update({"a": (2, 20), "b": (3, 30)}, keep_all) == {"a": (12, 120), "b": (3, 30)}
    # b expired: its total stays; it comes back from 0
    assert m.update({"a": (2, 20)}, keep_all) == {"a": (12, 120), "b": (3, 30)}
    assert m.update({"a": (5, 50), "b": (1, 5)}, keep_all) == {"a": (15, 150), "b": (4, 35)}
    # b's Service is gone: forgotten (and so is anything read for it)
    assert m.update({"a": (5, 50), "b": (9, 9)}, lambda key: key == "a") == {"a": (15, 150)}
    assert m.update({"b": (1, 1)}, keep_all) == {"a": (15, 150), "b": (1, 1)}


def chain_depth(flt: Any, chain: str = "KUBE-SERVICE-TRAFFIC") -> int:
    """How many KUBE-TRF- levels lie below ``chain``."""
    children = [r.split()[-1] for r in flt[chain] if r.split()[-1].startswith("KUBE-TRF-")]
    return max((1 + chain_depth(flt, c) for c in children), default=0)


def counted_plan(*cips: str) -> Plan:
    objs: list[dict[str, Any]] = [m.node("node-a", "192.168.50.11")]
    objs += [m.service(f"s{i}", cip, [m.Port(80)]) for i, cip in enumerate(cips)]
    state = build_state(objs, "node-a")
    assert state.problems == ()
    return plan(
        state.snapshot, ProxyConfig("node-a", mode=ProxyMode.IPTABLES, service_counters=True)
    )


def test_the_traffic_tree_stays_shallow() -> None:
    """nf_tables refuses chains reachable more than 16 jumps deep ("Too many links"): a
    prefix whose addresses all lie in one half costs no level, and the depth is capped
    whatever the addresses (here, addresses one bit apart at every level)."""
    near = [f"10.96.15.{i}" for i in range(1, 40)] + ["203.0.113.60"]
    assert chain_depth(ipt_render.render(counted_plan(*near)).filter) <= 3  # real splits only
    apart = [str(ipaddress.ip_address(int(ipaddress.ip_address("10.96.0.0")) + (1 << b)))
             for b in range(16)] + [f"10.96.0.{i}" for i in range(1, 17)]  # fmt: skip
    flt = ipt_render.render(counted_plan(*apart)).filter
    assert chain_depth(flt) <= ipt_render.TRAFFIC_DEPTH
    reached = {r.split()[-1] for c in flt for r in flt[c] if "--ctorigdstport" in r}
    assert len(reached) == len(set(apart))  # every destination still has its rule


def test_stale_counters_are_deleted_as_data_in_one_transaction() -> None:
    """Destinations read back from the kernel: only well-formed ones of the table's family
    are written, each added before it is deleted (an element that expired meanwhile must
    not fail the transaction)."""
    from proxy.nftables.diff import forget_traffic_text

    v4, v6 = ipaddress.ip_address("10.96.0.13"), ipaddress.ip_address("fd00::13")
    stale = {
        "traffic-reject": [(v4, "tcp", 81), (v6, "tcp", 81), (v4, "tcp; flush ruleset", 1)],
        "traffic-dnat": [(v4, "udp", 53), (v4, "icmp", 0), (v4, "sctp", 70000)],
        "not-ours": [(v4, "tcp", 80)],
    }
    text = forget_traffic_text(IPFamily.V4, stale)
    assert text.splitlines() == [
        "add element ip kube-proxy traffic-dnat { 10.96.0.13 . udp . 53 }",
        "delete element ip kube-proxy traffic-dnat { 10.96.0.13 . udp . 53 }",
        "add element ip kube-proxy traffic-reject { 10.96.0.13 . tcp . 81 }",
        "delete element ip kube-proxy traffic-reject { 10.96.0.13 . tcp . 81 }",
    ]
    six = forget_traffic_text(IPFamily.V6, stale).splitlines()
    assert six[1] == "delete element ip6 kube-proxy traffic-reject { fd00::13 . tcp . 81 }"
    assert len(six) == 2
    assert forget_traffic_text(IPFamily.V4, {"traffic-drop": []}) == ""
