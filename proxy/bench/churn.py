"""Steady EndpointSlice churn against a running agent, with its RSS and CPU sampled.

For ``minutes``, ``rate`` times a second (on a fixed schedule; a slow API write delays
the next one, it never causes a burst) one random EndpointSlice gets a new endpoint list:
as many endpoints as before, every address fresh (a rolling update of that Service). The
addresses come from the unreachable fake range, so nothing is ever reachable through
them. Every ``sample_every`` seconds the agent's /proc is read.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from proxy.bench.procstats import ProcSample, Sampler, read


@dataclass
class ChurnResult:
    minutes: float
    rate_per_s: float
    sample_every_s: float
    changes: int = 0
    failed_writes: int = 0
    syncs: int = 0
    """syncs the agent reported during the churn (its metrics)"""
    rss_start_mib: float = 0.0
    rss_peak_mib: float = 0.0
    """highest sampled RSS during the churn"""
    rss_final_mib: float = 0.0
    hwm_final_mib: float = 0.0
    """the kernel's high-water mark of RSS since the agent started"""
    cpu_s: float = 0.0
    """CPU seconds during the churn, the agent and its tool children (nft, iptables)"""
    cpu_ms_per_change: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)


Writer = Callable[[str, list[dict[str, Any]]], None]
"""Replaces the named EndpointSlice's endpoint list through the API."""


def new_endpoints(
    old: Sequence[dict[str, Any]], next_ip: Callable[[], str]
) -> list[dict[str, Any]]:
    """As many endpoints as ``old`` (at least one), each with a fresh address and the same
    node."""
    nodes = [e.get("nodeName", "") for e in old] or [""]
    return [{"addresses": [next_ip()], "nodeName": n} if n else {"addresses": [next_ip()]}
            for n in nodes]  # fmt: skip


def run_churn(
    *,
    pid: int,
    slices: Sequence[dict[str, Any]],
    write: Writer,
    next_ip: Callable[[], str],
    syncs: Callable[[], int],
    minutes: float,
    rate: float,
    sample_every: float = 5.0,
    seed: int = 6,
) -> ChurnResult:
    res = ChurnResult(minutes, rate, sample_every)
    rng = random.Random(seed)
    syncs_before = syncs()
    start = read(pid)
    sampler = Sampler(pid, sample_every).start()
    t0 = time.monotonic()
    deadline = t0 + minutes * 60
    try:
        while True:
            slot = t0 + res.changes / rate
            if slot >= deadline:
                break
            time.sleep(max(0.0, slot - time.monotonic()))
            sl = slices[rng.randrange(len(slices))]
            sl["endpoints"] = new_endpoints(sl["endpoints"], next_ip)
            try:
                write(sl["metadata"]["name"], sl["endpoints"])
            except Exception:
                res.failed_writes += 1
            res.changes += 1
        time.sleep(max(0.0, deadline - time.monotonic()))
    finally:
        samples = sampler.stop()
    end = read(pid, time.monotonic() - t0)
    samples.append(end)
    res.syncs = syncs() - syncs_before
    summarize(res, start, end, samples)
    return res


def summarize(
    res: ChurnResult, start: ProcSample, end: ProcSample, samples: Sequence[ProcSample]
) -> None:
    """Fill the RSS and CPU figures of ``res`` from the readings."""
    res.rss_start_mib = start.rss_mib
    res.rss_peak_mib = max([start.rss_mib, *(s.rss_mib for s in samples)])
    res.rss_final_mib = end.rss_mib
    res.hwm_final_mib = end.hwm_mib
    res.cpu_s = end.total_cpu_s - start.total_cpu_s
    res.cpu_ms_per_change = res.cpu_s * 1000 / res.changes if res.changes else 0.0
    res.samples = [
        {"at_s": round(s.at_s, 1), "rss_mib": round(s.rss_mib, 1),
         "cpu_s": round(s.total_cpu_s - start.total_cpu_s, 2)}
        for s in samples
    ]  # fmt: skip


def as_dict(res: ChurnResult) -> dict[str, Any]:
    return asdict(res)
