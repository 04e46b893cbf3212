"""``kube-proxy-py bench report``: merge benchmark JSON into docs.

Reads every ``*.json`` under ``--results`` (each a list of records written by ``bench
sync|latency|datapath --json``), and writes to ``--out``:

- ``benchmarks.json``: one list of records, each with the exact command that reproduces
  it and the machine it ran on;
- ``benchmarks.md``: the machine, the targets (met / missed / not measured, computed from
  the data by :mod:`proxy.bench.targets`), and tables for issue 6's items a–e, each
  figure with its command;
- ``benchmarks.png``: the plot (:mod:`proxy.bench.plot`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from proxy.bench.sizes import missing
from proxy.bench.stats import percentile
from proxy.bench.targets import Record, evaluate, mode_label, of_kind, peak_rss_mib

KINDS = ("sync", "latency", "datapath")


# -- loading -------------------------------------------------------------------------------


def infer_kind(record: Record) -> str | None:
    """The ``bench`` of a record (older records lack the field)."""
    kind = record.get("bench")
    if kind in KINDS:
        return str(kind)
    if "latencies_ms" in record:
        return "latency"
    if "seconds" in record and "rules" in record:
        return "sync"
    if "connections" in record and "direct" in record:
        return "datapath"
    return None


def merge(batches: Iterable[Sequence[Any]]) -> list[Record]:
    """Records from several files in order; a later record with the same kind, command,
    implementation and mode replaces an earlier one (a re-run)."""
    merged: dict[tuple[str, str, str, str], Record] = {}
    for batch in batches:
        for item in batch:
            if not isinstance(item, dict) or "command" not in item:
                continue
            kind = infer_kind(item)
            if kind is None:
                continue
            record = {**item, "bench": kind}
            key = (kind, str(record["command"]), str(record.get("impl", "")), record["mode"])
            merged.pop(key, None)
            merged[key] = record
    return list(merged.values())


def load(results: Path) -> list[Record]:
    batches: list[Sequence[Any]] = []
    for path in sorted(results.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name)):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"bench report: skipping {path}: {exc}", file=sys.stderr)
            continue
        batches.append(data if isinstance(data, list) else [data])
    return merge(batches)


# -- formatting ----------------------------------------------------------------------------


def _n(x: Any, fmt: str = ".0f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, fmt)


def _cmd(record: Record) -> str:
    return f"`{record['command']}`"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return ["_No records._", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def machines(records: Sequence[Record]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    for r in records:
        m = r.get("machine")
        if m and m not in seen:
            seen.append(m)
    return seen


def section_machine(records: Sequence[Record]) -> list[str]:
    lines = ["## Machine", ""]
    found = machines(records)
    if not found:
        return [*lines, "_Not recorded._", ""]
    for m in found:
        lines += [
            f"- CPU: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
            f"{m.get('memory_gib', '?')} GiB memory",
            f"- kernel {m.get('kernel', '?')}; {m.get('nft', '?')}; {m.get('iptables', '?')}; "
            f"Python {m.get('python', '?')}",
        ]
    if len(found) > 1:
        lines.append("- **Records come from more than one machine**: compare with care.")
    return [*lines, ""]


def section_targets(records: Sequence[Record]) -> list[str]:
    lines = ["## Targets", "", "Reported, not asserted; computed from the records below.", ""]
    rows = [[v.target, f"**{v.status}**", "<br>".join(v.details) or "–"]
            for v in evaluate(records)]  # fmt: skip
    lines += table(["target", "status", "figures"], rows)
    gaps = missing(records)
    if gaps:
        lines += [
            f"Not in these records ({len(gaps)} of the issue's figures; "
            "`kube-proxy-py bench all` runs them all): " + ", ".join(gaps) + ".",
            "",
        ]
    return lines


def _by_size(records: Sequence[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r["services"], mode_label(r), r.get("impl", "")))


def section_plan_render(records: Sequence[Record]) -> list[str]:
    lines = [
        "## a. Plan + render: time and memory",
        "",
        "N Services × 10 endpoints (every 20th a NodePort). Time: median of `--repeat` runs "
        "of plan + render + the full-sync text end to end (each stage alone in brackets). "
        "Memory: plan + render + text in a fresh interpreter after parsing — the peak of "
        "Python allocations traced by `tracemalloc` above what parse left, and the growth "
        "of the process's peak RSS (VmHWM reset just before); retained = still allocated "
        "afterwards (the plan, ruleset and text).",
        "",
    ]
    rows = []
    for r in _by_size(of_kind(records, "sync")):
        s, m = r["seconds"], r.get("memory") or {}
        rows.append([
            str(r["services"]), mode_label(r), _n(r.get("rules")),
            _n(s.get("plan_render", math.nan) * 1000),
            f"{_n(s.get('plan', math.nan) * 1000)} / {_n(s.get('render', math.nan) * 1000)} / "
            f"{_n(s.get('text', math.nan) * 1000)}",
            f"{_n(m.get('traced_peak_mib'), '.1f')} ({_n(m.get('traced_retained_mib'), '.1f')})",
            f"{_n(m.get('rss_peak_growth_mib'), '.1f')} ({_n(m.get('rss_retained_mib'), '.1f')})",
            _cmd(r),
        ])  # fmt: skip
    header = ["services", "mode", "rules+elements", "plan+render ms",
              "plan / render / text ms", "traced peak MiB (retained)",
              "RSS growth MiB (retained)", "command"]  # fmt: skip
    return lines + table(header, rows)


def section_full_sync(records: Sequence[Record]) -> list[str]:
    lines = [
        "## b. Full sync into the kernel vs raw apply",
        "",
        "`first sync`: our kernel layer (read what the kernel holds, write the text, apply) "
        "into an empty namespace, a fresh one per run; `raw`: the very text it applied, fed "
        "to `nft -f -` / `iptables-restore --noflush` in another fresh namespace. `re-sync`: "
        "the same ruleset again into the populated namespace vs its text applied raw. "
        "`endpoint replaced`: one EndpointSlice change (an endpoint gets a new address, as "
        "in the latency benchmark) written into the populated table, as the agent writes "
        "it (netlink) and as the same statements through `nft -f`: endpoint map elements "
        "only. `endpoint added`: one more endpoint, over netlink; the service chain's rule "
        "changes too, and the kernel re-validates every rule reachable from the base chains "
        "on any transaction that adds a rule. In iptables mode, `endpoint replaced` is the "
        "partial `iptables-restore` the agent writes for that change (restore). Medians of "
        "`--repeat` runs.",
        "",
    ]
    rows = []
    for r in _by_size(of_kind(records, "sync")):
        s, q = r["seconds"], r.get("ratios") or {}
        ms = {k: _n(v * 1000) for k, v in s.items()}
        rows.append([
            str(r["services"]), mode_label(r), _n(r.get("text_bytes", 0) / 1e6, ".1f"),
            ms.get("first_sync", "–"), ms.get("raw_first_sync_text", "–"),
            f"**{_n(q.get('full_sync_vs_raw'), '.2f')}×**",
            ms.get("resync", "–"), ms.get("raw_resync_text", "–"),
            f"{_n(q.get('resync_vs_raw'), '.2f')}×",
            ms.get("cli_apply", "–"),
            f"{_n(s['change_restore'] * 1000, '.1f')} (restore)"
            if "change_restore" in s
            else f"{_n(s.get('change_netlink', math.nan) * 1000, '.1f')} / "
            f"{_n(s.get('change_nft', math.nan) * 1000, '.1f')}",
            _n(s.get("change_count", math.nan) * 1000, ".1f"),
            _cmd(r),
        ])  # fmt: skip
    header = ["services", "mode", "text MB", "first sync ms", "raw ms", "ratio",
              "re-sync ms", "raw ms", "ratio", "`apply` CLI ms",
              "endpoint replaced ms: netlink / nft", "endpoint added ms", "command"]  # fmt: skip
    return lines + table(header, rows)


def section_latency(records: Sequence[Record]) -> list[str]:
    lat = of_kind(records, "latency")
    lines = [
        "## c. Network programming latency",
        "",
        "One EndpointSlice rewritten through the API → a connection from the node to the "
        "Service's ClusterIP reaches the new (real) pod; changes spaced by more than the "
        "min sync period. Both agents run in the same lab node with the same flags. "
        "`API write`: of that, the PATCH until the API server answered (etcd committed "
        "it); the agent hears of the change only after that (runs before it was recorded "
        "show –).",
        "",
    ]
    defaults = {r["impl"]: r["min_sync_period"] for r in lat if r.get("min_sync_period_is_default")}
    if defaults:
        same = len(set(defaults.values())) == 1
        lines += [
            "Defaults: " + ", ".join(f"{k} {v}" for k, v in sorted(defaults.items())) + (
                " — equal, so the runs with each agent's default are also the runs at equal "
                "settings." if same else " — different: compare rows with equal settings."
            ),
            "",
        ]  # fmt: skip
    rows = []
    for r in _by_size(lat):
        data = r.get("latencies_ms") or []
        default = " (default)" if r.get("min_sync_period_is_default") else ""
        rows.append([
            str(r["services"]), mode_label(r), f"{r['min_sync_period']}{default}", r["impl"],
            str(len(data)), _n(percentile(data, 50)), _n(percentile(data, 99)),
            _n(max(data) if data else None),
            _n(percentile(writes, 50)) if (writes := r.get("write_ms")) else "–",
            _n(r.get("poll_cost_ms"), ".1f"), _cmd(r),
        ])  # fmt: skip
    header = ["services", "mode", "min sync", "agent", "changes", "p50 ms", "p99 ms",
              "max ms", "API write p50 ms", "check ms", "command"]  # fmt: skip
    return lines + table(header, rows)


def section_footprint(records: Sequence[Record]) -> list[str]:
    lines = [
        "## d. Agent RSS and CPU",
        "",
        "From /proc of the agent process: CPU = user + system seconds of the agent and its "
        "waited-for children (nft, iptables-restore). `to first sync`: from starting the "
        "agent until its metrics count one sync. Churn: after the timed changes, random "
        "EndpointSlices get new endpoint lists at a steady rate; RSS sampled every few "
        "seconds. Peak = the kernel's high-water mark over the whole run.",
        "",
    ]
    rows = []
    for r in _by_size(of_kind(records, "latency")):
        f = r.get("at_first_sync") or {}
        c = r.get("churn") or {}
        first_cpu = f.get("cpu_s", math.nan) + f.get("children_cpu_s", 0.0)
        churn = (
            f"{_n(c.get('minutes'), 'g')} min, {_n(c.get('changes'))} changes: "
            f"{_n(c.get('cpu_s'), '.1f')} s "
            f"({_n(c.get('cpu_ms_per_change'), '.1f')} ms/change); RSS "
            f"{_n(c.get('rss_start_mib'))} → peak {_n(c.get('rss_peak_mib'))} → "
            f"{_n(c.get('rss_final_mib'))}"
            if c else "–"
        )  # fmt: skip
        rows.append([
            f"{r['services']} × {r['endpoints_per_service']}", mode_label(r), r["impl"],
            _n(r.get("startup_to_first_sync_s"), ".1f"), _n(first_cpu, ".1f"),
            _n(f.get("rss_mib")), _n(peak_rss_mib(r)), churn, _cmd(r),
        ])  # fmt: skip
    header = ["services × endpoints", "mode", "agent", "to first sync s",
              "CPU s to first sync", "RSS MiB at first sync", "peak RSS MiB",
              "churn: CPU s; RSS MiB", "command"]  # fmt: skip
    return lines + table(header, rows)


def section_datapath(records: Sequence[Record]) -> list[str]:
    dp = of_kind(records, "datapath")
    lines = [
        "## e. Data path: new connections through a node",
        "",
        "A client pod and a server pod on one node; N Services in the API (N − 1 with fake "
        "endpoints, plus the measured `zz-bench/measured` → the server pod, named to be the "
        "last Service rule in kube-proxy-py's iptables KUBE-SERVICES chain; upstream's order "
        "is random per sync — the position seen is shown). Per connection, `connect()` "
        "time (SYN → SYN-ACK, including the node's NAT lookup of the first packet), then "
        "read the banner and close with a RST; conn/s over the whole loop (bounded by the "
        "Python client and server). Medians over rounds; `direct` = the same loop to the "
        "pod IP in the same run (no Service DNAT, but through the same hooks). Host load: "
        "the 1-minute load average before the loop — µs figures are only comparable when "
        "it stayed well below the number of cores. `ours+counters`: kube-proxy-py with "
        "`--metrics-service-counters`, which counts every packet of the Service's "
        "connections (both ways) in the rules; its cost is its ClusterIP row against "
        "`ours` at the same size.",
        "",
    ]
    for family in ("ipv4", "ipv6"):
        bare = [r for r in dp if r["impl"] == "none" and r.get("ip_family", "ipv4") == family]
        if bare:
            d = bare[-1]["direct"]
            lab = " (IPv6-only lab)" if family == "ipv6" else ""
            lines += [
                f"No agent and no rules at all{lab}: connect p50 "
                f"{_n(d.get('connect_p50_us'))} µs, p99 {_n(d.get('connect_p99_us'))} µs, "
                f"{_n(d.get('rate_per_s'))} conn/s.",
                "",
            ]
    rows = []
    for r in _by_size([r for r in dp if r["impl"] != "none"]):
        s, d = r.get("service") or {}, r.get("direct") or {}
        pos = r.get("kube_services_position") or []
        rows.append([
            str(r["services"]), mode_label(r), r["impl"],
            f"{_n(s.get('connect_p50_us'))} / {_n(s.get('connect_p99_us'))}",
            f"{_n(d.get('connect_p50_us'))} / {_n(d.get('connect_p99_us'))}",
            _n(r.get("service_overhead_us"), "+.0f"),
            f"{_n(s.get('rate_per_s'))} / {_n(d.get('rate_per_s'))}",
            f"{pos[0]}/{pos[1]}" if pos else "map",
            str(r.get("failures", 0)), _n(r.get("loadavg"), ".1f"), _cmd(r),
        ])  # fmt: skip
    header = ["services", "mode", "agent", "ClusterIP p50 / p99 µs", "direct p50 / p99 µs",
              "Service overhead µs", "conn/s ClusterIP / direct", "KUBE-SERVICES position",
              "failed", "host load", "command"]  # fmt: skip
    return lines + table(header, rows)


def markdown(records: Sequence[Record], plot_name: str | None) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `kube-proxy-py bench report` from the JSON the `kube-proxy-py bench` "
        "commands write (all of them: `kube-proxy-py bench all`); every figure comes with "
        "the command that reproduces it. Raw records: [benchmarks.json](benchmarks.json). "
        "Targets missed on the way, what their profiles showed and the figures before and "
        "after each fix: [tuning.md](tuning.md).",
        "",
        "iptables rows name the backend both agents used (`--iptables`): `iptables-legacy` "
        "(the benchmarks' default) or `iptables-nft`; `iptables-nft-restore` of 10,000 "
        "Services ran for more than 14 minutes on the bench machine, so the nft backend is "
        "measured at small sizes only. Rows marked `IPv6` ran in an IPv6-only lab "
        "(`--ip-family ipv6`: Services, pods and nodes of IPv6 only; the agents' tables "
        "`ip6 kube-proxy` / ip6tables), the rows beside them in an IPv4 one.",
        "",
    ]
    if plot_name:
        lines += [f"![benchmark plots]({plot_name})", ""]
    lines += section_machine(records)
    lines += section_targets(records)
    lines += section_plan_render(records)
    lines += section_full_sync(records)
    lines += section_latency(records)
    lines += section_footprint(records)
    lines += section_datapath(records)
    return "\n".join(lines).rstrip() + "\n"


def write(records: Sequence[Record], out: Path, *, plot: bool = True) -> list[Path]:
    """Write benchmarks.json, .md and (with matplotlib) .png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "benchmarks.json"]
    written[0].write_text(json.dumps(list(records), indent=1) + "\n")
    plot_name = None
    if plot:
        from proxy.bench.plot import plot as draw

        png = out / "benchmarks.png"
        draw(records, png)
        written.append(png)
        plot_name = png.name
    md = out / "benchmarks.md"
    md.write_text(markdown(records, plot_name))
    written.append(md)
    return written


def main_report(args: Any) -> int:
    results = Path(args.results)
    if not results.is_dir():
        print(f"bench report: --results {results}: no such directory", file=sys.stderr)
        return 2
    records = load(results)
    if not records:
        print(f"bench report: no benchmark records in {results}/*.json", file=sys.stderr)
        return 1
    for path in write(records, Path(args.out), plot=not args.no_plot):
        print(f"wrote {path}")
    return 0
