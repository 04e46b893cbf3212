"""The table of upstream kube-proxy's flags: names, upstream defaults, help, and what
kube-proxy-py does with each (implements, ignores with a warning, or refuses)."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.agent.options import reasons
from proxy.agent.options.govalues import Kind


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


OWN_FLAGS = frozenset({"--metrics-service-counters"})
"""Flags of kube-proxy-py's own, which upstream kube-proxy does not have."""

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
        "--metrics-service-counters",
        Kind.BOOL,
        "kube-proxy-py only: count packets and bytes per Service port and verdict (dnat, "
        "reject, drop) in the rules and export them on /metrics (default false; applies "
        "with --config too, which has no such field)",
        with_config=True,
    ),
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
    FlagSpec("--conntrack-max-per-core", Kind.INT, reasons.CONNTRACK, ("32768",)),
    FlagSpec("--conntrack-min", Kind.INT, reasons.CONNTRACK, ("131072",)),
    FlagSpec("--conntrack-tcp-be-liberal", Kind.BOOL, reasons.CONNTRACK, ("false",)),
    FlagSpec("--conntrack-tcp-timeout-close-wait", Kind.DURATION, reasons.CONNTRACK, ("1h",)),
    FlagSpec("--conntrack-tcp-timeout-established", Kind.DURATION, reasons.CONNTRACK, ("24h",)),
    FlagSpec("--conntrack-udp-timeout", Kind.DURATION, reasons.CONNTRACK, ("0s",)),
    FlagSpec("--conntrack-udp-timeout-stream", Kind.DURATION, reasons.CONNTRACK, ("0s",)),
    FlagSpec("--detect-local-mode", Kind.STRING, reasons.LOCAL, ("", "ClusterCIDR")),
    FlagSpec("--feature-gates", Kind.STRING, "no feature gates are implemented", ("",)),
    FlagSpec("--ipvs-exclude-cidrs", Kind.STRING, reasons.IPVS, ("",)),
    FlagSpec("--ipvs-min-sync-period", Kind.DURATION, reasons.IPVS, ("1s",)),
    FlagSpec("--ipvs-scheduler", Kind.STRING, reasons.IPVS, ("",)),
    FlagSpec("--ipvs-strict-arp", Kind.BOOL, reasons.IPVS, ("false",)),
    FlagSpec("--ipvs-sync-period", Kind.DURATION, reasons.IPVS, ("30s",)),
    FlagSpec("--ipvs-tcp-timeout", Kind.DURATION, reasons.IPVS, ("0s",)),
    FlagSpec("--ipvs-tcpfin-timeout", Kind.DURATION, reasons.IPVS, ("0s",)),
    FlagSpec("--ipvs-udp-timeout", Kind.DURATION, reasons.IPVS, ("0s",)),
    FlagSpec("--kube-api-burst", Kind.INT, reasons.CLIENT, ("10",)),
    FlagSpec(
        "--kube-api-content-type",
        Kind.STRING,
        reasons.CLIENT,
        ("application/vnd.kubernetes.protobuf",),
    ),
    FlagSpec("--kube-api-qps", Kind.NUMBER, reasons.CLIENT, ("5",)),
    FlagSpec("--log-flush-frequency", Kind.DURATION, reasons.LOGS, ("5s",)),
    FlagSpec("--log-json-info-buffer-size", Kind.STRING, reasons.LOGS, ("0",)),
    FlagSpec("--log-json-split-stream", Kind.BOOL, reasons.LOGS, ("false",)),
    FlagSpec("--log-text-info-buffer-size", Kind.STRING, reasons.LOGS, ("0",)),
    FlagSpec("--log-text-split-stream", Kind.BOOL, reasons.LOGS, ("false",)),
    FlagSpec("--logging-format", Kind.STRING, reasons.LOGS, ("text",)),
    FlagSpec("--oom-score-adj", Kind.INT, reasons.OOM, ("-999",)),
    FlagSpec("--pod-bridge-interface", Kind.STRING, reasons.LOCAL, ("",)),
    FlagSpec("--pod-interface-name-prefix", Kind.STRING, reasons.LOCAL, ("",)),
    FlagSpec("--profiling", Kind.BOOL, "no /debug/pprof endpoint", ("false",)),
    FlagSpec("--show-hidden-metrics-for-version", Kind.STRING, "no metrics are hidden", ("",)),
    FlagSpec("--vmodule", Kind.STRING, reasons.LOGS, ("",)),
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

FLAGS: dict[str, FlagSpec] = {
    f.name: f for f in (*SUPPORTED_FLAGS, *IGNORED_FLAGS, *REJECTED_FLAGS)
}
"""Every flag above by its long name."""
