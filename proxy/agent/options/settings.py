"""The resolved settings of ``kube-proxy-py run``: one frozen AgentOptions, and its defaults."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import NodePortAddresses, ProxyConfig, ProxyMode
from proxy.model import IPAddress, IPNetwork

HEALTHZ_PORT = 10256
METRICS_PORT = 10249
DEFAULT_MASQUERADE_BIT = 14
DEFAULT_SYNC_PERIOD = 30.0
DEFAULT_MIN_SYNC_PERIOD = 1.0
DEFAULT_CONFIG_SYNC_PERIOD = 15 * 60.0


@dataclass(frozen=True)
class AgentOptions:
    """Everything ``kube-proxy-py run`` needs, resolved from flags, file and environment.

    ``kubeconfig`` None and ``master`` None: in-cluster config (service account token,
    ``KUBERNETES_SERVICE_HOST``/``_PORT``). ``master`` overrides the kubeconfig's server;
    with no kubeconfig it is used without credentials. ``healthz_bind_address`` "" means
    the health server is off (``--healthz-port=0``). Durations are in seconds.

    The readers of the flags (commandline.py) and of the file (configfile.py) each build
    one with ``node_name`` the configured override ("" for none) and ``verbosity`` the
    configured level; parse.py then resolves these against the flags that apply with or
    without ``--config`` and the environment.
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
    service_counters: bool = False
    """``--metrics-service-counters``: per Service port traffic counters."""

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
            service_counters=self.service_counters,
        )
