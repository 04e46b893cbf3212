"""Links between namespaces: ``ip -batch``, veth pairs, the LAN bridge, interface names.

Two shapes of veth pair are used:

- a *LAN port*: ``eth0`` (with an address) in a host's namespace, its peer a port of the
  bridge in the LAN namespace (nodes and outside clients);
- a *pod link* (Calico style): ``eth0`` with a /32 (IPv4) or /128 (IPv6) in the pod's
  namespace, its peer ``veth-<pod>`` in the node's namespace, without an address except
  the link-local IPv6 gateway the pod routes through.

IPv6 addresses are added with ``nodad``: usable at once, not after duplicate address
detection.
"""

from __future__ import annotations

import hashlib
import ipaddress
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


def addr_add(address: str, dev: str) -> str:
    """The `ip` command adding ``address`` (with its prefix length) to ``dev``; IPv6
    addresses with ``nodad``."""
    nodad = " nodad" if ipaddress.ip_interface(address).version == 6 else ""
    return f"addr add {address} dev {dev}{nodad}"


def bridge_commands(*addresses: str) -> list[str]:
    """`ip` commands, in the LAN namespace, making the bridge with ``addresses`` (CIDRs,
    one per IP family)."""
    return [
        "link set lo up",
        f"link add {BRIDGE} type bridge",
        *(addr_add(a, BRIDGE) for a in addresses),
        f"link set {BRIDGE} up",
    ]


def lan_port_commands(host: str, lan: str, *addresses: str) -> list[str]:
    """`ip` commands, in the host's namespace, making its ``eth0`` with ``addresses``
    (CIDRs, one per IP family) and the peer :func:`lan_port_name` in the LAN namespace
    ``lan``; the peer joins the bridge with :func:`join_bridge`."""
    return [
        f"link add eth0 type veth peer name {lan_port_name(host)} netns {lan}",
        *(addr_add(a, "eth0") for a in addresses),
        "link set eth0 up",
        "link set lo up",
    ]


def join_bridge(lan: str, hosts: Sequence[str]) -> None:
    """Attach the hosts' LAN ports to the bridge, then bring them up."""
    ports = [lan_port_name(h) for h in hosts]
    ip_batch(lan, [f"link set {p} master {BRIDGE}" for p in ports])
    ip_batch(lan, [f"link set {p} up" for p in ports])


def pod_link_commands(pod: str, node: str, routes: Sequence[tuple[str, str]]) -> list[str]:
    """`ip` commands, in the pod's namespace, making its ``eth0`` and the peer
    :func:`veth_name` in the node's namespace ``node``. ``routes`` holds one
    (ip, gateway) per IP family: ``ip`` becomes a /32 or /128 of ``eth0``, with a default
    route via the link-local ``gateway`` (IPv4: the node answers for it with proxy ARP;
    IPv6: the node side of the pair holds it)."""
    commands = [f"link add eth0 type veth peer name {veth_name(pod)} netns {node}"]
    for ip, _ in routes:
        bits = 32 if ipaddress.ip_address(ip).version == 4 else 128
        commands.append(addr_add(f"{ip}/{bits}", "eth0"))
    commands += ["link set eth0 up", "link set lo up"]
    for ip, gateway in routes:
        default = "default" if ipaddress.ip_address(ip).version == 4 else "::/0"
        # src: scapy takes its source address (also for ARP) from the route.
        commands.append(f"route add {default} via {gateway} dev eth0 onlink src {ip}")
    return commands
