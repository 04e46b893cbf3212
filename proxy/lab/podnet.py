"""Pod network plumbing: create and remove one pod's network namespace on a lab node.

The wiring is the harness's (``proxy.harness.topology``), Calico style:

    <pod netns>:  eth0 <ip>/32, lo up,
                  default via 169.254.1.1 dev eth0 onlink src <ip>
       |  veth pair, created from inside the pod namespace with its peer placed
       |  directly in the node namespace (nothing ever exists in the root namespace)
    <node netns>: <veth> up, no address, proxy_arp=1, proxy_delay=0, rp_filter=0,
                  route <ip>/32 dev <veth>

The node answers the pod's ARP for the link-local gateway by proxy ARP and routes the
pod's /32 to the veth, so pods on a node need no bridge and no per-node gateway address.
Every ``ip`` invocation names its namespace explicitly (``ip -n NS``).

    net = PodNetwork(netns="kpp-1a2b3c-pod-0f3e9a1b", node_netns="kpp-1a2b3c-node-a",
                     veth="cali0f3e9a1b2c4", ip="10.244.1.7")
    create(net)          # on failure, whatever was made is removed again
    ...
    problems = remove(net)
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from proxy.harness import netns
from proxy.harness.errors import HarnessError

POD_GATEWAY = "169.254.1.1"
"""The pods' default gateway: link-local, answered by the node's proxy ARP (as the harness
and Calico do)."""
IFNAME_MAX = 15
"""Linux interface names are at most 15 characters (IFNAMSIZ - 1)."""
VETH_PREFIX = "cali"
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_HAS_IPV6 = Path("/proc/sys/net/ipv6").is_dir()


def default_pod_sysctls() -> dict[str, str | int]:
    """Settings for a pod namespace: the harness's (no ICMP error rate limit, so probes see
    every REJECT rather than silence after a burst)."""
    settings: dict[str, str | int] = {"net.ipv4.icmp_ratemask": 0}
    if _HAS_IPV6:
        settings["net.ipv6.icmp.ratelimit"] = 0
    return settings


def veth_name(key: str, salt: int = 0) -> str:
    """A node-side interface name for a pod: ``cali`` + 11 hex digits of sha1(key[, salt]).

    ``key`` should be unique per pod (its UID); ``salt`` gives alternatives when a name
    is taken. Always 15 characters.
    """
    material = key if salt == 0 else f"{key}#{salt}"
    digest = hashlib.sha1(material.encode()).hexdigest()
    return VETH_PREFIX + digest[: IFNAME_MAX - len(VETH_PREFIX)]


@dataclass(frozen=True)
class PodNetwork:
    """One pod's namespace and its link to the node."""

    netns: str
    """The pod's network namespace (``/run/netns/<netns>``)."""
    node_netns: str
    """The node's network namespace, where the node end of the veth lives."""
    veth: str
    """The node-side interface of the veth pair (the pod side is ``eth0``)."""
    ip: str
    """The pod's IPv4 address (a /32 on eth0)."""

    def __post_init__(self) -> None:
        for label, value in (("netns", self.netns), ("node_netns", self.node_netns)):
            if not value or "/" in value or value in (".", ".."):
                raise ValueError(f"{label} {value!r} is not a network namespace name")
        if self.netns == self.node_netns:
            raise ValueError(f"pod and node namespaces are the same ({self.netns!r})")
        if not _IFNAME_RE.fullmatch(self.veth) or self.veth in ("eth0", "lo"):
            raise ValueError(
                f"veth {self.veth!r} must be 1-{IFNAME_MAX} characters of [A-Za-z0-9_.-], "
                "not eth0 or lo"
            )
        try:
            address = ipaddress.ip_address(self.ip)
        except ValueError as exc:
            raise ValueError(f"pod ip {self.ip!r} is not an IP address") from exc
        if not isinstance(address, ipaddress.IPv4Address):
            raise ValueError(f"pod ip {self.ip!r}: the lab's pod network is IPv4 only")

    def pod_commands(self) -> list[str]:
        """``ip -n <netns> -batch`` lines: the veth pair (peer straight into the node),
        the pod's address and default route."""
        return [
            f"link add eth0 type veth peer name {self.veth} netns {self.node_netns}",
            f"addr add {self.ip}/32 dev eth0",
            "link set eth0 up",
            "link set lo up",
            # src: scapy takes its source address (also for ARP) from the route.
            f"route add default via {POD_GATEWAY} dev eth0 onlink src {self.ip}",
        ]

    def node_commands(self) -> list[str]:
        """``ip -n <node_netns> -batch`` lines: the node end up and the pod's /32 route."""
        return [f"link set {self.veth} up", f"route add {self.ip}/32 dev {self.veth}"]

    def node_sysctls(self) -> dict[str, str | int]:
        return {
            f"net.ipv4.conf.{self.veth}.proxy_arp": 1,
            f"net.ipv4.conf.{self.veth}.rp_filter": 0,
            # Answer proxy ARP at once, not after up to 0.8 s (Calico does the same).
            f"net.ipv4.neigh.{self.veth}.proxy_delay": 0,
        }


def create(net: PodNetwork, *, pod_sysctls: Mapping[str, str | int] | None = None) -> None:
    """Create the pod namespace, the veth pair, addresses, routes and sysctls.

    Raises HarnessError (the namespace exists already, the node namespace is missing, an
    ``ip`` command failed, …); whatever was created by this call is removed first.
    """
    if not netns.exists(net.node_netns):
        raise HarnessError(f"node namespace {net.node_netns} does not exist")
    netns.create([net.netns])  # refuses a namespace that exists (not ours)
    try:
        netns.ip_batch(net.netns, net.pod_commands())
        netns.ip_batch(net.node_netns, net.node_commands())
        netns.sysctls(
            {
                net.node_netns: net.node_sysctls(),
                net.netns: dict(default_pod_sysctls() if pod_sysctls is None else pod_sysctls),
            }
        )
    except BaseException as exc:
        problems = remove(net)
        if problems:
            exc.add_note("cleanup after the failure also failed: " + "; ".join(problems))
        raise


def remove(net: PodNetwork, *, grace: float = 2.0) -> list[str]:
    """Kill what still runs in the pod namespace, delete the node end of the veth (its
    /32 route goes with it) and the namespace. Idempotent; returns the problems (empty
    when everything is gone)."""
    problems: list[str] = []
    survivors = netns.empty([net.netns], grace=grace)
    if survivors:
        problems.append(f"processes in {net.netns} survived SIGKILL: {survivors}")
    if netns.exists(net.node_netns) and link_exists(net.node_netns, net.veth):
        # Deleting the node end removes the pair now; namespace teardown is lazy.
        done = netns.run_command(["ip", "-n", net.node_netns, "link", "del", net.veth], check=False)
        if done.returncode != 0 and link_exists(net.node_netns, net.veth):
            problems.append(f"cannot delete {net.veth} in {net.node_netns}: {done.stderr.strip()}")
    remaining = netns.delete([net.netns])
    if remaining:
        problems.append(f"cannot delete namespace {net.netns}")
    return problems


def link_exists(namespace: str, ifname: str) -> bool:
    """Whether an interface of that name exists in the namespace."""
    done = netns.run_command(["ip", "-n", namespace, "link", "show", "dev", ifname], check=False)
    return done.returncode == 0


def host_routes(namespace: str) -> dict[str, str]:
    """IPv4 /32 routes of a namespace's main table: address → device.

    A pod agent uses it to skip addresses that something else (e.g. a harness pod on the
    same node) already routes to a veth.
    """
    done = netns.run_command(["ip", "-n", namespace, "-4", "-j", "route", "show"])
    try:
        routes = json.loads(done.stdout or "[]")
    except ValueError as exc:
        raise HarnessError(f"ip -j route show in {namespace}: not JSON: {exc}") from exc
    found: dict[str, str] = {}
    for route in routes if isinstance(routes, list) else []:
        if not isinstance(route, dict):
            continue
        dst = str(route.get("dst", ""))
        if dst.endswith("/32"):
            dst = dst[:-3]
        try:
            ipaddress.IPv4Address(dst)
        except ValueError:
            continue  # default, a prefix, …
        found[dst] = str(route.get("dev", ""))
    return found
