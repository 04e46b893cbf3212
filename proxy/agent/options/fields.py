"""The table of KubeProxyConfiguration (v1alpha1) fields: dotted paths, kinds, upstream
defaults, and what kube-proxy-py does with each (implements, or ignores with a warning)."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.agent.options import reasons
from proxy.agent.options.govalues import Kind


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
    ConfigField("clientConnection.acceptContentTypes", Kind.STRING, reasons.CLIENT),
    ConfigField(
        "clientConnection.contentType",
        Kind.STRING,
        reasons.CLIENT,
        ("application/vnd.kubernetes.protobuf",),
    ),
    ConfigField("clientConnection.qps", Kind.NUMBER, reasons.CLIENT, ("5",)),
    ConfigField("clientConnection.burst", Kind.INT, reasons.CLIENT, ("10",)),
    ConfigField("logging.format", Kind.STRING, reasons.LOGS, ("text",)),
    ConfigField("logging.flushFrequency", Kind.FLUSH, reasons.LOGS, ("5s",)),
    ConfigField("logging.vmodule", Kind.LIST, reasons.LOGS),
    ConfigField("logging.options.text.splitStream", Kind.BOOL, reasons.LOGS),
    ConfigField("logging.options.text.infoBufferSize", Kind.QUANTITY, reasons.LOGS, ("0",)),
    ConfigField("logging.options.json.splitStream", Kind.BOOL, reasons.LOGS),
    ConfigField("logging.options.json.infoBufferSize", Kind.QUANTITY, reasons.LOGS, ("0",)),
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
    ConfigField("ipvs.syncPeriod", Kind.DURATION, reasons.IPVS, ("30s",)),
    ConfigField("ipvs.minSyncPeriod", Kind.DURATION, reasons.IPVS),
    ConfigField("ipvs.scheduler", Kind.STRING, reasons.IPVS),
    ConfigField("ipvs.excludeCIDRs", Kind.STRING_LIST, reasons.IPVS),
    ConfigField("ipvs.strictARP", Kind.BOOL, reasons.IPVS),
    ConfigField("ipvs.tcpTimeout", Kind.DURATION, reasons.IPVS),
    ConfigField("ipvs.tcpFinTimeout", Kind.DURATION, reasons.IPVS),
    ConfigField("ipvs.udpTimeout", Kind.DURATION, reasons.IPVS),
    ConfigField("winkernel.networkName", Kind.STRING, reasons.WINDOWS),
    ConfigField("winkernel.sourceVip", Kind.STRING, reasons.WINDOWS),
    ConfigField("winkernel.enableDSR", Kind.BOOL, reasons.WINDOWS),
    ConfigField("winkernel.rootHnsEndpointName", Kind.STRING, reasons.WINDOWS),
    ConfigField("winkernel.forwardHealthCheckVip", Kind.BOOL, reasons.WINDOWS),
    ConfigField("windowsRunAsService", Kind.BOOL, reasons.WINDOWS),
    ConfigField("detectLocalMode", Kind.STRING, reasons.LOCAL, ("ClusterCIDR",)),
    ConfigField("detectLocal.bridgeInterface", Kind.STRING, reasons.LOCAL),
    ConfigField("detectLocal.interfaceNamePrefix", Kind.STRING, reasons.LOCAL),
    ConfigField("oomScoreAdj", Kind.INT, reasons.OOM, ("-999",), pointer=True),
    ConfigField("conntrack.maxPerCore", Kind.INT, reasons.CONNTRACK, ("32768",), pointer=True),
    ConfigField("conntrack.min", Kind.INT, reasons.CONNTRACK, ("131072",), pointer=True),
    ConfigField(
        "conntrack.tcpEstablishedTimeout", Kind.DURATION, reasons.CONNTRACK, ("24h",), True
    ),
    ConfigField("conntrack.tcpCloseWaitTimeout", Kind.DURATION, reasons.CONNTRACK, ("1h",), True),
    ConfigField("conntrack.tcpBeLiberal", Kind.BOOL, reasons.CONNTRACK),
    ConfigField("conntrack.udpTimeout", Kind.DURATION, reasons.CONNTRACK),
    ConfigField("conntrack.udpStreamTimeout", Kind.DURATION, reasons.CONNTRACK),
    ConfigField("portRange", Kind.STRING, "the userspace proxy is gone upstream too"),
)

FIELDS: dict[str, ConfigField] = {f.path: f for f in (*SUPPORTED_FIELDS, *IGNORED_FIELDS)}
OBJECTS: frozenset[str] = frozenset(
    ".".join(parts[:i]) for parts in (p.split(".") for p in FIELDS) for i in range(1, len(parts))
)
TYPE_META = frozenset({"apiVersion", "kind"})
MODE_SECTION_FIELDS = ("masqueradeAll", "masqueradeBit", "syncPeriod", "minSyncPeriod")
"""The fields both mode sections (``iptables.``, ``nftables.``) have."""
