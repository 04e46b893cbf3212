"""The pure parts of the benchmarks: statistics, /proc parsing, target evaluation, the
report built from sample records, and the plan of ``bench all``. No benchmark runs here
and nothing is timed."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import pytest

from proxy.bench import all as bench_all
from proxy.bench import churn, connloop, datapath, latency, report, sizes, targets
from proxy.bench import sync as bench_sync
from proxy.bench.machine import cpu_model
from proxy.bench.procstats import ProcSample, parse_stat_ticks, parse_status_kib
from proxy.bench.stats import median, percentile, ratio
from proxy.cli import build_parser

# -- sample records ------------------------------------------------------------------------

MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "memory_gib": 8.0, "kernel": "6.1.0",
           "nft": "nftables v1.0.6", "iptables": "iptables v1.8.9 (nf_tables)",
           "python": "3.11.7"}  # fmt: skip


def sync_record(services: int, mode: str, first: float, raw: float, **kw: Any) -> dict[str, Any]:
    seconds = {"parse": 0.1, "plan": 0.2, "render": 0.3, "text": 0.05, "plan_render": 0.55,
               "first_sync": first, "raw_first_sync_text": raw, "resync": first * 1.5,
               "raw_resync_text": raw, "cli_apply": first * 2}  # fmt: skip
    return {
        "bench": "sync", "mode": mode, "services": services, "endpoints_per_service": 10,
        "repeat": 3, "command": bench_sync.command_for(services, 10, mode, 3),
        "seconds": seconds,
        "ratios": {"full_sync_vs_raw": first / raw, "resync_vs_raw": first * 1.5 / raw,
                   "compute_and_sync_vs_raw": (0.55 + first) / raw},
        "memory": {"traced_peak_mib": 12.5, "traced_retained_mib": 7.0,
                   "rss_peak_growth_mib": 9.0, "rss_retained_mib": 4.0},
        "rules": 1234, "text_bytes": 2_000_000, "resync_text_bytes": 2_100_000,
        "machine": MACHINE, **kw,
    }  # fmt: skip


def latency_record(
    impl: str, mode: str, services: int, lat: list[float], hwm: float, **kw: Any
) -> dict[str, Any]:
    return {
        "bench": "latency", "impl": impl, "mode": mode, "services": services,
        "endpoints_per_service": 10, "changes": len(lat), "min_sync_period": "1s",
        "min_sync_period_is_default": True,
        "command": latency.command_for(services, 10, len(lat), mode, "default", impl),
        "startup_to_first_sync_s": 3.0,
        "at_first_sync": {"rss_mib": hwm - 10, "hwm_mib": hwm - 5, "cpu_s": 2.0,
                          "children_cpu_s": 0.5},
        "after_changes": {"rss_mib": hwm - 8, "hwm_mib": hwm, "cpu_s": 5.0,
                          "children_cpu_s": 1.0},
        "latencies_ms": lat, "poll_cost_ms": 0.4, "churn": None, "machine": MACHINE, **kw,
    }  # fmt: skip


def datapath_record(impl: str, mode: str, services: int, p50: float) -> dict[str, Any]:
    summary = {"connect_p50_us": p50, "connect_p90_us": p50 * 1.5, "connect_p99_us": p50 * 3,
               "connect_mean_us": p50 * 1.2, "rate_per_s": 4000.0}  # fmt: skip
    return {
        "bench": "datapath", "impl": impl, "mode": mode, "services": services,
        "connections": 3000, "rounds": 5,
        "command": datapath.command_for(services, mode, impl, 3000, 5),
        "kube_services_position": [services, services + 1] if mode == "iptables" else [],
        "service": summary, "direct": {**summary, "connect_p50_us": 50.0},
        "service_overhead_us": p50 - 50.0, "failures": 0, "machine": MACHINE,
    }  # fmt: skip


def all_met() -> list[dict[str, Any]]:
    return [
        sync_record(1000, "nftables", 1.1, 1.0),
        sync_record(1000, "iptables", 2.4, 2.0),
        latency_record("ours", "nftables", 10000, [50.0] * 90 + [80.0] * 10, 200),
        latency_record("upstream", "nftables", 10000, [60.0] * 90 + [90.0] * 10, 250),
        datapath_record("ours", "nftables", 10, 100.0),
        datapath_record("ours", "nftables", 10000, 105.0),
    ]


def statuses(records: list[dict[str, Any]]) -> dict[str, str]:
    return {check.__name__: check(records).status for check in targets.CHECKS}


# -- statistics ----------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks() -> None:
    data = [10.0, 20.0, 30.0, 40.0]
    assert percentile(data, 0) == 10.0
    assert percentile(data, 100) == 40.0
    assert percentile(data, 50) == pytest.approx(25.0)
    assert percentile(list(reversed(data)), 50) == pytest.approx(25.0)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan_and_bad_q_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="outside 0-100"):
        percentile([1.0], 101)


def test_median_and_ratio() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(median([]))
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


# -- /proc, machine, connection loop -------------------------------------------------------


def test_parse_stat_ticks_survives_a_command_name_with_spaces_and_parens() -> None:
    fields = ["S"] + ["0"] * 10 + ["100", "50", "7", "3"] + ["0"] * 30
    stat = "1234 (kube proxy) (x)) " + " ".join(fields)
    assert parse_stat_ticks(stat) == (150, 10)


def test_parse_status_kib() -> None:
    status = "Name:\tpython\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n"
    assert parse_status_kib(status, "VmRSS") == 10240
    assert parse_status_kib(status, "VmHWM") == 20480
    assert parse_status_kib(status, "VmSwap") == 0


def test_cpu_model_from_cpuinfo() -> None:
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert cpu_model("Hardware\t: BCM2835\n") == "BCM2835"
    assert cpu_model("") == "unknown"


def test_connloop_parses_targets_and_summarizes_rounds() -> None:
    assert connloop.parse_target("service=10.96.0.10:80") == ("service", ("10.96.0.10", 80))
    with pytest.raises(ValueError, match="name=ip:port"):
        connloop.parse_target("10.96.0.10:80")
    s = connloop.summarize([100.0, 200.0, 300.0], failures=1, seconds=2.0)
    assert s["connections"] == 4 and s["failures"] == 1 and s["rate_per_s"] == 2.0
    assert s["connect_us"]["p50"] == 200.0 and s["connect_us"]["max"] == 300.0


def test_datapath_rounds_are_summarized_by_their_medians() -> None:
    def rnd(p50: float, rate: float) -> dict[str, Any]:
        return {"rate_per_s": rate,
                "connect_us": {"p50": p50, "p90": p50 * 2, "p99": p50 * 3, "mean": p50}}  # fmt: skip

    service = [rnd(100, 1000), rnd(300, 3000), rnd(110, 2000)]
    direct = [rnd(50, 1000), rnd(60, 1000), rnd(70, 1000)]
    summary = datapath.summarize_rounds(service)
    assert summary["connect_p50_us"] == 110 and summary["rate_per_s"] == 2000
    assert summary["connect_p99_us"] == 330
    assert datapath.overhead_us(service, direct) == 50  # diffs 50, 240, 40


# -- churn -----------------------------------------------------------------------------------


def test_churn_replaces_every_address_and_keeps_nodes() -> None:
    counter = iter(range(100))
    old: list[dict[str, Any]] = [
        {"addresses": ["10.128.0.1"], "nodeName": "node-1"},
        {"addresses": ["10.128.0.2"]},
    ]
    new = churn.new_endpoints(old, lambda: f"10.129.0.{next(counter)}")
    assert new == [{"addresses": ["10.129.0.0"], "nodeName": "node-1"},
                   {"addresses": ["10.129.0.1"]}]  # fmt: skip


def test_churn_summary_takes_cpu_during_the_churn_and_the_peak_rss() -> None:
    res = churn.ChurnResult(minutes=1, rate_per_s=2, sample_every_s=5, changes=120)
    start = ProcSample(0, 100.0, 120.0, 10.0, 1.0)
    middle = ProcSample(5, 140.0, 140.0, 12.0, 1.5)
    end = ProcSample(60, 110.0, 140.0, 13.0, 2.0)
    churn.summarize(res, start, end, [start, middle, end])
    assert res.rss_peak_mib == 140.0 and res.rss_final_mib == 110.0
    assert res.cpu_s == pytest.approx(4.0)
    assert res.cpu_ms_per_change == pytest.approx(4000 / 120)
    assert [s["cpu_s"] for s in res.samples] == [0.0, 2.5, 4.0]


# -- targets ---------------------------------------------------------------------------------


def test_every_target_met() -> None:
    assert set(statuses(all_met()).values()) == {targets.MET}


def test_nothing_measured() -> None:
    assert set(statuses([]).values()) == {targets.NOT_MEASURED}


def test_full_sync_overhead_missed_when_one_size_is_over() -> None:
    records = [*all_met(), sync_record(5000, "iptables", 14.0, 10.0)]
    v = targets.full_sync_overhead(records)
    assert v.status == targets.MISSED
    assert any("iptables 5000 services: 1.40×" in d and d.startswith("✗") for d in v.details)


def test_latency_vs_upstream_needs_both_p50_and_p99() -> None:
    records = all_met()
    records[2] = latency_record("ours", "nftables", 10000, [50.0] * 90 + [500.0] * 10, 200)
    assert targets.latency_vs_upstream(records).status == targets.MISSED
    assert targets.latency_p50(records).status == targets.MET  # p50 still 50 ms


def test_latency_vs_upstream_only_compares_equal_settings() -> None:
    records = all_met()
    records[3] = {**records[3], "min_sync_period": "10s", "min_sync_period_is_default": False}
    assert targets.latency_vs_upstream(records).status == targets.NOT_MEASURED


def test_latency_vs_upstream_only_compares_the_same_iptables_backend() -> None:
    ours = latency_record("ours", "iptables", 10000, [900.0] * 100, 200, iptables="legacy")
    up = latency_record("upstream", "iptables", 10000, [950.0] * 100, 250, iptables="nft")
    assert targets.latency_vs_upstream([ours, up]).status == targets.NOT_MEASURED
    up["iptables"] = "legacy"
    verdict = targets.latency_vs_upstream([ours, up])
    assert verdict.status == targets.MET and "iptables-legacy" in verdict.details[0]


def test_latency_p50_target() -> None:
    records = all_met()
    records[2] = latency_record("ours", "nftables", 10000, [150.0] * 100, 200)
    assert targets.latency_p50(records).status == targets.MISSED


def test_rss_uses_the_peak_over_the_run_including_churn() -> None:
    records = all_met()
    records[2] = {**records[2], "churn": {"hwm_final_mib": 300.0}}
    v = targets.rss_vs_upstream(records)
    assert v.status == targets.MISSED
    assert "300 MiB vs upstream 250 MiB" in v.details[0]


def test_datapath_flat_tolerance_and_upstream_only_for_reference() -> None:
    records = [*all_met(), datapath_record("upstream", "nftables", 10, 100.0),
               datapath_record("upstream", "nftables", 10000, 200.0)]  # fmt: skip
    v = targets.datapath_flat(records)
    assert v.status == targets.MET  # ours +5%; upstream +100% is a note only
    assert any(d.startswith("·") and "upstream" in d for d in v.details)
    records.append(datapath_record("ours", "nftables", 1000, 115.0))
    assert targets.datapath_flat(records).status == targets.MISSED  # +15%


# -- report --------------------------------------------------------------------------------


def test_merge_keeps_the_last_run_of_a_command_and_infers_old_records() -> None:
    old = sync_record(1000, "nftables", 5.0, 1.0)
    new = sync_record(1000, "nftables", 1.0, 1.0)
    legacy = {k: v for k, v in sync_record(5000, "nftables", 1.0, 1.0).items() if k != "bench"}
    merged = report.merge([[old, legacy], [new, {"not": "a record"}], "junk"])
    assert len(merged) == 2
    assert {r["bench"] for r in merged} == {"sync"}
    assert [r["seconds"]["first_sync"] for r in merged if r["services"] == 1000] == [1.0]


def test_markdown_has_every_section_figure_command_and_verdict() -> None:
    records = [*all_met(), sync_record(5000, "iptables", 14.0, 10.0)]
    md = report.markdown(records, "benchmarks.png")
    for heading in ("## Machine", "## Targets", "## a. ", "## b. ", "## c. ", "## d. ",
                    "## e. "):  # fmt: skip
        assert heading in md
    assert "Test CPU 9000, 2 cores" in md and "iptables v1.8.9 (nf_tables)" in md
    for r in records:
        assert f"`{r['command']}`" in md
    assert "**missed**" in md and "**met**" in md
    assert "**1.40×**" in md
    assert "equal, so the runs with each agent's default" in md
    assert "![benchmark plots](benchmarks.png)" in md
    assert "[tuning.md](tuning.md)" in md


def test_full_sync_table_shows_the_iptables_change_as_a_restore() -> None:
    ipt_rec = sync_record(5000, "iptables", 14.0, 10.0, iptables="legacy")
    ipt_rec["seconds"]["change_restore"] = 1.9
    nft_rec = sync_record(5000, "nftables", 2.0, 1.9)
    nft_rec["seconds"].update(change_netlink=0.0006, change_nft=0.042, change_count=0.0024)
    rows = {
        line.split(" | ")[1]: line
        for line in report.section_full_sync([ipt_rec, nft_rec])
        if line.startswith("| 5000 ")
    }
    assert len(rows) == 2
    assert "| 1900.0 (restore) | – |" in rows["iptables-legacy"]
    assert "| 0.6 / 42.0 | 2.4 |" in rows["nftables"]


def test_markdown_without_records_says_so() -> None:
    md = report.markdown([], None)
    assert "_No records._" in md and "_Not recorded._" in md and "![" not in md


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "sync.json").write_text(json.dumps(all_met()[:2]))
    (results / "broken.json").write_text("{not json")
    records = report.load(results)
    assert len(records) == 2
    written = report.write(records, tmp_path / "docs", plot=False)
    assert sorted(p.name for p in written) == ["benchmarks.json", "benchmarks.md"]
    assert json.loads((tmp_path / "docs" / "benchmarks.json").read_text()) == records


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    records = [*all_met(), datapath_record("ours", "iptables", 10, 60.0)]
    records[2] = {**records[2], "churn": {"samples": [{"at_s": 0, "rss_mib": 150, "cpu_s": 0},
                                                      {"at_s": 60, "rss_mib": 160, "cpu_s": 3}],
                                          "hwm_final_mib": 200.0}}  # fmt: skip
    report.write(records, tmp_path, plot=True)
    png = (tmp_path / "benchmarks.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


# -- commands ------------------------------------------------------------------------------


def parses(command: str) -> Any:
    argv = shlex.split(command)
    assert argv[0] == "kube-proxy-py"
    return build_parser().parse_args(argv[1:])


def test_recorded_commands_parse_back_to_the_same_run() -> None:
    args = parses(bench_sync.command_for(5000, 10, "nftables", 3))
    assert (args.bench_command, args.services, args.mode, args.repeat) == ("sync", 5000,
                                                                           "nftables", 3)  # fmt: skip
    args = parses(latency.command_for(10000, 10, 100, "iptables", "default", "upstream", 10, 2))
    assert (args.impl, args.min_sync_period, args.churn_minutes) == ("upstream", "default", 10)
    args = parses(datapath.command_for(1000, "nftables", "ours", 3000, 5))
    assert (args.services, args.impl, args.connections) == ("1000", "ours", 3000)
    args = parses(datapath.command_for(1000, "nftables", datapath.COUNTED, 3000, 5))
    assert datapath.IMPL_CHOICES[args.impl] == (datapath.COUNTED,)
    for command in (
        bench_sync.command_for(1000, 10, "iptables", 3, "nft"),
        latency.command_for(1000, 10, 100, "both", "default", "both", iptables="nft"),
        datapath.command_for(10, "iptables", "both", 3000, 5, "nft"),
    ):
        assert parses(command).iptables == "nft"  # the backend is part of the command
    assert "--iptables" not in datapath.command_for(10, "nftables", "both", 3000, 5, "nft")


def test_latency_refuses_a_bad_min_sync_period() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "latency", "--min-sync-period", "soon"])


def test_bench_all_covers_the_issue_sizes() -> None:
    steps = bench_all.steps()
    for step in steps:
        assert parses(step.command).iptables == "legacy"
    sync_sizes = {int(s.args[s.args.index("--services") + 1]) for s in steps if s.group == "sync"}
    assert sync_sizes == {1000, 5000, 10000, 30000}
    lat = [s for s in steps if s.group == "latency"]
    assert {s.args[s.args.index("--services") + 1] for s in lat} == {"1000", "10000"}
    assert all(int(s.args[s.args.index("--changes") + 1]) >= 100 for s in lat)
    churned = [s for s in lat if "--churn-minutes" in s.args]
    assert [s.args[s.args.index("--services") + 1] for s in churned] == ["10000"]
    assert churned[0].args[churned[0].args.index("--churn-minutes") + 1] == "10"
    dp = [s for s in steps if s.group == "datapath"]
    assert dp[0].args[dp[0].args.index("--services") + 1] == "10,1000,10000"
    assert 60 < bench_all.estimate_minutes(steps) < 8 * 60


def test_missing_lists_the_issue_figures_no_record_holds() -> None:
    records = all_met()
    gaps = sizes.missing(records)
    assert "sync 1000 nftables" not in gaps and "sync 30000 iptables" in gaps
    assert "latency 10000 nftables ours" not in gaps
    assert "churn 10000 nftables ours" in gaps  # the sample has no churn
    assert "datapath 10 nftables ours" not in gaps and "datapath 1000 iptables upstream" in gaps
    records[2] = {**records[2], "churn": {"minutes": 10}}
    assert "churn 10000 nftables ours" not in sizes.missing(records)
    assert "Not in these records" in report.markdown(records, None)


def test_datapath_flat_discounts_drift_that_hits_the_direct_path_too() -> None:
    slow = datapath_record("ours", "nftables", 10000, 130.0)
    slow["direct"] = {**slow["direct"], "connect_p50_us": 65.0}  # the machine got slower
    records = [*all_met(), slow]
    assert targets.datapath_flat(records).status == targets.MET
    slow["direct"]["connect_p50_us"] = 50.0  # only the Service path got slower
    assert targets.datapath_flat(records).status == targets.MISSED


def test_ipv6_runs_are_kept_apart_from_ipv4_ones() -> None:
    from proxy.bench import labobjects
    from proxy.bench.connloop import parse_target
    from proxy.bench.targets import mode_label

    v4 = {"mode": "nftables", "ip_family": "ipv4"}
    assert mode_label(v4) == "nftables" and mode_label({**v4, "ip_family": "ipv6"}).endswith(
        " IPv6"
    )
    assert labobjects.endpoint_ip(5, "ipv6") == "fd00:10:128::5"
    assert labobjects.endpoint_ip((1 << 22) + 5, "ipv6") == "fd00:10:128::5"  # wraps
    svc = labobjects.service("s", family="ipv6")
    assert svc["spec"]["ipFamilies"] == ["IPv6"]
    sl = labobjects.endpoint_slice("s", [], family="ipv6")
    assert sl["addressType"] == "IPv6"
    assert parse_target("service=[fd00:10:96::a]:80") == ("service", ("fd00:10:96::a", 80))
    assert parse_target("direct=10.244.1.11:8080") == ("direct", ("10.244.1.11", 8080))


def test_datapath_flat_compares_ipv6_runs_only_with_ipv6_runs() -> None:
    # an IPv6 run at 1000 Services, 60% slower than IPv4's 10: another lab, not a slope
    v6 = {**datapath_record("ours", "nftables", 1000, 160.0), "ip_family": "ipv6"}
    records = [*all_met(), v6]
    verdict = targets.datapath_flat(records)
    assert verdict.status == targets.MET
    assert not any("IPv6" in d for d in verdict.details)
    records.append({**datapath_record("ours", "nftables", 10, 100.0), "ip_family": "ipv6"})
    verdict = targets.datapath_flat(records)
    assert verdict.status == targets.MISSED  # +60% within IPv6
    assert any(d.startswith("✗ ours IPv6: 1000 vs 10 services") for d in verdict.details)
