"""IPv6 packets through the nftables endpoint map.

A node namespace connects to an IPv6 ClusterIP; its endpoints are addresses of a pod
namespace on a veth link. The map's data is ``ip6 daddr . tcp dport`` (address and port
from two registers), written first by nft (full sync) and then over netlink (an
endpoint added): every endpoint must be reached, on the right port.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.kernel.executor import Executor
from proxy.model import IPFamily
from proxy.nftables import diff as nft_diff
from proxy.nftables import model as nft_model
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
from proxy.plan import plan
from proxy.source.file import build_state
from tests.conftest import netns_pair

pytestmark = pytest.mark.netns

CLUSTER_IP = "fd00:96::a"
PODS = ("fd00:1::2", "fd00:1::3", "fd00:1::4")

SERVER = """
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8080))
s.listen(128)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(c.getsockname()[0].encode())
    c.close()
"""

CLIENT = """
import socket, sys
seen = set()
for _ in range(int(sys.argv[1])):
    with socket.create_connection((sys.argv[2], 80), timeout=3) as c:
        seen.add(c.recv(100).decode())
print(" ".join(sorted(seen)))
"""


def _ruleset(pods: tuple[str, ...]) -> nft_model.NftRuleset:
    objs: list[dict[str, Any]] = [
        m.service("web6", CLUSTER_IP, [m.Port(80, "http", target_port=8080)]),
        m.endpoint_slice(
            "web6", [m.EP(ip, "node-b") for ip in pods], [("http", 8080, "TCP")],
            address_type="IPv6",
        ),
    ]  # fmt: skip
    state = build_state(objs, "node-a")
    return nft_render.render(
        plan(state.snapshot, ProxyConfig("node-a", mode=ProxyMode.NFTABLES), IPFamily.V6)
    )


@pytest.fixture
def link() -> Iterator[tuple[str, str]]:
    with netns_pair("node6", "pod6") as (node, pod):
        cmds = [
            ["ip", "-n", node, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
             "netns", pod],
            ["ip", "-n", node, "addr", "add", "fd00:1::1/64", "dev", "v0", "nodad"],
            *(["ip", "-n", pod, "addr", "add", f"{ip}/64", "dev", "v1", "nodad"] for ip in PODS),
            *(["ip", "-n", ns, "link", "set", dev, "up"]
              for ns, dev in ((node, "lo"), (node, "v0"), (pod, "lo"), (pod, "v1"))),
            ["ip", "-n", node, "-6", "route", "add", "fd00:96::/112", "dev", "v0"],
        ]  # fmt: skip
        for cmd in cmds:
            subprocess.run(cmd, check=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", pod, sys.executable, "-c", SERVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            yield node, pod
        finally:
            server.kill()
            server.wait()


def reached(node: str, connections: int = 60) -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", node, sys.executable, "-c", CLIENT, str(connections), CLUSTER_IP],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_ipv6_cluster_ip_spreads_over_the_endpoint_map(link: tuple[str, str]) -> None:
    node, _ = link
    two, three = _ruleset(PODS[:2]), _ruleset(PODS)
    chains = [c for c in two.chains.values() if c.name.startswith("service-") and "/" in c.name]
    assert len(chains) == 1 and "map @endpoints-tcp-" in chains[0].rules[0].text()
    kernel = NftKernel(Executor(node), IPFamily.V6)
    kernel.full_sync(two)  # through nft
    assert reached(node) == set(PODS[:2])
    tx = nft_diff.incremental(two, three)
    assert any(op.kind == "rule" for op in tx.ops)  # mod 2 became mod 3
    kernel.apply_transaction(tx)  # over netlink
    assert reached(node) == set(PODS)
