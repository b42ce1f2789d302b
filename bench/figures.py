"""What every benchmark reports: percentiles of measured durations, and the wall time of loads
sent from several threads at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank value at `fraction` (0.5 for p50, 0.99 for p99) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def seconds_for(workers: Iterable[Callable[[], object]]) -> float:
    """Runs each worker on a thread of its own, all at once; the wall time until the last
    one ends."""
    threads = [threading.Thread(target=worker) for worker in workers]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started
