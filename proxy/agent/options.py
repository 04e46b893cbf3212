"""Options of ``kube-proxy-py run``: command line + config file → one frozen AgentOptions.

``parse_run_args(argv, env)`` reads the node agent's command line the way upstream
kube-proxy v1.37 reads its own: the same flag names, defaults and config file
(``kubeproxy.config.k8s.io/v1alpha1`` ``KubeProxyConfiguration``), so an upstream
DaemonSet's arguments and its ConfigMap's ``config.conf`` work unchanged.

Precedence, as upstream v1.37.2 does it (``cmd/kube-proxy/app/options.go``,
``Options.Complete``; confirmed by running the v1.37.2 binary with ``--write-config-to``):

* without ``--config``, each flag given overrides its upstream default;
* with ``--config FILE``, the file replaces *every* configuration flag. Only these
  still apply: ``--hostname-override`` (wins over the file's ``hostnameOverride``),
  ``--master``, ``--cleanup`` and ``-v`` (wins over ``logging.verbosity``). Upstream
  drops every other flag silently; kube-proxy-py drops it too, with a warning naming
  the flag and the config field to set instead.

Other upstream facts carried over:

* in the file, a zero value or null means "the default" (``syncPeriod: 0s`` is 30s);
  for Go pointer fields (``masqueradeBit``, ``localhostNodePorts``, ``oomScoreAdj``,
  ``conntrack.*``) only null does. Unknown fields are accepted with a warning (upstream
  falls back to lenient decoding and logs it). Durations are Go strings ("30s").
* Masquerade settings and sync periods come from the active mode's section
  (``iptables.*`` or ``nftables.*``). On the command line ``--iptables-sync-period`` and
  ``--iptables-min-sync-period`` set the periods in nftables mode too (upstream has no
  ``--nftables-*`` flags), but ``--iptables-masquerade-bit`` does not: nftables mode
  reads ``nftables.masqueradeBit`` (default 14), which only the file can set.
* The node name is trimmed and lower-cased.
* No kubeconfig and no master: in-cluster config. kube-proxy never reads
  ``$KUBECONFIG`` and neither does kube-proxy-py; ``--master`` alone means that URL
  without credentials.
* Health and metrics addresses are ``IP`` or ``IP:port`` (a bare IP gets the default
  port; ``--healthz-port``/``--metrics-port``, deprecated, give that port when no
  ``--config`` is used, and ``--healthz-port=0`` turns the health server off). v1.37
  accepts no CIDR form.

kube-proxy-py's own choices: the node name falls back to ``$NODE_NAME`` before the host
name; upstream flags and fields that kube-proxy-py does not implement are accepted and
named in ``AgentOptions.warnings`` (unless set to upstream's default);
``--init-only`` and ``--write-config-to`` are errors, because ignoring them would run
the agent where the caller expects a quick exit; ``mode: ipvs`` is an error.

The flag and field tables below are the single source of the parser and of the
reference tables in docs/deploy.md (``python -m proxy.agent.options`` prints them).
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import yaml

from proxy import __version__, documents
from proxy import apivalidation as av
from proxy.config import ConfigError, NodePortAddresses, ProxyConfig, ProxyMode, parse_cidrs
from proxy.model import IPAddress, IPNetwork

CONFIG_API_VERSION = "kubeproxy.config.k8s.io/v1alpha1"
CONFIG_KIND = "KubeProxyConfiguration"
HEALTHZ_PORT = 10256
METRICS_PORT = 10249
DEFAULT_MASQUERADE_BIT = 14
DEFAULT_SYNC_PERIOD = 30.0
DEFAULT_MIN_SYNC_PERIOD = 1.0
DEFAULT_CONFIG_SYNC_PERIOD = 15 * 60.0
NODE_NAME_ENV = "NODE_NAME"


@dataclass(frozen=True)
class AgentOptions:
    """Everything ``kube-proxy-py run`` needs, resolved from flags, file and environment.

    ``kubeconfig`` None and ``master`` None: in-cluster config (service account token,
    ``KUBERNETES_SERVICE_HOST``/``_PORT``). ``master`` overrides the kubeconfig's server;
    with no kubeconfig it is used without credentials. ``healthz_bind_address`` "" means
    the health server is off (``--healthz-port=0``). Durations are in seconds.
    """

    node_name: str
    mode: ProxyMode
    kubeconfig: str | None
    master: str | None
    cluster_cidrs: tuple[IPNetwork, ...]
    nodeport_addresses: NodePortAddresses
    masquerade_all: bool
    masquerade_bit: int
    localhost_nodeports: bool
    sync_period: float
    min_sync_period: float
    config_sync_period: float
    healthz_bind_address: str
    metrics_bind_address: str
    cleanup: bool
    verbosity: int
    config_file: str | None
    warnings: tuple[str, ...]

    def proxy_config(self, host_addresses: tuple[IPAddress, ...] = ()) -> ProxyConfig:
        """The planner's configuration; ``host_addresses`` are the node's local IPs."""
        return ProxyConfig(
            node_name=self.node_name,
            mode=self.mode,
            cluster_cidrs=self.cluster_cidrs,
            nodeport_addresses=self.nodeport_addresses,
            masquerade_all=self.masquerade_all,
            masquerade_bit=self.masquerade_bit,
            localhost_nodeports=self.localhost_nodeports,
            host_addresses=host_addresses,
        )


# --------------------------------------------------------------------------- tables


class Kind(StrEnum):
    """The type of a flag's or a config field's value."""

    STRING = "string"
    BOOL = "bool"
    INT = "integer"
    NUMBER = "number"
    DURATION = "duration"
    STRING_LIST = "list of strings"
    BOOL_MAP = "map of booleans"
    LIST = "list"
    FLUSH = "duration or nanoseconds"
    QUANTITY = "quantity"


@dataclass(frozen=True)
class ConfigField:
    """One KubeProxyConfiguration field (dotted path) and what kube-proxy-py does with it."""

    path: str
    kind: Kind
    note: str
    defaults: tuple[str, ...] = ()
    """Upstream's default(s), as text; an ignored field set to one draws no warning."""
    pointer: bool = False
    """A Go pointer field: only null means "unset"; 0, false or 0s are explicit values."""


@dataclass(frozen=True)
class FlagSpec:
    """One upstream kube-proxy flag and what kube-proxy-py does with it."""

    name: str
    kind: Kind
    note: str
    defaults: tuple[str, ...] = ()
    """Ignored flags: upstream's default(s); giving one draws no warning."""
    field: str = ""
    """The config field to use instead when ``--config`` is given."""
    with_config: bool = False
    """Still applies when ``--config`` is given."""
    short: str = ""
    metavar: str = ""

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def option_strings(self) -> tuple[str, ...]:
        return (self.short, self.name) if self.short else (self.name,)


_IPVS = "IPVS mode is not implemented; use nftables"
_CONNTRACK = "kube-proxy-py never changes conntrack sysctls"
_LOGS = "kube-proxy-py logs in its own format; only the verbosity is read"
_CLIENT = "the Python Kubernetes client's defaults apply"
_LOCAL = "only ClusterCIDR local-traffic detection is implemented"
_WINDOWS = "Windows only"
_OOM = "kube-proxy-py leaves its OOM score to the kubelet (-997 for system-node-critical pods)"

SUPPORTED_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec(
        "--config",
        Kind.STRING,
        "a KubeProxyConfiguration file (YAML or JSON)",
        with_config=True,
        metavar="FILE",
    ),
    FlagSpec("--cleanup", Kind.BOOL, "remove kube-proxy-py's rules and exit", with_config=True),
    FlagSpec(
        "--hostname-override",
        Kind.STRING,
        "this node's name (default: $NODE_NAME, else the host name); wins over the file",
        field="hostnameOverride",
        with_config=True,
        metavar="NODE",
    ),
    FlagSpec(
        "--master",
        Kind.STRING,
        "API server URL; overrides the kubeconfig's",
        with_config=True,
        metavar="URL",
    ),
    FlagSpec(
        "--kubeconfig",
        Kind.STRING,
        "kubeconfig file (default: in-cluster config; $KUBECONFIG is not read)",
        field="clientConnection.kubeconfig",
        metavar="FILE",
    ),
    FlagSpec(
        "--proxy-mode", Kind.STRING, "iptables (default) or nftables", field="mode", metavar="MODE"
    ),
    FlagSpec(
        "--cluster-cidr",
        Kind.STRING,
        "pod CIDR, at most one per IP family (comma-separated): cluster IP traffic from "
        "outside it is masqueraded",
        field="clusterCIDR",
        metavar="CIDR[,CIDR]",
    ),
    FlagSpec(
        "--nodeport-addresses",
        Kind.STRING_LIST,
        "CIDRs or the keywords all, localhost (CIDRs) or primary (alone) for NodePorts "
        "(default: iptables all, nftables primary)",
        field="nodePortAddresses",
        metavar="LIST",
    ),
    FlagSpec(
        "--masquerade-all",
        Kind.BOOL,
        "masquerade all traffic to cluster IPs",
        field="iptables.masqueradeAll / nftables.masqueradeAll",
    ),
    FlagSpec(
        "--iptables-masquerade-bit",
        Kind.INT,
        "iptables mode: fwmark bit for masquerading, 0-31 (default 14)",
        field="iptables.masqueradeBit",
    ),
    FlagSpec(
        "--iptables-localhost-nodeports",
        Kind.BOOL,
        "iptables mode: NodePorts on 127.0.0.1 (default true)",
        field="iptables.localhostNodePorts",
    ),
    FlagSpec(
        "--iptables-sync-period",
        Kind.DURATION,
        "full resync interval, both modes (default 30s)",
        field="iptables.syncPeriod / nftables.syncPeriod",
    ),
    FlagSpec(
        "--iptables-min-sync-period",
        Kind.DURATION,
        "minimum time between syncs, both modes (default 1s)",
        field="iptables.minSyncPeriod / nftables.minSyncPeriod",
    ),
    FlagSpec(
        "--config-sync-period",
        Kind.DURATION,
        "how often the informers re-list (default 15m0s)",
        field="configSyncPeriod",
    ),
    FlagSpec(
        "--healthz-bind-address",
        Kind.STRING,
        "IP or IP:port of /healthz and /livez (default 0.0.0.0:10256)",
        field="healthzBindAddress",
        metavar="IP[:PORT]",
    ),
    FlagSpec(
        "--metrics-bind-address",
        Kind.STRING,
        "IP or IP:port of /metrics (default 127.0.0.1:10249)",
        field="metricsBindAddress",
        metavar="IP[:PORT]",
    ),
    FlagSpec(
        "--healthz-port",
        Kind.INT,
        "deprecated: port for a bare-IP --healthz-bind-address; 0 turns the server off",
        field="healthzBindAddress",
    ),
    FlagSpec(
        "--metrics-port",
        Kind.INT,
        "deprecated: port for a bare-IP --metrics-bind-address",
        field="metricsBindAddress",
    ),
    FlagSpec(
        "--v",
        Kind.INT,
        "log verbosity (default 0); wins over logging.verbosity",
        with_config=True,
        short="-v",
    ),
)

IGNORED_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec(
        "--bind-address",
        Kind.STRING,
        "the node's primary IPs come from its Node object",
        ("0.0.0.0", "::"),
    ),
    FlagSpec("--bind-address-hard-fail", Kind.BOOL, "not implemented", ("false",)),
    FlagSpec("--conntrack-max-per-core", Kind.INT, _CONNTRACK, ("32768",)),
    FlagSpec("--conntrack-min", Kind.INT, _CONNTRACK, ("131072",)),
    FlagSpec("--conntrack-tcp-be-liberal", Kind.BOOL, _CONNTRACK, ("false",)),
    FlagSpec("--conntrack-tcp-timeout-close-wait", Kind.DURATION, _CONNTRACK, ("1h",)),
    FlagSpec("--conntrack-tcp-timeout-established", Kind.DURATION, _CONNTRACK, ("24h",)),
    FlagSpec("--conntrack-udp-timeout", Kind.DURATION, _CONNTRACK, ("0s",)),
    FlagSpec("--conntrack-udp-timeout-stream", Kind.DURATION, _CONNTRACK, ("0s",)),
    FlagSpec("--detect-local-mode", Kind.STRING, _LOCAL, ("", "ClusterCIDR")),
    FlagSpec("--feature-gates", Kind.STRING, "no feature gates are implemented", ("",)),
    FlagSpec("--ipvs-exclude-cidrs", Kind.STRING, _IPVS, ("",)),
    FlagSpec("--ipvs-min-sync-period", Kind.DURATION, _IPVS, ("1s",)),
    FlagSpec("--ipvs-scheduler", Kind.STRING, _IPVS, ("",)),
    FlagSpec("--ipvs-strict-arp", Kind.BOOL, _IPVS, ("false",)),
    FlagSpec("--ipvs-sync-period", Kind.DURATION, _IPVS, ("30s",)),
    FlagSpec("--ipvs-tcp-timeout", Kind.DURATION, _IPVS, ("0s",)),
    FlagSpec("--ipvs-tcpfin-timeout", Kind.DURATION, _IPVS, ("0s",)),
    FlagSpec("--ipvs-udp-timeout", Kind.DURATION, _IPVS, ("0s",)),
    FlagSpec("--kube-api-burst", Kind.INT, _CLIENT, ("10",)),
    FlagSpec(
        "--kube-api-content-type", Kind.STRING, _CLIENT, ("application/vnd.kubernetes.protobuf",)
    ),
    FlagSpec("--kube-api-qps", Kind.NUMBER, _CLIENT, ("5",)),
    FlagSpec("--log-flush-frequency", Kind.DURATION, _LOGS, ("5s",)),
    FlagSpec("--log-json-info-buffer-size", Kind.STRING, _LOGS, ("0",)),
    FlagSpec("--log-json-split-stream", Kind.BOOL, _LOGS, ("false",)),
    FlagSpec("--log-text-info-buffer-size", Kind.STRING, _LOGS, ("0",)),
    FlagSpec("--log-text-split-stream", Kind.BOOL, _LOGS, ("false",)),
    FlagSpec("--logging-format", Kind.STRING, _LOGS, ("text",)),
    FlagSpec("--oom-score-adj", Kind.INT, _OOM, ("-999",)),
    FlagSpec("--pod-bridge-interface", Kind.STRING, _LOCAL, ("",)),
    FlagSpec("--pod-interface-name-prefix", Kind.STRING, _LOCAL, ("",)),
    FlagSpec("--profiling", Kind.BOOL, "no /debug/pprof endpoint", ("false",)),
    FlagSpec("--show-hidden-metrics-for-version", Kind.STRING, "no metrics are hidden", ("",)),
    FlagSpec("--vmodule", Kind.STRING, _LOGS, ("",)),
)

REJECTED_FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec(
        "--init-only",
        Kind.BOOL,
        "there is no separate privileged init step: drop the init container",
    ),
    FlagSpec(
        "--write-config-to",
        Kind.STRING,
        "kube-proxy-py does not write config files: docs/deploy.md lists the fields it reads",
    ),
)

SUPPORTED_FIELDS: tuple[ConfigField, ...] = (
    ConfigField("hostnameOverride", Kind.STRING, "node name; --hostname-override wins"),
    ConfigField(
        "clientConnection.kubeconfig", Kind.STRING, "kubeconfig file; empty: in-cluster config"
    ),
    ConfigField("mode", Kind.STRING, "iptables or nftables; empty: iptables", ("iptables",)),
    ConfigField("clusterCIDR", Kind.STRING, "pod CIDR(s), comma-separated, one per family"),
    ConfigField(
        "nodePortAddresses",
        Kind.STRING_LIST,
        "CIDRs, all, localhost, or primary alone; empty: iptables all, nftables primary",
    ),
    ConfigField(
        "healthzBindAddress", Kind.STRING, "IP or IP:port of /healthz, /livez", ("0.0.0.0:10256",)
    ),
    ConfigField(
        "metricsBindAddress", Kind.STRING, "IP or IP:port of /metrics", ("127.0.0.1:10249",)
    ),
    ConfigField("configSyncPeriod", Kind.DURATION, "informer re-list interval", ("15m",)),
    ConfigField("iptables.masqueradeAll", Kind.BOOL, "iptables mode", ("false",)),
    ConfigField("iptables.masqueradeBit", Kind.INT, "iptables mode, 0-31", ("14",), pointer=True),
    ConfigField(
        "iptables.localhostNodePorts",
        Kind.BOOL,
        "iptables mode: NodePorts on 127.0.0.1",
        ("true",),
        pointer=True,
    ),
    ConfigField("iptables.syncPeriod", Kind.DURATION, "iptables mode", ("30s",)),
    ConfigField("iptables.minSyncPeriod", Kind.DURATION, "iptables mode", ("1s",)),
    ConfigField("nftables.masqueradeAll", Kind.BOOL, "nftables mode", ("false",)),
    ConfigField("nftables.masqueradeBit", Kind.INT, "nftables mode, 0-31", ("14",), pointer=True),
    ConfigField("nftables.syncPeriod", Kind.DURATION, "nftables mode", ("30s",)),
    ConfigField("nftables.minSyncPeriod", Kind.DURATION, "nftables mode", ("1s",)),
    ConfigField("logging.verbosity", Kind.INT, "log verbosity; -v wins", ("0",)),
)

IGNORED_FIELDS: tuple[ConfigField, ...] = (
    ConfigField("featureGates", Kind.BOOL_MAP, "no feature gates are implemented"),
    ConfigField("clientConnection.acceptContentTypes", Kind.STRING, _CLIENT),
    ConfigField(
        "clientConnection.contentType",
        Kind.STRING,
        _CLIENT,
        ("application/vnd.kubernetes.protobuf",),
    ),
    ConfigField("clientConnection.qps", Kind.NUMBER, _CLIENT, ("5",)),
    ConfigField("clientConnection.burst", Kind.INT, _CLIENT, ("10",)),
    ConfigField("logging.format", Kind.STRING, _LOGS, ("text",)),
    ConfigField("logging.flushFrequency", Kind.FLUSH, _LOGS, ("5s",)),
    ConfigField("logging.vmodule", Kind.LIST, _LOGS),
    ConfigField("logging.options.text.splitStream", Kind.BOOL, _LOGS),
    ConfigField("logging.options.text.infoBufferSize", Kind.QUANTITY, _LOGS, ("0",)),
    ConfigField("logging.options.json.splitStream", Kind.BOOL, _LOGS),
    ConfigField("logging.options.json.infoBufferSize", Kind.QUANTITY, _LOGS, ("0",)),
    ConfigField(
        "bindAddress",
        Kind.STRING,
        "the primary IPs come from the Node object; an IPv6 value still makes the "
        "default health and metrics addresses IPv6, as upstream",
        ("0.0.0.0", "::"),
    ),
    ConfigField("bindAddressHardFail", Kind.BOOL, "not implemented"),
    ConfigField("enableProfiling", Kind.BOOL, "no /debug/pprof endpoint"),
    ConfigField("showHiddenMetricsForVersion", Kind.STRING, "no metrics are hidden"),
    ConfigField("ipvs.syncPeriod", Kind.DURATION, _IPVS, ("30s",)),
    ConfigField("ipvs.minSyncPeriod", Kind.DURATION, _IPVS),
    ConfigField("ipvs.scheduler", Kind.STRING, _IPVS),
    ConfigField("ipvs.excludeCIDRs", Kind.STRING_LIST, _IPVS),
    ConfigField("ipvs.strictARP", Kind.BOOL, _IPVS),
    ConfigField("ipvs.tcpTimeout", Kind.DURATION, _IPVS),
    ConfigField("ipvs.tcpFinTimeout", Kind.DURATION, _IPVS),
    ConfigField("ipvs.udpTimeout", Kind.DURATION, _IPVS),
    ConfigField("winkernel.networkName", Kind.STRING, _WINDOWS),
    ConfigField("winkernel.sourceVip", Kind.STRING, _WINDOWS),
    ConfigField("winkernel.enableDSR", Kind.BOOL, _WINDOWS),
    ConfigField("winkernel.rootHnsEndpointName", Kind.STRING, _WINDOWS),
    ConfigField("winkernel.forwardHealthCheckVip", Kind.BOOL, _WINDOWS),
    ConfigField("windowsRunAsService", Kind.BOOL, _WINDOWS),
    ConfigField("detectLocalMode", Kind.STRING, _LOCAL, ("ClusterCIDR",)),
    ConfigField("detectLocal.bridgeInterface", Kind.STRING, _LOCAL),
    ConfigField("detectLocal.interfaceNamePrefix", Kind.STRING, _LOCAL),
    ConfigField("oomScoreAdj", Kind.INT, _OOM, ("-999",), pointer=True),
    ConfigField("conntrack.maxPerCore", Kind.INT, _CONNTRACK, ("32768",), pointer=True),
    ConfigField("conntrack.min", Kind.INT, _CONNTRACK, ("131072",), pointer=True),
    ConfigField("conntrack.tcpEstablishedTimeout", Kind.DURATION, _CONNTRACK, ("24h",), True),
    ConfigField("conntrack.tcpCloseWaitTimeout", Kind.DURATION, _CONNTRACK, ("1h",), True),
    ConfigField("conntrack.tcpBeLiberal", Kind.BOOL, _CONNTRACK),
    ConfigField("conntrack.udpTimeout", Kind.DURATION, _CONNTRACK),
    ConfigField("conntrack.udpStreamTimeout", Kind.DURATION, _CONNTRACK),
    ConfigField("portRange", Kind.STRING, "the userspace proxy is gone upstream too"),
)

_FIELDS: dict[str, ConfigField] = {f.path: f for f in (*SUPPORTED_FIELDS, *IGNORED_FIELDS)}
_OBJECTS: frozenset[str] = frozenset(
    ".".join(parts[:i]) for parts in (p.split(".") for p in _FIELDS) for i in range(1, len(parts))
)
_TYPE_META = frozenset({"apiVersion", "kind"})
_FLAGS: dict[str, FlagSpec] = {
    f.name: f for f in (*SUPPORTED_FLAGS, *IGNORED_FLAGS, *REJECTED_FLAGS)
}
_IGNORED_DEST = "kpp_ignored_flags"
_MODE_SECTION_FIELDS = ("masqueradeAll", "masqueradeBit", "syncPeriod", "minSyncPeriod")


# --------------------------------------------------------------------------- scalars

_DURATION_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 micro sign, as Go accepts
    "μs": 1e-6,  # U+03BC Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_NUMBER = re.compile(r"[0-9]*(?:\.[0-9]*)?")
_DURATION_UNIT = re.compile(r"[^0-9.]*")
_MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
_DURATION_HINT = "use a number with a unit, e.g. 30s, 1m0s, 500ms or 1h2m3s (units ns us ms s m h)"
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_go_duration(text: str, what: str) -> float:
    """A Go ``time.Duration`` string ("30s", "1m0s", "1.5h", "-2ms", "0") in seconds."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in ("+", "-") else text
    if body == "0":
        return 0.0
    if not body:
        raise ConfigError(f"{what}: {text!r} is not a duration; {_DURATION_HINT}")
    total = 0.0
    pos = 0
    while pos < len(body):
        number = _match(_DURATION_NUMBER, body, pos)
        if number in ("", "."):
            raise ConfigError(
                f"{what}: {text!r} is not a duration (expected a number at "
                f"{body[pos:]!r}); {_DURATION_HINT}"
            )
        pos += len(number)
        unit = _match(_DURATION_UNIT, body, pos)
        if unit not in _DURATION_UNITS:
            problem = f"unknown unit {unit!r}" if unit else f"missing unit after {number!r}"
            raise ConfigError(f"{what}: {text!r} is not a duration ({problem}); {_DURATION_HINT}")
        pos += len(unit)
        total += float(number) * _DURATION_UNITS[unit]
    if total > _MAX_DURATION_SECONDS:
        raise ConfigError(f"{what}: {text!r} is out of range (Go durations stop at ~292 years)")
    return sign * total


def _match(pattern: re.Pattern[str], text: str, pos: int) -> str:
    found = pattern.match(text, pos)
    return found.group() if found is not None else ""


def _go_bool(text: str, what: str) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ConfigError(f"{what}: {text!r} is not a boolean; use true or false")


def _go_int(text: str, what: str) -> int:
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not an integer") from None


def _check_masquerade_bit(bit: int, what: str) -> int:
    if not 0 <= bit <= 31:
        raise ConfigError(
            f"{what}: {bit} is out of range; use a bit number from 0 to 31 (default 14)"
        )
    return bit


def _ip(text: str) -> IPAddress | None:
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


def _host_port(value: str, default_port: int, what: str) -> str:
    """``IP`` or ``IP:port`` → normalized ``IP:port`` (``[IPv6]:port``), as upstream accepts."""
    text = value.strip()
    if "/" in text:
        raise ConfigError(
            f"{what}: {value!r} is a CIDR; give IP or IP:port, e.g. 0.0.0.0:{default_port} "
            "(kube-proxy v1.37 accepts no CIDR here either)"
        )
    bare = _ip(text)
    if bare is not None:
        return _join_host_port(bare, default_port)
    host, port_text = _split_host_port(text, what)
    ip = _ip(host)
    if ip is None:
        raise ConfigError(f"{what}: {host!r} in {value!r} is not an IP address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{what}: port {port_text!r} in {value!r} is not a port (1-65535)")
    return _join_host_port(ip, int(port_text))


def _mode(value: str, what: str) -> ProxyMode:
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


def _nodeport_addresses(items: Sequence[str], what: str) -> NodePortAddresses:
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


def _check_periods(
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


# --------------------------------------------------------------------------- node name


def _valid_node_name(name: str, source: str) -> str:
    if "$(" in name:
        raise ConfigError(
            f"node name {name!r} from {source} holds an unexpanded $(VAR) reference: declare "
            "the variable in the container's env (the kubelet expands only declared ones), "
            "e.g. NODE_NAME from fieldRef spec.nodeName"
        )
    if av.dns1123_subdomain(name) is not None:
        raise ConfigError(
            f"node name {name!r} from {source} is not a valid Node name (lower-case letters, "
            "digits, '-' and '.', at most 253 characters); pass --hostname-override=NODE"
        )
    return name


def _node_name(flag: str | None, from_file: str, env: Mapping[str, str]) -> str:
    """--hostname-override, else the file's hostnameOverride, else $NODE_NAME, else hostname."""
    if flag:
        if not flag.strip():
            raise ConfigError(
                "--hostname-override: only spaces; give the Node's name or leave the flag out"
            )
        return _valid_node_name(flag.strip().lower(), "--hostname-override")
    candidates = (
        (from_file, "config field hostnameOverride"),
        (env.get(NODE_NAME_ENV, ""), f"${NODE_NAME_ENV}"),
    )
    for value, source in candidates:
        if value.strip():
            return _valid_node_name(value.strip().lower(), source)
    host = socket.gethostname().strip()
    if not host:
        raise ConfigError(
            f"cannot tell this node's name: the host name is empty and ${NODE_NAME_ENV} is "
            "unset; pass --hostname-override=NODE"
        )
    return _valid_node_name(host.lower(), "the host name")


def expand_env_references(args: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Expand ``$(VAR)`` in container arguments the way the kubelet does.

    ``$(VAR)`` becomes the variable's value when it is in env and stays as written when
    not; ``$$`` is a literal ``$`` (so ``$$(VAR)`` gives ``$(VAR)``).
    """
    return [_expand_one(arg, env) for arg in args]


def _expand_one(arg: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(arg):
        if arg.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        end = arg.find(")", i + 2) if arg.startswith("$(", i) else -1
        if end != -1 and arg[i + 2 : end] in env:
            out.append(env[arg[i + 2 : end]])
            i = end + 1
            continue
        out.append(arg[i])
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class _Settings:
    """The configuration-bound values, from the flags or from the file."""

    mode: ProxyMode
    kubeconfig: str | None
    cluster_cidrs: tuple[IPNetwork, ...]
    nodeport_addresses: NodePortAddresses
    masquerade_all: bool
    masquerade_bit: int
    localhost_nodeports: bool
    sync_period: float
    min_sync_period: float
    config_sync_period: float
    healthz_bind_address: str
    metrics_bind_address: str
    hostname_override: str = ""
    verbosity: int = 0


# ----------------------------------------------------------------- settings: flags


def _flag_text(given: Mapping[str, Any], spec_name: str) -> str | None:
    value = given.get(_FLAGS[spec_name].dest)
    return value if isinstance(value, str) else None


def _flag_bool(given: Mapping[str, Any], name: str, default: bool) -> bool:
    text = _flag_text(given, name)
    return default if text is None else _go_bool(text, name)


def _flag_duration(given: Mapping[str, Any], name: str, default: float) -> float:
    text = _flag_text(given, name)
    return default if text is None else parse_go_duration(text, name)


def _flag_server(
    given: Mapping[str, Any], address_flag: str, port_flag: str, default: str, default_port: int
) -> str:
    """A bind address flag plus its deprecated port flag, as upstream combines them."""
    port_text = _flag_text(given, port_flag)
    port = default_port if port_text is None else _go_int(port_text, port_flag)
    address = _flag_text(given, address_flag) or default
    if port == 0:
        return ""
    if not 1 <= port <= 65535:
        raise ConfigError(f"{port_flag}: {port} is not a port (1-65535, or 0 to turn off)")
    return _host_port(address, port, address_flag)


def _flags_settings(given: Mapping[str, Any], warnings: list[str]) -> _Settings:
    mode = _mode(_flag_text(given, "--proxy-mode") or "", "--proxy-mode")
    sync = _flag_duration(given, "--iptables-sync-period", DEFAULT_SYNC_PERIOD)
    min_sync = _flag_duration(given, "--iptables-min-sync-period", DEFAULT_MIN_SYNC_PERIOD)
    config_sync = _flag_duration(given, "--config-sync-period", DEFAULT_CONFIG_SYNC_PERIOD)
    _check_periods(
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
    return _Settings(
        mode=mode,
        kubeconfig=_flag_text(given, "--kubeconfig") or None,
        cluster_cidrs=parse_cidrs(_flag_text(given, "--cluster-cidr"), "--cluster-cidr"),
        nodeport_addresses=_flag_nodeport_addresses(given),
        masquerade_all=_flag_bool(given, "--masquerade-all", False),
        masquerade_bit=_flag_masquerade_bit(given, mode),
        localhost_nodeports=_flag_bool(given, "--iptables-localhost-nodeports", True),
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
    )


def _flag_nodeport_addresses(given: Mapping[str, Any]) -> NodePortAddresses:
    values = given.get(_FLAGS["--nodeport-addresses"].dest) or []
    items = [item for value in values for item in str(value).split(",")]
    return _nodeport_addresses(items, "--nodeport-addresses")


def _flag_masquerade_bit(given: Mapping[str, Any], mode: ProxyMode) -> int:
    text = _flag_text(given, "--iptables-masquerade-bit")
    if text is None or mode is ProxyMode.NFTABLES:
        return DEFAULT_MASQUERADE_BIT
    return _check_masquerade_bit(
        _go_int(text, "--iptables-masquerade-bit"), "--iptables-masquerade-bit"
    )


def _warn_deprecated_ports(given: Mapping[str, Any], warnings: list[str]) -> None:
    for port_flag, address_flag in (
        ("--healthz-port", "--healthz-bind-address"),
        ("--metrics-port", "--metrics-bind-address"),
    ):
        if _flag_text(given, port_flag) is not None:
            warnings.append(f"{port_flag} is deprecated (upstream too); use {address_flag}=IP:PORT")


def _warn_iptables_only_flags(
    given: Mapping[str, Any], mode: ProxyMode, warnings: list[str]
) -> None:
    if mode is not ProxyMode.NFTABLES:
        return
    if _flag_text(given, "--iptables-masquerade-bit") is not None:
        warnings.append(
            "--iptables-masquerade-bit has no effect in nftables mode (as upstream): the "
            "nftables bit is nftables.masqueradeBit in a --config file (default 14)"
        )
    if _flag_text(given, "--iptables-localhost-nodeports") is not None:
        warnings.append(
            "--iptables-localhost-nodeports has no effect in nftables mode: nftables "
            "never serves NodePorts on 127.0.0.1"
        )


def _warn_flags_beside_config(given: Mapping[str, Any], warnings: list[str]) -> None:
    """Upstream drops every configuration flag when --config is given; name each one."""
    for spec in SUPPORTED_FLAGS:
        if spec.with_config or spec.dest not in given:
            continue
        warnings.append(
            f"{spec.name} is ignored because --config is given (as upstream kube-proxy "
            f"does); set {spec.field} in the config file instead"
        )


def _warn_ignored_flags(given: Mapping[str, Any], warnings: list[str]) -> None:
    for name, value in given.get(_IGNORED_DEST, []):
        spec = _FLAGS[name]
        if _flag_is_default(spec, value):
            continue
        warnings.append(
            f"{name}={value} is not supported by kube-proxy-py and is ignored ({spec.note})"
        )


def _flag_is_default(spec: FlagSpec, value: str) -> bool:
    try:
        typed = _typed_text(spec.kind, value, spec.name)
        return any(typed == _typed_text(spec.kind, d, spec.name) for d in spec.defaults)
    except ConfigError:
        return False


def _typed_text(kind: Kind, text: str, what: str) -> object:
    """A flag's (or a default's) text as the value its kind compares by."""
    if kind is Kind.BOOL:
        return _go_bool(text, what)
    if kind in (Kind.DURATION, Kind.FLUSH):
        return parse_go_duration(text, what)
    if kind in (Kind.INT, Kind.NUMBER):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{what}: {text!r} is not a number") from None
    return text


# ----------------------------------------------------------------- settings: file


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys (upstream's strict decoding flags them)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            if key in seen:
                loader.duplicates.append(f"line {key_node.start_mark.line + 1}: field {key!r}")
            seen.add(key)
        except TypeError:
            pass  # an unhashable key: construct_mapping below reports it
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


MAX_CONFIG_BYTES = 16 * 1024 * 1024


def _read_config_text(path: str) -> str:
    try:
        text = documents.read_file(path, MAX_CONFIG_BYTES, f"--config: {path}")
        documents.check_yaml(text, f"--config: {path}")
        return text
    except documents.DocumentError as exc:
        raise ConfigError(str(exc)) from None
    except FileNotFoundError:
        raise ConfigError(f"--config: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(
            f"--config: {path} is a directory; give the config.conf file in it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--config: {path}: {exc.strerror}") from None


def _load_document(path: str, warnings: list[str]) -> dict[Any, Any]:
    loader = _Loader(_read_config_text(path))
    try:
        docs = _all_documents(loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML or JSON: {exc}") from None
    except Exception as exc:  # PyYAML's constructors raise anything on a bad tagged value
        raise ConfigError(f"--config: {path}: {documents.value_problem(exc)}") from None
    finally:
        loader.dispose()
    if not docs:
        raise ConfigError(f"--config: {path} is empty; it must hold a {CONFIG_KIND}")
    if len(docs) != 1:
        raise ConfigError(
            f"--config: {path} holds {len(docs)} YAML documents; give exactly one {CONFIG_KIND}"
        )
    doc = docs[0]
    if not isinstance(doc, dict):
        raise ConfigError(
            f"--config: {path} must hold a {CONFIG_KIND} mapping, not {_type_name(doc)}"
        )
    warnings.extend(
        f"{path}: {where} appears twice; the last value is used" for where in loader.duplicates
    )
    return doc


def _all_documents(loader: _Loader) -> list[Any]:
    docs: list[Any] = []
    while loader.check_node():
        docs.append(loader.get_data())
    return [d for d in docs if d is not None]


def _check_type_meta(doc: Mapping[Any, Any], path: str) -> None:
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if kind == "ConfigMap":
        raise ConfigError(
            f"--config: {path} is a ConfigMap; give the file its data['config.conf'] holds "
            "(the DaemonSet mounts the ConfigMap as a directory of such files)"
        )
    if api_version is None or kind is None:
        raise ConfigError(
            f"--config: {path}: apiVersion and kind are required; start the file with "
            f"apiVersion: {CONFIG_API_VERSION} and kind: {CONFIG_KIND}"
        )
    if api_version != CONFIG_API_VERSION:
        raise ConfigError(
            f"--config: {path}: apiVersion {api_version!r} is not supported; kube-proxy v1.37 "
            f"and kube-proxy-py read {CONFIG_API_VERSION}"
        )
    if kind != CONFIG_KIND:
        raise ConfigError(f"--config: {path}: kind {kind!r} is not {CONFIG_KIND}")


def _type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")


def _flatten(doc: Mapping[Any, Any], label: str, warnings: list[str]) -> dict[str, Any]:
    """Known fields as {dotted path: raw value}; a warning for every unknown field."""
    out: dict[str, Any] = {}
    _walk(doc, "", label, out, warnings)
    return out


def _walk(
    obj: Mapping[Any, Any], prefix: str, label: str, out: dict[str, Any], warnings: list[str]
) -> None:
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if path in _FIELDS:
            out[path] = value
        elif path in _OBJECTS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{label}: {path}: expected a mapping of fields, got {_type_name(value)}"
                )
            _walk(value, f"{path}.", label, out, warnings)
        elif path not in _TYPE_META:
            warnings.append(_unknown_field(label, prefix, str(key)))


def _unknown_field(label: str, prefix: str, key: str) -> str:
    siblings = {
        p[len(prefix) :].split(".")[0] for p in (*_FIELDS, *_OBJECTS) if p.startswith(prefix)
    }
    if not prefix:
        siblings |= _TYPE_META
    close = difflib.get_close_matches(key, sorted(siblings), n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return f"{label}: unknown field {prefix}{key} is ignored{hint}"


def _typed_field(spec: ConfigField, raw: object, label: str) -> object:
    """A field's YAML value checked against its kind; durations become seconds."""
    if raw is None:
        return None
    what = f"{label}: {spec.path}"
    if spec.kind in (Kind.DURATION, Kind.FLUSH):
        return _typed_duration(spec.kind, raw, what)
    if not _kind_accepts(spec.kind, raw):
        raise ConfigError(f"{what}: expected {spec.kind.value}, got {_type_name(raw)} {raw!r}")
    if spec.kind is Kind.QUANTITY:
        return str(raw)
    return raw


def _typed_duration(kind: Kind, raw: object, what: str) -> float:
    if isinstance(raw, str):
        return parse_go_duration(raw, what)
    if kind is Kind.FLUSH and isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 <= raw <= 1 << 63:
            raise ConfigError(f"{what}: {av.show(raw)} nanoseconds is out of range")
        return raw / 1e9
    raise ConfigError(f'{what}: expected a quoted Go duration such as "30s", got {av.show(raw)}')


def _kind_accepts(kind: Kind, raw: object) -> bool:
    if kind is Kind.BOOL:
        return isinstance(raw, bool)
    if isinstance(raw, bool):
        return False
    checks: dict[Kind, bool] = {
        Kind.STRING: isinstance(raw, str),
        Kind.INT: isinstance(raw, int),
        Kind.NUMBER: isinstance(raw, int | float),
        Kind.QUANTITY: isinstance(raw, str | int | float),
        Kind.LIST: isinstance(raw, list),
        Kind.STRING_LIST: isinstance(raw, list) and all(isinstance(i, str) for i in raw),
        Kind.BOOL_MAP: isinstance(raw, dict)
        and all(isinstance(k, str) and isinstance(v, bool) for k, v in raw.items()),
    }
    return checks[kind]


def _is_default(spec: ConfigField, value: object) -> bool:
    if value is None:
        return True
    if not spec.pointer and value in ("", 0, [], {}):
        return True
    return any(value == _typed_text(spec.kind, d, spec.path) for d in spec.defaults)


class _FileValues:
    """Typed access to the fields a config file sets (absent and null read as None)."""

    def __init__(self, raw: Mapping[str, object], label: str) -> None:
        self.raw = raw
        self.values = {p: _typed_field(_FIELDS[p], v, label) for p, v in raw.items()}
        self.label = label

    def what(self, path: str) -> str:
        return f"{self.label}: {path}"

    def text(self, path: str) -> str:
        value = self.values.get(path)
        return value if isinstance(value, str) else ""

    def flag(self, path: str, default: bool) -> bool:
        value = self.values.get(path)
        return value if isinstance(value, bool) else default

    def integer(self, path: str, default: int) -> int:
        value = self.values.get(path)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    def period(self, path: str, default: float) -> float:
        """A duration where 0 (or unset) means the default, as upstream's defaulting does."""
        value = self.values.get(path)
        return value if isinstance(value, float) and value != 0 else default

    def strings(self, path: str) -> list[str]:
        value = self.values.get(path)
        return [str(v) for v in value] if isinstance(value, list) else []


def _file_settings(path: str, warnings: list[str]) -> _Settings:
    doc = _load_document(path, warnings)
    _check_type_meta(doc, path)
    raw = _flatten(doc, path, warnings)
    values = _FileValues(raw, path)
    _warn_ignored_fields(values, warnings)
    mode = _mode(values.text("mode"), values.what("mode"))
    _warn_other_mode_section(values, mode, warnings)
    section = "nftables" if mode is ProxyMode.NFTABLES else "iptables"
    sync = values.period(f"{section}.syncPeriod", DEFAULT_SYNC_PERIOD)
    min_sync = values.period(f"{section}.minSyncPeriod", DEFAULT_MIN_SYNC_PERIOD)
    config_sync = values.period("configSyncPeriod", DEFAULT_CONFIG_SYNC_PERIOD)
    names = (
        values.what(f"{section}.syncPeriod"),
        values.what(f"{section}.minSyncPeriod"),
        values.what("configSyncPeriod"),
    )
    _check_periods(sync, min_sync, config_sync, names)
    healthz, metrics = _file_servers(values)
    return _Settings(
        mode=mode,
        kubeconfig=values.text("clientConnection.kubeconfig") or None,
        cluster_cidrs=parse_cidrs(values.text("clusterCIDR"), values.what("clusterCIDR")),
        nodeport_addresses=_nodeport_addresses(
            values.strings("nodePortAddresses"), values.what("nodePortAddresses")
        ),
        masquerade_all=values.flag(f"{section}.masqueradeAll", False),
        masquerade_bit=_check_masquerade_bit(
            values.integer(f"{section}.masqueradeBit", DEFAULT_MASQUERADE_BIT),
            values.what(f"{section}.masqueradeBit"),
        ),
        localhost_nodeports=values.flag("iptables.localhostNodePorts", True),
        sync_period=sync,
        min_sync_period=min_sync,
        config_sync_period=config_sync,
        healthz_bind_address=healthz,
        metrics_bind_address=metrics,
        hostname_override=values.text("hostnameOverride"),
        verbosity=_file_verbosity(values),
    )


def _file_servers(values: _FileValues) -> tuple[str, str]:
    """healthzBindAddress and metricsBindAddress, defaulted by bindAddress's family."""
    bind = values.text("bindAddress") or "0.0.0.0"
    bind_ip = _ip(bind)
    if bind_ip is None:
        raise ConfigError(f"{values.what('bindAddress')}: {bind!r} is not an IP address")
    healthz_host, metrics_host = (
        ("0.0.0.0", "127.0.0.1") if bind_ip.version == 4 else ("[::]", "[::1]")
    )
    healthz = values.text("healthzBindAddress") or f"{healthz_host}:{HEALTHZ_PORT}"
    metrics = values.text("metricsBindAddress") or f"{metrics_host}:{METRICS_PORT}"
    return (
        _host_port(healthz, HEALTHZ_PORT, values.what("healthzBindAddress")),
        _host_port(metrics, METRICS_PORT, values.what("metricsBindAddress")),
    )


def _file_verbosity(values: _FileValues) -> int:
    level = values.integer("logging.verbosity", 0)
    if level < 0:
        raise ConfigError(f"{values.what('logging.verbosity')}: {level} must be 0 or more")
    return level


def _warn_ignored_fields(values: _FileValues, warnings: list[str]) -> None:
    for spec in IGNORED_FIELDS:
        if spec.path not in values.values or _is_default(spec, values.values[spec.path]):
            continue
        warnings.append(
            f"{values.what(spec.path)}: {values.raw[spec.path]!r} is not supported by "
            f"kube-proxy-py and is ignored ({spec.note})"
        )


def _warn_other_mode_section(values: _FileValues, mode: ProxyMode, warnings: list[str]) -> None:
    """Fields of the inactive mode's section have no effect (upstream ignores them too)."""
    other = "iptables" if mode is ProxyMode.NFTABLES else "nftables"
    names = [*_MODE_SECTION_FIELDS, *(("localhostNodePorts",) if other == "iptables" else ())]
    for name in names:
        path = f"{other}.{name}"
        if path in values.values and not _is_default(_FIELDS[path], values.values[path]):
            active = f"{mode.value}.{name}" if name != "localhostNodePorts" else "nothing"
            warnings.append(
                f"{values.what(path)} has no effect in {mode.value} mode (as upstream); "
                f"{active} applies"
            )


# --------------------------------------------------------------------------- parser


class _IgnoredFlag(argparse.Action):
    """Accepts an upstream flag kube-proxy-py does not implement; remembers it for a warning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        seen = list(getattr(namespace, _IGNORED_DEST, []))
        value = values if isinstance(values, str) else "true"
        seen.append((self.option_strings[-1], value))
        setattr(namespace, _IGNORED_DEST, seen)


class _RejectedFlag(argparse.Action):
    """An upstream flag that would change what the process does: refuse it, saying why."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        spec = _FLAGS[self.option_strings[-1]]
        raise argparse.ArgumentError(self, f"not supported by kube-proxy-py: {spec.note}")


class _RunParser(argparse.ArgumentParser):
    """Raises ConfigError instead of exiting (--help and --version still exit)."""

    def error(self, message: str) -> Any:
        raise ConfigError(f"kube-proxy-py run: {message}; see kube-proxy-py run --help")


def _metavar(spec: FlagSpec) -> str:
    names = {Kind.DURATION: "DURATION", Kind.INT: "INT", Kind.NUMBER: "NUMBER", Kind.BOOL: "BOOL"}
    return spec.metavar or names.get(spec.kind, "VALUE")


def _add_flag(parser: argparse._ActionsContainer, spec: FlagSpec, **kwargs: Any) -> None:
    if spec.kind is Kind.BOOL:
        kwargs.update(nargs="?", const="true")
    parser.add_argument(
        *spec.option_strings,
        default=argparse.SUPPRESS,
        metavar=_metavar(spec),
        help=spec.note,
        **kwargs,
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Register every flag of ``kube-proxy-py run`` (upstream's names) on parser.

    Values stay strings and only given flags are set (default SUPPRESS); parse_run_args
    turns them into AgentOptions.
    """
    for spec in SUPPORTED_FLAGS:
        action = "append" if spec.kind is Kind.STRING_LIST else "store"
        _add_flag(parser, spec, dest=spec.dest, action=action)
    parser.add_argument("--version", action="version", version=f"kube-proxy-py {__version__}")
    ignored = parser.add_argument_group(
        "upstream kube-proxy flags accepted for compatibility and ignored with a warning"
    )
    for spec in IGNORED_FLAGS:
        _add_flag(ignored, spec, dest=_IGNORED_DEST, action=_IgnoredFlag)
    rejected = parser.add_argument_group("upstream kube-proxy flags refused")
    for spec in REJECTED_FLAGS:
        _add_flag(rejected, spec, dest=_IGNORED_DEST, action=_RejectedFlag)


def _build_parser() -> _RunParser:
    parser = _RunParser(
        prog="kube-proxy-py run",
        usage="%(prog)s [flags]",
        description="Run the node agent: watch Services, EndpointSlices and this Node; "
        "program iptables or nftables. Flags and config file as upstream kube-proxy.",
        allow_abbrev=False,
    )
    add_run_arguments(parser)
    return parser


def _verbosity(flag: str | None, from_file: int) -> int:
    if flag is None:
        return from_file
    text = flag.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        raise ConfigError(f"-v: {flag!r} is not a verbosity level; use 0 or a positive integer")
    return int(text)


def parse_run_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> AgentOptions:
    """``kube-proxy-py run`` arguments (after ``run``) → AgentOptions; ConfigError if bad.

    env defaults to os.environ (only ``NODE_NAME`` is read).
    """
    given = vars(_build_parser().parse_args(list(argv)))
    environ: Mapping[str, str] = os.environ if env is None else env
    warnings: list[str] = []
    _warn_ignored_flags(given, warnings)
    config_file = _flag_text(given, "--config") or None
    if config_file is not None:
        _warn_flags_beside_config(given, warnings)
        settings = _file_settings(config_file, warnings)
    else:
        settings = _flags_settings(given, warnings)
    return AgentOptions(
        node_name=_node_name(
            _flag_text(given, "--hostname-override"), settings.hostname_override, environ
        ),
        mode=settings.mode,
        kubeconfig=settings.kubeconfig,
        master=(_flag_text(given, "--master") or "").strip() or None,
        cluster_cidrs=settings.cluster_cidrs,
        nodeport_addresses=settings.nodeport_addresses,
        masquerade_all=settings.masquerade_all,
        masquerade_bit=settings.masquerade_bit,
        localhost_nodeports=settings.localhost_nodeports,
        sync_period=settings.sync_period,
        min_sync_period=settings.min_sync_period,
        config_sync_period=settings.config_sync_period,
        healthz_bind_address=settings.healthz_bind_address,
        metrics_bind_address=settings.metrics_bind_address,
        cleanup=_flag_bool(given, "--cleanup", False),
        verbosity=_verbosity(_flag_text(given, "--v"), settings.verbosity),
        config_file=config_file,
        warnings=tuple(dict.fromkeys(warnings)),
    )


# --------------------------------------------------------------------------- reference


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _defaults_cell(defaults: tuple[str, ...], none: str = "") -> str:
    shown = [f"`{d}`" if d else '`""`' for d in defaults]
    return " or ".join(shown) if shown else none


def _flag_names(spec: FlagSpec) -> str:
    return ", ".join(f"`{name}`" for name in spec.option_strings)


def _with_config_cell(spec: FlagSpec) -> str:
    if spec.with_config:
        return "applies"
    return "ignored; set " + " or ".join(f"`{f}`" for f in spec.field.split(" / "))


def reference_tables_markdown() -> str:
    """The flag and field tables of docs/deploy.md, generated from the lists above."""
    lines = [
        "#### Flags kube-proxy-py implements",
        "",
        "| flag | meaning | with `--config` |",
        "|---|---|---|",
        *(
            f"| {_flag_names(s)} | {_cell(s.note)} | {_with_config_cell(s)} |"
            for s in SUPPORTED_FLAGS
        ),
        "",
        "#### Upstream flags accepted and ignored (a warning unless set to the default)",
        "",
        "| flag | upstream default (no warning) | why ignored |",
        "|---|---|---|",
        *(
            f"| `{s.name}` | {_defaults_cell(s.defaults)} | {_cell(s.note)} |"
            for s in IGNORED_FLAGS
        ),
        "",
        "#### Upstream flags refused (exit status 2)",
        "",
        "| flag | why |",
        "|---|---|",
        *(f"| `{s.name}` | {_cell(s.note)} |" for s in REJECTED_FLAGS),
        "",
        "#### Config fields kube-proxy-py implements",
        "",
        "| field | type | default | meaning |",
        "|---|---|---|---|",
        *(
            f"| `{f.path}` | {f.kind.value} | {_defaults_cell(f.defaults, 'unset')} | "
            f"{_cell(f.note)} |"
            for f in SUPPORTED_FIELDS
        ),
        "",
        "#### Config fields accepted and ignored (a warning unless null, zero or the default)",
        "",
        "| field | type | upstream default (no warning) | why ignored |",
        "|---|---|---|---|",
        *(
            f"| `{f.path}` | {f.kind.value} | "
            f"{_unset_or(f.defaults, 'null' if f.pointer else 'null, zero or empty')} | "
            f"{_cell(f.note)} |"
            for f in IGNORED_FIELDS
        ),
    ]
    return "\n".join(lines) + "\n"


def _unset_or(defaults: tuple[str, ...], unset: str) -> str:
    return unset + (f" or {_defaults_cell(defaults)}" if defaults else "")


if __name__ == "__main__":
    print(reference_tables_markdown(), end="")
