"""A fixed corpus of cluster states and the hash of every rendering of it.

The restructure of issue 17 must not change what users see: for the same input, ``render``
prints the same bytes and the agent's incremental updates are the same text. This module
builds the corpus deterministically (``random.Random(seed)``, no Hypothesis: its draws change
between versions), renders every state in both modes under several configurations, and
hashes each output. ``render_hashes.json`` holds the hashes the code had before the
restructure; ``test_render_hashes.py`` compares.

    python3 -m tests.golden.corpus --write   # record the current hashes (after review!)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proxy import manifests as m
from proxy.cli import main as cli_main
from proxy.config import ProxyConfig, ProxyMode
from proxy.model import IPFamily
from proxy.plan import Snapshot
from proxy.source.file import build_state

HASHES = Path(__file__).with_name("render_hashes.json")
FUZZ_STATES = Path(__file__).parent.parent / "fuzz" / "corpus" / "state"
EXAMPLES = Path(__file__).parent.parent.parent / "examples"
JSON = dict[str, Any]
NODES = ("node-a", "node-b", "node-c")
ZONES = ("zone-a", "zone-b")
# (name, extra `render` arguments, node name)
CONFIGS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("plain", (), "node-a"),
    ("cidr-npa", ("--cluster-cidr", "10.244.0.0/16", "--nodeport-addresses", "primary"), "node-b"),
    ("masq-all", ("--masquerade-all", "--cluster-cidr", "10.244.0.0/16"), "node-c"),
)


def _service(rng: random.Random, i: int, v6: bool) -> list[JSON]:
    """One Service (any type and feature) and its slices."""
    kind = rng.choice(["ClusterIP", "ClusterIP", "NodePort", "LoadBalancer", "headless"])
    svc_type = "ClusterIP" if kind == "headless" else kind
    ns = rng.choice(["default", "kube-system", "team-a"])
    name = f"svc{i}-" + rng.choice(["web", "dns", "api", "a" * 40, "x-y-z"])
    n_ports = rng.choice([1, 1, 2, 3])
    ports: list[m.Port] = []
    for p in range(n_ports):
        proto = rng.choice(["TCP", "TCP", "UDP", "SCTP"])
        node_port = 30000 + i * 4 + p if svc_type != "ClusterIP" else None
        target: int | str = rng.choice([8080, 80 + p]) if rng.random() < 0.7 else "web"
        ports.append(
            m.Port(
                rng.choice([80, 443, 53, 8000 + p]) + p * 1000,
                f"p{p}" if n_ports > 1 else rng.choice(["", "http"]),
                proto,
                target_port=target,
                node_port=node_port,
            )
        )
    cluster_ip = (
        "None"
        if kind == "headless"
        else (f"fd00:96::{i + 1:x}" if v6 else f"10.96.{i // 250}.{i % 250 + 1}")
    )
    ext_policy = rng.choice([None, "Cluster", "Local"]) if svc_type != "ClusterIP" else None
    svc = m.service(
        name,
        cluster_ip,
        ports,
        namespace=ns,
        type=svc_type,
        external_ips=[f"203.0.113.{rng.randint(1, 254)}"] if not v6 and rng.random() < 0.2 else (),
        lb_ips=[f"198.51.100.{i % 250 + 1}"] if svc_type == "LoadBalancer" and not v6 else (),
        lb_ip_mode=rng.choice([None, "VIP", "Proxy"]),
        source_ranges=rng.choice([(), (), ("10.0.0.0/8",), ("192.168.50.0/24", "203.0.113.0/24")])
        if svc_type == "LoadBalancer"
        else (),
        affinity_seconds=rng.choice([None, None, 10800, 30]),
        external_policy=ext_policy,
        internal_policy=rng.choice([None, None, "Cluster", "Local"]),
        health_check_node_port=32000 + i
        if ext_policy == "Local" and svc_type == "LoadBalancer"
        else None,
        labels={"service.kubernetes.io/service-proxy-name": "other"}
        if rng.random() < 0.05
        else None,
        selector={"app": name},
    )
    if v6:
        svc["spec"]["ipFamilies"] = ["IPv6"]
    objs: list[JSON] = [svc]
    hints = rng.random() < 0.2
    for s in range(rng.choice([0, 1, 1, 2])):
        eps = []
        for e in range(rng.choice([0, 1, 2, 3, 5])):
            ready = rng.random() < 0.85
            zone = rng.choice(ZONES)
            ip = f"fd00:244::{i:x}:{s}:{e + 1:x}" if v6 else f"10.244.{i % 200}.{s * 16 + e + 1}"
            eps.append(
                m.EP(
                    ip,
                    node=rng.choice(NODES),
                    ready=ready,
                    serving=ready or rng.random() < 0.5,
                    terminating=not ready and rng.random() < 0.5,
                    zone=zone,
                    zone_hints=(zone,) if hints else (),
                )
            )
        slice_ports = [
            (p.name, p.target_port if isinstance(p.target_port, int) else 8080, p.protocol)
            for p in ports
        ]
        objs.append(
            m.endpoint_slice(
                name,
                eps,
                slice_ports,
                name=f"{name}-{s}",
                namespace=ns,
                address_type="IPv6" if v6 else "IPv4",
            )
        )
    return objs


def generated(seed: int) -> list[JSON]:
    rng = random.Random(seed)
    objs: list[JSON] = [
        m.node(n, f"192.168.50.{11 + k}", zone=ZONES[k % 2], pod_cidr=f"10.244.{k}.0/24")
        for k, n in enumerate(NODES)
    ]
    for i in range(rng.choice([1, 3, 8, 20])):
        objs += _service(rng, i, v6=rng.random() < 0.1)
    return objs


def states() -> Iterator[tuple[str, bytes]]:
    """(name, state file bytes): generated states, the examples, the fuzz corpus."""
    for seed in range(40):
        yield f"gen-{seed:02d}", json.dumps(m.as_list(generated(seed))).encode()
    yield "synthetic-300x3", json.dumps(m.as_list(m.synthetic_cluster(300, 3))).encode()
    yield "synthetic-40x30", json.dumps(m.as_list(m.synthetic_cluster(40, 30))).encode()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        yield f"example-{path.stem}", path.read_bytes()
    for path in sorted(FUZZ_STATES.iterdir()):
        yield f"fuzz-{path.name}", path.read_bytes()


def _render(path: Path, mode: str, extra: tuple[str, ...], node: str) -> bytes:
    out, err = io.StringIO(), io.StringIO()
    argv = ["render", "--state", str(path), "--mode", mode, "--hostname-override", node, *extra]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli_main(argv)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 2
    return f"{status}\n{out.getvalue()}".encode()


def _v6_render(data: bytes, mode: str) -> bytes:
    """The IPv6 rules alone, as the agent writes them (`render` prints them after the
    IPv4 ones when a state has both)."""
    from proxy.iptables import render as ipt_render
    from proxy.iptables import restore as ipt_restore
    from proxy.nftables import diff as nft_diff
    from proxy.nftables import render as nft_render
    from proxy.plan import plan

    state = build_state(json.loads(data)["items"], "node-a")
    p = plan(
        state.snapshot,
        ProxyConfig(node_name="node-a", mode=ProxyMode(mode)),
        IPFamily.V6,
        state.problems,
    )
    if mode == "iptables":
        return ipt_restore.restore_text(ipt_render.render(p)).encode()
    return nft_diff.full_sync_text(nft_render.render(p)).encode()


def _changed(seed: int) -> list[JSON]:
    """``generated(seed)`` after a typical watch burst: its last Service deleted, the first
    slice's endpoints flipped ready/unready, one Service gaining session affinity."""
    objs = generated(seed)
    services = [i for i, o in enumerate(objs) if o["kind"] == "Service"]
    if len(services) > 1:
        name = objs[services[-1]]["metadata"]["name"]
        objs = [
            o
            for o in objs
            if o["metadata"]["name"] != name and not o["metadata"]["name"].startswith(name + "-")
        ]
    for o in objs:
        if o["kind"] == "EndpointSlice":
            for ep in o["endpoints"]:
                ep["conditions"]["ready"] = not ep["conditions"]["ready"]
            break
    for o in objs:
        if o["kind"] == "Service" and "sessionAffinity" not in o["spec"]:
            o["spec"]["sessionAffinity"] = "ClientIP"
            break
    return objs


def _changed_keys(a: Snapshot, b: Snapshot) -> set[tuple[str, str]]:
    """(namespace, name) of each Service whose object or EndpointSlices differ."""

    def by_service(snap: Snapshot) -> dict[tuple[str, str], Any]:
        out: dict[tuple[str, str], Any] = {(s.namespace, s.name): [s] for s in snap.services}
        for sl in sorted(snap.slices, key=lambda x: x.name):
            out.setdefault((sl.namespace, sl.service_name), []).append(sl)
        return out

    x, y = by_service(a), by_service(b)
    return {k for k in x.keys() | y.keys() if x.get(k) != y.get(k)}


def _delta(seed: int, mode: str) -> bytes:
    """What the agent writes for the change ``generated(seed)`` → ``_changed(seed)``: an
    incremental plan and cached render, then the nft transaction / iptables partial restore."""
    from proxy.iptables import render as ipt_render
    from proxy.iptables import restore as ipt_restore
    from proxy.nftables import diff as nft_diff
    from proxy.nftables import render as nft_render
    from proxy.tracker import PlanTracker

    cfg = ProxyConfig(node_name="node-a", mode=ProxyMode(mode))
    a, b = build_state(generated(seed), "node-a"), build_state(_changed(seed), "node-a")
    tracker = PlanTracker()
    before = tracker.update(a.snapshot, cfg).plan
    after = tracker.update(b.snapshot, cfg, changed=_changed_keys(a.snapshot, b.snapshot))
    if mode == "iptables":
        icache = ipt_render.RenderCache()
        old = ipt_render.render(before, icache)
        new = ipt_render.render(after.plan, icache, after.updated)
        return ipt_restore.partial_restore_text(old, new).encode()
    ncache = nft_render.RenderCache()
    old_nft = nft_render.render(before, ncache)
    new_nft = nft_render.render(after.plan, ncache, after.updated)
    script = nft_diff.incremental_text(old_nft, new_nft)
    return "\n".join(_canonical(script)).encode()


def _canonical(script: str) -> list[str]:
    """An nft transaction's commands sorted, element lists sorted: the order of commands
    within one atomic transaction follows set iteration (hash seeded per process) and is
    not part of what the kernel ends up with."""
    out = []
    for line in script.splitlines():
        head, brace, rest = line.partition(" { ")
        if brace and "element" in head:
            line = head + " { " + ", ".join(sorted(rest.rstrip(" }").split(", "))) + " }"
        out.append(line)
    return sorted(out)


def compute() -> dict[str, str]:
    hashes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state"
        for name, data in states():
            path.write_bytes(data)
            configs = CONFIGS if name.startswith(("gen-", "synthetic", "example")) else CONFIGS[:1]
            for mode in ("iptables", "nftables"):
                for cname, extra, node in configs:
                    hashes[f"{name}/{mode}/{cname}"] = hashlib.sha256(
                        _render(path, mode, extra, node)
                    ).hexdigest()
                if name.startswith("gen-"):
                    hashes[f"{name}/{mode}/ipv6"] = hashlib.sha256(
                        _v6_render(data, mode)
                    ).hexdigest()
                    seed = int(name[4:])
                    hashes[f"{name}/{mode}/delta"] = hashlib.sha256(_delta(seed, mode)).hexdigest()
    return hashes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--write", action="store_true", help=f"write {HASHES.name}")
    args = ap.parse_args(argv)
    hashes = compute()
    if args.write:
        HASHES.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    total = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    print(f"{len(hashes)} renderings, corpus hash {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
