"""What the agent's observer derives from a plan: where health check node ports listen
(upstream: where NodePorts are accepted) and which Services it says are not programmed."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from proxy import manifests as m
from proxy.agent.families import (
    FamilyError,
    choose_families,
    config_warnings,
    primary_family,
)
from proxy.agent.main import Observer, health_check_addresses
from proxy.agent.proxier import SyncResult
from proxy.agent.state import ClusterState
from proxy.config import NodePortAddresses, ProxyConfig, ProxyMode
from proxy.conntrack import ConntrackCleaner
from proxy.metrics import ProxyMetrics
from proxy.model import IPFamily
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


def _observer(state: ClusterState | None = None) -> Observer:
    metrics = ProxyMetrics(mode="nftables")
    health = ProxyHealth(60)
    return Observer(
        ProxyMode.NFTABLES,
        metrics,
        health,
        state or ClusterState(NODE),
        {f: HealthCheckNodePorts(health) for f in IPFamily},
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


def test_ipv6_health_check_ports_listen_on_every_ipv6_address() -> None:
    state = build_state([m.node(NODE, "192.168.50.11", "fd00::11")], NODE)
    p6 = plan(state.snapshot, ProxyConfig(NODE, mode=ProxyMode.IPTABLES), IPFamily.V6)
    assert health_check_addresses(p6) == ("::",)
    p6 = plan(state.snapshot, ProxyConfig(NODE, mode=ProxyMode.NFTABLES), IPFamily.V6)
    assert health_check_addresses(p6) == ("fd00::11",)


def _skip_objects() -> list[dict[str, object]]:
    v6 = m.service("v6", "fd00::10", [m.Port(80)])
    hl = m.service("hl", "None", [m.Port(80)])
    dual = m.service("dual", "10.96.0.20", [m.Port(80)])
    dual["spec"]["clusterIPs"] = ["10.96.0.20", "fd00::20"]
    dual["spec"]["ipFamilies"] = ["IPv4", "IPv6"]
    dual["spec"]["ipFamilyPolicy"] = "PreferDualStack"
    return [m.node(NODE, "192.168.50.11"), v6, hl, dual]


def _logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [(r.levelname, r.getMessage(), getattr(r, "object", "")) for r in caplog.records]


def test_dual_stack_node_reports_only_real_skips_once_over_both_families(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = build_state(_skip_objects(), NODE)
    cfg = ProxyConfig(NODE, mode=ProxyMode.NFTABLES)
    obs = _observer()
    obs.families = (IPFamily.V4, IPFamily.V6)
    with caplog.at_level(logging.DEBUG, logger="kube-proxy-py"):
        for family in (IPFamily.V4, IPFamily.V6, IPFamily.V4):
            obs._report_skipped(plan(state.snapshot, cfg, family))
    # the headless Service is in both plans, said once; nothing else is left out
    assert _logged(caplog) == [("DEBUG", "service not programmed", "default/hl")]
    text = obs.metrics.render().decode()
    assert 'kubeproxy_py_services_not_programmed{reason="headless"} 1.0' in text
    assert 'kubeproxy_py_services_not_programmed{reason="ipv6-only"} 0.0' in text


def test_single_stack_node_says_which_services_it_cannot_program(
    caplog: pytest.LogCaptureFixture,
) -> None:
    objs = _skip_objects()
    state = build_state(objs, NODE)
    cluster = ClusterState(NODE)
    for obj in objs:
        cluster.handle(str(obj["kind"]), "ADDED", obj)
    obs = _observer(cluster)
    obs.families, obs.unserved_why = (IPFamily.V4,), "IPv6: ip6tables-restore is not installed"
    p = plan(state.snapshot, ProxyConfig(NODE, mode=ProxyMode.NFTABLES))
    with caplog.at_level(logging.DEBUG, logger="kube-proxy-py"):
        obs._report_skipped(p)
        obs._report_skipped(p)
    assert _logged(caplog) == [
        ("INFO", "service partly programmed", "default/dual"),
        ("DEBUG", "service not programmed", "default/hl"),
        ("INFO", "service not programmed", "default/v6"),
    ]
    detail = {getattr(r, "object", ""): getattr(r, "detail", "") for r in caplog.records}
    assert "ip6tables-restore is not installed" in detail["default/v6"]
    assert "fd00::20 is not" in detail["default/dual"]
    text = obs.metrics.render().decode()
    assert 'kubeproxy_py_services_not_programmed{reason="ipv6-only"} 1.0' in text
    assert 'kubeproxy_py_services_not_programmed{reason="dual-stack"} 1.0' in text


def test_families_are_both_when_the_node_can_program_both() -> None:
    both: dict[IPFamily, str | None] = {IPFamily.V4: None, IPFamily.V6: None}
    assert choose_families(IPFamily.V4, both) == ((IPFamily.V4, IPFamily.V6), "")
    assert choose_families(IPFamily.V6, both) == ((IPFamily.V6, IPFamily.V4), "")
    no_v6: dict[IPFamily, str | None] = {IPFamily.V4: None, IPFamily.V6: "IPv6 is disabled"}
    families, why = choose_families(IPFamily.V4, no_v6)
    assert families == (IPFamily.V4,) and "IPv6 is disabled" in why
    with pytest.raises(FamilyError, match="primary IP family IPv6: IPv6 is disabled"):
        choose_families(IPFamily.V6, no_v6)


def test_primary_family_is_that_of_the_first_node_address() -> None:
    assert primary_family(None) is IPFamily.V4
    v6_first = build_state([m.node(NODE, "fd00::11", "192.168.50.11")], NODE).snapshot.node
    assert primary_family(v6_first) is IPFamily.V6
    v4_first = build_state([m.node(NODE, "192.168.50.11", "fd00::11")], NODE).snapshot.node
    assert primary_family(v4_first) is IPFamily.V4


def test_fallbacks_to_nft_text_are_counted() -> None:
    obs = _observer()
    p = _plan(ProxyMode.NFTABLES)
    for fallbacks in (2, 0, 1):
        obs.sync_done(
            SyncResult(p, None, False, 0.01, 0, 0, (), None, True, text_fallbacks=fallbacks)
        )
    text = obs.metrics.render().decode()
    assert 'kubeproxy_py_nft_text_fallbacks_total{ip_family="IPv4"} 3.0' in text


def test_settings_of_the_wrong_family_are_warned_about_as_upstream() -> None:
    def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c) for c in cidrs)

    v4, dual = (IPFamily.V4,), (IPFamily.V4, IPFamily.V6)
    assert config_warnings(IPFamily.V4, dual, nets("10.244.0.0/16"), (), ()) == []
    [w] = config_warnings(IPFamily.V4, v4, nets("fd00:10:244::/48"), (), ())
    assert "IPv4-only but --cluster-cidr has only IPv6 CIDRs" in w
    [w] = config_warnings(IPFamily.V6, dual, (), nets("192.168.0.0/16"), ())
    assert "accepted on every local IPv6 address" in w
    [w] = config_warnings(
        IPFamily.V4, dual, nets("10.244.0.0/16", "fd00:10:244::/48"), nets("192.168.0.0/16"), ()
    )
    assert "looks dual-stack" in w and "every local IPv6 address" in w
    [w] = config_warnings(IPFamily.V6, dual, (), (), nets("10.244.1.0/24"))
    assert "spec.podCIDRs are only IPv4" in w
