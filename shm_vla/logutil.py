"""Logging set-up and a rate limiter so that bad input never becomes a log storm."""
from __future__ import annotations

import logging
import sys
import time


def setup(process: str, level: str = "INFO") -> logging.Logger:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format=f"%(asctime)s {process}[%(process)d] %(levelname)s %(message)s")
    return logging.getLogger(f"shm_vla.{process}")


class RateLimitedLog:
    """At most `burst` messages per `period_s` for each key; the rest are counted, then summarised."""

    def __init__(self, logger: logging.Logger, period_s: float = 5.0, burst: int = 3):
        self.logger = logger
        self.period_ns = int(period_s * 1e9)
        self.burst = burst
        self._windows: dict[str, list[int]] = {}   # key -> [window start ns, emitted, suppressed]

    def warning(self, key: str, msg: str, *args) -> None:
        self._log(logging.WARNING, key, msg, args)

    def error(self, key: str, msg: str, *args) -> None:
        self._log(logging.ERROR, key, msg, args)

    def _log(self, level: int, key: str, msg: str, args: tuple) -> None:
        now = time.monotonic_ns()
        w = self._windows.get(key)
        if w is None or now - w[0] >= self.period_ns:
            if w is not None and w[2]:
                self.logger.log(level, "%s: %d similar message(s) suppressed", key, w[2])
            w = self._windows[key] = [now, 0, 0]
        if w[1] < self.burst:
            w[1] += 1
            self.logger.log(level, msg, *args)
        else:
            w[2] += 1
