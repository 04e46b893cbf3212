"""``kube-proxy-py bench sync``: plan/render cost and full-sync overhead (issue 6 a, b).

Generates a synthetic cluster (N Services × M endpoints, every 20th a NodePort) and
measures, each stage ``--repeat`` times (median reported):

- ``parse``, ``plan``, ``render``, ``text`` (the full-sync text) one by one, and
  ``plan_render`` — plan + render + text end to end, what an agent's full sync computes;
- memory of plan + render + text, in a fresh interpreter (:mod:`proxy.bench.memory`:
  tracemalloc peak and RSS growth, so earlier stages cannot pollute it);
- ``first_sync``: ``NftKernel.sync``/``IptablesKernel.sync`` (read what the kernel holds,
  write the text, apply it) into an empty network namespace — a fresh one per run;
  ``raw_first_sync_text``: the very text that sync applied, fed to ``nft -f -`` /
  ``iptables-restore --noflush`` in another fresh namespace;
- ``resync``: the same ruleset synced again into the populated namespace;
  ``raw_resync_text``: the text that re-sync applied, fed raw into the same namespace;
- ``cli_apply``: the whole ``kube-proxy-py apply`` command as a user runs it.

Overhead ratios (target: full sync ≤ 1.3× raw apply): ``full_sync_vs_raw`` =
first_sync / raw_first_sync_text, ``resync_vs_raw`` = resync / raw_resync_text, and
``compute_and_sync_vs_raw`` = (plan_render + first_sync) / raw_first_sync_text.

Every namespace is created for the run (``kpp-bench-*``), never linked anywhere, and
deleted afterwards.
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
from proxy.bench import iptvariant, machine, synthetic
from proxy.bench.memory import measure_in_subprocess
from proxy.bench.stats import ratio
from proxy.config import ProxyConfig, ProxyMode
from proxy.iptables import model as ipt_model
from proxy.iptables import render as ipt_render
from proxy.iptables import restore as ipt_restore
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.executor import Executor
from proxy.nftables import diff as nft_diff
from proxy.nftables import model as nft_model
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
from proxy.nftables.model import NftTransaction
from proxy.plan import Plan, Snapshot, plan
from proxy.tracker import PlanTracker, PlanUpdate

T = TypeVar("T")


@dataclass
class SyncResult:
    mode: str
    services: int
    endpoints_per_service: int
    repeat: int
    command: str
    bench: str = "sync"
    iptables: str = ""
    """the iptables backend (``legacy`` or ``nft``) in iptables mode"""
    seconds: dict[str, float] = field(default_factory=dict)
    """median seconds per stage"""
    ratios: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    """plan + render + text memory from a fresh interpreter (see proxy.bench.memory)"""
    rules: int = 0
    text_bytes: int = 0
    """the first sync's text"""
    resync_text_bytes: int = 0
    max_rss_mib: float = 0.0
    """peak RSS of the whole bench process (all stages; not the plan+render figure)"""
    machine: dict[str, Any] = field(default_factory=dict)


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


class _Kernel:
    """One namespace's kernel layer for ``mode``, and the raw tool it drives."""

    def __init__(self, ns: str, mode: ProxyMode) -> None:
        self.executor = Executor(ns)
        self.nft: NftKernel | None = None
        self.ipt: IptablesKernel | None = None
        if mode is ProxyMode.NFTABLES:
            self.nft = NftKernel(self.executor)
            self.raw_argv = ["nft", "-f", "-"]
        else:
            self.ipt = IptablesKernel(self.executor)  # detects the variant (not timed)
            self.raw_argv = [f"iptables-{self.ipt.variant}-restore", "--noflush"]
            if self.ipt.variant == "legacy":
                self.raw_argv += ["-w", "5"]

    def full_sync(self, ruleset: ipt_model.IptablesRuleset | nft_model.NftRuleset) -> bool:
        """Our full sync; True. (Both stream their input to the tool without building it
        as one text: :meth:`text` rebuilds it, untimed.)"""
        if self.nft is not None:
            assert isinstance(ruleset, nft_model.NftRuleset)
            self.nft.full_sync(ruleset)
        else:
            assert self.ipt is not None and isinstance(ruleset, ipt_model.IptablesRuleset)
            self.ipt.full_sync(ruleset)
        return True

    def text(self, ruleset: ipt_model.IptablesRuleset | nft_model.NftRuleset) -> str:
        """The text a full sync writes here now, as the kernel stands."""
        if self.nft is not None:
            assert isinstance(ruleset, nft_model.NftRuleset)
            return nft_diff.full_sync_text(ruleset, self.nft.existing())
        assert self.ipt is not None and isinstance(ruleset, ipt_model.IptablesRuleset)
        return "".join(self.ipt.full_sync_pieces(ruleset, self.ipt.save()))

    def raw(self, text: str) -> subprocess.CompletedProcess[str]:
        return self.executor.run(self.raw_argv, stdin=text)


def _timed_fresh(mode: ProxyMode, repeat: int, fn: Callable[[_Kernel], T]) -> tuple[T, float]:
    """``fn`` once per run, each in a new empty namespace (set up outside the clock)."""
    times: list[float] = []
    result: T | None = None
    for _ in range(repeat):
        with owned_netns() as ns:
            kernel = _Kernel(ns, mode)
            start = time.perf_counter()
            result = fn(kernel)
            times.append(time.perf_counter() - start)
    assert result is not None
    return result, statistics.median(times)


def _one_change(
    kernel: NftKernel, change: _SliceChange, config: ProxyConfig, repeat: int
) -> dict[str, float]:
    """What one EndpointSlice change costs to write into the populated table: the
    incremental transaction sent over netlink (as the agent does) and the same statements
    through ``nft -f``. Each run writes the change and then its reverse; the figure is
    per transaction. Two changes: an endpoint replaced by a new address (what the latency
    benchmark writes: endpoint map elements only), and an endpoint added (the service
    chain's rule changes too, so the kernel re-validates the table; netlink only)."""

    def both_ways(changed_slice: dict[str, Any]) -> tuple[NftTransaction, NftTransaction]:
        before, after = change.update(changed_slice, config)
        cache = nft_render.RenderCache()
        rs_a = nft_render.render(before, cache)
        rs_b = nft_render.render(after.plan, cache, after.updated)
        there, back = nft_diff.incremental(rs_a, rs_b), nft_diff.incremental(rs_b, rs_a)
        assert there and back
        return there, back

    def by_netlink(txs: tuple[NftTransaction, NftTransaction]) -> Callable[[], bool]:
        def run() -> bool:
            for tx in txs:
                kernel.apply_transaction(tx)
            return True

        return run

    there, back = both_ways(change.moved)
    there_text, back_text = there.text(), back.text()

    def by_nft() -> bool:
        kernel.apply(there_text)
        kernel.apply(back_text)
        return True

    _, netlink = _timed(by_netlink((there, back)), repeat)
    _, via_nft = _timed(by_nft, repeat)
    _, grow = _timed(by_netlink(both_ways(change.grown)), repeat)
    return {"change_netlink": netlink / 2, "change_nft": via_nft / 2, "change_count": grow / 2}


def _one_restore(
    kernel: IptablesKernel,
    change: _SliceChange,
    rs_a: ipt_model.IptablesRuleset,
    config: ProxyConfig,
    repeat: int,
) -> dict[str, float]:
    """iptables mode: what the partial restore the agent writes for an endpoint replaced
    costs in the populated table ``rs_a`` (rendered from the cluster before; there and
    back; the figure is per transaction)."""
    rs_b = ipt_render.render(change.update(change.moved, config)[1].plan)
    there, back = (
        ipt_restore.partial_restore_text(rs_a, rs_b),
        ipt_restore.partial_restore_text(rs_b, rs_a),
    )
    assert there and back

    def run() -> bool:
        kernel.restore(there)
        kernel.restore(back)
        return True

    _, seconds = _timed(run, repeat)
    return {"change_restore": seconds / 2}


class _SliceChange:
    """The first EndpointSlice of ``objs`` (whose snapshot is ``before``) with its first
    endpoint moved to a new address, or with one endpoint more."""

    def __init__(self, objs: list[dict[str, Any]], before: Snapshot) -> None:
        self.objs = objs
        self.before = before
        self.slice = sl = next(o for o in objs if o["kind"] == "EndpointSlice")
        first, *rest = sl["endpoints"]
        self.moved = {**sl, "endpoints": [{**first, "addresses": ["10.255.0.1"]}, *rest]}
        self.grown = {**sl, "endpoints": [first, *rest, {**first, "addresses": ["10.255.0.2"]}]}
        meta = sl["metadata"]
        self.key = (meta["namespace"], meta["labels"]["kubernetes.io/service-name"])

    def update(self, changed: dict[str, Any], config: ProxyConfig) -> tuple[Plan, PlanUpdate]:
        """The plan before, and the tracker's update after the slice became ``changed``."""
        tracker = PlanTracker()
        before = tracker.update(self.before, config).plan
        state = synthetic.parse([changed if o is self.slice else o for o in self.objs])
        return before, tracker.update(state.snapshot, config, changed={self.key})


def command_for(
    services: int, endpoints: int, mode: str, repeat: int, iptables: str = iptvariant.DEFAULT
) -> str:
    command = (
        f"kube-proxy-py bench sync --services {services} --endpoints {endpoints} "
        f"--mode {mode} --repeat {repeat}"
    )
    return command + iptvariant.option(mode, iptables)


def bench_sync(
    services: int,
    endpoints: int,
    mode: ProxyMode,
    repeat: int = 3,
    iptables: str = iptvariant.DEFAULT,
) -> SyncResult:
    """One mode's figures; in iptables mode with the ``iptables`` backend (see
    :mod:`proxy.bench.iptvariant`)."""
    with iptvariant.using(iptables):
        return _bench_sync(services, endpoints, mode, repeat, iptables)


def _bench_sync(
    services: int, endpoints: int, mode: ProxyMode, repeat: int, iptables: str
) -> SyncResult:
    res = SyncResult(
        mode.value,
        services,
        endpoints,
        repeat,
        command_for(services, endpoints, mode.value, repeat, iptables),
        iptables=iptvariant.recorded(mode.value, iptables),
    )
    res.machine = machine.describe()
    sec = res.seconds
    objs = synthetic.objects(services, endpoints)
    state, sec["parse"] = _timed(lambda: synthetic.parse(objs), repeat)
    config = synthetic.config(mode)
    p, sec["plan"] = _timed(lambda: plan(state.snapshot, config), repeat)
    ruleset: ipt_model.IptablesRuleset | nft_model.NftRuleset
    if mode is ProxyMode.NFTABLES:
        rs_n, sec["render"] = _timed(lambda: nft_render.render(p), repeat)
        _, sec["text"] = _timed(lambda: nft_diff.full_sync_text(rs_n), repeat)
        ruleset = rs_n
    else:
        rs_i, sec["render"] = _timed(lambda: ipt_render.render(p), repeat)
        _, sec["text"] = _timed(lambda: ipt_restore.restore_text(rs_i), repeat)
        ruleset = rs_i
    rendered, sec["plan_render"] = _timed(lambda: synthetic.plan_and_render(state, mode), repeat)
    res.rules = rendered.rules
    del rendered
    res.memory = measure_in_subprocess(services, endpoints, mode)

    _, sec["first_sync"] = _timed_fresh(mode, repeat, lambda k: k.full_sync(ruleset))
    with owned_netns() as ns:
        first_text = _Kernel(ns, mode).text(ruleset)  # what a sync into an empty table writes
    res.text_bytes = len(first_text)
    _, sec["raw_first_sync_text"] = _timed_fresh(mode, repeat, lambda k: k.raw(first_text))
    with owned_netns() as ns, tempfile.TemporaryDirectory() as tmp:
        kernel = _Kernel(ns, mode)
        kernel.full_sync(ruleset)
        _, sec["resync"] = _timed(lambda: kernel.full_sync(ruleset), repeat)
        resync_text = kernel.text(ruleset)
        res.resync_text_bytes = len(resync_text)
        _, sec["raw_resync_text"] = _timed(lambda: kernel.raw(resync_text), repeat)
        change = _SliceChange(objs, state.snapshot)
        if kernel.nft is not None:
            sec.update(_one_change(kernel.nft, change, config, repeat))
        if kernel.ipt is not None:
            assert isinstance(ruleset, ipt_model.IptablesRuleset)
            sec.update(_one_restore(kernel.ipt, change, ruleset, config, repeat))
        state_file = Path(tmp) / "state.json"
        state_file.write_text(json.dumps(manifests.as_list(objs)))
        cli = [
            "ip", "netns", "exec", ns, sys.executable, "-m", "proxy", "apply",
            "--state", str(state_file), "--mode", mode.value,
            "--hostname-override", synthetic.NODE, "--cluster-cidr", synthetic.CLUSTER_CIDR,
        ]  # fmt: skip
        _, sec["cli_apply"] = _timed(
            lambda: subprocess.run(cli, check=True, capture_output=True), repeat
        )
    res.ratios = {
        "full_sync_vs_raw": ratio(sec["first_sync"], sec["raw_first_sync_text"]),
        "resync_vs_raw": ratio(sec["resync"], sec["raw_resync_text"]),
        "compute_and_sync_vs_raw": ratio(
            sec["plan_render"] + sec["first_sync"], sec["raw_first_sync_text"]
        ),
    }
    res.max_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def format_result(r: SyncResult) -> str:
    m = r.memory
    lines = [
        f"$ {r.command}",
        f"  {iptvariant.label(r.mode, r.iptables)}: {r.services} services x "
        f"{r.endpoints_per_service} endpoints, "
        f"{r.rules} rules/elements, {r.text_bytes / 1e6:.1f} MB of full-sync text "
        f"(re-sync {r.resync_text_bytes / 1e6:.1f} MB)",
    ]
    for stage, secs in r.seconds.items():
        lines.append(f"    {stage:<20} {secs * 1000:9.1f} ms")
    lines += [
        "    plan+render+text memory (fresh interpreter): "
        f"tracemalloc peak {m.get('traced_peak_mib', 0):.1f} MiB "
        f"(retained {m.get('traced_retained_mib', 0):.1f}), "
        f"RSS growth peak {m.get('rss_peak_growth_mib', 0):.1f} MiB "
        f"(retained {m.get('rss_retained_mib', 0):.1f}) over "
        f"{m.get('rss_after_parse_mib', 0):.0f} MiB after parse",
        f"    full sync / raw apply of the same text: {r.ratios['full_sync_vs_raw']:.2f}x; "
        f"re-sync / raw: {r.ratios['resync_vs_raw']:.2f}x; "
        f"(plan+render + full sync) / raw: {r.ratios['compute_and_sync_vs_raw']:.2f}x",
        f"    bench process max RSS (all stages): {r.max_rss_mib:.0f} MiB",
    ]
    return "\n".join(lines)


def main_sync(args: Any) -> int:
    if os.geteuid() != 0:
        print("bench sync: run as root (it creates network namespaces)", file=sys.stderr)
        return 2
    modes = list(ProxyMode) if args.mode == "both" else [ProxyMode(args.mode)]
    results = []
    for mode in modes:
        r = bench_sync(args.services, args.endpoints, mode, args.repeat, args.iptables)
        results.append(asdict(r))
        print(format_result(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {shlex.quote(args.json)}", file=sys.stderr)
    return 0
