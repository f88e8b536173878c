"""Quantiles from a Prometheus histogram's cumulative buckets, as ``histogram_quantile``
computes them (linear within a bucket).

>>> round(histogram_quantile(0.5, [(0.1, 0.0), (0.2, 10.0), (float("inf"), 10.0)]), 6)
0.15
"""

from __future__ import annotations


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """``buckets``: (upper bound, cumulative count), sorted, ending with +Inf."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width
                                                           if width else 0.0)
        lower_bound, lower_count = bound, count
    return lower_bound
