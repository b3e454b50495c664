"""Counters and gauges every ingest process keeps (in its stats segment).

messages, bytes, records, drops, stale_backlog (records older than the action gate's
limit by capture time when we received them: a backlog after a stall): counters. rate_hz (records/s over the last second),
last_src_ts (sender clock, s), latency_ms (last transport delay above the floor, see
clock.py), latency_max_ms (worst in the last second), clock_offset_ms: gauges.
"""
from __future__ import annotations

import time

from ..shm.stats import Stats

RATE_PERIOD_NS = 1_000_000_000


class IngestMeter:
    def __init__(self, stats: Stats):
        self.messages = stats.counter("messages")
        self.bytes = stats.counter("bytes")
        self.records = stats.counter("records")
        self.drops = stats.counter("drops")
        self.stale_backlog = stats.counter("stale_backlog")
        self.rate_hz = stats.gauge("rate_hz", 0.0)
        self.last_src_ts = stats.gauge("last_src_ts")
        self.latency_ms = stats.gauge("latency_ms")
        self.latency_max_ms = stats.gauge("latency_max_ms")
        self.clock_offset_ms = stats.gauge("clock_offset_ms")
        self._period_start_ns = time.monotonic_ns()
        self._period_records = 0
        self._period_latency_max_ms = 0.0

    def message(self, nbytes: int) -> None:
        self.messages.inc()
        self.bytes.inc(nbytes)

    def stored(self, n: int, last_src_ts: float, latency_s: float) -> None:
        self.records.inc(n)
        self._period_records += n
        self.last_src_ts.set(last_src_ts)
        latency_ms = latency_s * 1e3
        self.latency_ms.set(latency_ms)
        if latency_ms > self._period_latency_max_ms:
            self._period_latency_max_ms = latency_ms

    def periodic(self, now_ns: int, clock_offset_s=None) -> None:
        """Call every loop iteration; publishes the rate once a second.

        clock_offset_s: a function returning the sender's wall-clock offset (s), or None
        while there is none; called only when publishing."""
        elapsed = now_ns - self._period_start_ns
        if elapsed < RATE_PERIOD_NS:
            return
        self.rate_hz.set(self._period_records * 1e9 / elapsed)
        self.latency_max_ms.set(self._period_latency_max_ms)
        clock_offset_s = clock_offset_s() if clock_offset_s is not None else None
        if clock_offset_s is not None:
            self.clock_offset_ms.set(clock_offset_s * 1e3)
        self._period_start_ns = now_ns
        self._period_records = 0
        self._period_latency_max_ms = 0.0
