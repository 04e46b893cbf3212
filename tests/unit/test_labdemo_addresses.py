"""The lab demo's address handling in each IP family (pure: no lab)."""

from __future__ import annotations

from proxy.demo.labdemo import Ran, _in_pool, routed, url


def test_the_stand_ins_answers_parse_in_both_families() -> None:
    ran = Ran(0, "web-1 10.244.1.7:41234\nweb-2 fd00:10:244:2::5:52001\nnot an answer\n")
    assert ran.answers() == [("web-1", "10.244.1.7"), ("web-2", "fd00:10:244:2::5")]


def test_urls_bracket_ipv6_hosts() -> None:
    assert url("192.168.50.11", 30080) == "http://192.168.50.11:30080/"
    assert url("fd00:192:168:50::11", 30080) == "http://[fd00:192:168:50::11]:30080/"
    assert url("fd00:192:168:50::200") == "http://[fd00:192:168:50::200]/"


def test_load_balancer_addresses_come_from_the_pool_of_their_family() -> None:
    assert _in_pool("192.168.50.200") and _in_pool("fd00:192:168:50::250")
    assert not _in_pool("192.168.50.199") and not _in_pool("fd00:192:168:50::251")


def test_routed_reads_ipv6_routes() -> None:
    routes = (
        "fd00:10:244:1::/64 via fd00:192:168:50::11 dev eth0 metric 1024 pref medium\n"
        "fd00:192:168:50::/64 dev eth0 proto kernel metric 256 pref medium\n"
        "multicast ff00::/8 dev eth0 table local\n"
    )
    assert routed(routes, "fd00:10:244:1::7")
    assert not routed(routes, "fd00:192:168:50::200")  # on the LAN: no gateway
    assert routed("203.0.113.0/24 via 192.168.50.11 dev eth0\n", "203.0.113.9")
