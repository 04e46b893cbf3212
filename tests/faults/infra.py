"""The fault suite's lab: one real cluster, two agents, steady load, rule readers, results.

Layout (``proxy.lab.cluster.LabCluster``, namespaces only, nothing linked to the host):

- ``node-a`` runs kube-proxy-py in **iptables** mode (the nft-backed variant, Debian's
  default; switched to ``legacy`` by the tests that need it), ``node-b`` in **nftables**
  mode, both with ``--iptables-sync-period=5s --iptables-min-sync-period=100ms``, a
  private ``XTABLES_LOCKFILE`` (``ip netns exec`` shares the host's ``/run``, and
  iptables 1.8.9 reads ``XTABLES_LOCKFILE``, not ``XT_LOCK_NAME``) and a PATH whose rule
  writing tools are shims (:mod:`tests.faults.shim`).
- Service ``steady`` (NodePort, the four serving pods a1, a2, b1, b2) carries four
  streams of new connections (:mod:`tests.faults.loadgen`), ten a second each:
  ``node-a/cluster-ip`` from pod a3 and ``node-b/cluster-ip`` from pod b3 (each crosses
  only its own node's rules), ``node-a/node-port`` and ``node-b/node-port`` from the
  outside client. Each stream is DNATed by its own node's rules only, so a rule fault on
  one node is not seen on the other node's streams; connections to pods on the other node
  are forwarded by that node's kernel, so a kernel fault there (a full conntrack table)
  is seen by both.
- Tests add selectorless Services with hand-written EndpointSlices (:func:`service`,
  :func:`endpoint_slice`), labelled with the test's tag, to check that changes made
  during a fault are programmed and deletions removed.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.harness import Topology
from proxy.host.process import child_env
from proxy.host.spec import PodSpec, TopologySpec, default_spec
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.executor import Executor
from proxy.lab.cluster import CLUSTER_CIDR, Agent, LabCluster
from tests.faults.shim import Shim

NODE_FOR_MODE = {"iptables": "node-a", "nftables": "node-b"}
MODE_OF_NODE = {node: mode for mode, node in NODE_FOR_MODE.items()}
NODES = ("node-a", "node-b")
NODE_IP = {"node-a": "192.168.50.11", "node-b": "192.168.50.12"}
CLIENT_POD = {"node-a": "a3", "node-b": "b3"}
POD_IP = {"a1": "10.244.1.11", "a2": "10.244.1.12", "b1": "10.244.2.11", "b2": "10.244.2.12"}
SERVERS = tuple(POD_IP)
API_SERVER = ("192.168.50.2", 6443)
SYNC_PERIOD = 5.0
AGENT_FLAGS = ("--iptables-sync-period=5s", "--iptables-min-sync-period=100ms")
STREAM_INTERVAL = 0.1
STREAM_TIMEOUT = 2.0
RETRANSMIT = 0.9
"""A connection that took this long had its first SYN lost (retransmitted after 1 s)."""
LABEL = "faults.kube-proxy-py/test"
NS = "default"


def spec() -> TopologySpec:
    """The harness default (a1, a2, a3 on node-a; b1, b2 on node-b; outside) plus a client
    pod b3 on node-b, so that each node has a pod whose traffic only its rules handle."""
    return default_spec().with_pod(
        PodSpec("b3", "node-b", "10.244.2.13", tcp_ports=(), udp_ports=())
    )


# -- API objects -----------------------------------------------------------------------


def service(
    name: str,
    tag: str,
    *,
    selector: Mapping[str, str] | None = None,
    node_port: bool = False,
) -> dict[str, Any]:
    """A Service with ports ``http`` (80/TCP) and ``dns`` (80/UDP); selectorless unless
    ``selector`` (then the EndpointSlice controller publishes its endpoints)."""
    spec: dict[str, Any] = {
        "ports": [
            {"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"},
            {"name": "dns", "port": 80, "targetPort": 80, "protocol": "UDP"},
        ]
    }
    if selector is not None:
        spec["selector"] = dict(selector)
    if node_port:
        spec["type"] = "NodePort"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "labels": {LABEL: tag}},
        "spec": spec,
    }


def endpoint_slice(svc: str, tag: str, pods: Sequence[str]) -> dict[str, Any]:
    """The one EndpointSlice of a selectorless Service: ``pods`` Ready."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-faults",
            "namespace": NS,
            "labels": {
                LABEL: tag,
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "faults.kube-proxy-py",
            },
        },
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "dns", "port": 80, "protocol": "UDP"},
        ],
        "endpoints": [
            {"addresses": [POD_IP[p]], "conditions": {"ready": True}} for p in sorted(pods)
        ],
    }


def endpoints_of(pods: Sequence[str]) -> set[str]:
    return {f"{POD_IP[p]}:80" for p in pods}


# -- streams of connections --------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    target: str
    t: float
    dt: float
    ok: bool
    pod: str
    err: str


@dataclass
class Window:
    """Connection attempts of some streams that started within a time window."""

    attempted: int = 0
    failed: int = 0
    delayed: int = 0
    """Answered, but only after a SYN retransmission (the first SYN was lost)."""
    errors: Counter[str] = field(default_factory=Counter)
    first_failure: float | None = None
    last_failure: float | None = None

    def add(self, a: Attempt) -> None:
        self.attempted += 1
        if not a.ok:
            self.failed += 1
            self.errors[a.err] += 1
            self.first_failure = a.t if self.first_failure is None else self.first_failure
            self.last_failure = a.t
        elif a.dt >= RETRANSMIT:
            self.delayed += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "failed": self.failed,
            "delayed": self.delayed,
            "errors": dict(self.errors),
        }

    def __str__(self) -> str:
        return f"{self.failed} failed, {self.delayed} delayed of {self.attempted}" + (
            f" ({dict(self.errors)})" if self.errors else ""
        )


class Streams:
    """The load generators (one process per source namespace) and their records."""

    def __init__(self, cluster: LabCluster[Topology], workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.outputs: dict[str, Path] = {}

    def start(self, source: str, targets: Mapping[str, tuple[str, int]]) -> None:
        out = self.workdir / f"stream-{source}.jsonl"
        argv = [
            sys.executable, "-m", "tests.faults.loadgen",
            "--interval", str(STREAM_INTERVAL), "--timeout", str(STREAM_TIMEOUT),
        ]  # fmt: skip
        for name, (ip, port) in targets.items():
            argv += ["--target", f"{name}={ip}:{port}"]
        with out.open("w") as f:
            self.processes[source] = self.cluster.topo.popen(source, argv, stdout=f)
        self.outputs[source] = out
        deadline = time.monotonic() + 30
        while '"ready"' not in out.read_text():
            if self.processes[source].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"load generator in {source} did not start")
            time.sleep(0.05)

    def attempts(self) -> list[Attempt]:
        found: list[Attempt] = []
        for out in self.outputs.values():
            for line in out.read_text().splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if "target" in r:
                    found.append(Attempt(r["target"], r["t"], r["dt"], r["ok"], r["pod"], r["err"]))
        return found

    def window(self, since: float, until: float, targets: Sequence[str] | None = None) -> Window:
        """Attempts started in [since, until) of the given streams (``node-a/…`` names;
        all when None). Attempts still running are not counted: call after ``until`` +
        the stream timeout (:meth:`settle`)."""
        w = Window()
        for a in sorted(self.attempts(), key=lambda a: a.t):
            if since <= a.t < until and (targets is None or a.target in targets):
                w.add(a)
        return w

    def node_window(self, node: str, since: float, until: float) -> Window:
        return self.window(since, until, [f"{node}/cluster-ip", f"{node}/node-port"])

    def settle(self) -> None:
        """Wait until every attempt started so far has ended."""
        time.sleep(STREAM_TIMEOUT + 0.3)

    def first_success_after(self, node: str, since: float) -> float | None:
        """When each of the node's streams answered again after ``since``: the later one."""
        latest = None
        for target in (f"{node}/cluster-ip", f"{node}/node-port"):
            ok = [
                a.t + a.dt for a in self.attempts() if a.target == target and a.t >= since and a.ok
            ]
            if not ok:
                return None
            latest = max(latest or 0.0, min(ok))
        return latest

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# -- logs and metrics ---------------------------------------------------------------------

_LOG_TIME = re.compile(r"^time=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z")


def log_time(line: str) -> float | None:
    m = _LOG_TIME.match(line)
    if m is None:
        return None
    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + int(m.group(2)) / 1000


def log_lines(text: str, pattern: str, since: float = 0.0) -> list[str]:
    """Lines of an agent log matching ``pattern`` (a regex), logged at or after ``since``."""
    rx = re.compile(pattern)
    out = []
    for line in text.splitlines():
        t = log_time(line)
        if rx.search(line) and (t is None or t >= since - 0.001):
            out.append(line)
    return out


def short(line: str, limit: int = 240) -> str:
    """A log line without its time and logger, cut to ``limit`` characters (for reports)."""
    line = re.sub(r"^time=\S+ ", "", line)
    line = re.sub(r" logger=\S+", "", line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


_COUNTERS = re.compile(r" \[\d+:\d+\]$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


# -- the lab ------------------------------------------------------------------------------


class FaultLab:
    def __init__(self, cluster: LabCluster[Topology], workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.lockfile = workdir / "xtables.lock"
        self.shims = {node: Shim(workdir / f"shim-{node}") for node in NODES}
        self.variant = {"node-a": "nft", "node-b": ""}
        self.agent_count = 0
        self.custom: dict[str, bool] = dict.fromkeys(NODES, False)
        """Whether the node's agent runs with a test's own environment or kubeconfig."""
        self.streams = Streams(cluster, workdir)
        self.steady_ip = ""
        self.steady_port = 0

    @property
    def topo(self) -> Topology:
        return self.cluster.topo

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self.cluster.kubectl(*args, check=check)

    def apply(self, *objects: Mapping[str, Any]) -> None:
        self.cluster.apply(*objects)

    def create_many(self, objects: Sequence[Mapping[str, Any]]) -> None:
        """Create Services and EndpointSlices of namespace ``default`` with parallel API
        requests (kubectl's client-side rate limit makes hundreds take seconds)."""
        paths = {
            "Service": f"/api/v1/namespaces/{NS}/services",
            "EndpointSlice": f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices",
        }
        cp = self.cluster.control_plane
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda o: cp.api("POST", paths[o["kind"]], o), objects))

    def delete_tagged(self, tag: str) -> None:
        """Delete the Services and EndpointSlices labelled with ``tag``."""
        cp = self.cluster.control_plane
        selector = urllib.parse.quote(f"{LABEL}={tag}")
        base = f"/api/v1/namespaces/{NS}/services"
        names = [
            s["metadata"]["name"]
            for s in cp.api("GET", f"{base}?labelSelector={selector}")["items"]
        ]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: cp.api("DELETE", f"{base}/{n}"), names))
        cp.api(
            "DELETE",
            f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices?labelSelector={selector}",
        )

    def mode_name(self, node: str) -> str:
        mode = MODE_OF_NODE[node]
        return f"iptables ({self.variant[node]})" if mode == "iptables" else mode

    # -- agents ---------------------------------------------------------------------------
    def agent(self, node: str) -> Agent:
        return self.cluster.agents[node]

    def agent_env(self, node: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = child_env(
            {
                "PATH": self.shims[node].path,
                "XTABLES_LOCKFILE": str(self.lockfile),
            }
        )
        if self.variant[node]:
            env["KUBE_PROXY_PY_IPTABLES"] = self.variant[node]
        env.update(extra or {})
        return env

    def start_agent(
        self,
        node: str,
        *,
        env: Mapping[str, str] | None = None,
        kubeconfig: Path | None = None,
        wait: bool = True,
    ) -> Agent:
        """``kube-proxy-py run`` on ``node`` in its mode (as ``LabCluster.start_agent``,
        with this suite's flags, PATH and environment); waits for its first sync."""
        if node in self.cluster.agents and self.cluster.agents[node].alive():
            raise RuntimeError(f"an agent already runs on {node}")
        assert self.cluster.agent_kubeconfig is not None
        mode = MODE_OF_NODE[node]
        argv = (
            sys.executable, "-m", "proxy", "run",
            f"--kubeconfig={kubeconfig or self.cluster.agent_kubeconfig}",
            f"--hostname-override={node}", f"--proxy-mode={mode}",
            f"--cluster-cidr={CLUSTER_CIDR}", *AGENT_FLAGS,
        )  # fmt: skip
        self.agent_count += 1
        log_path = self.workdir / f"agent-{self.agent_count:03d}-{node}.log"
        with log_path.open("w") as out:
            process = self.topo.popen(
                node, argv, stdout=out, stderr=subprocess.STDOUT, env=self.agent_env(node, env)
            )
        agent = Agent(node, mode, process, log_path, argv)
        self.cluster.agents[node] = agent
        self.custom[node] = bool(env) or kubeconfig is not None
        if wait:
            self.wait_synced(agent)
        return agent

    def wait_synced(self, agent: Agent, timeout: float = 60.0) -> float:
        """When (epoch seconds) the agent logged its first successful sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in log_lines(agent.log_text(), r"msg=synced "):
                t = log_time(line)
                assert t is not None
                return t
            if not agent.alive():
                raise RuntimeError(
                    f"agent on {agent.node} exited ({agent.process.returncode}) before "
                    f"its first sync:\n{agent.log_text()[-3000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(
            f"agent on {agent.node} did not sync within {timeout}s:\n{agent.log_text()[-3000:]}"
        )

    def stop_agent(self, node: str, sig: int = signal.SIGTERM) -> int | None:
        agent = self.cluster.agents.get(node)
        if agent is None:
            return None
        if agent.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, sig)
        return agent.process.wait(20)

    def restart_agent(self, node: str, **kwargs: Any) -> Agent:
        code = self.stop_agent(node)
        assert code in (None, 0, -signal.SIGKILL), f"agent on {node} exited with {code}"
        return self.start_agent(node, **kwargs)

    def reset(self) -> None:
        """Both agents alive, with the suite's flags and environment (node-a keeps its
        iptables variant: tests choose theirs with :meth:`use_iptables_variant`); every
        shim disarmed and complete. Called after each test."""
        for node in NODES:
            shim = self.shims[node]
            shim.disarm()
            shim.restore_tool("nft")
            agent = self.cluster.agents.get(node)
            if agent is None or not agent.alive() or self.custom[node]:
                self.stop_agent(node)
                self.start_agent(node)

    @contextlib.contextmanager
    def lock_env(self) -> Iterator[None]:
        """This process's kernel tools use the agents' private xtables lock meanwhile."""
        old = os.environ.get("XTABLES_LOCKFILE")
        os.environ["XTABLES_LOCKFILE"] = str(self.lockfile)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("XTABLES_LOCKFILE", None)
            else:
                os.environ["XTABLES_LOCKFILE"] = old

    def use_iptables_variant(self, variant: str) -> None:
        """Run node-a's agent with the ``nft`` or ``legacy`` iptables variant, without a
        gap: the new agent's first sync comes before the old variant's rules are removed."""
        node = NODE_FOR_MODE["iptables"]
        old = self.variant[node]
        if old == variant and self.agent(node).alive():
            return
        self.stop_agent(node)
        self.variant[node] = variant
        self.start_agent(node)
        if old != variant:
            with self.lock_env():
                IptablesKernel(Executor(self.topo.ns(node)), variant=old).cleanup()

    # -- rules ----------------------------------------------------------------------------
    def rules(self, node: str) -> str:
        if MODE_OF_NODE[node] == "nftables":
            proc = self.topo.run(node, ["nft", "list", "table", "ip", "kube-proxy"], check=False)
            return proc.stdout
        return self.topo.run(node, [f"iptables-{self.variant[node]}-save"]).stdout

    def cluster_ips(self, node: str, text: str | None = None) -> dict[str, str]:
        """Service → cluster IP, for the TCP ports programmed in ``node``'s rules."""
        text = self.rules(node) if text is None else text
        if MODE_OF_NODE[node] == "nftables":
            found = re.findall(
                r'([\d.]+) \. tcp \. \d+ comment "([^":]+):[^"]*" : goto service-', text
            )
            return {svc: ip for ip, svc in found}
        found = re.findall(
            r'-A KUBE-SERVICES -d ([\d.]+)/32 -p tcp -m comment --comment "([^":]+):\S* cluster IP"',
            text,
        )
        return {svc: ip for ip, svc in found}

    def endpoints(self, node: str, svc: str, text: str | None = None) -> set[str] | None:
        """``ip:port`` of the TCP endpoints ``node``'s rules send ``ns/svc:http`` to (None
        when the Service is not programmed)."""
        text = self.rules(node) if text is None else text
        name = f"{NS}/{svc}"
        if name not in self.cluster_ips(node, text):
            return None
        if MODE_OF_NODE[node] == "nftables":
            chain = re.search(
                rf"chain service-\w+-{re.escape(name)}/tcp/http \{{\s*\n\s*(.*)\n", text
            )
            if chain is None:
                return set()
            rule = re.search(r"mod (\d+) offset (\d+) map @(\S+)", chain.group(1))
            if rule is None:  # one endpoint: a plain dnat
                single = re.search(r"dnat (?:ip )?to ([\d.]+:\d+)", chain.group(1))
                return {single.group(1)} if single else set()
            n, base, map_name = int(rule.group(1)), int(rule.group(2)), rule.group(3)
            body = re.search(rf"map {re.escape(map_name)} \{{(.*?)\n\t\}}", text, re.S)
            if body is None:
                return set()
            out = set()
            for key, ip, port in re.findall(
                r"(\d+) comment \"[^\"]*\" : ([\d.]+) \. (\d+)", body.group(1)
            ):
                if base <= int(key) < base + n:
                    out.add(f"{ip}:{port}")
            return out
        return set(
            re.findall(
                rf'-A KUBE-SEP-\w+ -p tcp -m comment --comment "{re.escape(name)}:http" '
                r"-m tcp -j DNAT --to-destination (\S+)",
                text,
            )
        )

    def canonical(self, node: str) -> list[str]:
        """The node's rules in a form that compares equal when they mean the same:
        nftables JSON without handles, set elements sorted; iptables-save lines without
        counters, sorted per table."""
        if MODE_OF_NODE[node] == "nftables":
            raw = self.topo.run(node, ["nft", "-j", "list", "table", "ip", "kube-proxy"]).stdout
            items = json.loads(raw)["nftables"]

            def clean(x: Any) -> Any:
                if isinstance(x, dict):
                    return {k: clean(v) for k, v in x.items() if k not in ("handle",)}
                if isinstance(x, list):
                    return [clean(v) for v in x]
                return x

            out = []
            for item in items:
                item = clean(item)
                for kind in ("set", "map"):
                    if kind in item and "elem" in item[kind]:
                        item[kind]["elem"] = sorted(
                            item[kind]["elem"], key=lambda e: json.dumps(e, sort_keys=True)
                        )
                out.append(json.dumps(item, sort_keys=True))
            return sorted(out)
        out = []
        table = ""
        for line in self.rules(node).splitlines():
            if line.startswith("#") or line == "COMMIT":
                continue
            if line.startswith("*"):
                table = line
                continue
            out.append(f"{table} {_COUNTERS.sub('', line)}")
        return sorted(out)

    def wait_rules(
        self, nodes: Sequence[str], check: Callable[[str, str], bool], timeout: float, what: str
    ) -> float:
        """Poll until ``check(node, rules)`` holds on every node; when it did (epoch)."""
        deadline = time.monotonic() + timeout
        pending = list(nodes)
        while True:
            pending = [n for n in pending if not check(n, self.rules(n))]
            if not pending:
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not true on {pending} after {timeout:.0f}s")
            time.sleep(0.1)

    def wait_rules_each(
        self, nodes: Sequence[str], check: Callable[[str, str], bool], timeout: float, what: str
    ) -> dict[str, float]:
        """Like :meth:`wait_rules`; when (epoch) the check first held on each node."""
        deadline = time.monotonic() + timeout
        done: dict[str, float] = {}
        while True:
            for n in nodes:
                if n not in done and check(n, self.rules(n)):
                    done[n] = time.time()
            if len(done) == len(nodes):
                return done
            if time.monotonic() > deadline:
                missing = [n for n in nodes if n not in done]
                raise TimeoutError(f"{what}: not true on {missing} after {timeout:.0f}s")
            time.sleep(0.1)

    def api_services(self) -> dict[str, str]:
        """``ns/name`` → cluster IP of every Service with a TCP port (what the rules of
        every node should hold, no more, no less)."""
        items = json.loads(self.kubectl("get", "services", "-A", "-o", "json"))["items"]
        return {
            f"{s['metadata']['namespace']}/{s['metadata']['name']}": s["spec"]["clusterIP"]
            for s in items
            if s["spec"].get("clusterIP") not in (None, "", "None")
            and any(p.get("protocol", "TCP") == "TCP" for p in s["spec"]["ports"])
        }

    def proxied_kubeconfig(self, node: str, port: int) -> Path:
        """The agents' kubeconfig, pointing at ``https://127.0.0.1:<port>`` (a proxy in
        the node's namespace; the API server's certificate names 127.0.0.1)."""
        assert self.cluster.agent_kubeconfig is not None
        config = json.loads(self.cluster.agent_kubeconfig.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
        path = self.workdir / f"kubeconfig-{node}-proxied-{port}.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def conntrack_stats(self, node: str) -> Counter[str]:
        """The node namespace's conntrack statistics (``conntrack -S``), summed over CPUs."""
        total: Counter[str] = Counter()
        for key, value in re.findall(
            r"(\w+)=(\d+)", self.topo.run(node, ["conntrack", "-S"]).stdout
        ):
            if key != "cpu":
                total[key] += int(value)
        return total

    def conntrack_count(self, node: str) -> int:
        out = self.topo.run(node, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).stdout
        return int(out.strip())

    def programmed(self, node: str, svc: str, pods: Sequence[str], text: str) -> bool:
        return self.endpoints(node, svc, text) == endpoints_of(pods)

    def absent(self, node: str, svc: str, text: str) -> bool:
        return f"{NS}/{svc}" not in self.cluster_ips(node, text)

    # -- metrics and health --------------------------------------------------------------
    def metrics(self, node: str) -> str:
        return self.cluster.metrics(node)

    def health(self, node: str, path: str = "/livez") -> int:
        try:
            return self.cluster.node_http(node, f"http://127.0.0.1:10256{path}", timeout=3)[0]
        except Exception:
            return 0


# -- results --------------------------------------------------------------------------


@dataclass
class Result:
    fault: str
    mode: str
    node: str
    window_s: float
    attempted: int
    failed: int
    delayed: int
    recover_s: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    notes: str = ""
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Report:
    """Rows written as JSON and Markdown when the suite ends (see conftest.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[Result] = []
        self._lock = threading.Lock()

    def add(
        self,
        fault: str,
        lab: FaultLab,
        node: str,
        since: float,
        until: float,
        *,
        recover_s: float | None,
        metrics: Mapping[str, float] | None = None,
        logs: Sequence[str] = (),
        notes: str = "",
    ) -> Result:
        w = lab.streams.node_window(node, since, until)
        row = Result(
            fault=fault,
            mode=lab.mode_name(node),
            node=node,
            window_s=round(until - since, 1),
            attempted=w.attempted,
            failed=w.failed,
            delayed=w.delayed,
            recover_s=None if recover_s is None else round(recover_s, 2),
            metrics=dict(metrics or {}),
            logs=[short(x) for x in logs][:6],
            notes=notes,
            errors=dict(w.errors),
        )
        with self._lock:
            self.rows.append(row)
        self.write()
        return row

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = [r.as_dict() for r in self.rows]
        self.path.write_text(json.dumps(data, indent=2) + "\n")
        lines = [
            "| fault | mode | window (s) | connections | failed | delayed | recover (s) | metrics | notes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            m = ", ".join(f"{k}={v:g}" for k, v in r.metrics.items())
            rec = "-" if r.recover_s is None else f"{r.recover_s:.2f}"
            lines.append(
                f"| {r.fault} | {r.mode} | {r.window_s} | {r.attempted} | {r.failed} | "
                f"{r.delayed} | {rec} | {m} | {r.notes} |"
            )
        lines += ["", "Log lines (agent logs, time and logger removed):", ""]
        for r in self.rows:
            lines.append(f"- {r.fault} — {r.mode}:")
            lines += [f"  - `{x}`" for x in r.logs] or ["  - (none)"]
        self.path.with_suffix(".md").write_text("\n".join(lines) + "\n")


class Changes:
    """Selectorless Services of one test, to see that changes made during a fault are
    programmed and that nothing stale survives it:

    - ``<tag>-gone`` (endpoint a1) exists before the fault and is deleted during it;
    - ``<tag>-moved`` has endpoints a1, b1 before and a2, b2 after a change made during it;
    - ``<tag>-new`` (endpoint b1) is created during it;
    - ``<tag>-after`` (endpoint a2) is created when the fault ends: the time until it is
      programmed is the time to recover.
    """

    def __init__(self, lab: FaultLab, tag: str) -> None:
        self.lab = lab
        self.tag = tag
        self.gone, self.moved = f"{tag}-gone", f"{tag}-moved"
        self.new, self.after_svc = f"{tag}-new", f"{tag}-after"

    def setup(self, nodes: Sequence[str]) -> None:
        lab, tag = self.lab, self.tag
        lab.apply(
            service(self.gone, tag), endpoint_slice(self.gone, tag, ["a1"]),
            service(self.moved, tag), endpoint_slice(self.moved, tag, ["a1", "b1"]),
        )  # fmt: skip
        lab.wait_rules(
            nodes,
            lambda n, text: (
                lab.programmed(n, self.gone, ["a1"], text)
                and lab.programmed(n, self.moved, ["a1", "b1"], text)
            ),
            60,
            f"{tag}: services programmed before the fault",
        )

    def during(self) -> None:
        """The changes made during the fault (the API server must be up)."""
        lab, tag = self.lab, self.tag
        lab.kubectl("delete", "-n", NS, f"service/{self.gone}", f"endpointslice/{self.gone}-faults")
        lab.apply(
            endpoint_slice(self.moved, tag, ["a2", "b2"]),
            service(self.new, tag), endpoint_slice(self.new, tag, ["b1"]),
        )  # fmt: skip

    def done(self, node: str, text: str) -> bool:
        """The changes made during the fault are programmed, the deletion removed."""
        lab = self.lab
        return (
            lab.absent(node, self.gone, text)
            and lab.programmed(node, self.moved, ["a2", "b2"], text)
            and lab.programmed(node, self.new, ["b1"], text)
        )

    def after(self) -> None:
        self.lab.apply(
            service(self.after_svc, self.tag), endpoint_slice(self.after_svc, self.tag, ["a2"])
        )

    def after_done(self, node: str, text: str) -> bool:
        return self.lab.programmed(node, self.after_svc, ["a2"], text)

    def recover(
        self, nodes: Sequence[str], fault_end: float, timeout: float = 90.0
    ) -> dict[str, float]:
        """Create ``<tag>-after`` now; per node, seconds from ``fault_end`` until it is
        programmed and so are the changes made during the fault."""
        self.after()
        done = self.lab.wait_rules_each(
            nodes,
            lambda n, text: self.after_done(n, text) and self.done(n, text),
            timeout,
            f"{self.tag}: recovered (changes during and after the fault programmed)",
        )
        return {n: t - fault_end for n, t in done.items()}

    def cleanup(self) -> None:
        self.lab.delete_tagged(self.tag)
