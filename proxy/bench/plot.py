"""The report's PNG: six panels, one per question of issue 6 (headless: Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.bench.stats import percentile
from proxy.bench.targets import Record, of_kind, peak_rss_mib

COLORS = {"iptables": "tab:orange", "nftables": "tab:blue"}
IMPL_STYLE = {"ours": "-", "upstream": "--"}


def _series(records: Sequence[Record], key: str) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in sorted(records, key=lambda r: r["services"]):
        out.setdefault(str(r[key]), []).append(r)
    return out


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _plan_render(ax: Any, records: Sequence[Record]) -> None:
    title = "a. plan + render + text: time (solid), memory (dotted)"
    sync = of_kind(records, "sync")
    if not sync:
        return _empty(ax, title)
    for mode, rs in _series(sync, "mode").items():
        xs = [r["services"] for r in rs]
        ax.plot(xs, [r["seconds"].get("plan_render", float("nan")) for r in rs], "o-",
                color=COLORS.get(mode), label=f"{mode} time")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("services (× 10 endpoints)")
    ax.set_ylabel("seconds")
    twin = ax.twinx()
    for mode, rs in _series(sync, "mode").items():
        xs = [r["services"] for r in rs]
        mem = [(r.get("memory") or {}).get("traced_peak_mib", float("nan")) for r in rs]
        twin.plot(xs, mem, "s:", color=COLORS.get(mode), alpha=0.6, label=f"{mode} memory")
    twin.set_ylabel("traced peak MiB (dotted)")
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = twin.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)


def _full_sync(ax: Any, records: Sequence[Record]) -> None:
    title = "b. full sync (solid) vs raw apply (dashed)"
    sync = of_kind(records, "sync")
    if not sync:
        return _empty(ax, title)
    for mode, rs in _series(sync, "mode").items():
        xs = [r["services"] for r in rs]
        ax.plot(
            xs,
            [r["seconds"].get("first_sync", float("nan")) for r in rs],
            "o-",
            color=COLORS.get(mode),
            label=f"{mode} full sync",
        )
        ax.plot(xs, [r["seconds"].get("raw_first_sync_text", float("nan")) for r in rs], "x--",
                color=COLORS.get(mode), label=f"{mode} raw")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("services (× 10 endpoints)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)


def _latency(ax: Any, records: Sequence[Record]) -> None:
    title = "c. programming latency p50 (bar), p99 (tick)"
    lat = [r for r in of_kind(records, "latency") if r.get("latencies_ms")]
    if not lat:
        return _empty(ax, title)
    groups = sorted({(r["services"], r["mode"], r["min_sync_period"]) for r in lat})
    width = 0.38
    for gi, group in enumerate(groups):
        for ii, impl in enumerate(("ours", "upstream")):
            match = [r for r in lat if (r["services"], r["mode"], r["min_sync_period"]) == group
                     and r["impl"] == impl]  # fmt: skip
            if not match:
                continue
            data = match[-1]["latencies_ms"]
            x = gi + (ii - 0.5) * width
            ax.bar(
                x,
                percentile(data, 50),
                width,
                color=COLORS.get(group[1]),
                alpha=1.0 if impl == "ours" else 0.45,
                label=impl if gi == 0 else None,
                edgecolor="black",
                linewidth=0.5,
            )
            ax.plot([x - width / 3, x + width / 3], [percentile(data, 99)] * 2, "k-")  # fmt: skip
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{s // 1000 if s >= 1000 else s}{'k' if s >= 1000 else ''}\n"
                        f"{m[:3]} {msp}" for s, m, msp in groups], fontsize=7)  # fmt: skip
    ax.set_ylabel("ms (API write → rule in kernel)")
    ax.legend(fontsize=7, title="solid: ours, pale: upstream", title_fontsize=6)
    ax.set_title(title, fontsize=9)


def _rss(ax: Any, records: Sequence[Record]) -> None:
    title = "d. agent RSS: at first sync (bar), peak (tick)"
    lat = of_kind(records, "latency")
    if not lat:
        return _empty(ax, title)
    groups = sorted({(r["services"], r["mode"]) for r in lat})
    width = 0.38
    for gi, group in enumerate(groups):
        for ii, impl in enumerate(("ours", "upstream")):
            match = [r for r in lat if (r["services"], r["mode"]) == group and r["impl"] == impl]
            if not match:
                continue
            r = match[-1]
            x = gi + (ii - 0.5) * width
            ax.bar(
                x,
                (r.get("at_first_sync") or {}).get("rss_mib", 0),
                width,
                color=COLORS.get(group[1]),
                alpha=1.0 if impl == "ours" else 0.45,
                edgecolor="black",
                linewidth=0.5,
            )
            ax.plot([x - width / 3, x + width / 3], [peak_rss_mib(r)] * 2, "k-")  # fmt: skip
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{s}\n{m[:3]}" for s, m in groups], fontsize=7)
    ax.set_ylabel("MiB (solid: ours, pale: upstream)")
    ax.set_title(title, fontsize=9)


def _churn(ax: Any, records: Sequence[Record]) -> None:
    title = "d. RSS during churn"
    churned = [r for r in of_kind(records, "latency") if (r.get("churn") or {}).get("samples")]
    if not churned:
        return _empty(ax, title)
    for r in churned:
        samples = r["churn"]["samples"]
        ax.plot([s["at_s"] / 60 for s in samples], [s["rss_mib"] for s in samples],
                IMPL_STYLE.get(r["impl"], "-"), color=COLORS.get(r["mode"]),
                label=f"{r['impl']} {r['mode']} {r['services']}")  # fmt: skip
    ax.set_xlabel("minutes of churn")
    ax.set_ylabel("RSS MiB")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)


def _datapath(ax: Any, records: Sequence[Record]) -> None:
    title = "e. connect() p50 through the ClusterIP"
    dp = of_kind(records, "datapath")
    runs = [r for r in dp if r["impl"] != "none" and r.get("service")]
    if not runs:
        return _empty(ax, title)
    keys = sorted({(r["mode"], r["impl"]) for r in runs})
    for mode, impl in keys:
        rs = sorted((r for r in runs if (r["mode"], r["impl"]) == (mode, impl)),
                    key=lambda r: r["services"])  # fmt: skip
        ax.plot(
            [r["services"] for r in rs],
            [r["service"]["connect_p50_us"] for r in rs],
            "o" + IMPL_STYLE.get(impl, "-"),
            color=COLORS.get(mode),
            label=f"{impl} {mode}",
        )
    bare = [r for r in dp if r["impl"] == "none"]
    if bare:
        ax.axhline(bare[-1]["direct"]["connect_p50_us"], color="grey", linestyle=":",
                   label="no rules, direct")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("services")
    ax.set_ylabel("µs")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)


def plot(records: Sequence[Record], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    _plan_render(axes[0][0], records)
    _full_sync(axes[0][1], records)
    _latency(axes[0][2], records)
    _rss(axes[1][0], records)
    _churn(axes[1][1], records)
    _datapath(axes[1][2], records)
    fig.suptitle("kube-proxy-py benchmarks (docs/benchmarks.md has every figure's command)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
