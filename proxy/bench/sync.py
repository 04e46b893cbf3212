"""Benchmarks (a separate command, never part of the test suite).

``kube-proxy-py bench sync --services N --endpoints M --mode MODE`` generates a synthetic
cluster, then inside a network namespace of its own (deleted afterwards) measures each
stage: parse, plan, render, the first full sync into an empty namespace, a re-sync of the
same state, the same text applied raw with ``nft -f``/``iptables-restore`` (to see our
overhead), and the whole ``kube-proxy-py apply`` command as a user runs it.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from proxy import manifests
from proxy.backends import iptables as ipt
from proxy.backends import nftables as nft
from proxy.config import ProxyConfig, ProxyMode, parse_cidrs
from proxy.kernel.iptables import IptablesKernel
from proxy.kernel.nftables import NftKernel
from proxy.kernel.runner import Runner
from proxy.plan import plan
from proxy.source.file import build_state

T = TypeVar("T")


@dataclass
class SyncResult:
    mode: str
    services: int
    endpoints_per_service: int
    command: str
    seconds: dict[str, float] = field(default_factory=dict)
    """median seconds per stage"""
    rules: int = 0
    text_bytes: int = 0
    max_rss_mib: float = 0.0


def _timed(fn: Callable[[], T], repeat: int) -> tuple[T, float]:
    times: list[float] = []
    result: T | None = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    return result, statistics.median(times)


@contextmanager
def owned_netns() -> Iterator[str]:
    """A namespace created for this run and deleted afterwards (never linked anywhere)."""
    name = f"kpp-bench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def bench_sync(services: int, endpoints: int, mode: ProxyMode, repeat: int = 3) -> SyncResult:
    command = (
        f"kube-proxy-py bench sync --services {services} --endpoints {endpoints} "
        f"--mode {mode.value} --repeat {repeat}"
    )
    res = SyncResult(mode.value, services, endpoints, command)
    objs = manifests.synthetic_cluster(services, endpoints)
    config = ProxyConfig(
        "node-a", mode=mode, cluster_cidrs=parse_cidrs("10.128.0.0/9", "--cluster-cidr")
    )
    state, res.seconds["parse"] = _timed(lambda: build_state(objs, "node-a"), repeat)
    p, res.seconds["plan"] = _timed(lambda: plan(state.snapshot, config), repeat)
    with owned_netns() as ns, tempfile.TemporaryDirectory() as tmp:
        runner = Runner(ns)
        if mode is ProxyMode.NFTABLES:
            rs_n, res.seconds["render"] = _timed(lambda: nft.render(p), repeat)
            text, res.seconds["text"] = _timed(lambda: nft.full_sync_text(rs_n), repeat)
            res.rules = rs_n.rule_count + rs_n.element_count
            kn = NftKernel(runner)
            raw = ["nft", "-f", "-"]
            start = time.perf_counter()
            kn.sync(rs_n)
            res.seconds["first_sync"] = time.perf_counter() - start
            _, res.seconds["resync"] = _timed(lambda: kn.sync(rs_n), repeat)
        else:
            rs_i, res.seconds["render"] = _timed(lambda: ipt.render(p), repeat)
            text, res.seconds["text"] = _timed(lambda: ipt.restore_text(rs_i), repeat)
            res.rules = rs_i.rule_count
            ki = IptablesKernel(runner)
            raw = [f"iptables-{ki.variant}-restore", "--noflush"]
            start = time.perf_counter()
            ki.sync(rs_i)
            res.seconds["first_sync"] = time.perf_counter() - start
            _, res.seconds["resync"] = _timed(lambda: ki.sync(rs_i), repeat)
        res.text_bytes = len(text)
        _, res.seconds["raw_apply_same_text"] = _timed(lambda: runner.run(raw, stdin=text), repeat)
        state_file = Path(tmp) / "state.json"
        state_file.write_text(json.dumps(manifests.as_list(objs)))
        cli = [
            "ip", "netns", "exec", ns, sys.executable, "-m", "proxy", "apply",
            "--state", str(state_file), "--mode", mode.value,
            "--hostname-override", "node-a", "--cluster-cidr", "10.128.0.0/9",
        ]  # fmt: skip
        _, res.seconds["cli_apply"] = _timed(
            lambda: subprocess.run(cli, check=True, capture_output=True), repeat
        )
    res.max_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def format_result(r: SyncResult) -> str:
    lines = [f"$ {r.command}"]
    lines.append(
        f"  {r.mode}: {r.services} services x {r.endpoints_per_service} endpoints, "
        f"{r.rules} rules/elements, {r.text_bytes / 1e6:.1f} MB of rules text, "
        f"max RSS {r.max_rss_mib:.0f} MiB"
    )
    for stage, secs in r.seconds.items():
        lines.append(f"    {stage:<20} {secs * 1000:9.1f} ms")
    raw = r.seconds.get("raw_apply_same_text")
    if raw:
        lines.append(
            f"    full sync / raw apply of the same text: {r.seconds['resync'] / raw:.2f}x"
        )
    return "\n".join(lines)


def main_sync(args: Any) -> int:
    if os.geteuid() != 0:
        print("bench sync: run as root (it creates a network namespace)", file=sys.stderr)
        return 2
    modes = list(ProxyMode) if args.mode == "both" else [ProxyMode(args.mode)]
    results = []
    for mode in modes:
        r = bench_sync(args.services, args.endpoints, mode, args.repeat)
        results.append(asdict(r))
        print(format_result(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {shlex.quote(args.json)}", file=sys.stderr)
    return 0
