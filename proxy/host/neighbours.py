"""What a namespace's network stack knows: its links' MAC addresses, its neighbour (ARP
and NDP) entries, the gateway of a route. Read only, through ``ip -j`` run inside the
namespace (a name under ``/run/netns`` or a path such as a pod's ``/proc/PID/ns/net``).

A failed or empty answer is "nothing known" (None or empty): these are lookups, and a
namespace that went away in the meantime knows nothing. A missing ``ip`` command, or one
that hangs for 10 s, is :class:`~proxy.host.errors.HostError`.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.host.netns import exec_argv
from proxy.host.process import run_command

TIMEOUT = 10.0


def _ip_json(netns: str, args: list[str]) -> list[dict[str, Any]]:
    try:
        done = run_command(exec_argv(netns, ["ip", "-j", *args]), check=False, timeout=TIMEOUT)
    except OSError:
        return []
    if done.returncode != 0 or not done.stdout.strip():
        return []
    try:
        found = json.loads(done.stdout)
    except ValueError:
        return []
    return [x for x in found if isinstance(x, dict)] if isinstance(found, list) else []


def link_macs(netns: str) -> dict[str, str]:
    """Every link's MAC address in ``netns``: interface name → ``aa:bb:…``."""
    return {
        str(link["ifname"]): str(link["address"])
        for link in _ip_json(netns, ["link", "show"])
        if link.get("ifname") and link.get("address")
    }


def link_mac(netns: str, dev: str) -> str | None:
    """The MAC address of interface ``dev`` in ``netns`` (None: no such interface)."""
    return link_macs(netns).get(dev)


def neighbour_mac(netns: str, ip: str) -> str | None:
    """The MAC ``netns``'s neighbour table has for ``ip`` (ARP or NDP), if any."""
    for entry in _ip_json(netns, ["neigh", "show", ip]):
        if entry.get("lladdr"):
            return str(entry["lladdr"])
    return None


def route_gateway(netns: str, dst: str) -> str | None:
    """The gateway ``netns`` routes ``dst`` through (None: on-link, or no route)."""
    for route in _ip_json(netns, ["route", "get", dst]):
        if route.get("gateway"):
            return str(route["gateway"])
    return None
