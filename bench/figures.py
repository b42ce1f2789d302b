"""What every benchmark reports: percentiles of measured durations."""

from __future__ import annotations


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank value at `fraction` (0.5 for p50, 0.99 for p99) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]
