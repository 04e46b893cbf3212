"""``kube-proxy-py bench latency``: network programming latency and agent footprint.

A lab cluster (real control plane in its namespace, one node namespace holding one real
pod) gets N selectorless Services with hand-written EndpointSlices of M endpoints each;
those endpoint addresses sit behind an ``unreachable`` route on the node, so a connection
DNATed to one fails at once. The agent runs in the node namespace exactly as in the e2e
tests. Then, C times: one Service's EndpointSlice is rewritten through the API to hold
only the real pod, and the clock runs from just before that write until a connection from
the node to the Service's ClusterIP reaches the pod (each check is a connect, about 1 ms;
listing a large ruleset would cost 100 ms or more and load the CPU). Changes are spaced by
more than the min sync period, so each measures a programming, not a wait in the queue.
Also reported: time from agent start to the first sync, the agent's RSS and CPU seconds.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy.harness import NodeSpec, Outcome, PodSpec, TopologySpec
from proxy.lab.build import build
from proxy.lab.cluster import LabCluster, wait_for

NAMESPACE = "bench"
NODE = "node-a"
POD = PodSpec("target", NODE, "10.244.1.11", tcp_ports=(8080,), udp_ports=())
FAKE_ENDPOINTS = "10.128.0.0/10"


@dataclass
class LatencyResult:
    mode: str
    services: int
    endpoints_per_service: int
    changes: int
    min_sync_period: str
    command: str
    startup_to_first_sync_s: float = 0.0
    rss_after_first_sync_mib: float = 0.0
    rss_after_changes_mib: float = 0.0
    cpu_seconds_to_first_sync: float = 0.0
    cpu_seconds_total: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    poll_cost_ms: float = 0.0
    """Median cost of one kernel check; latencies include up to one of these."""

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        k = min(len(data) - 1, max(0, round(q / 100 * (len(data) - 1))))
        return data[k]


def _endpoint_ip(i: int) -> str:
    return f"10.{128 + (i >> 16)}.{(i >> 8) & 0xFF}.{i & 0xFF}"


def _objects(services: int, endpoints: int) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    counter = 0
    for i in range(services):
        name = f"svc-{i}"
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            }
        )
        eps = []
        for _ in range(endpoints):
            eps.append({"addresses": [_endpoint_ip(counter)], "nodeName": f"node-{counter % 7}"})
            counter += 1
        objs.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-1",
                    "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps,
            }
        )
    return objs


def _create_all(lab: LabCluster, objs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Create everything; the Services' cluster IPs by name."""
    cp = lab.control_plane
    cp.api("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})

    def create(obj: dict[str, Any]) -> tuple[str, str]:
        if obj["kind"] == "Service":
            path = f"/api/v1/namespaces/{NAMESPACE}/services"
        else:
            path = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
        created = cp.api("POST", path, obj)
        return created["metadata"]["name"], str(created.get("spec", {}).get("clusterIP", ""))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return {name: ip for name, ip in pool.map(create, objs) if ip}


def _proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return rss, cpu


@dataclass(frozen=True)
class _Reaches:
    """Polls whether a connection from the node to ``cip``:80 reaches the real pod."""

    lab: LabCluster
    cip: str

    def __call__(self) -> bool:
        result = self.lab.topo.prober(NODE).tcp(self.cip, 80, timeout=0.05)
        return result.outcome is Outcome.ANSWERED and result.endpoint == POD.name


def bench_latency(
    services: int, endpoints: int, changes: int, mode: str, min_sync_period: str
) -> LatencyResult:
    command = (
        f"kube-proxy-py bench latency --services {services} --endpoints {endpoints} "
        f"--changes {changes} --mode {mode} --min-sync-period {min_sync_period}"
    )
    res = LatencyResult(mode, services, endpoints, changes, min_sync_period, command)
    spec = TopologySpec(nodes=(NodeSpec(NODE, "192.168.50.11", "10.244.1.0/24"),), pods=(POD,),
                        clients=())  # fmt: skip
    objs = _objects(services, endpoints)
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    with (
        tempfile.TemporaryDirectory(prefix="kpp-bench-") as tmp,
        LabCluster(build(), spec, workdir=Path(tmp), with_controllers=False) as lab,
    ):
        lab.topo.run(NODE, ["ip", "route", "add", "unreachable", FAKE_ENDPOINTS])
        cluster_ips = _create_all(lab, objs)
        start = time.monotonic()
        agent = lab.start_agent(NODE, mode, f"--iptables-min-sync-period={min_sync_period}")
        wait_for(lambda: lab.syncs(NODE) > 0, 600, 0.05, what="the agent's first sync")
        res.startup_to_first_sync_s = time.monotonic() - start
        res.rss_after_first_sync_mib, res.cpu_seconds_to_first_sync = _proc_stats(agent.pid)
        spacing = _seconds(min_sync_period) + 0.15
        for i in range(changes):
            sl = slices[(i * 7919) % len(slices)]
            svc = sl["metadata"]["labels"]["kubernetes.io/service-name"]
            reaches = _Reaches(lab, cluster_ips[svc])
            if reaches():
                raise RuntimeError(f"{svc} reaches the pod before the change")
            path = (
                f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices/"
                f"{sl['metadata']['name']}"
            )
            patch = {"endpoints": [{"addresses": [POD.ip], "nodeName": NODE}]}
            t0 = time.monotonic()
            lab.control_plane.api("PATCH", path, patch, content_type="application/merge-patch+json")
            wait_for(reaches, 60, 0.0, what=f"{svc} to reach the pod")
            res.latencies_ms.append((time.monotonic() - t0) * 1000)
            time.sleep(spacing)
        res.rss_after_changes_mib, res.cpu_seconds_total = _proc_stats(agent.pid)
        probe = _Reaches(
            lab, cluster_ips[slices[0]["metadata"]["labels"]["kubernetes.io/service-name"]]
        )
        polls = []
        for _ in range(20):
            t = time.monotonic()
            probe()
            polls.append((time.monotonic() - t) * 1000)
        res.poll_cost_ms = statistics.median(polls)
        lab.stop_agent(NODE)
    return res


def _seconds(text: str) -> float:
    from proxy.agent.options import parse_go_duration

    return parse_go_duration(text, "--min-sync-period")


def format_result(r: LatencyResult) -> str:
    lat = r.latencies_ms
    return "\n".join(
        [
            f"$ {r.command}",
            f"  {r.mode}: {r.services} services x {r.endpoints_per_service} endpoints, "
            f"min sync period {r.min_sync_period}",
            f"    API write -> rule in kernel over {len(lat)} changes: "
            f"p50 {r.percentile(50):.0f} ms, p99 {r.percentile(99):.0f} ms, "
            f"max {max(lat):.0f} ms, mean {statistics.fmean(lat):.0f} ms "
            f"(one check costs {r.poll_cost_ms:.1f} ms)",
            f"    agent start -> first sync: {r.startup_to_first_sync_s:.2f} s "
            f"({r.cpu_seconds_to_first_sync:.2f} CPU s)",
            f"    agent RSS: {r.rss_after_first_sync_mib:.0f} MiB after the first sync, "
            f"{r.rss_after_changes_mib:.0f} MiB after the changes; "
            f"{r.cpu_seconds_total:.2f} CPU s in all",
        ]
    )


def main_latency(args: Any) -> int:
    if os.geteuid() != 0:
        print("bench latency: run as root (it builds network namespaces)", file=sys.stderr)
        return 2
    modes = ["iptables", "nftables"] if args.mode == "both" else [args.mode]
    results = []
    for mode in modes:
        r = bench_latency(args.services, args.endpoints, args.changes, mode, args.min_sync_period)
        results.append(asdict(r))
        print(format_result(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0
