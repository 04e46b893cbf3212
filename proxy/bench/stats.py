"""Small, pure statistics shared by the benchmarks and the report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(data: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between the two closest
    ranks (numpy's default); NaN for no data."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    if not data:
        return math.nan
    ordered = sorted(data)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(data: Sequence[float]) -> float:
    """The median, NaN for no data."""
    return statistics.median(data) if data else math.nan


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is zero or missing."""
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator
