"""The node's local addresses, read from the kernel (for CIDR ``--nodeport-addresses``)."""

from __future__ import annotations

import ipaddress
import json

from proxy.kernel.executor import Executor
from proxy.model import IPAddress


def local_addresses(executor: Executor) -> tuple[IPAddress, ...]:
    proc = executor.run(["ip", "-j", "addr", "show"])
    out: list[IPAddress] = []
    for link in json.loads(proc.stdout or "[]"):
        for info in link.get("addr_info", []):
            try:
                out.append(ipaddress.ip_address(info["local"]))
            except (KeyError, ValueError):
                continue
    return tuple(out)
