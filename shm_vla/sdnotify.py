"""The systemd notify protocol (sd_notify), without libsystemd.

systemd passes a datagram socket in NOTIFY_SOCKET (a filesystem path, or '@name' for the
abstract namespace) and, when the unit has WatchdogSec=, the interval in WATCHDOG_USEC
(and the pid it is meant for in WATCHDOG_PID). A process reports state by sending
newline-separated KEY=VALUE lines:

    READY=1          start-up finished (Type=notify units stay "activating" until then)
    STATUS=text      one line shown by `systemctl status`
    STOPPING=1       shutdown has begun
    WATCHDOG=1       keep-alive; missing it for WatchdogSec gets the process killed

Outside systemd (NOTIFY_SOCKET unset) every method is a no-op, so workers call these
unconditionally. Sending never blocks and never raises: a failed send is counted in
``failures`` (systemd being gone must not take the real-time loop down with it).

Usage in a worker::

    notifier = Notifier()
    ...attach segments, load model, warm up...
    notifier.ready(status="ticking at 10 Hz")
    while running:
        tick()
        notifier.watchdog()          # cheap: sends at most every interval/2
    notifier.stopping()
"""
from __future__ import annotations

import os
import socket
import time
from typing import Callable, Mapping


class Notifier:
    """Sends sd_notify messages to the socket named by NOTIFY_SOCKET, if any."""

    def __init__(self, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        env = os.environ if env is None else env
        self._clock = clock
        self._sock: socket.socket | None = None
        self._address: bytes | None = None
        self._watchdog_s: float | None = None
        self._last_ping = float("-inf")
        self.sent = 0
        self.failures = 0
        self.last_error: str | None = None
        self.disabled_reason: str | None = None  # why there is no socket, for logs

        raw = env.get("NOTIFY_SOCKET", "")
        if not raw:
            self.disabled_reason = "NOTIFY_SOCKET is not set (not started by systemd Type=notify)"
        elif raw.startswith("@"):
            self._address = b"\0" + os.fsencode(raw[1:])  # abstract namespace: leading NUL
        elif raw.startswith("/"):
            self._address = os.fsencode(raw)
        else:  # e.g. "vsock:..." (VMs): not needed for services on this host
            self.disabled_reason = f"unsupported NOTIFY_SOCKET address {raw!r}"
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)  # a full socket queue must never stall a tick
            self._watchdog_s = _watchdog_interval(env)

    # ------------------------------------------------------------------ state
    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """WatchdogSec of the unit in seconds, or None when no watchdog applies to us."""
        return self._watchdog_s

    # ------------------------------------------------------------------ messages
    def notify(self, *fields: str) -> bool:
        """Send KEY=VALUE fields in one datagram; True when it was handed to the kernel."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:  # EAGAIN (queue full), ECONNREFUSED/ENOENT (systemd gone)
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"] + ([f"STATUS={_one_line(status)}"] if status is not None else [])
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start-up (or stop) time, e.g. while a large backbone loads."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog(self) -> bool:
        """Keep-alive, rate-limited to one datagram per half watchdog interval.

        Call it every loop iteration: between sends it costs one clock read. A loop that
        hangs stops calling it and systemd restarts the process after WatchdogSec.
        """
        if self._watchdog_s is None:
            return False
        now = self._clock()
        if now - self._last_ping < self._watchdog_s / 2:
            return False
        self._last_ping = now  # also on failure: retrying every iteration would not help
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """As sd_watchdog_enabled(): WATCHDOG_USEC > 0, and WATCHDOG_PID (if set) is us."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None  # a watchdog meant for another process (e.g. our parent)
    return usec / 1e6


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE field.
    return " ".join(str(text).splitlines())
