"""proxy.metrics: upstream names, labels and buckets, one registry per agent."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import ProxyMode
from proxy.metrics import PROGRAMMING_BUCKETS, SYNC_BUCKETS, ProxyMetrics
from proxy.model import IPFamily

UPSTREAM = {
    # name: (type, label names besides le)
    "kubeproxy_sync_proxy_rules_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_sync_full_proxy_rules_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_sync_partial_proxy_rules_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds": ("gauge", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": ("gauge", {"ip_family"}),
    "kubeproxy_network_programming_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_service_changes_pending": ("gauge", set()),
    "kubeproxy_sync_proxy_rules_service_changes_total": ("counter", set()),
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending": ("gauge", set()),
    "kubeproxy_sync_proxy_rules_endpoint_changes_total": ("counter", set()),
    "kubeproxy_sync_proxy_rules_no_local_endpoints_total": (
        "gauge",
        {"traffic_policy", "ip_family"},
    ),
    "kubeproxy_proxy_healthz_total": ("counter", {"code"}),
    "kubeproxy_proxy_livez_total": ("counter", {"code"}),
    "kubeproxy_conntrack_reconciler_sync_duration_seconds": ("histogram", {"ip_family"}),
    "kubeproxy_conntrack_reconciler_deleted_entries_total": ("counter", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_iptables_restore_failures_total": ("counter", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total": (
        "counter",
        {"ip_family"},
    ),
    "kubeproxy_sync_proxy_rules_iptables_total": ("gauge", {"table", "ip_family"}),
    "kubeproxy_sync_proxy_rules_iptables_last": ("gauge", {"table", "ip_family"}),
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total": ("counter", {"ip_family"}),
    "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total": ("counter", {"ip_family"}),
}


def exercised() -> ProxyMetrics:
    """Every metric with at least one sample."""
    m = ProxyMetrics(families=tuple(IPFamily))
    m.queued(now=100.0)
    m.observe_sync(True, 0.003, now=101.0)
    m.observe_sync(False, 0.02, family=IPFamily.V6, now=102.0)
    m.observe_programming(1.5)
    m.set_pending(3, 4)
    m.changes(services=2, endpoints=5)
    m.set_no_local_endpoints(1, 2)
    m.count_healthz(200)
    m.count_livez(503)
    m.conntrack_reconciled(0.001, 3)
    m.sync_failed("iptables")
    m.sync_failed(ProxyMode.IPTABLES, partial=True)
    m.set_rule_counts({"nat": 10, "filter": 4}, {"nat": 2, "filter": 4})
    m.sync_failed("nftables", family=IPFamily.V6)
    m.cleanup_failed()
    m.nft_text_fallbacks(2)
    m.set_invalid("Service", 2)
    m.record_invalid("Service", 3)
    return m


def families(m: ProxyMetrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(m.render().decode())}


def value(m: ProxyMetrics, sample: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    raise KeyError(f"{sample}{labels}")


def test_every_upstream_metric_has_its_name_type_and_labels() -> None:
    text = exercised().render().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (mtype, labels) in UPSTREAM.items():
        # the parser names counter families without the _total suffix
        fam = fams.get(name) or fams.get(name.removesuffix("_total"))
        assert fam is not None, name
        assert fam.type == mtype, name
        assert fam.samples, name
        for s in fam.samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
        assert f"# TYPE {name} {mtype}\n" in text


def test_histogram_buckets_are_upstreams() -> None:
    assert SYNC_BUCKETS == (
        0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128,
        0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384,
    )  # fmt: skip
    assert len(PROGRAMMING_BUCKETS) == 81
    assert PROGRAMMING_BUCKETS[:5] == (0.0, 0.25, 0.5, 1.0, 2.0)
    assert PROGRAMMING_BUCKETS[61:65] == (59.0, 60.0, 65.0, 70.0)
    assert PROGRAMMING_BUCKETS[-8:] == (115.0, 120.0, 150.0, 180.0, 210.0, 240.0, 270.0, 300.0)
    text = exercised().render().decode()
    les = re.findall(
        r'kubeproxy_sync_full_proxy_rules_duration_seconds_bucket\{ip_family="IPv4",le="([^"]+)"',
        text,
    )
    assert les[0] == "0.001" and les[-2:] == ["16.384", "+Inf"] and len(les) == 16
    les = re.findall(
        r'kubeproxy_network_programming_duration_seconds_bucket\{[^}]*le="([^"]+)"', text
    )
    assert les[:3] == ["0.0", "0.25", "0.5"] and les[-1] == "+Inf" and len(les) == 82


def test_full_and_partial_syncs_land_in_their_histograms_and_the_total() -> None:
    m = exercised()
    assert value(m, "kubeproxy_sync_full_proxy_rules_duration_seconds_count", ip_family="IPv4") == 1
    assert (
        value(m, "kubeproxy_sync_partial_proxy_rules_duration_seconds_count", ip_family=IPFamily.V6)
        == 1
    )
    assert value(m, "kubeproxy_sync_proxy_rules_duration_seconds_count", ip_family="IPv4") == 1
    assert (
        value(m, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", ip_family=IPFamily.V6)
        == 102.0
    )
    assert (
        value(m, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", ip_family="IPv4")
        == 100.0
    )


def test_a_failed_sync_is_timed_but_does_not_move_the_last_sync_time() -> None:
    m = ProxyMetrics()
    m.observe_sync(True, 0.5, now=10.0)
    m.observe_sync(True, 0.7, success=False, now=20.0)
    assert value(m, "kubeproxy_sync_proxy_rules_duration_seconds_count", ip_family="IPv4") == 2
    assert value(m, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", ip_family="IPv4") == 10.0


def test_counters_and_gauges_carry_the_values_given() -> None:
    m = exercised()
    assert value(m, "kubeproxy_sync_proxy_rules_service_changes_total") == 2
    assert value(m, "kubeproxy_sync_proxy_rules_endpoint_changes_total") == 5
    assert value(m, "kubeproxy_sync_proxy_rules_service_changes_pending") == 3
    assert value(m, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 4
    assert (
        value(
            m,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            traffic_policy="external",
            ip_family="IPv4",
        )
        == 2
    )
    assert value(m, "kubeproxy_proxy_healthz_total", code="200") == 1
    assert value(m, "kubeproxy_proxy_livez_total", code="503") == 1
    assert value(m, "kubeproxy_conntrack_reconciler_deleted_entries_total", ip_family="IPv4") == 3
    assert (
        value(m, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total", ip_family="IPv4")
        == 1
    )
    assert (
        value(
            m,
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
            ip_family="IPv4",
        )
        == 1
    )
    assert (
        value(m, "kubeproxy_sync_proxy_rules_nftables_sync_failures_total", ip_family=IPFamily.V6)
        == 1
    )
    assert (
        value(m, "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total", ip_family="IPv4")
        == 1
    )
    assert (
        value(m, "kubeproxy_sync_proxy_rules_iptables_total", table="nat", ip_family="IPv4") == 10
    )
    assert value(m, "kubeproxy_sync_proxy_rules_iptables_last", table="nat", ip_family="IPv4") == 2
    assert value(m, "kubeproxy_py_invalid_objects", kind="Service") == 2
    assert value(m, "kubeproxy_py_nft_text_fallbacks_total", ip_family="IPv4") == 2
    assert value(m, "kubeproxy_py_invalid_objects_skipped_total", kind="Service") == 3


def test_families_read_zero_before_any_event() -> None:
    m = ProxyMetrics(families=tuple(IPFamily))
    for fam in IPFamily:
        assert (
            value(m, "kubeproxy_sync_proxy_rules_iptables_restore_failures_total", ip_family=fam)
            == 0
        )
        assert value(m, "kubeproxy_conntrack_reconciler_deleted_entries_total", ip_family=fam) == 0


def test_mode_registers_only_its_backend_metrics() -> None:
    ipt = ProxyMetrics("iptables").render().decode()
    nft = ProxyMetrics(ProxyMode.NFTABLES).render().decode()
    assert "kubeproxy_sync_proxy_rules_iptables_total" in ipt
    assert "nftables" not in ipt
    assert "kubeproxy_sync_proxy_rules_nftables_sync_failures_total" in nft
    assert "iptables" not in nft
    with pytest.raises(ValueError, match="nftables metrics are not registered"):
        ProxyMetrics("iptables").sync_failed("nftables")
    with pytest.raises(ValueError, match="iptables metrics are not registered"):
        ProxyMetrics("nftables").set_rule_counts({"nat": 1})
    assert "kubeproxy_py_nft_text_fallbacks_total" in nft
    with pytest.raises(ValueError, match="nftables metrics are not registered"):
        ProxyMetrics("iptables").nft_text_fallbacks(1)


def test_instances_are_independent_and_expose_no_created_series() -> None:
    a, b = ProxyMetrics(), ProxyMetrics()
    a.changes(services=7)
    assert value(a, "kubeproxy_sync_proxy_rules_service_changes_total") == 7
    assert value(b, "kubeproxy_sync_proxy_rules_service_changes_total") == 0
    text = exercised().render().decode()
    assert "_created" not in text
    assert "process_cpu_seconds_total" in text
    assert "_created" not in ProxyMetrics(process_metrics=False).render().decode()


def test_ours_are_prefixed_kubeproxy_py() -> None:
    names = set(families(exercised()))
    ours = {
        n
        for n in names
        if not n.startswith("process_")
        and n.replace("_total", "") not in {k.removesuffix("_total") for k in UPSTREAM}
    }
    assert ours and all(n.startswith("kubeproxy_py_") for n in ours), ours
