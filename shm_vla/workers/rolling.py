"""A fixed-size window of recent values for p50/p99 gauges (no growth, no per-add allocation)."""
from __future__ import annotations

import numpy as np


class Rolling:
    def __init__(self, size: int = 200):
        self._values = np.zeros(size)
        self._n = 0

    def add(self, value: float) -> None:
        self._values[self._n % len(self._values)] = value
        self._n += 1

    def percentiles(self, qs=(50, 99)) -> tuple:
        """Percentiles over the window (allocates; call it at a low rate, e.g. once a second)."""
        n = min(self._n, len(self._values))
        if n == 0:
            return tuple(float("nan") for _ in qs)
        return tuple(float(v) for v in np.percentile(self._values[:n], qs))


class RollingGauges:
    """Publishes p50/p99 of a Rolling into two stats gauges every `every` additions."""

    def __init__(self, stats, name: str, size: int = 200, every: int = 10):
        self.rolling = Rolling(size)
        self.p50 = stats.gauge(f"{name}_p50")
        self.p99 = stats.gauge(f"{name}_p99")
        self.every = every
        self._count = 0

    def add(self, value: float) -> None:
        self.rolling.add(value)
        self._count += 1
        if self._count % self.every == 0:
            p50, p99 = self.rolling.percentiles()
            self.p50.set(p50)
            self.p99.set(p99)
