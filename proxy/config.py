"""Proxy configuration shared by the planner, the renderers and the agent."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from proxy.model import IPAddress, IPFamily, IPNetwork


class ProxyMode(StrEnum):
    IPTABLES = "iptables"
    NFTABLES = "nftables"


class ConfigError(ValueError):
    """A flag, config field or kubeconfig field has a bad value; the message names the
    flag or the file and field, and the fix."""


@dataclass(frozen=True)
class NodePortAddresses:
    """``--nodeport-addresses``: which node addresses accept NodePort traffic.

    Empty (the default) means the mode's default: iptables accepts every local address,
    nftables only the node's primary IPs. ``primary`` means the node's primary IPs;
    otherwise a list of CIDRs selecting local addresses.
    """

    cidrs: tuple[IPNetwork, ...] = ()
    primary: bool = False

    @staticmethod
    def parse(value: str | None) -> NodePortAddresses:
        if value is None or not value.strip():
            return NodePortAddresses()
        items = [v.strip() for v in value.split(",") if v.strip()]
        if items == ["primary"]:
            return NodePortAddresses(primary=True)
        cidrs: list[IPNetwork] = []
        for item in items:
            if item == "primary":
                raise ConfigError(
                    "--nodeport-addresses: 'primary' cannot be combined with CIDRs; "
                    "use either 'primary' or a comma-separated CIDR list"
                )
            try:
                cidrs.append(ipaddress.ip_network(item, strict=False))
            except ValueError as exc:
                raise ConfigError(
                    f"--nodeport-addresses: {item!r} is not a CIDR (e.g. 192.168.0.0/16) "
                    "or 'primary'"
                ) from exc
        return NodePortAddresses(cidrs=tuple(cidrs))

    def for_family(self, family: IPFamily) -> NodePortAddresses:
        """The setting for one family. CIDRs of which none is of ``family`` leave that
        family unrestricted, as upstream (every local address: ``0.0.0.0/0`` or
        ``::/0``), not the mode's default."""
        if self.primary or not self.cidrs:
            return self
        mine = tuple(c for c in self.cidrs if IPFamily.of(c) == family)
        if not mine:
            everything = "0.0.0.0/0" if family is IPFamily.V4 else "::/0"
            mine = (ipaddress.ip_network(everything),)
        return NodePortAddresses(cidrs=mine, primary=False)

    def __str__(self) -> str:
        if self.primary:
            return "primary"
        return ",".join(str(c) for c in self.cidrs)


def parse_cidrs(value: str | None, flag: str) -> tuple[IPNetwork, ...]:
    if value is None or not value.strip():
        return ()
    out: list[IPNetwork] = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(
                f"{flag}: {item!r} is not a CIDR (e.g. 10.244.0.0/16; comma-separate one per "
                "IP family)"
            ) from exc
    families = [IPFamily.of(n) for n in out]
    if len(families) != len(set(families)):
        raise ConfigError(f"{flag}: give at most one CIDR per IP family, got {value!r}")
    return tuple(out)


@dataclass(frozen=True)
class ProxyConfig:
    """What the planner and renderers need beyond the API objects."""

    node_name: str
    mode: ProxyMode = ProxyMode.IPTABLES
    cluster_cidrs: tuple[IPNetwork, ...] = ()
    nodeport_addresses: NodePortAddresses = NodePortAddresses()
    masquerade_all: bool = False
    masquerade_bit: int = 14
    localhost_nodeports: bool = True
    """iptables mode only: NodePorts on 127.0.0.1 (needs route_localnet=1)."""
    host_addresses: tuple[IPAddress, ...] = ()
    """The node's local addresses, used to resolve CIDR ``--nodeport-addresses``.
    ``apply``/``run`` read them from the kernel; ``render`` uses the Node's addresses."""
    service_counters: bool = False
    """``--metrics-service-counters``: count packets and bytes per service port and
    verdict in the rules."""

    def __post_init__(self) -> None:
        if not 0 <= self.masquerade_bit <= 31:
            raise ConfigError(f"masqueradeBit {self.masquerade_bit} must be in 0-31")

    @property
    def masquerade_mark(self) -> int:
        return 1 << self.masquerade_bit

    def cluster_cidr(self, family: IPFamily) -> IPNetwork | None:
        for net in self.cluster_cidrs:
            if IPFamily.of(net) == family:
                return net
        return None
