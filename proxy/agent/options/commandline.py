"""The flags given on the command line (argparse's values, all still text) → settings.

Without ``--config`` the flags are the configuration: :func:`read_flags` turns them into
AgentOptions. With it, the configuration flags are dropped, each with a warning
(:func:`warn_flags_beside_config`). Upstream flags kube-proxy-py ignores draw a warning
unless given their upstream default (:func:`warn_ignored_flags`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.agent.options.checks import (
    check_masquerade_bit,
    check_periods,
    host_port,
    nodeport_addresses,
    proxy_mode,
)
from proxy.agent.options.flags import FLAGS, SUPPORTED_FLAGS, FlagSpec
from proxy.agent.options.govalues import parse_go_bool, parse_go_duration, parse_go_int, parse_text
from proxy.agent.options.settings import (
    DEFAULT_CONFIG_SYNC_PERIOD,
    DEFAULT_MASQUERADE_BIT,
    DEFAULT_MIN_SYNC_PERIOD,
    DEFAULT_SYNC_PERIOD,
    HEALTHZ_PORT,
    METRICS_PORT,
    AgentOptions,
)
from proxy.config import ConfigError, NodePortAddresses, ProxyMode, parse_cidrs

IGNORED_DEST = "kpp_ignored_flags"
"""Where argparse collects the (flag, value) pairs of the ignored upstream flags given."""


def flag_text(given: Mapping[str, Any], spec_name: str) -> str | None:
    value = given.get(FLAGS[spec_name].dest)
    return value if isinstance(value, str) else None


def flag_bool(given: Mapping[str, Any], name: str, default: bool) -> bool:
    text = flag_text(given, name)
    return default if text is None else parse_go_bool(text, name)


def _flag_duration(given: Mapping[str, Any], name: str, default: float) -> float:
    text = flag_text(given, name)
    return default if text is None else parse_go_duration(text, name)


def _flag_server(
    given: Mapping[str, Any], address_flag: str, port_flag: str, default: str, default_port: int
) -> str:
    """A bind address flag plus its deprecated port flag, as upstream combines them."""
    port_text = flag_text(given, port_flag)
    port = default_port if port_text is None else parse_go_int(port_text, port_flag)
    address = flag_text(given, address_flag) or default
    if port == 0:
        return ""
    if not 1 <= port <= 65535:
        raise ConfigError(f"{port_flag}: {port} is not a port (1-65535, or 0 to turn off)")
    return host_port(address, port, address_flag)


def read_flags(given: Mapping[str, Any], warnings: list[str]) -> AgentOptions:
    """The configuration from the flags alone (no ``--config``). ``node_name`` is "" and
    ``verbosity`` 0 here: parse.py resolves them (they apply with ``--config`` too)."""
    mode = proxy_mode(flag_text(given, "--proxy-mode") or "", "--proxy-mode")
    sync = _flag_duration(given, "--iptables-sync-period", DEFAULT_SYNC_PERIOD)
    min_sync = _flag_duration(given, "--iptables-min-sync-period", DEFAULT_MIN_SYNC_PERIOD)
    config_sync = _flag_duration(given, "--config-sync-period", DEFAULT_CONFIG_SYNC_PERIOD)
    check_periods(
        sync,
        min_sync,
        config_sync,
        ("--iptables-sync-period", "--iptables-min-sync-period", "--config-sync-period"),
    )
    metrics = _flag_server(
        given, "--metrics-bind-address", "--metrics-port", f"127.0.0.1:{METRICS_PORT}", METRICS_PORT
    )
    if not metrics:
        raise ConfigError(
            "--metrics-port=0: kube-proxy cannot run without its metrics server "
            "(metricsBindAddress must be IP:port); drop the flag or set --metrics-bind-address"
        )
    _warn_deprecated_ports(given, warnings)
    _warn_iptables_only_flags(given, mode, warnings)
    return AgentOptions(
        node_name="",
        mode=mode,
        kubeconfig=flag_text(given, "--kubeconfig") or None,
        master=None,
        cluster_cidrs=parse_cidrs(flag_text(given, "--cluster-cidr"), "--cluster-cidr"),
        nodeport_addresses=_flag_nodeport_addresses(given),
        masquerade_all=flag_bool(given, "--masquerade-all", False),
        masquerade_bit=_flag_masquerade_bit(given, mode),
        localhost_nodeports=flag_bool(given, "--iptables-localhost-nodeports", True),
        sync_period=sync,
        min_sync_period=min_sync,
        config_sync_period=config_sync,
        healthz_bind_address=_flag_server(
            given,
            "--healthz-bind-address",
            "--healthz-port",
            f"0.0.0.0:{HEALTHZ_PORT}",
            HEALTHZ_PORT,
        ),
        metrics_bind_address=metrics,
        cleanup=False,
        verbosity=0,
        config_file=None,
        warnings=(),
    )


def _flag_nodeport_addresses(given: Mapping[str, Any]) -> NodePortAddresses:
    values = given.get(FLAGS["--nodeport-addresses"].dest) or []
    items = [item for value in values for item in str(value).split(",")]
    return nodeport_addresses(items, "--nodeport-addresses")


def _flag_masquerade_bit(given: Mapping[str, Any], mode: ProxyMode) -> int:
    text = flag_text(given, "--iptables-masquerade-bit")
    if text is None or mode is ProxyMode.NFTABLES:
        return DEFAULT_MASQUERADE_BIT
    return check_masquerade_bit(
        parse_go_int(text, "--iptables-masquerade-bit"), "--iptables-masquerade-bit"
    )


def _warn_deprecated_ports(given: Mapping[str, Any], warnings: list[str]) -> None:
    for port_flag, address_flag in (
        ("--healthz-port", "--healthz-bind-address"),
        ("--metrics-port", "--metrics-bind-address"),
    ):
        if flag_text(given, port_flag) is not None:
            warnings.append(f"{port_flag} is deprecated (upstream too); use {address_flag}=IP:PORT")


def _warn_iptables_only_flags(
    given: Mapping[str, Any], mode: ProxyMode, warnings: list[str]
) -> None:
    if mode is not ProxyMode.NFTABLES:
        return
    if flag_text(given, "--iptables-masquerade-bit") is not None:
        warnings.append(
            "--iptables-masquerade-bit has no effect in nftables mode (as upstream): the "
            "nftables bit is nftables.masqueradeBit in a --config file (default 14)"
        )
    if flag_text(given, "--iptables-localhost-nodeports") is not None:
        warnings.append(
            "--iptables-localhost-nodeports has no effect in nftables mode: nftables "
            "never serves NodePorts on 127.0.0.1"
        )


def warn_flags_beside_config(given: Mapping[str, Any], warnings: list[str]) -> None:
    """Upstream drops every configuration flag when --config is given; name each one."""
    for spec in SUPPORTED_FLAGS:
        if spec.with_config or spec.dest not in given:
            continue
        warnings.append(
            f"{spec.name} is ignored because --config is given (as upstream kube-proxy "
            f"does); set {spec.field} in the config file instead"
        )


def warn_ignored_flags(given: Mapping[str, Any], warnings: list[str]) -> None:
    for name, value in given.get(IGNORED_DEST, []):
        spec = FLAGS[name]
        if _flag_is_default(spec, value):
            continue
        warnings.append(
            f"{name}={value} is not supported by kube-proxy-py and is ignored ({spec.note})"
        )


def _flag_is_default(spec: FlagSpec, value: str) -> bool:
    try:
        typed = parse_text(spec.kind, value, spec.name)
        return any(typed == parse_text(spec.kind, d, spec.name) for d in spec.defaults)
    except ConfigError:
        return False
