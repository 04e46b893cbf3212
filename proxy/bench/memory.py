"""Memory of plan + render (+ the full-sync text), measured in a fresh interpreter.

    python -m proxy.bench.memory --services N --endpoints M --mode nftables

prints one JSON object. Run in its own process so that nothing measured before (parse,
earlier modes, the kernel stages of ``bench sync``) pollutes the figures:

1. the synthetic cluster is generated and parsed (the agent's informer state), then
   garbage-collected and the C heap trimmed (``malloc_trim``), so that memory freed by
   parse is not silently reused by plan + render without showing in RSS;
2. **RSS**: the kernel's peak-RSS mark (VmHWM) is reset through /proc/self/clear_refs,
   plan + render + text run, and ``rss_peak_growth_mib`` = VmHWM − VmRSS before;
   ``rss_retained_mib`` = VmRSS after − before (plan, ruleset and text still referenced);
3. the results are dropped, then the same again under **tracemalloc**:
   ``traced_peak_mib`` is the peak of Python allocations above what was allocated before
   (independent of the allocator's free lists), ``traced_retained_mib`` what stays
   allocated. tracemalloc slows the code, so no time is measured in this pass.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.bench import synthetic
from proxy.bench.procstats import parse_status_kib
from proxy.config import ProxyMode

MIB = 1024 * 1024


def _status(key: str) -> float:
    return parse_status_kib(Path("/proc/self/status").read_text(), key) / 1024


def _trim() -> None:
    """Collect garbage and hand free heap memory back to the kernel (glibc only), so
    that RSS growth is not hidden by memory an earlier stage freed."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(services: int, endpoints: int, mode: ProxyMode) -> dict[str, Any]:
    state = synthetic.parse(synthetic.objects(services, endpoints))
    _trim()
    out: dict[str, Any] = {"rss_after_parse_mib": _status("VmRSS")}

    before = _status("VmRSS")
    out["rss_peak_reset"] = _reset_peak_rss()
    rendered = synthetic.plan_and_render(state, mode)
    out["rss_peak_growth_mib"] = _status("VmHWM") - before
    out["rss_retained_mib"] = _status("VmRSS") - before
    out["text_mib"] = len(rendered.text) / MIB
    del rendered
    _trim()

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    rendered = synthetic.plan_and_render(state, mode)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["traced_peak_mib"] = (peak - base) / MIB
    out["traced_retained_mib"] = (current - base) / MIB
    del rendered
    return out


def measure_in_subprocess(services: int, endpoints: int, mode: ProxyMode) -> dict[str, Any]:
    """:func:`measure` in a fresh ``python -m proxy.bench.memory``."""
    argv = [
        sys.executable, "-m", "proxy.bench.memory", "--services", str(services),
        "--endpoints", str(endpoints), "--mode", mode.value,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.bench.memory", description=__doc__)
    parser.add_argument("--services", type=int, required=True)
    parser.add_argument("--endpoints", type=int, required=True)
    parser.add_argument("--mode", required=True, choices=[m.value for m in ProxyMode])
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.services, args.endpoints, ProxyMode(args.mode))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
