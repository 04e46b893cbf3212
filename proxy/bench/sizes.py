"""Issue 6's benchmark sizes: what ``bench all`` runs and what the report expects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SYNC_SIZES = (1000, 5000, 10000, 30000)
ENDPOINTS = 10
LATENCY_SIZES = (1000, 10000)
CHURN_SIZE = 10000
CHURN_MINUTES = 10
DATAPATH_SIZES = (10, 1000, 10000)
MODES = ("iptables", "nftables")
IMPLS = ("ours", "upstream")


def missing(records: Sequence[dict[str, Any]]) -> list[str]:
    """The figures of issue 6's plan that no record holds, e.g. ``sync 30000 iptables``."""
    have: set[tuple[Any, ...]] = set()
    for r in records:
        kind = r.get("bench")
        if kind == "sync" and r.get("endpoints_per_service") == ENDPOINTS:
            have.add(("sync", r["services"], r["mode"]))
        elif kind == "latency" and r.get("endpoints_per_service") == ENDPOINTS:
            have.add(("latency", r["services"], r["mode"], r["impl"]))
            if (r.get("churn") or {}).get("minutes", 0) >= CHURN_MINUTES:
                have.add(("churn", r["services"], r["mode"], r["impl"]))
        elif kind == "datapath":
            have.add(("datapath", r["services"], r["mode"], r["impl"]))
    wanted: list[tuple[Any, ...]] = [("sync", n, m) for n in SYNC_SIZES for m in MODES]
    for kind, sizes in (("latency", LATENCY_SIZES), ("churn", (CHURN_SIZE,)),
                        ("datapath", DATAPATH_SIZES)):  # fmt: skip
        wanted += [(kind, n, m, i) for n in sizes for m in MODES for i in IMPLS]
    return [" ".join(map(str, w)) for w in wanted if w not in have]
