"""Incremental syncs leave the kernel exactly as a full sync of the new state would."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.iptables import save as ipt_save
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.executor import Executor
from proxy.nftables import diff as nft_diff
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
from proxy.plan import plan
from proxy.source.file import build_state
from tests.conftest import netns_pair
from tests.strategies import cluster_states

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def two_netns() -> Iterator[tuple[str, str]]:
    with netns_pair("inc", "ref") as names:
        yield names


def _plan(objs: list[dict[str, Any]], mode: ProxyMode):  # type: ignore[no-untyped-def]
    state = build_state(objs, "node-a")
    cfg = ProxyConfig("node-a", mode=mode, cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    return plan(state.snapshot, cfg)


def nft_canonical(ns: str) -> Any:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "ip", "kube-proxy"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    chains: dict[str, list[Any]] = {}
    sets: dict[str, Any] = {}
    for item in json.loads(out)["nftables"]:
        if "rule" in item:
            r = item["rule"]
            chains.setdefault(r["chain"], []).append((r["expr"], r.get("comment")))
        elif "chain" in item:
            c = item["chain"]
            chains.setdefault(c["name"], [])
        elif "set" in item or "map" in item:
            s = item.get("set") or item.get("map")
            elems = s.get("elem", [])
            sets[s["name"]] = (
                s.get("type"),
                s.get("timeout"),
                sorted(json.dumps(e, sort_keys=True) for e in elems),
            )
    return chains, sets


def ipt_canonical(ns: str) -> Any:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "iptables-nft-save"], capture_output=True, text=True, check=True
    ).stdout
    saved = ipt_save.parse_save(out)
    return {k: [re.sub(r"--probability \S+", "P", r) for r in v] for k, v in saved.rules.items()}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(a=cluster_states(max_services=4), b=cluster_states(max_services=4))
def test_incremental_nftables_equals_full_sync(
    two_netns: tuple[str, str], a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> None:
    inc, ref = (NftKernel(Executor(n)) for n in two_netns)
    for k in (inc, ref):
        k.cleanup()
    ra, rb = (
        nft_render.render(_plan(a, ProxyMode.NFTABLES)),
        nft_render.render(_plan(b, ProxyMode.NFTABLES)),
    )
    inc.full_sync(ra)
    inc.apply_transaction(nft_diff.incremental(ra, rb))  # netlink when covered, else nft
    ref.full_sync(rb)
    assert nft_canonical(two_netns[0]) == nft_canonical(two_netns[1])
    assert not nft_diff.incremental(rb, rb)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(a=cluster_states(max_services=4), b=cluster_states(max_services=4))
def test_partial_iptables_equals_full_sync(
    two_netns: tuple[str, str], a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> None:
    inc, ref = (IptablesKernel(Executor(n), variant="nft") for n in two_netns)
    for k in (inc, ref):
        k.cleanup()
    ra, rb = (
        ipt_render.render(_plan(a, ProxyMode.IPTABLES)),
        ipt_render.render(_plan(b, ProxyMode.IPTABLES)),
    )
    inc.full_sync(ra)
    text = ipt_restore.partial_restore_text(ra, rb)
    if text:
        inc.restore(text)
    ref.full_sync(rb)
    assert ipt_canonical(two_netns[0]) == ipt_canonical(two_netns[1])
    assert ipt_restore.partial_restore_text(rb, rb) == ""


@pytest.mark.parametrize("mode", list(ProxyMode), ids=str)
def test_agent_event_stream_matches_a_fresh_full_sync(
    two_netns: tuple[str, str], mode: ProxyMode
) -> None:
    """The agent's path (watch events → incremental plan → partial render → diff of
    changed fragments → kernel) leaves after every sync what a fresh full sync of the same
    state writes, over a seeded random stream of Service and EndpointSlice events."""
    import random

    from proxy import manifests as m
    from proxy.agent.proxier import Proxier
    from proxy.agent.state import ClusterState

    inc_ns, ref_ns = two_netns
    for ns in two_netns:
        NftKernel(Executor(ns)).cleanup()
        IptablesKernel(Executor(ns), variant="nft").cleanup()
    cfg = ProxyConfig("node-a", mode=mode, cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    state = ClusterState("node-a")
    proxier = Proxier(cfg, state, sync_period=3600, executor=Executor(inc_ns))
    node = m.node("node-a", "192.168.50.11", zone="z1")
    state.handle("Node", "ADDED", node)
    rng = random.Random(6)
    live: dict[str, list[dict[str, Any]]] = {}

    def objects(name: str, i: int) -> list[dict[str, Any]]:
        cip = f"10.96.1.{i}"
        ports = [m.Port(80, "http", target_port=8080)]
        if rng.random() < 0.3:
            ports.append(m.Port(53, "dns", "UDP", target_port=53))
        kw: dict[str, Any] = {}
        if rng.random() < 0.3:
            kw["type"] = "NodePort"
            ports = [
                dataclasses.replace(p, node_port=30000 + i * 2 + n) for n, p in enumerate(ports)
            ]
        if rng.random() < 0.2:
            kw["affinity_seconds"] = rng.choice([60, 600])
        svc = m.service(name, cip, ports, **kw)
        eps = [
            m.EP(f"10.244.{rng.choice([1, 2])}.{rng.randrange(2, 250)}",
                 rng.choice(["node-a", "node-b"]), ready=rng.random() > 0.2)
            for _ in range(rng.randrange(0, 4))
        ]  # fmt: skip
        sl = m.endpoint_slice(name, eps, [("http", 8080, "TCP"), ("dns", 53, "UDP")])
        return [svc, sl]

    for step in range(14):
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(12)
            name = f"svc-{i}"
            if name in live and rng.random() < 0.3:
                for obj in live.pop(name):
                    state.handle(obj["kind"], "DELETED", obj)
            else:
                live[name] = objects(name, i)
                for obj in live[name]:
                    obj["metadata"]["resourceVersion"] = str(step)
                    state.handle(obj["kind"], "MODIFIED", obj)
        assert proxier.sync_proxy_rules()
        ref = _plan([node, *(o for objs in live.values() for o in objs)], mode)
        if mode is ProxyMode.NFTABLES:
            NftKernel(Executor(ref_ns)).full_sync(nft_render.render(ref))
            assert nft_canonical(inc_ns) == nft_canonical(ref_ns), f"step {step}"
        else:
            IptablesKernel(Executor(ref_ns), variant="nft").full_sync(ipt_render.render(ref))
            assert ipt_canonical(inc_ns) == ipt_canonical(ref_ns), f"step {step}"
