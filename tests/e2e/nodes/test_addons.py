"""Cluster DNS and LoadBalancer addresses on the lab's real nodes, in both modes.

CoreDNS runs as kubeadm installs it (kube-dns at 10.96.0.10) and is reached through
kube-proxy-py's own rules, UDP and TCP; MetalLB (L2) gives LoadBalancer Services an
address on the lab LAN that the outside client reaches through ARP. The workload pods
``a1 a2`` (node-1) and ``b1 b2`` (node-2) serve TCP and UDP port 80; queries are sent
from the pod ``a3`` (node-1) with dnspython (``tests/e2e/dnsquery.py``) or with the
tools of a real busybox pod.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.lab.cluster import wait_for
from tests.e2e.nodelab import NodeLab, workload_pod

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

SERVING = {"a1": "node-1", "a2": "node-1", "b1": "node-2", "b2": "node-2"}
CLIENT = "a3"
NODES = ("node-1", "node-2")
OUTSIDE = "192.168.50.100"
DNS = "10.96.0.10"
POOL_PREFIX = "192.168.50.2"  # the pool is 192.168.50.200-250
QUERY = Path(__file__).resolve().parents[1] / "dnsquery.py"
FIXED_PORT = 45353
ANSWER = 3.0


def dig(
    lab: NodeLab, name: str, rdtype: str = "A", *, tcp: bool = False, port: int = 0,
    timeout: float = 2.0,
) -> dict[str, Any]:  # fmt: skip
    argv = [sys.executable, str(QUERY), DNS, name, rdtype, "--timeout", str(timeout)]
    if tcp:
        argv.append("--tcp")
    if port:
        argv += ["--source-port", str(port)]
    result: dict[str, Any] = json.loads(lab.run(CLIENT, argv).stdout)
    return result


def values(result: dict[str, Any], rdtype: str) -> list[str]:
    return sorted(a["value"] for a in result.get("answer", []) if a["type"] == rdtype)


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 80, "protocol": "TCP"}],
            **spec,
        },
    }


def endpoint_slice(service_name: str, pods: dict[str, str], lab: NodeLab) -> dict[str, Any]:
    """A hand-written slice for a selectorless Service: ``pods`` name -> node."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-manual",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [lab.pod_ip(p)], "nodeName": n, "conditions": {"ready": True}}
            for p, n in pods.items()
        ],
    }


@pytest.fixture(scope="module")
def cluster(node_lab: NodeLab) -> Iterator[NodeLab]:
    pods = [workload_pod(p, n, labels={"app": "web"}) for p, n in SERVING.items()]
    node_lab.create_pods([*pods, workload_pod(CLIENT, "node-1", serve=False)])
    node_lab.kubectl("rollout", "status", "-n", "kube-system", "deploy/coredns", "--timeout=120s")
    yield node_lab
    for pod in (*SERVING, CLIENT):
        node_lab.delete_pod(pod, force=True)


def kube_dns_programmed(lab: NodeLab, mode: str) -> bool:
    """Both kube-proxy-py nodes hold kube-dns's rules in ``mode``'s syntax. A pod turns
    Ready at its agent's start, before its first sync (upstream's /healthz does the same),
    and a new agent removes the other mode's rules before it writes its own."""
    for node in ("node-1", "node-2"):
        text = lab.rules(node)
        if mode == "nftables":
            nft = text[text.find("table ip kube-proxy") :] if "table ip kube-proxy" in text else ""
            if "kube-system/kube-dns:dns" not in nft:
                return False
        elif not any(
            line.startswith("-A KUBE-SERVICES") and "kube-system/kube-dns:dns" in line
            for line in text.splitlines()
        ):
            return False
    return True


@pytest.fixture(scope="module", params=["iptables", "nftables"])
def lab(cluster: NodeLab, request: pytest.FixtureRequest) -> NodeLab:
    mode: str = request.param
    cluster.configure_agents(mode, "100ms")
    wait_for(lambda: kube_dns_programmed(cluster, mode), 60, what=f"kube-dns's {mode} rules")
    return cluster


def lb_address(lab: NodeLab, name: str) -> str:
    def assigned() -> str | None:
        ingress = lab.get("service", name).get("status", {}).get("loadBalancer", {})
        ips = [i.get("ip") for i in ingress.get("ingress", [])]
        return ips[0] if ips else None

    address: str = wait_for(assigned, 60, what=f"an EXTERNAL-IP for {name}")
    return address


def mac(lab: NodeLab, node: str) -> str:
    return lab.run(node, ["cat", "/sys/class/net/eth0/address"]).stdout.strip()


def neighbour(lab: NodeLab, address: str) -> str | None:
    """The MAC the client's ARP cache holds for ``address`` (None: none, or FAILED)."""
    words = lab.run("client", ["ip", "neigh", "show", address]).stdout.split()
    return words[words.index("lladdr") + 1] if "lladdr" in words else None


def fresh_neighbour(lab: NodeLab, address: str) -> None:
    lab.run("client", ["ip", "neigh", "flush", "to", address], check=False)


# ------------------------------------------------------------------------------ DNS


def test_service_names_resolve_through_the_proxy_over_udp_and_tcp(lab: NodeLab) -> None:
    for tcp in (False, True):
        result = dig(lab, "kubernetes.default.svc.cluster.local", tcp=tcp)
        assert result.get("rcode") == "NOERROR", result
        assert values(result, "A") == ["10.96.0.1"]
    assert values(dig(lab, "kube-dns.kube-system.svc.cluster.local"), "A") == [DNS]
    assert dig(lab, "no-such-service.default.svc.cluster.local")["rcode"] == "NXDOMAIN"
    rules = lab.rules("node-1")
    assert "kube-system/kube-dns:dns" in rules and "kube-system/kube-dns:dns-tcp" in rules


def test_pods_get_the_cluster_resolver_and_search_paths(lab: NodeLab) -> None:
    lab.kubectl("run", "dns-shell", "--image=busybox", "--restart=Never", "--", "sleep", "600")
    try:
        lab.kubectl("wait", "--for=condition=Ready", "pod/dns-shell", "--timeout=60s")
        conf = lab.kubectl("exec", "dns-shell", "--", "cat", "/etc/resolv.conf")
        assert f"nameserver {DNS}" in conf.splitlines()
        assert "search default.svc.cluster.local svc.cluster.local cluster.local" in conf
        # busybox's nslookup completes only dotless names; "kubernetes" gets the first
        # search domain (the pod's namespace)
        out = lab.kubectl("exec", "dns-shell", "--", "nslookup", "kubernetes", check=False)
        assert "Name:\tkubernetes.default.svc.cluster.local\nAddress: 10.96.0.1" in out, out
        # the C library's resolver (ping's) walks the whole list with ndots:5:
        # "kube-dns.kube-system" + "svc.cluster.local"; the ClusterIP then does not answer
        # (-4: on a dual-stack lab the name also has an AAAA record, which ping prefers)
        out = lab.kubectl("exec", "dns-shell", "--", "ping", "-4", "-c", "1", "-W", "1",
                          "kube-dns.kube-system", check=False)  # fmt: skip
        assert f"PING kube-dns.kube-system ({DNS})" in out, out
    finally:
        lab.kubectl("delete", "pod", "dns-shell", "--now", "--wait=false")


def test_headless_service_has_one_record_per_ready_pod(lab: NodeLab) -> None:
    lab.apply(service("web-headless", clusterIP="None"))
    try:
        ips = {p: lab.pod_ip(p) for p in SERVING}
        name = "web-headless.default.svc.cluster.local"
        wait_for(lambda: values(dig(lab, name), "A") == sorted(ips.values()), 30,
                 what="one A record per pod")  # fmt: skip
        lab.set_ready("b2", False)
        want = sorted(ip for p, ip in ips.items() if p != "b2")
        wait_for(lambda: values(dig(lab, name), "A") == want, 30, what="b2's record gone")
    finally:
        lab.set_ready("b2", True)
        lab.kubectl("delete", "svc", "web-headless")


def test_external_name_is_a_cname_the_outside_resolver_completes(lab: NodeLab) -> None:
    lab.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "external-db", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"},
        }
    )
    try:
        result = wait_for(
            lambda: (r := dig(lab, "external-db.default.svc.cluster.local")).get("answer") and r,
            30,
            what="the ExternalName answer",
        )
        assert values(result, "CNAME") == ["db.example.com."]
        assert values(result, "A") == ["192.168.50.4"]  # from the lab's outside resolver
        assert dig(lab, "nothing.example.org")["rcode"] == "NXDOMAIN"
    finally:
        lab.kubectl("delete", "svc", "external-db")


def test_srv_records_name_each_named_port(lab: NodeLab) -> None:
    # CoreDNS writes one SRV record per ClusterIP, splitting the weight 100 between them:
    # a dual-stack kube-dns gets two identical "0 50 ..." records (one rdata once answered)
    weight = 100 // len(lab.get("service", "kube-dns", "kube-system")["spec"]["clusterIPs"])
    want = [f"0 {weight} 53 kube-dns.kube-system.svc.cluster.local."]
    result = dig(lab, "_dns._udp.kube-dns.kube-system.svc.cluster.local", "SRV")
    assert values(result, "SRV") == want
    result = dig(lab, "_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local", "SRV")
    assert values(result, "SRV") == want


def _backend_of(lab: NodeLab, port: int) -> str:
    """The CoreDNS pod IP the node's conntrack sent the client's fixed-port flow to."""
    out = lab.run("node-1", ["conntrack", "-L", "-p", "udp", "--dport", "53", "--sport",
                             str(port), "-d", DNS], check=False).stdout  # fmt: skip
    for line in out.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields:
            # the reply direction's source is the endpoint (first src= is the original's)
            return [f.split("=", 1)[1] for f in line.split() if f.startswith("src=")][1]
    raise AssertionError(f"no conntrack entry for sport {port}: {out!r}")


def test_a_coredns_pod_going_away_does_not_black_hole_a_udp_flow(lab: NodeLab) -> None:
    """A resolver that keeps one UDP socket (one source port) keeps one conntrack entry;
    when the CoreDNS pod behind it is deleted the agent must delete that entry, or every
    later query from that port goes to the dead pod until the entry times out."""
    name = "kubernetes.default.svc.cluster.local"
    port = FIXED_PORT + (1 if lab.agent_config()["mode"] == "nftables" else 0)
    assert dig(lab, name, port=port).get("rcode") == "NOERROR"
    backend = _backend_of(lab, port)
    pods = json.loads(lab.kubectl("get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns",
                                  "-o", "json"))["items"]  # fmt: skip
    (victim,) = [p["metadata"]["name"] for p in pods if p["status"].get("podIP") == backend]
    lab.kubectl("delete", "pod", "-n", "kube-system", victim, "--wait=false")

    def answered_elsewhere() -> bool:
        ok = dig(lab, name, port=port, timeout=1.0).get("rcode") == "NOERROR"
        return ok and _backend_of(lab, port) != backend

    wait_for(answered_elsewhere, 20, interval=0.5, what="the fixed-port flow to move")
    lab.kubectl("rollout", "status", "-n", "kube-system", "deploy/coredns", "--timeout=120s")


# ------------------------------------------------------------------------------ MetalLB


def test_load_balancer_address_is_reached_through_arp_and_released(lab: NodeLab) -> None:
    lab.apply(service("web-lb", type="LoadBalancer"))
    try:
        address = lb_address(lab, "web-lb")
        assert address.startswith(POOL_PREFIX)
        route = lab.run("client", ["ip", "route", "get", address]).stdout
        assert " via " not in route  # on the LAN: no route, ARP
        fresh_neighbour(lab, address)

        def spread() -> set[str | None]:
            results = lab.prober("client").tcp_many(address, 80, 12, timeout=ANSWER)
            seen = {r.endpoint for r in results}
            return seen if seen <= set(SERVING) and len(seen) >= 2 else set()

        wait_for(spread, 30, what=f"connections to {address} answered by the pods")
        assert neighbour(lab, address) in {mac(lab, n) for n in NODES}
    finally:
        lab.kubectl("delete", "svc", "web-lb")
    fresh_neighbour(lab, address)

    def released() -> bool:
        return lab.prober("client").tcp(address, 80, timeout=1.0).endpoint is None

    wait_for(released, 30, what=f"{address} to stop answering")
    lab.apply(service("web-lb2", type="LoadBalancer"))
    try:
        assert lb_address(lab, "web-lb2") == address  # back in the pool, handed out again
    finally:
        lab.kubectl("delete", "svc", "web-lb2")


def test_local_policy_announces_from_the_endpoints_node_and_keeps_the_client_ip(
    lab: NodeLab,
) -> None:
    svc = service("local-lb", type="LoadBalancer", externalTrafficPolicy="Local")
    del svc["spec"]["selector"]
    lab.apply(svc, endpoint_slice("local-lb", {"b1": "node-2", "b2": "node-2"}, lab))
    try:
        address = lb_address(lab, "local-lb")
        hc = int(lab.get("service", "local-lb")["spec"]["healthCheckNodePort"])
        # what a cloud load balancer's health check sees: only node-2 has endpoints
        wait_for(lambda: lab.node_http("node-2", f"http://192.168.50.12:{hc}/")[0] == 200, 30,
                 what="node-2's health check node port 200")  # fmt: skip
        assert lab.node_http("node-1", f"http://192.168.50.11:{hc}/")[0] == 503

        def announced_by(node: str, pods: set[str]) -> bool:
            fresh_neighbour(lab, address)
            results = lab.prober("client").tcp_many(address, 80, 6, timeout=ANSWER)
            return (
                {r.endpoint for r in results} == pods
                and {r.seen_source for r in results} == {OUTSIDE}
                and neighbour(lab, address) == mac(lab, node)
            )

        wait_for(lambda: announced_by("node-2", {"b1", "b2"}), 30, what="node-2 announcing")
        lab.apply(endpoint_slice("local-lb", {"a1": "node-1"}, lab))
        wait_for(lambda: announced_by("node-1", {"a1"}), 30, what="node-1 announcing")
    finally:
        lab.kubectl("delete", "svc", "local-lb")
        lab.kubectl("delete", "endpointslice", "local-lb-manual", check=False)


def test_load_balancer_source_ranges_filter_outside_clients(lab: NodeLab) -> None:
    if "outside-c" not in lab.extra_clients:
        lab.add_client("outside-c", "192.168.50.102")
    lab.apply(service("ranged-lb", type="LoadBalancer",
                      loadBalancerSourceRanges=[f"{OUTSIDE}/32"]))  # fmt: skip
    try:
        address = lb_address(lab, "ranged-lb")
        wait_for(lambda: lab.prober("client").tcp(address, 80, timeout=ANSWER).endpoint, 30,
                 what="the allowed client answered")  # fmt: skip
        denied = lab.prober("outside-c").tcp_many(address, 80, 4, timeout=1.0)
        assert {r.endpoint for r in denied} == {None}, denied
    finally:
        lab.kubectl("delete", "svc", "ranged-lb")
