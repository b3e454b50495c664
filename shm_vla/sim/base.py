"""What every simulated peer shares: a thread with start()/stop(), and the absolute
schedule senders run on (due times from a fixed start, so jitter never accumulates)."""
from __future__ import annotations

import logging
import threading
import time

import zmq

log = logging.getLogger("shm_vla.sim")

NS_PER_S = 1_000_000_000
# A sender more than this far behind its schedule (a stalled machine) skips ahead
# instead of bursting the backlog; skipped sends are counted.
MAX_LAG_NS = NS_PER_S
# Closing a sender socket still delivers what it queued (the last frames of a bounded run
# or a replay) for up to this long; 0 would silently drop them.
CLOSE_LINGER_MS = 500


def zmq_context() -> zmq.Context:
    return zmq.Context.instance()


def loopback(address: str) -> str:
    """The connect address of a bind address: 0.0.0.0 / * become 127.0.0.1."""
    for wildcard in ("0.0.0.0", "*"):
        address = address.replace(f"//{wildcard}:", "//127.0.0.1:")
        if address.startswith(f"{wildcard}:"):
            address = "127.0.0.1:" + address[len(wildcard) + 1:]
    return address


class Runner:
    """A background thread with start()/stop(), usable as a context manager."""

    name = "sim"

    def __init__(self) -> None:
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> "Runner":
        self._open()
        self._thread = threading.Thread(target=self._guarded, name=f"sim-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop_event.set()
        self.join(timeout_s)

    def join(self, timeout_s: float | None = None) -> bool:
        """True once the thread has finished."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "Runner":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _guarded(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a sim bug must show, not hang the test waiting on it
            self.error = exc
            log.exception("sim %s failed", self.name)
        finally:
            self._close()

    # subclasses
    def _open(self) -> None:
        """Create sockets (in the caller's thread, so bind errors raise from start())."""

    def _close(self) -> None:
        """Close sockets (in the sim thread)."""

    def _run(self) -> None:
        raise NotImplementedError


class ScheduledSender(Runner):
    """Calls ``_emit(k)`` at ``start + _due_ns(k)`` for k = 0, 1, ... until stopped,
    ``duration_s`` has passed, or ``_due_ns`` returns None (the end of a replay)."""

    def __init__(self, duration_s: float | None = None, start_ns: int | None = None) -> None:
        super().__init__()
        self.duration_s = duration_s
        self.start_ns = start_ns          # share one start between senders to align them
        self.sent = 0                     # messages handed to the socket
        self.dropped = 0                  # messages the socket refused (full queue)
        self.skipped = 0                  # sends skipped after a stall
        self.run_start_ns = 0             # CLOCK_MONOTONIC of the schedule's start (set by _run)

    def schedule_start_wall_s(self) -> float:
        """The schedule's start on the wall clock (for nominal sample times: a late first
        send must not shift them later than the sends that carry them)."""
        return time.time() - (time.monotonic_ns() - self.run_start_ns) / NS_PER_S

    def _run(self) -> None:
        start_ns = self.start_ns if self.start_ns is not None else time.monotonic_ns()
        self.run_start_ns = start_ns
        end_ns = None if self.duration_s is None else start_ns + int(self.duration_s * NS_PER_S)
        k = 0
        while not self._stop_event.is_set():
            offset_ns = self._due_ns(k)
            if offset_ns is None:
                return
            due_ns = start_ns + offset_ns
            if end_ns is not None and due_ns >= end_ns:
                return
            now_ns = time.monotonic_ns()
            if due_ns > now_ns:
                if self._stop_event.wait((due_ns - now_ns) / NS_PER_S):
                    return
            elif now_ns - due_ns > MAX_LAG_NS:
                k = self._skip_to(k, now_ns - start_ns)
                continue
            self._emit(k)
            k += 1

    def _skip_to(self, k: int, elapsed_ns: int) -> int:
        """First k due at or after ``elapsed_ns`` (linear: only after a stall)."""
        first = k
        while (offset_ns := self._due_ns(k)) is not None and offset_ns < elapsed_ns:
            k += 1
        self.skipped += k - first
        log.warning("sim %s: %d sends skipped after a stall", self.name, k - first)
        return k

    def _due_ns(self, k: int) -> int | None:
        raise NotImplementedError

    def _emit(self, k: int) -> None:
        raise NotImplementedError

    def counters(self) -> dict:
        return {"sent": self.sent, "dropped": self.dropped, "skipped": self.skipped}
