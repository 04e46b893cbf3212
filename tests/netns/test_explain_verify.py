"""``kube-proxy-py explain --verify`` from a state file: the rendered rules in a throwaway
namespace, the packet injected (scapy from a peer namespace; a socket from the node
itself), traced, and held against the explanation, in both modes and both families."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from proxy import cli
from proxy import manifests as m
from proxy.explain import engine
from proxy.explain.engine import Verdict
from proxy.host import netns
from proxy.host.spec import v6_twin

pytestmark = pytest.mark.netns

NODE = "node-a"


def state(v6: bool) -> list[dict[str, Any]]:
    def a(ip: str) -> str:
        return a6(ip, v6)

    fam = ["IPv6" if v6 else "IPv4"]
    eps = [m.EP(a("10.244.1.6"), node=NODE), m.EP(a("10.244.2.4"), node="node-b")]
    ports = [m.Port(80, "http", node_port=30080)]
    web = m.service("web", a("10.96.0.10"), ports, type="NodePort", ip_families=fam)
    local = m.service("local", a("10.96.0.11"), [m.Port(80, "http", node_port=30081)],
                      type="NodePort", external_policy="Local", ip_families=fam)  # fmt: skip
    lb = m.service("lb", a("10.96.0.12"), [m.Port(80, "http", node_port=30082)],
                   type="LoadBalancer", lb_ips=[a("198.51.100.10")],
                   source_ranges=[a("203.0.113.0/24")],
                   ip_families=fam)  # fmt: skip
    kind = "IPv6" if v6 else "IPv4"
    return [
        m.node(NODE, a("192.168.50.11")),
        web,
        m.endpoint_slice("web", eps, [("http", 80, "TCP")], address_type=kind),
        local,
        m.endpoint_slice("local", eps[1:], [("http", 80, "TCP")], address_type=kind, name="l-1"),
        lb,
        m.endpoint_slice("lb", eps, [("http", 80, "TCP")], address_type=kind, name="lb-1"),
    ]


def a6(ip: str, v6: bool) -> str:
    """An IPv4 address or CIDR of these tests, or its IPv6 twin."""
    return v6_twin(ip) if v6 else ip


# (what, src, dst, extra flags, verdict per mode {nftables, iptables})
CASES = [
    ("pod to ClusterIP", "10.244.1.5", "10.96.0.10", ["--dport", "80"], ("dnat", "dnat")),
    ("node to ClusterIP", "", "10.96.0.10", ["--dport", "80", "--proto", "udp"],
     ("reject", "reject")),  # no UDP port: nftables' cluster-ips-check; iptables: routed
    ("ping a ClusterIP", "10.244.1.5", "10.96.0.10", ["--proto", "icmp"],
     ("reject", "not-a-service")),
    ("NodePort, eTP Local, no local endpoint", "203.0.113.7", "192.168.50.11",
     ["--dport", "30081"], ("drop", "drop")),
    ("LB IP outside the source ranges", "192.0.2.9", "198.51.100.10", ["--dport", "80"],
     ("drop", "drop")),
    ("LB IP inside them", "203.0.113.7", "198.51.100.10", ["--dport", "80"], ("dnat", "dnat")),
]  # fmt: skip


@pytest.fixture(params=["nftables", "iptables"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("v6", [False, True], ids=["IPv4", "IPv6"])
def test_verify_agrees_with_the_kernel(
    mode: str, v6: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": state(v6)}))
    cidr = "fd00:10:244::/48" if v6 else "10.244.0.0/16"
    for what, src, dst, extra, verdicts in CASES:
        if what == "node to ClusterIP" and mode == "iptables":
            verdicts = ("", "not-a-service")
        want = verdicts[0 if mode == "nftables" else 1]
        argv = ["explain", "--state", str(path), "--hostname-override", NODE, "--mode", mode,
                "--cluster-cidr", cidr, "--dst", a6(dst, v6), *extra, "--verify", "-o", "json"]  # fmt: skip
        if src:
            argv += ["--src", a6(src, v6)]
        rc = cli.main(argv)
        out = capsys.readouterr().out
        explained = json.loads(out)  # one document: the explanation, and "verify"
        verified = explained["verify"]
        assert rc == 0, (what, out)
        assert explained["verdict"] == want, (what, out)
        assert verified["agrees"] and verified["kernel"]["verdict"] == want, (what, out)
        assert verified["kernel"]["rules"], (what, out)  # the trace named the rules it met
        assert 1 <= verified["attempts"] <= 3, (what, out)
    assert not [n for n in _names() if n.startswith("kpp-explain-")]


def _names() -> list[str]:
    return [p.name for p in netns.NETNS_DIR.iterdir()] if netns.NETNS_DIR.exists() else []


def test_verify_exits_4_when_the_explanation_is_wrong(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = engine.explain

    def wrong(*args: Any, **kw: Any) -> engine.Explanation:
        return dataclasses.replace(real(*args, **kw), verdict=Verdict.DROP)

    monkeypatch.setattr(engine, "explain", wrong)
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": state(False)}))
    rc = cli.main(["explain", "--state", str(path), "--hostname-override", NODE,
                   "--cluster-cidr", "10.244.0.0/16", "--src", "10.244.1.5",
                   "--dst", "10.96.0.10", "--dport", "80", "--verify"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 4, out
    assert "DIFFERS     the explanation says drop, the kernel did dnat" in out
    assert "sent        3 times" in out  # a lasting difference: every send disagreed
