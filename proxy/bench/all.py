"""``kube-proxy-py bench all``: every benchmark of issue 6 at its sizes, then the report.

Each step runs as its own ``python -m proxy bench …`` process (so no figure carries
memory or state from an earlier one), one at a time, writing ``<out>/<step>.json`` and
``<out>/<step>.log``. A step whose JSON already exists is skipped, so a run that was
interrupted resumes where it stopped (``--force`` reruns everything). A failed step is
reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.bench import iptvariant
from proxy.bench.latency import DEFAULT_MIN_SYNC_PERIODS
from proxy.bench.sizes import (
    CHURN_MINUTES,
    CHURN_SIZE,
    DATAPATH_SIZES,
    ENDPOINTS,
    LATENCY_SIZES,
    SYNC_SIZES,
)

GROUPS = ("sync", "latency", "datapath")
IPTABLES = ("--iptables", iptvariant.DEFAULT)
"""Spelled out, so every printed command names the backend."""


@dataclass(frozen=True)
class Step:
    name: str
    group: str
    args: tuple[str, ...]
    """after ``kube-proxy-py bench``"""
    minutes: float
    """rough wall time on a 2-core machine"""

    @property
    def command(self) -> str:
        return "kube-proxy-py bench " + shlex.join(self.args)


def _sync_repeat(services: int) -> int:
    # iptables-restore of 30k services takes minutes: one run there, three below.
    return 1 if services >= 30000 else 3


def steps() -> list[Step]:
    out: list[Step] = []
    for n in SYNC_SIZES:
        r = _sync_repeat(n)
        args: tuple[str, ...] = ("sync", "--services", str(n), "--endpoints", str(ENDPOINTS),
                                 "--mode", "both", "--repeat", str(r), *IPTABLES)  # fmt: skip
        # ~5 kernel stages × repeat; iptables-legacy-restore ≈ 0.07 s per 100 Services,
        # nft ≈ 0.03 s, plus computing, memory and the CLI run ≈ 0.1 s
        out.append(Step(f"sync-{n}", "sync", args, 1 + 5 * r * n * 0.2 / 100 / 60))
    periods = ["default"]
    if len(set(DEFAULT_MIN_SYNC_PERIODS.values())) > 1:  # then also compare equal settings
        periods.append(DEFAULT_MIN_SYNC_PERIODS["upstream"])
    for n in LATENCY_SIZES:
        for period in periods:
            churn = CHURN_MINUTES if n == CHURN_SIZE and period == "default" else 0
            args = ("latency", "--services", str(n), "--endpoints", str(ENDPOINTS),
                    "--changes", "100",
                    "--mode", "both", "--impl", "both", "--min-sync-period", period,
                    *IPTABLES)  # fmt: skip
            if churn:
                args += ("--churn-minutes", str(churn), "--churn-rate", "2")
            name = f"latency-{n}" + (f"-{period}" if period != "default" else "")
            # per mode and agent: cluster + objects (≈ 1 min per 5k Services), the first
            # sync, 100 changes ≈ 2.5 min, the churn
            out.append(Step(name, "latency", args, 4 * (1 + n / 5000 + 2.5 + churn)))
    sizes = ",".join(map(str, DATAPATH_SIZES))
    args = ("datapath", "--services", sizes, "--mode", "both", "--impl", "both",
            "--connections", "3000", "--rounds", "5", *IPTABLES)  # fmt: skip
    out.append(Step("datapath", "datapath", args, 3 + max(DATAPATH_SIZES) / 5000 + 12 * 1.5))
    return out


def estimate_minutes(selected: Sequence[Step]) -> float:
    return sum(s.minutes for s in selected)


def run_step(step: Step, out: Path) -> bool:
    """Run one step, its output to the terminal and ``<step>.log``; True on success."""
    json_path = out / f"{step.name}.json"
    argv = [sys.executable, "-m", "proxy", "bench", *step.args, "--json", str(json_path)]
    print(f"\n=== {step.name} (about {step.minutes:.0f} min): {step.command}", flush=True)
    start = time.monotonic()
    with (out / f"{step.name}.log").open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    took = (time.monotonic() - start) / 60
    if code != 0:
        json_path.unlink(missing_ok=True)
        print(f"=== {step.name} FAILED (exit {code}) after {took:.1f} min", flush=True)
        return False
    print(f"=== {step.name} done in {took:.1f} min", flush=True)
    return True


def main_all(args: Any) -> int:
    only = set(args.only.split(",")) if args.only else set(GROUPS)
    unknown = only - set(GROUPS)
    if unknown:
        print(f"bench all: --only: unknown {sorted(unknown)}; use {','.join(GROUPS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out)
    selected = [s for s in steps() if s.group in only]
    todo = [s for s in selected if args.force or not (out / f"{s.name}.json").exists()]
    print(f"bench all: {len(todo)} of {len(selected)} steps to run, about "
          f"{estimate_minutes(todo) / 60:.1f} h; results in {out}/")  # fmt: skip
    for s in selected:
        mark = "run " if s in todo else "skip"
        print(f"  {mark} {s.name:<16} ~{s.minutes:4.0f} min  {s.command}")
    if args.dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    failed = [s.name for s in todo if not run_step(s, out)]
    records = []
    if args.docs:
        from proxy.bench.report import load, write

        records = load(out)
    if records:
        for path in write(records, Path(args.docs)):
            print(f"wrote {path}")
    if failed:
        print(f"bench all: failed steps: {', '.join(failed)} (rerun to retry only them)")
        return 1
    return 0
