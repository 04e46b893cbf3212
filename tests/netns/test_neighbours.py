"""proxy.host.neighbours reads MACs, neighbour entries and gateways inside namespaces.

Two throwaway namespaces joined by a veth pair (never the root namespace): one sends a
datagram to the other, so its ARP table holds the peer's MAC; a route via the peer names
it as gateway.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from proxy.host import neighbours
from tests.conftest import netns_pair

pytestmark = pytest.mark.netns


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def test_macs_neighbours_and_gateways_are_read_inside_the_namespace() -> None:
    with netns_pair("nb-a", "nb-b") as (a, b):
        subprocess.run(
            ["ip", "link", "add", "kpp-nb0", "netns", a, "type", "veth",
             "peer", "name", "kpp-nb1", "netns", b],
            check=True,
        )  # fmt: skip
        ip(a, "addr", "add", "192.0.2.1/24", "dev", "kpp-nb0")
        ip(b, "addr", "add", "192.0.2.2/24", "dev", "kpp-nb1")
        for ns, dev in ((a, "kpp-nb0"), (b, "kpp-nb1")):
            ip(ns, "link", "set", dev, "up")
        ip(a, "route", "add", "198.51.100.0/24", "via", "192.0.2.2")

        mac_b = neighbours.link_mac(b, "kpp-nb1")
        assert mac_b is not None and mac_b == neighbours.link_macs(b)["kpp-nb1"]
        assert neighbours.link_mac(a, "kpp-nb1") is None  # b's link is not seen from a
        assert neighbours.link_macs(a)["kpp-nb0"] != mac_b

        assert neighbours.neighbour_mac(a, "192.0.2.2") is None  # nothing sent yet
        send = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', %r)"
        subprocess.run(
            ["ip", "netns", "exec", a, sys.executable, "-c", send % (("192.0.2.2", 9),)],
            check=True,
        )  # one datagram: the kernel resolves the peer's MAC to send it
        deadline = time.monotonic() + 5
        while neighbours.neighbour_mac(a, "192.0.2.2") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert neighbours.neighbour_mac(a, "192.0.2.2") == mac_b

        assert neighbours.route_gateway(a, "198.51.100.7") == "192.0.2.2"
        assert neighbours.route_gateway(a, "192.0.2.2") is None  # on-link
        assert neighbours.route_gateway(a, "203.0.113.1") is None  # no route at all


def test_a_namespace_that_is_gone_knows_nothing() -> None:
    assert neighbours.link_macs("kpp-no-such-netns") == {}
    assert neighbours.neighbour_mac("kpp-no-such-netns", "192.0.2.2") is None
    assert neighbours.route_gateway("kpp-no-such-netns", "192.0.2.2") is None
