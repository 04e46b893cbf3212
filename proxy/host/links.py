"""Links between namespaces: ``ip -batch``, veth pairs, the LAN bridge, interface names.

Two shapes of veth pair are used:

- a *LAN port*: ``eth0`` (with an address) in a host's namespace, its peer a port of the
  bridge in the LAN namespace (nodes and outside clients);
- a *pod link* (Calico style): ``eth0`` with a /32 in the pod's namespace, its peer
  ``veth-<pod>`` without an address in the node's namespace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from proxy.host.process import run_command

BRIDGE = "br0"
"""The LAN bridge (in the LAN namespace)."""


def ip_batch(netns: str | None, commands: Iterable[str], *, force: bool = False) -> None:
    """Run `ip` commands (one per line, without the leading `ip`) in one process.

    With netns=None the commands run where they name their namespaces themselves
    (only `netns add|del` lines are issued that way).
    """
    lines = [c for c in commands if c]
    if not lines:
        return
    argv = ["ip"]
    if netns is not None:
        argv += ["-n", netns]
    if force:
        argv.append("-force")
    argv += ["-batch", "-"]
    run_command(argv, input="\n".join(lines) + "\n")


def _ifname(prefix: str, name: str) -> str:
    """An interface name (at most 15 characters) derived from a node/pod/client name."""
    candidate = f"{prefix}{name}"
    if len(candidate) <= 15:
        return candidate
    return prefix + hashlib.sha1(name.encode()).hexdigest()[: 15 - len(prefix)]


def veth_name(pod: str) -> str:
    """The node-side interface of a pod's veth pair."""
    return _ifname("veth-", pod)


def lan_port_name(host: str) -> str:
    """The bridge-side interface (in the LAN namespace) of a node's or client's veth."""
    return _ifname("p-", host)


def bridge_commands(address: str) -> list[str]:
    """`ip` commands, in the LAN namespace, making the bridge with ``address`` (a CIDR)."""
    return [
        "link set lo up",
        f"link add {BRIDGE} type bridge",
        f"addr add {address} dev {BRIDGE}",
        f"link set {BRIDGE} up",
    ]


def lan_port_commands(host: str, lan: str, address: str) -> list[str]:
    """`ip` commands, in the host's namespace, making its ``eth0`` with ``address`` (a
    CIDR) and the peer :func:`lan_port_name` in the LAN namespace ``lan``; the peer joins
    the bridge with :func:`join_bridge`."""
    return [
        f"link add eth0 type veth peer name {lan_port_name(host)} netns {lan}",
        f"addr add {address} dev eth0",
        "link set eth0 up",
        "link set lo up",
    ]


def join_bridge(lan: str, hosts: Sequence[str]) -> None:
    """Attach the hosts' LAN ports to the bridge, then bring them up."""
    ports = [lan_port_name(h) for h in hosts]
    ip_batch(lan, [f"link set {p} master {BRIDGE}" for p in ports])
    ip_batch(lan, [f"link set {p} up" for p in ports])


def pod_link_commands(pod: str, node: str, ip: str, gateway: str) -> list[str]:
    """`ip` commands, in the pod's namespace, making its ``eth0`` with ``ip``/32, the peer
    :func:`veth_name` in the node's namespace ``node``, and a default route via the
    link-local ``gateway`` the node answers for with proxy ARP."""
    return [
        f"link add eth0 type veth peer name {veth_name(pod)} netns {node}",
        f"addr add {ip}/32 dev eth0",
        "link set eth0 up",
        "link set lo up",
        # src: scapy takes its source address (also for ARP) from the route.
        f"route add default via {gateway} dev eth0 onlink src {ip}",
    ]
