"""Checks and conversions shared by the flags and the file: proxy mode, NodePort
addresses, ``IP[:port]`` bind addresses, sync periods, the masquerade bit."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from proxy.config import ConfigError, NodePortAddresses, ProxyMode
from proxy.model import IPAddress


def check_masquerade_bit(bit: int, what: str) -> int:
    if not 0 <= bit <= 31:
        raise ConfigError(
            f"{what}: {bit} is out of range; use a bit number from 0 to 31 (default 14)"
        )
    return bit


def ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _join_host_port(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _split_host_port(text: str, what: str) -> tuple[str, str]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{what}: {text!r} is not IP:port; write IPv6 as [::1]:10256")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        raise ConfigError(f"{what}: {text!r} is not IP or IP:port (e.g. 0.0.0.0:10256, [::]:10256)")
    return host, port


def host_port(value: str, default_port: int, what: str) -> str:
    """``IP`` or ``IP:port`` → normalized ``IP:port`` (``[IPv6]:port``), as upstream accepts."""
    text = value.strip()
    if "/" in text:
        raise ConfigError(
            f"{what}: {value!r} is a CIDR; give IP or IP:port, e.g. 0.0.0.0:{default_port} "
            "(kube-proxy v1.37 accepts no CIDR here either)"
        )
    bare = ip_or_none(text)
    if bare is not None:
        return _join_host_port(bare, default_port)
    host, port_text = _split_host_port(text, what)
    ip = ip_or_none(host)
    if ip is None:
        raise ConfigError(f"{what}: {host!r} in {value!r} is not an IP address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{what}: port {port_text!r} in {value!r} is not a port (1-65535)")
    return _join_host_port(ip, int(port_text))


def proxy_mode(value: str, what: str) -> ProxyMode:
    if value == "":
        return ProxyMode.IPTABLES
    if value in ("ipvs", "kernelspace"):
        raise ConfigError(
            f"{what}: {value!r} is not implemented by kube-proxy-py; only iptables and "
            "nftables are (nftables is the successor of ipvs upstream)"
        )
    try:
        return ProxyMode(value)
    except ValueError:
        raise ConfigError(
            f"{what}: {value!r} is not a proxy mode; use iptables or nftables"
        ) from None


_NODEPORT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "all": ("0.0.0.0/0", "::/0"),
    "localhost": ("127.0.0.0/8", "::1/128"),
}


def nodeport_addresses(items: Sequence[str], what: str) -> NodePortAddresses:
    """Upstream's list (CIDRs and the keywords primary, all, localhost) → NodePortAddresses."""
    cleaned = [item.strip() for item in items if item.strip()]
    if "primary" in cleaned and len(cleaned) > 1:
        raise ConfigError(
            f"{what}: {cleaned!r}: kube-proxy-py cannot combine 'primary' with other "
            "entries yet; give 'primary' alone, or CIDRs and the keywords all/localhost"
        )
    expanded: list[str] = []
    for item in cleaned:
        if cleaned.count(item) > 1 and item in _NODEPORT_KEYWORDS:
            raise ConfigError(f"{what}: keyword {item!r} is listed twice")
        expanded.extend(_NODEPORT_KEYWORDS.get(item, (item,)))
    for item in expanded:
        if item == "primary":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"{what}: {item!r} is not a CIDR or one of the keywords primary, all, localhost"
            ) from None
    return NodePortAddresses.parse(",".join(expanded))


def check_periods(
    sync: float, minimum: float, config_sync: float, names: tuple[str, str, str]
) -> None:
    sync_name, min_name, config_name = names
    if sync <= 0:
        raise ConfigError(f"{sync_name}: must be greater than 0 (e.g. 30s), got {sync:g}s")
    if minimum < 0:
        raise ConfigError(f"{min_name}: must be 0 or more (e.g. 1s), got {minimum:g}s")
    if minimum > sync:
        raise ConfigError(
            f"{min_name} ({minimum:g}s) must not be longer than {sync_name} ({sync:g}s)"
        )
    if config_sync <= 0:
        raise ConfigError(f"{config_name}: must be greater than 0 (e.g. 15m), got {config_sync:g}s")
