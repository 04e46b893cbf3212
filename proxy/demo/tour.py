"""``kube-proxy-py tour``: Service networking, live, without a cluster.

Builds two namespace nodes with pods and an outside client (the harness topology),
programs both nodes with kube-proxy-py from a my-nginx state, then walks through what a
newcomer asks: how connections spread, why ping to a ClusterIP fails, how a NodePort
reaches a pod, why keep-alive sticks to one pod, what "no endpoints" looks like.
Every step checks its own outcome; the exit status is 1 if one was wrong.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from proxy import manifests as m
from proxy.config import ProxyConfig, ProxyMode
from proxy.demo.present import Presenter
from proxy.harness import Outcome, Topology
from proxy.host.spec import default_spec
from proxy.iptables import render as ipt_render
from proxy.iptables.kernel import IptablesKernel
from proxy.kernel.executor import Executor
from proxy.model import Protocol
from proxy.nftables import names as nft_names
from proxy.nftables import render as nft_render
from proxy.nftables.kernel import NftKernel
from proxy.plan import plan
from proxy.source.file import build_state

CIP = "10.96.0.80"


@dataclass(frozen=True)
class _ServicePort:
    namespace: str = "default"
    name: str = "my-nginx"
    port_name: str = "tcp"
    protocol: Protocol = Protocol.TCP

    @property
    def service_port_name(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port_name}"


_MY_NGINX_TCP = _ServicePort()
NODE_PORT = 30080
HTTP = 8080
FRESH_CONNECTIONS = 20
"""New connections in the keep-alive step (the check wants both pods among them)."""


def _state(with_endpoints: bool = True) -> list[dict[str, Any]]:
    pods = [m.EP("10.244.1.11", node="node-a"), m.EP("10.244.2.11", node="node-b")]
    return [
        m.node("node-a", "192.168.50.11", zone="zone-a"),
        m.node("node-b", "192.168.50.12", zone="zone-b"),
        m.service(
            "my-nginx",
            CIP,
            [m.Port(80, "tcp", node_port=NODE_PORT), m.Port(HTTP, "http", target_port=HTTP)],
            type="NodePort",
            selector={"run": "my-nginx"},
        ),
        m.endpoint_slice(
            "my-nginx",
            pods if with_endpoints else [],
            [("tcp", 80, "TCP"), ("http", HTTP, "TCP")],
        ),
    ]


class Tour:
    def __init__(self, topo: Topology, mode: ProxyMode, out: Presenter) -> None:
        self.topo = topo
        self.mode = mode
        self.p = out

    def program(self, objs: list[dict[str, Any]]) -> str:
        summary = ""
        for node in ("node-a", "node-b"):
            state = build_state(objs, node)
            config = ProxyConfig(
                node, mode=self.mode, cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),)
            )
            pl = plan(state.snapshot, config)
            executor = Executor(self.topo.ns(node))
            if self.mode is ProxyMode.IPTABLES:
                IptablesKernel(executor).full_sync(ipt_render.render(pl))
            else:
                NftKernel(executor).full_sync(nft_render.render(pl))
            summary = f"{len(pl.service_ports)} service ports, {pl.endpoint_count} endpoints"
        return summary

    def rules(self, pattern: str, *, with_chain: bool = False) -> str:
        """Rules on node-a mentioning ``pattern``; in nftables mode, with ``with_chain``,
        also my-nginx's service chain (its DNAT rules name no service)."""
        if self.mode is ProxyMode.IPTABLES:
            text = self.topo.run("node-a", ["iptables-save"]).stdout
        else:
            text = self.topo.run("node-a", ["nft", "list", "table", "ip", "kube-proxy"]).stdout
        lines = [ln.strip() for ln in text.splitlines() if pattern in ln][:8]
        if with_chain and self.mode is ProxyMode.NFTABLES:
            chain = nft_names.service_chain(_MY_NGINX_TCP)
            listing = self.topo.run("node-a", ["nft", "list", "chain", "ip", "kube-proxy", chain])
            lines += [
                ln.strip()
                for ln in listing.stdout.splitlines()
                if ln.strip() and not ln.strip().startswith(("table", "}"))
            ]
        return "\n".join(lines)

    def run(self) -> None:
        p = self.p
        a3 = self.topo.prober("a3")
        outside = self.topo.prober("outside")

        p.step("a two-replica my-nginx Deployment behind a ClusterIP Service")
        p.command(
            "kube-proxy-py apply --state my-nginx.yaml "
            f"--mode {self.mode} --hostname-override node-a   (and on node-b)"
        )
        p.result(self.program(_state()) + " programmed on node-a and node-b")
        p.explain(
            "the Service's endpoints are the pod IPs 10.244.1.11 (on node-a) and "
            "10.244.2.11 (on node-b); kube-proxy turns them into DNAT rules:"
        )
        p.rules("rules on node-a for my-nginx:tcp", self.rules("my-nginx:tcp", with_chain=True))
        p.command(f"from pod a3: 20 new TCP connections to {CIP}:80")
        counts = Counter(r.endpoint for r in a3.tcp_many(CIP, 80, 20))
        p.result(", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=str)))
        p.check(set(counts) == {"a1", "b1"}, "new connections spread over both pods")

        p.step("ping the ClusterIP: it fails, while TCP to it works")
        ping = a3.icmp_echo(CIP, timeout=1.0)
        p.command(f"from pod a3: ping {CIP}")
        p.result(f"{ping.outcome}: {ping.detail}")
        tcp = a3.tcp(CIP, 80)
        p.command(f"from pod a3: TCP connect {CIP}:80")
        p.result(f"{tcp.outcome}: answered by {tcp.endpoint}")
        p.explain(
            "a ClusterIP belongs to no interface; it exists only as IP:port/protocol matches "
            "in DNAT rules. ICMP echo has no port, so nothing rewrites it"
            + (
                ": it follows normal routing and is lost."
                if self.mode is ProxyMode.IPTABLES
                else "; nftables mode rejects it (ICMP port unreachable)."
            )
        )
        want = Outcome.SILENT if self.mode is ProxyMode.IPTABLES else Outcome.REFUSED
        p.check(ping.outcome is want and tcp.outcome is Outcome.ANSWERED, "ping fails, TCP works")

        p.step("a NodePort from outside the cluster, through either node")
        ok = True
        for node, ip in (("node-a", "192.168.50.11"), ("node-b", "192.168.50.12")):
            r = outside.tcp(ip, NODE_PORT)
            p.command(f"from the outside client: TCP connect {ip}:{NODE_PORT}  ({node})")
            p.result(
                f"{r.outcome}: answered by {r.endpoint}, which saw the client as {r.seen_source}"
            )
            ok = ok and r.outcome is Outcome.ANSWERED and r.seen_source == ip
        p.rules("NodePort rules on node-a", self.rules(str(NODE_PORT)))
        p.explain(
            "any node's IP on the nodePort leads to the Service; with externalTrafficPolicy "
            "Cluster the node masquerades, so the pod sees the node's IP, not the client's"
        )
        p.check(ok, "both nodes forward the NodePort, source masqueraded")

        p.step("HTTP keep-alive sticks to one pod; new connections spread")
        keep = a3.http(CIP, HTTP, requests=6, keepalive=True)
        # each new connection picks a pod at random: 20 all on one of two pods would
        # happen once in 2^19 runs (12 did once in CI: 1 in 2^11)
        fresh = a3.http(CIP, HTTP, requests=FRESH_CONNECTIONS, keepalive=False)
        p.command(f"from pod a3: 6 requests on one keep-alive connection to {CIP}:{HTTP}")
        p.result(", ".join(str(r.endpoint) for r in keep))
        p.command(f"from pod a3: {FRESH_CONNECTIONS} requests, a new connection each")
        p.result(", ".join(str(r.endpoint) for r in fresh))
        p.explain(
            "kube-proxy balances connections, not requests: once a connection is DNATed to "
            "a pod, conntrack keeps every later packet of it on that pod"
        )
        p.check(
            len({r.endpoint for r in keep}) == 1 and len({r.endpoint for r in fresh}) == 2,
            "one pod per connection",
        )

        p.step("a Service with no endpoints refuses connections")
        p.command("scale my-nginx to 0: the EndpointSlice becomes empty; apply again")
        p.result(self.program(_state(with_endpoints=False)))
        r = a3.tcp(CIP, 80)
        p.command(f"from pod a3: TCP connect {CIP}:80")
        p.result(f"{r.outcome}: {r.detail}")
        p.rules("rules on node-a mentioning my-nginx:tcp", self.rules("my-nginx:tcp"))
        p.explain(
            "with no endpoint, kube-proxy rejects rather than letting the SYN time out, so "
            "clients fail fast with 'connection refused'"
        )
        p.check(r.outcome is Outcome.REFUSED, "connection refused")


def main(mode: str, color: bool | None, pause: bool) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    spec = default_spec()
    pods = tuple(
        dataclasses.replace(pod, http_ports=(HTTP,)) if pod.name in ("a1", "b1") else pod
        for pod in spec.pods
    )
    spec = dataclasses.replace(spec, pods=pods)
    out = Presenter(color=sys.stdout.isatty() if color is None else color, pause=pause)
    out.title(f"kube-proxy-py tour ({mode} mode): Service networking in network namespaces")
    with Topology(spec) as topo:
        Tour(topo, ProxyMode(mode), out).run()
    print()
    if out.failures:
        print("tour: unexpected outcomes:\n  " + "\n  ".join(out.failures), file=sys.stderr)
        return 1
    print(f"tour: all {out.steps} steps behaved as expected; namespaces removed")
    return 0
