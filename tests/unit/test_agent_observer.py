"""What the agent's observer derives from a plan: where health check node ports listen
(upstream: where NodePorts are accepted) and which Services it says are not programmed."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from proxy import manifests as m
from proxy.agent.main import Observer, health_check_addresses
from proxy.agent.proxier import SyncResult
from proxy.agent.state import ClusterState
from proxy.config import NodePortAddresses, ProxyConfig, ProxyMode
from proxy.conntrack import ConntrackCleaner
from proxy.metrics import ProxyMetrics
from proxy.plan import Plan, plan
from proxy.server import HealthCheckNodePorts, ProxyHealth
from proxy.source.file import build_state

NODE = "node-a"


def _plan(mode: ProxyMode, npa: str = "", host: tuple[str, ...] = ()) -> Plan:
    state = build_state([m.node(NODE, "192.168.50.11")], NODE)
    cfg = ProxyConfig(
        NODE,
        mode=mode,
        nodeport_addresses=NodePortAddresses.parse(npa),
        host_addresses=tuple(ipaddress.ip_address(h) for h in host),
    )
    return plan(state.snapshot, cfg)


def _observer() -> Observer:
    metrics = ProxyMetrics(mode="nftables")
    health = ProxyHealth(60)
    return Observer(
        ProxyMode.NFTABLES,
        metrics,
        health,
        ClusterState(NODE),
        HealthCheckNodePorts(health),
        ConntrackCleaner(),
    )


@pytest.mark.parametrize(
    ("mode", "npa", "host", "want"),
    [
        (ProxyMode.IPTABLES, "", (), ("0.0.0.0",)),
        (ProxyMode.NFTABLES, "", (), ("192.168.50.11",)),
        (ProxyMode.IPTABLES, "primary", (), ("192.168.50.11",)),
        (
            ProxyMode.IPTABLES,
            "10.0.0.0/8",
            ("10.1.2.3", "192.168.50.11", "127.0.0.1"),
            ("10.1.2.3",),
        ),
        (ProxyMode.NFTABLES, "0.0.0.0/0", (), ("0.0.0.0",)),
    ],
)
def test_health_check_ports_listen_where_node_ports_are_accepted(
    mode: ProxyMode, npa: str, host: tuple[str, ...], want: tuple[str, ...]
) -> None:
    assert health_check_addresses(_plan(mode, npa, host)) == want


def test_services_not_programmed_are_logged_once_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    v6 = m.service("v6", "fd00::10", [m.Port(80)])
    hl = m.service("hl", "None", [m.Port(80)])
    state = build_state([m.node(NODE, "192.168.50.11"), v6, hl], NODE)
    p = plan(state.snapshot, ProxyConfig(NODE, mode=ProxyMode.NFTABLES))
    obs = _observer()
    metrics = obs.metrics
    with caplog.at_level(logging.DEBUG, logger="kube-proxy-py"):
        obs._report_skipped(p)
        obs._report_skipped(p)
    logged = [(r.levelname, r.getMessage(), getattr(r, "object", "")) for r in caplog.records]
    assert logged == [
        ("DEBUG", "service not programmed", "default/hl"),
        ("INFO", "service not programmed", "default/v6"),
    ]
    text = metrics.render().decode()
    assert 'kubeproxy_py_services_not_programmed{reason="ipv6-only"} 1.0' in text
    assert 'kubeproxy_py_services_not_programmed{reason="headless"} 1.0' in text


def test_fallbacks_to_nft_text_are_counted() -> None:
    obs = _observer()
    p = _plan(ProxyMode.NFTABLES)
    for fallbacks in (2, 0, 1):
        obs.sync_done(
            SyncResult(p, None, False, 0.01, 0, 0, (), None, True, text_fallbacks=fallbacks)
        )
    text = obs.metrics.render().decode()
    assert 'kubeproxy_py_nft_text_fallbacks_total{ip_family="IPv4"} 3.0' in text
