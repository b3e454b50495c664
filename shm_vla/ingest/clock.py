"""Estimate a sender's clock offset, to judge data by its capture time on our clock.

offset = our CLOCK_MONOTONIC - the sender's clock. Every message gives an upper bound,
receive time - sender time = offset + delay, and delays are never negative, so the
minimum over recent messages is the estimate. A sender's capture time on our clock is
then ``sender_ts + offset``: never earlier than the truth (it errs by the smallest delay
seen), so an age computed from it is a lower bound and a stale record is never taken
for a fresh one by more than that smallest delay.

Robustness, because the gate trusts this estimate:
  * Queued or delayed messages (a network stall, or our own process stopped while the
    kernel or ZeroMQ kept its backlog) only make samples larger. The minimum runs over a
    sliding window so that slow drift is followed, but the estimate may rise by at most
    ``max_drift`` (relative) of the elapsed time: a backlog longer than the window can
    never pull the offset up and make old records look fresh. It falls at once.
  * Our side uses CLOCK_MONOTONIC, so a step of our wall clock changes nothing.
  * Reordering (several encoder processes, per-camera capture loops) is a backward step
    of a sender timestamp of less than ``restart_jump_s``: it is just another sample.
    A larger backward jump is a sender restart (or a stepped sender clock): the estimate
    is reset and the sender counts as unsynchronised until ``warmup`` new samples.

Until ``ready`` no capture time is given (the gate holds such data: unsynced).
"""
from __future__ import annotations

import math
import time

import numpy as np

NS = 1_000_000_000
UNKNOWN_NS = -1          # capture time on our clock not known (no offset established yet)
_NS_LIMIT = 9.2e18       # int64 range


class ClockOffset:
    def __init__(self, warmup: int = 50, window: int = 500, max_drift: float = 1e-4,
                 restart_jump_s: float = 1.0):
        self.warmup = warmup
        self.max_drift = max_drift
        self.restart_jump_s = restart_jump_s
        self._samples = np.full(window, np.inf)
        self._n = 0
        self._newest_send = -np.inf
        self._estimated_at = 0.0       # our time (s) of the last full-window estimate
        self.offset_s = 0.0
        self.resets = 0

    @property
    def ready(self) -> bool:
        return self._n >= self.warmup

    def update(self, recv_mono_s: float, send_s: float) -> bool:
        """Add one message; returns False if the sender's clock jumped back (restart)."""
        if not math.isfinite(send_s):
            return True                  # no information (the ingest counts the bad record)
        restarted = send_s < self._newest_send - self.restart_jump_s
        if restarted:
            self.reset()
            self.resets += 1
        self._newest_send = max(self._newest_send, send_s)
        sample = recv_mono_s - send_s
        self._samples[self._n % len(self._samples)] = sample
        self._n += 1
        if self._n < self.warmup:
            return not restarted
        if self._n == self.warmup:
            self.offset_s = float(self._samples.min())
            self._estimated_at = recv_mono_s
        elif self._n % 16 == 0:
            # a full minimum every 16 messages is plenty and keeps the per-message cost tiny;
            # it may only rise as fast as clocks drift (see the module docstring)
            ceiling = self.offset_s + self.max_drift * max(0.0, recv_mono_s - self._estimated_at)
            self.offset_s = min(float(self._samples.min()), ceiling)
            self._estimated_at = recv_mono_s
        else:
            self.offset_s = min(self.offset_s, sample)
        return not restarted

    def reset(self) -> None:
        self._samples[:] = np.inf
        self._n = 0
        self._newest_send = -np.inf

    def capture_mono_ns(self, sender_s: float) -> int:
        """A sender timestamp on our CLOCK_MONOTONIC (ns), or UNKNOWN_NS before the warm-up."""
        if self._n < self.warmup:
            return UNKNOWN_NS
        ns = (sender_s + self.offset_s) * NS
        # an absurd sender timestamp (not finite, or beyond int64 ns) has no capture time
        return int(ns) if -_NS_LIMIT < ns < _NS_LIMIT else UNKNOWN_NS

    def wall_offset_s(self) -> float:
        """The offset against our wall clock (our wall - sender), for people and files."""
        return self.offset_s + (time.time_ns() - time.monotonic_ns()) / NS

    def published_offset_s(self) -> float | None:
        """wall_offset_s() once ready, else None (for the stats gauge)."""
        return self.wall_offset_s() if self.ready else None

    def to_wall(self, sender_s: float) -> float:
        """A sender timestamp on our wall clock (for files; ages use capture_mono_ns)."""
        return sender_s + self.wall_offset_s()

    def latency_s(self, recv_mono_s: float, send_s: float) -> float:
        """Transport delay above the best seen (the absolute delay is not observable)."""
        return recv_mono_s - send_s - self.offset_s
