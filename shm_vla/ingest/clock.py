"""Estimate a sender's clock offset from its send timestamps.

offset = our wall clock - sender's clock. Every message gives an upper bound,
receive time - send time = offset + transport delay, and delays are never negative, so
the minimum over recent messages is the estimate: a network stall or a queue burst only
makes samples larger, so it can never move the estimate (it is robust by construction).
The minimum runs over a sliding window so that a slow drift of the sender's clock is
followed. The first estimate is published after `warmup` messages.

A sender restart (its timestamps jump backwards) resets the estimate.
"""
from __future__ import annotations

import numpy as np


class ClockOffset:
    def __init__(self, warmup: int = 50, window: int = 500):
        self.warmup = warmup
        self._samples = np.full(window, np.inf)
        self._n = 0
        self._last_send = -np.inf
        self.offset_s = 0.0
        self.resets = 0

    @property
    def ready(self) -> bool:
        return self._n >= self.warmup

    def update(self, recv_wall_s: float, send_s: float) -> bool:
        """Add one message; returns False if the sender's clock went backwards (reset)."""
        went_back = send_s < self._last_send
        if went_back:
            self.reset()
            self.resets += 1
        self._last_send = send_s
        self._samples[self._n % len(self._samples)] = recv_wall_s - send_s
        self._n += 1
        if self._n < self.warmup:
            return not went_back
        if self._n == self.warmup or self._n % 16 == 0:
            # a full min every 16 messages is plenty and keeps the per-message cost tiny
            self.offset_s = float(self._samples.min())
        else:
            self.offset_s = min(self.offset_s, recv_wall_s - send_s)
        return not went_back

    def reset(self) -> None:
        self._samples[:] = np.inf
        self._n = 0
        self._last_send = -np.inf

    def to_local(self, sender_s: float) -> float:
        """A sender timestamp on our wall clock."""
        return sender_s + self.offset_s

    def latency_s(self, recv_wall_s: float, send_s: float) -> float:
        """Transport delay above the best seen (the absolute delay is not observable)."""
        return recv_wall_s - send_s - self.offset_s
