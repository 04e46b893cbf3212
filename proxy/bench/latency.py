"""``kube-proxy-py bench latency``: network programming latency (issue 6 c) and the
agent's footprint at start and under churn (issue 6 d), kube-proxy-py or upstream.

A lab cluster (real control plane in its namespace, one node namespace holding one real
pod) gets N selectorless Services with hand-written EndpointSlices of M endpoints each
(:mod:`proxy.bench.labobjects`); those addresses sit behind an ``unreachable`` route on
the node, so a connection DNATed to one fails at once. The agent — ``kube-proxy-py run``
or upstream ``kube-proxy`` built by ``lab build``, same flags — runs in the node namespace.

1. **Start-up**: from starting the agent until its first sync (its metrics count one):
   wall time, then RSS and CPU seconds (the process and its nft/iptables children) read
   from /proc.
2. **Programming latency**: C times, one Service's EndpointSlice is rewritten through the
   API to hold only the real pod, and the clock runs from just before that write until a
   connection from the node to the Service's ClusterIP reaches the pod (each check is a
   connect, well under 1 ms; listing a large ruleset would cost 100 ms or more and load
   the CPU). Changes are spaced by more than the min sync period, so each measures a
   programming, not a wait in the queue.
3. **Churn** (``--churn-minutes M``): then, for M minutes, ``--churn-rate`` random
   EndpointSlices a second get a new endpoint list (:mod:`proxy.bench.churn`); RSS and
   CPU sampled every few seconds.

``--min-sync-period default`` leaves the flag out, so each agent runs with its own
default (both are 1s: :data:`DEFAULT_MIN_SYNC_PERIODS`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy.agent.options.govalues import parse_go_duration
from proxy.agent.options.settings import DEFAULT_MIN_SYNC_PERIOD as OURS_DEFAULT_MIN_SYNC
from proxy.bench import iptvariant, labobjects, machine
from proxy.bench.churn import as_dict, run_churn
from proxy.bench.procstats import read
from proxy.bench.stats import percentile
from proxy.harness import Outcome, Topology
from proxy.host.spec import NodeSpec, PodSpec, TopologySpec, with_versions
from proxy.lab.build import build
from proxy.lab.cluster import Agent, LabCluster, lab_spec, wait_for

NODE = "node-a"
POD = PodSpec("target", NODE, "10.244.1.11", tcp_ports=(8080,), udp_ports=())
IMPLS = ("ours", "upstream")
DEFAULT_MIN_SYNC_PERIODS = {"ours": f"{OURS_DEFAULT_MIN_SYNC:g}s", "upstream": "1s"}
"""Each agent's default min sync period in both modes (upstream: KubeProxyConfiguration
iptables.minSyncPeriod and nftables.minSyncPeriod, 1s)."""


@dataclass
class LatencyResult:
    impl: str
    mode: str
    services: int
    endpoints_per_service: int
    changes: int
    min_sync_period: str
    """the effective value (the impl's default when the flag was left out)"""
    min_sync_period_is_default: bool
    command: str
    bench: str = "latency"
    iptables: str = ""
    """the iptables backend both agents used (``legacy`` or ``nft``) in iptables mode"""
    startup_to_first_sync_s: float = 0.0
    at_first_sync: dict[str, float] = field(default_factory=dict)
    """/proc readings at the first sync: rss_mib, hwm_mib, cpu_s, children_cpu_s"""
    after_changes: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    write_ms: list[float] = field(default_factory=list)
    """Of each latency, the API write: the PATCH until the API server answered (etcd
    committed it); the agent only hears of the change after that."""
    poll_cost_ms: float = 0.0
    """Median cost of one kernel check; latencies include up to one of these."""
    churn: dict[str, Any] | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    ip_family: str = "ipv4"
    """the cluster's IP family: an IPv4 or an IPv6-only lab (either agent still programs
    both families' tables, as on any node whose kernel has IPv6)"""

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def start_agent(lab: LabCluster[Topology], impl: str, mode: str, *extra: str) -> Agent:
    if impl == "upstream":
        return lab.start_upstream_agent(NODE, mode, *extra)
    return lab.start_agent(NODE, mode, *extra)


def wait_first_sync(lab: LabCluster[Topology], agent: Agent, timeout: float = 900) -> None:
    """Until the agent's metrics count a sync; RuntimeError at once if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not agent.alive():
            tail = "\n".join(agent.log_text().splitlines()[-15:])
            raise RuntimeError(f"the agent exited before its first sync; its log ends:\n{tail}")
        try:
            if lab.syncs(NODE) > 0:
                return
        except Exception:  # metrics not served yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no first sync after {timeout:.0f} s; log: {agent.log_path}")
        time.sleep(0.05)


def sync_flags(min_sync_period: str) -> tuple[str, ...]:
    """The agent flags for ``--min-sync-period`` (none for ``default``)."""
    if min_sync_period == "default":
        return ()
    return (f"--iptables-min-sync-period={min_sync_period}",)


def bench_spec(pods: tuple[PodSpec, ...], family: str) -> TopologySpec:
    """One node holding ``pods``, in an IPv4 or an IPv6-only lab (the IPv6 addresses are
    the IPv4 ones' twins)."""
    spec = TopologySpec(
        nodes=(NodeSpec(NODE, "192.168.50.11", "10.244.1.0/24"),), pods=pods, clients=()
    )
    return with_versions(spec, (6,) if family == "ipv6" else (4,))


@dataclass(frozen=True)
class _Reaches:
    """Polls whether a connection from the node to ``cip``:80 reaches the real pod."""

    lab: LabCluster[Topology]
    cip: str

    def __call__(self) -> bool:
        result = self.lab.topo.prober(NODE).tcp(self.cip, 80, timeout=0.05)
        return result.outcome is Outcome.ANSWERED and result.endpoint == POD.name


def command_for(
    services: int,
    endpoints: int,
    changes: int,
    mode: str,
    min_sync_period: str,
    impl: str,
    churn_minutes: float = 0,
    churn_rate: float = 2.0,
    iptables: str = iptvariant.DEFAULT,
    ip_family: str = "ipv4",
) -> str:
    command = (
        f"kube-proxy-py bench latency --services {services} --endpoints {endpoints} "
        f"--changes {changes} --mode {mode} --min-sync-period {min_sync_period} --impl {impl}"
    )
    command += iptvariant.option(mode, iptables)
    if ip_family != "ipv4":
        command += f" --ip-family {ip_family}"
    if churn_minutes:
        command += f" --churn-minutes {churn_minutes:g} --churn-rate {churn_rate:g}"
    return command


def bench_latency(
    services: int,
    endpoints: int,
    changes: int,
    mode: str,
    min_sync_period: str,
    impl: str,
    churn_minutes: float = 0,
    churn_rate: float = 2.0,
    sample_every: float = 5.0,
    iptables: str = iptvariant.DEFAULT,
    ip_family: str = "ipv4",
) -> LatencyResult:
    is_default = min_sync_period == "default"
    res = LatencyResult(
        impl, mode, services, endpoints, changes,
        DEFAULT_MIN_SYNC_PERIODS[impl] if is_default else min_sync_period, is_default,
        command_for(services, endpoints, changes, mode, min_sync_period, impl,
                    churn_minutes, churn_rate, iptables, ip_family),
        iptables=iptvariant.recorded(mode, iptables),
        ip_family=ip_family,
    )  # fmt: skip
    res.machine = machine.describe()
    spec = bench_spec((POD,), ip_family)
    pod_ip = spec.pod(POD.name).ip
    objs = labobjects.objects(range(services), endpoints, ip_family)
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    with (
        iptvariant.using(iptables),
        tempfile.TemporaryDirectory(prefix="kpp-bench-") as tmp,
        LabCluster(
            build(), Topology(lab_spec(spec)), workdir=Path(tmp), with_controllers=False
        ) as lab,
    ):
        fake = labobjects.fake_endpoints(ip_family)
        lab.topo.run(NODE, ["ip", "route", "add", "unreachable", fake])
        labobjects.create_namespace(lab)
        cluster_ips = labobjects.create_all(lab, objs)
        start = time.monotonic()
        agent = start_agent(lab, impl, mode, *sync_flags(min_sync_period))
        wait_first_sync(lab, agent)
        res.startup_to_first_sync_s = time.monotonic() - start
        first = read(agent.pid)
        res.at_first_sync = _reading(first)
        spacing = parse_go_duration(res.min_sync_period, "--min-sync-period") + 0.15
        for i in range(changes):
            sl = slices[(i * 7919) % len(slices)]
            svc = sl["metadata"]["labels"]["kubernetes.io/service-name"]
            reaches = _Reaches(lab, cluster_ips[svc])
            if reaches():
                raise RuntimeError(f"{svc} reaches the pod before the change")
            sl["endpoints"] = [{"addresses": [pod_ip], "nodeName": NODE}]
            t0 = time.monotonic()
            labobjects.set_endpoints(lab, sl["metadata"]["name"], sl["endpoints"])
            res.write_ms.append((time.monotonic() - t0) * 1000)
            wait_for(reaches, 60, 0.0, what=f"{svc} to reach the pod")
            res.latencies_ms.append((time.monotonic() - t0) * 1000)
            time.sleep(spacing)
        res.after_changes = _reading(read(agent.pid))
        probe = _Reaches(
            lab, cluster_ips[slices[0]["metadata"]["labels"]["kubernetes.io/service-name"]]
        )
        polls = []
        for _ in range(20):
            t = time.monotonic()
            probe()
            polls.append((time.monotonic() - t) * 1000)
        res.poll_cost_ms = statistics.median(polls)
        if churn_minutes > 0:
            churned = run_churn(
                pid=agent.pid,
                slices=slices,
                write=lambda name, eps: labobjects.set_endpoints(lab, name, eps),
                next_ip=labobjects.ip_counter(services * endpoints, ip_family),
                syncs=lambda: lab.syncs(NODE),
                minutes=churn_minutes,
                rate=churn_rate,
                sample_every=sample_every,
            )
            res.churn = as_dict(churned)
        if not agent.alive():
            raise RuntimeError(f"the agent exited during the run; log: {agent.log_path}")
        lab.stop_agent(NODE)
    return res


def _reading(sample: Any) -> dict[str, float]:
    return {k: round(v, 3) for k, v in asdict(sample).items() if k != "at_s"}


def format_result(r: LatencyResult) -> str:
    lat = r.latencies_ms
    f, a = r.at_first_sync, r.after_changes
    default = " (its default)" if r.min_sync_period_is_default else ""
    lines = [
        f"$ {r.command}",
        f"  {r.impl} {iptvariant.label(r.mode, r.iptables)}: {r.services} services x "
        f"{r.endpoints_per_service} endpoints, "
        f"min sync period {r.min_sync_period}{default}",
        f"    API write -> rule in kernel over {len(lat)} changes: "
        f"p50 {r.percentile(50):.0f} ms, p99 {r.percentile(99):.0f} ms, "
        f"max {max(lat, default=float('nan')):.0f} ms, "
        f"mean {statistics.fmean(lat) if lat else float('nan'):.0f} ms "
        f"(one check costs {r.poll_cost_ms:.1f} ms)",
        f"    of which the API write (PATCH until answered): p50 "
        f"{percentile(r.write_ms, 50):.0f} ms, p99 {percentile(r.write_ms, 99):.0f} ms",
        f"    agent start -> first sync: {r.startup_to_first_sync_s:.2f} s, "
        f"{f['cpu_s'] + f['children_cpu_s']:.2f} CPU s "
        f"({f['children_cpu_s']:.2f} in nft/iptables children), RSS {f['rss_mib']:.0f} MiB",
        f"    after the changes: RSS {a['rss_mib']:.0f} MiB, peak {a['hwm_mib']:.0f} MiB, "
        f"{a['cpu_s'] + a['children_cpu_s']:.2f} CPU s since start",
    ]
    c = r.churn
    if c is not None:
        lines.append(
            f"    churn {c['minutes']:g} min at {c['rate_per_s']:g}/s: {c['changes']} changes "
            f"({c['failed_writes']} failed writes), {c['syncs']} syncs; "
            f"{c['cpu_s']:.1f} CPU s ({c['cpu_ms_per_change']:.1f} ms/change); RSS start "
            f"{c['rss_start_mib']:.0f}, peak {c['rss_peak_mib']:.0f}, final "
            f"{c['rss_final_mib']:.0f} MiB (high-water mark {c['hwm_final_mib']:.0f})"
        )
    return "\n".join(lines)


def main_latency(args: Any) -> int:
    if os.geteuid() != 0:
        print("bench latency: run as root (it builds network namespaces)", file=sys.stderr)
        return 2
    modes = ["iptables", "nftables"] if args.mode == "both" else [args.mode]
    impls = list(IMPLS) if args.impl == "both" else [args.impl]
    results = []
    for mode in modes:
        for impl in impls:
            r = bench_latency(
                args.services, args.endpoints, args.changes, mode, args.min_sync_period, impl,
                args.churn_minutes, args.churn_rate, args.sample_every, args.iptables,
                args.ip_family,
            )  # fmt: skip
            results.append(asdict(r))
            print(format_result(r), flush=True)
            if args.json:  # after each run: a crash later keeps what was measured
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0
