"""``kube-proxy-py bench datapath``: new-connection rate and first-packet latency through
a node (issue 6 e), iptables vs nftables, kube-proxy-py vs upstream.

One lab cluster (real API server) with one node namespace holding two pods: ``client``
(no servers) and ``server`` (the workload on TCP 8080). The API gets N Services: N − 1
selectorless ``bench/svc-<i>`` with 10 fake endpoints each behind an ``unreachable``
route (:mod:`proxy.bench.labobjects`), plus the **measured** Service
``zz-bench/measured`` (port 80 → 8080) whose one endpoint is the server pod.

The measured Service is the worst case for a linear chain where that applies:
kube-proxy-py writes iptables' KUBE-SERVICES in namespace/name order, so
``zz-bench/measured`` is its last Service rule (after ``default/kubernetes`` too) and a
new connection to it is compared against every other Service first. Upstream kube-proxy
fills KUBE-SERVICES from a Go map, so its position is random on every full sync: the
position actually seen (``iptables-save``) before and after the measurement is recorded.
In nftables mode both use a verdict map: one lookup whatever the position.

Sizes run in increasing order in the same cluster (Services are added between sizes).
For each size, mode and agent: the node's rules and conntrack table are emptied, the
agent starts, and once it has synced and the Service answers from the client pod,
:mod:`proxy.bench.connloop` runs in the client pod: rounds of K new connections to
ClusterIP:80 alternating with rounds to the pod IP directly (same node, same hooks, no
Service DNAT), connect() timed per connection. Figures are medians over the rounds.
Before any agent runs, one more baseline is measured with no rules at all.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proxy.bench import iptvariant, labobjects, machine
from proxy.bench.latency import bench_spec, start_agent, wait_first_sync
from proxy.bench.stats import median
from proxy.harness import Outcome, Topology
from proxy.host.spec import PodSpec
from proxy.lab.build import build
from proxy.lab.cluster import LabCluster, lab_spec, wait_for

NODE = "node-a"
SERVER = PodSpec("server", NODE, "10.244.1.11", tcp_ports=(8080,), udp_ports=())
CLIENT = PodSpec("client", NODE, "10.244.1.12", tcp_ports=(), udp_ports=())
MEASURED_NS, MEASURED = "zz-bench", "measured"
COUNTED = "ours+counters"
"""kube-proxy-py with ``--metrics-service-counters``: what counting every packet costs."""
IMPL_CHOICES = {
    "ours": ("ours",),
    "counters": (COUNTED,),
    "upstream": ("upstream",),
    "both": ("ours", "upstream"),
    "all": ("ours", COUNTED, "upstream"),
}
"""``--impl``: which agents in turn."""
ENDPOINTS_PER_FAKE_SERVICE = 10


@dataclass
class DatapathResult:
    impl: str
    """``ours``, ``upstream``, or ``none`` (no agent, no rules)"""
    mode: str
    services: int
    connections: int
    rounds: int
    command: str
    bench: str = "datapath"
    iptables: str = ""
    """the iptables backend both agents used (``legacy`` or ``nft``) in iptables mode"""
    startup_to_first_sync_s: float = 0.0
    kube_services_position: list[int] = field(default_factory=list)
    """iptables: [position of the measured Service's rule in KUBE-SERVICES, rules in the
    chain], before and after measuring (1-based)"""
    kube_services_position_after: list[int] = field(default_factory=list)
    service: dict[str, Any] = field(default_factory=dict)
    """medians over the rounds to ClusterIP:80: connect_us p50/p90/p99, rate_per_s"""
    direct: dict[str, Any] = field(default_factory=dict)
    """the same to the pod IP (no Service)"""
    service_overhead_us: float = 0.0
    """median over rounds of (service p50 − direct p50)"""
    failures: int = 0
    loadavg: float = 0.0
    """the host's 1-minute load average just before the loop: on a shared machine,
    compare it with the number of cores before trusting µs"""
    rounds_raw: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    ip_family: str = "ipv4"
    """the cluster's IP family (an IPv4 or an IPv6-only lab)"""


def command_for(
    services: int,
    mode: str,
    impl: str,
    connections: int,
    rounds: int,
    iptables: str = iptvariant.DEFAULT,
    ip_family: str = "ipv4",
) -> str:
    flag = "counters" if impl == COUNTED else impl
    command = (
        f"kube-proxy-py bench datapath --services {services} --mode {mode} --impl {flag} "
        f"--connections {connections} --rounds {rounds}"
    )
    command += iptvariant.option(mode, iptables)
    return command + (f" --ip-family {ip_family}" if ip_family != "ipv4" else "")


def summarize_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of each connect-time percentile and of the rate."""
    keys = ("p50", "p90", "p99", "mean")
    out: dict[str, Any] = {
        f"connect_{k}_us": round(median([r["connect_us"][k] for r in rounds
                                         if r["connect_us"][k] is not None]), 1)
        for k in keys
    }  # fmt: skip
    out["rate_per_s"] = round(median([r["rate_per_s"] for r in rounds]), 1)
    return out


def overhead_us(service: list[dict[str, Any]], direct: list[dict[str, Any]]) -> float:
    """Median over paired rounds of service p50 − direct p50."""
    diffs = [
        s["connect_us"]["p50"] - d["connect_us"]["p50"]
        for s, d in zip(service, direct, strict=False)
    ]
    return round(median(diffs), 1)


class _Bench:
    def __init__(
        self,
        lab: LabCluster[Topology],
        connections: int,
        rounds: int,
        iptables: str,
        ip_family: str = "ipv4",
    ) -> None:
        self.lab = lab
        self.iptables = iptables
        self.ip_family = ip_family
        self.server_ip = lab.spec.pod(SERVER.name).ip
        self.connections = connections
        self.rounds = rounds
        self.cluster_ip = ""
        self.created = 0
        self.loadavg = 0.0
        self.machine = machine.describe()

    def setup(self) -> None:
        lab = self.lab
        fake = labobjects.fake_endpoints(self.ip_family)
        lab.topo.run(NODE, ["ip", "route", "add", "unreachable", fake])
        labobjects.create_namespace(lab)
        labobjects.create_namespace(lab, MEASURED_NS)
        measured = [
            labobjects.service(MEASURED, namespace=MEASURED_NS, family=self.ip_family),
            labobjects.endpoint_slice(
                MEASURED,
                [{"addresses": [self.server_ip], "nodeName": NODE}],
                namespace=MEASURED_NS,
                family=self.ip_family,
            ),
        ]
        self.cluster_ip = labobjects.create_all(lab, measured)[MEASURED]
        self.created = 1

    def grow(self, services: int) -> None:
        """Add fake Services until there are ``services`` in all (the measured one too)."""
        if services > self.created:
            fake = range(self.created - 1, services - 1)
            objs = labobjects.objects(fake, ENDPOINTS_PER_FAKE_SERVICE, self.ip_family)
            labobjects.create_all(self.lab, objs)
            self.created = services

    def reset_node(self) -> None:
        """Empty the node's netfilter rules and conntrack table (the node namespace is
        this run's own; both agents' rules live in nftables, or legacy iptables)."""
        run = self.lab.topo.run
        run(NODE, ["nft", "flush", "ruleset"], check=False)
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            for table in ("nat", "filter", "mangle"):
                for verb in ("-F", "-X"):
                    run(NODE, [tool, "-t", table, verb], check=False)
        for family in ("ipv4", "ipv6"):
            run(NODE, ["conntrack", "-F", "-f", family], check=False)

    def kube_services_position(self) -> list[int]:
        """[1-based position of the measured Service's rule, rules in KUBE-SERVICES]."""
        v6 = self.ip_family == "ipv6"
        base = "ip6tables" if v6 else "iptables"
        for tool in (f"{base}-nft-save", f"{base}-legacy-save"):
            out = self.lab.topo.run(NODE, [tool, "-t", "nat"], check=False).stdout
            rules = [line for line in out.splitlines() if line.startswith("-A KUBE-SERVICES ")]
            for i, line in enumerate(rules, 1):
                if f"-d {self.cluster_ip}/{128 if v6 else 32}" in line:
                    return [i, len(rules)]
        return []

    def reaches(self) -> bool:
        r = self.lab.topo.prober(CLIENT.name).tcp(self.cluster_ip, 80, timeout=0.2)
        return r.outcome is Outcome.ANSWERED and r.endpoint == SERVER.name

    def loop(self, with_service: bool) -> dict[str, list[dict[str, Any]]]:
        def at(ip: str, port: int) -> str:
            return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

        targets = [f"direct={at(self.server_ip, 8080)}"]
        if with_service:
            targets.insert(0, f"service={at(self.cluster_ip, 80)}")
        argv = [sys.executable, "-m", "proxy.bench.connloop", "--expect", SERVER.name,
                "--count", str(self.connections), "--rounds", str(self.rounds)]  # fmt: skip
        for t in targets:
            argv += ["--target", t]
        self.loadavg = float(Path("/proc/loadavg").read_text().split()[0])
        timeout = 120 + self.rounds * len(targets) * self.connections * 0.05
        proc = self.lab.topo.run(CLIENT.name, argv, timeout=timeout)
        result: dict[str, list[dict[str, Any]]] = json.loads(proc.stdout)
        return result

    def bare(self) -> DatapathResult:
        """No agent, no rules: connections straight to the pod."""
        self.reset_node()
        flag = f" --ip-family {self.ip_family}" if self.ip_family != "ipv4" else ""
        res = DatapathResult("none", "none", 0, self.connections, self.rounds,
                             f"(baseline of every `kube-proxy-py bench datapath{flag}` run)",
                             ip_family=self.ip_family)  # fmt: skip
        res.machine = self.machine
        rounds = self.loop(with_service=False)
        res.rounds_raw = rounds
        res.loadavg = self.loadavg
        res.direct = summarize_rounds(rounds["direct"])
        res.failures = sum(r["failures"] for r in rounds["direct"])
        return res

    def measure(self, services: int, mode: str, impl: str) -> DatapathResult:
        lab = self.lab
        self.reset_node()
        res = DatapathResult(
            impl, mode, services, self.connections, self.rounds,
            command_for(services, mode, impl, self.connections, self.rounds, self.iptables,
                        self.ip_family),
            iptables=iptvariant.recorded(mode, self.iptables),
            ip_family=self.ip_family,
        )  # fmt: skip
        res.machine = self.machine
        start = time.monotonic()
        if impl == COUNTED:
            agent = start_agent(lab, "ours", mode, "--metrics-service-counters")
        else:
            agent = start_agent(lab, impl, mode)
        try:
            wait_first_sync(lab, agent)
            res.startup_to_first_sync_s = round(time.monotonic() - start, 2)
            wait_for(self.reaches, 60, 0.1, what="the measured Service to answer")
            if mode == "iptables":
                res.kube_services_position = self.kube_services_position()
            rounds = self.loop(with_service=True)
            if mode == "iptables":
                res.kube_services_position_after = self.kube_services_position()
            if not agent.alive():
                raise RuntimeError(f"the agent exited during the run; log: {agent.log_path}")
        finally:
            lab.stop_agent(NODE)
        res.rounds_raw = rounds
        res.loadavg = self.loadavg
        res.service = summarize_rounds(rounds["service"])
        res.direct = summarize_rounds(rounds["direct"])
        res.service_overhead_us = overhead_us(rounds["service"], rounds["direct"])
        res.failures = sum(r["failures"] for rs in rounds.values() for r in rs)
        return res


def run(
    sizes: list[int],
    modes: list[str],
    impls: list[str],
    connections: int,
    rounds: int,
    on_result: Any = None,
    iptables: str = iptvariant.DEFAULT,
    ip_family: str = "ipv4",
) -> list[DatapathResult]:
    spec = bench_spec((SERVER, CLIENT), ip_family)
    results: list[DatapathResult] = []

    def keep(r: DatapathResult) -> None:
        results.append(r)
        if on_result is not None:
            on_result(r, results)

    with (
        iptvariant.using(iptables),
        tempfile.TemporaryDirectory(prefix="kpp-bench-") as tmp,
        LabCluster(
            build(), Topology(lab_spec(spec)), workdir=Path(tmp), with_controllers=False
        ) as lab,
    ):
        bench = _Bench(lab, connections, rounds, iptables, ip_family)
        bench.setup()
        keep(bench.bare())
        for size in sorted(sizes):
            bench.grow(size)
            for mode in modes:
                for impl in impls:
                    keep(bench.measure(size, mode, impl))
        bench.reset_node()
    return results


def format_result(r: DatapathResult) -> str:
    d = r.direct
    if r.impl == "none":
        return (
            f"  no agent, no rules: direct to the pod: connect p50 {d['connect_p50_us']:.0f} µs, "
            f"p99 {d['connect_p99_us']:.0f} µs, {d['rate_per_s']:.0f} conn/s"
        )
    s = r.service
    pos = ""
    if r.kube_services_position:
        before, after = r.kube_services_position, r.kube_services_position_after
        pos = f"; KUBE-SERVICES rule {before[0]}/{before[1]}"
        if after and after != before:
            pos += f" (after: {after[0]}/{after[1]})"
    return "\n".join(
        [
            f"$ {r.command}",
            f"  {r.impl} {iptvariant.label(r.mode, r.iptables)}, {r.services} services: "
            "first sync after "
            f"{r.startup_to_first_sync_s:.1f} s{pos}",
            f"    via ClusterIP: connect p50 {s['connect_p50_us']:.0f} µs, "
            f"p90 {s['connect_p90_us']:.0f}, p99 {s['connect_p99_us']:.0f}; "
            f"{s['rate_per_s']:.0f} conn/s",
            f"    direct to pod: connect p50 {d['connect_p50_us']:.0f} µs, "
            f"p90 {d['connect_p90_us']:.0f}, p99 {d['connect_p99_us']:.0f}; "
            f"{d['rate_per_s']:.0f} conn/s",
            f"    Service overhead (p50): {r.service_overhead_us:+.0f} µs; "
            f"{r.failures} failed connections; host load {r.loadavg:.1f}",
        ]
    )


def main_datapath(args: Any) -> int:
    if os.geteuid() != 0:
        print("bench datapath: run as root (it builds network namespaces)", file=sys.stderr)
        return 2
    try:
        sizes = [int(s) for s in str(args.services).split(",") if s.strip()]
    except ValueError:
        print(f"bench datapath: --services {args.services!r}: give sizes like 10,1000",
              file=sys.stderr)  # fmt: skip
        return 2
    if not sizes or min(sizes) < 1:
        print("bench datapath: --services: every size must be at least 1", file=sys.stderr)
        return 2
    modes = ["iptables", "nftables"] if args.mode == "both" else [args.mode]
    impls = list(IMPL_CHOICES[args.impl])

    def on_result(r: DatapathResult, results: list[DatapathResult]) -> None:
        print(format_result(r), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps([asdict(x) for x in results], indent=2) + "\n")

    run(sizes, modes, impls, args.connections, args.rounds, on_result, args.iptables,
        args.ip_family)  # fmt: skip
    return 0
