"""Simulated robot PC: a PUB that binds (the ingest connects) and publishes
[b"robot_state", '<ddf12f' payload] at ``rate_hz`` with self-checking values.

Stalls (opt-in, ``stall_every_s``): the real publisher stops now and then for a few
seconds; here it stops for ``stall_s`` after every ``stall_every_s`` seconds of
publishing, then resumes at its rate with fresh timestamps (no burst of the missed
states: they were never produced). Off by default: a stall holds every command for its
duration (the gate's stale_robot), and the demo, the benchmarks and most tests measure
commanding."""
from __future__ import annotations

import time

import zmq

from ..protocol.robot import ROBOT_TOPIC, encode_robot
from .base import CLOSE_LINGER_MS, NS_PER_S, ScheduledSender, zmq_context
from .content import robot_values


class RobotSim(ScheduledSender):
    """Sample k carries counter k in its joints/pose. ``endpoint`` is the bound
    address (useful with a ``tcp://127.0.0.1:*`` wildcard port)."""

    name = "robot"

    def __init__(self, address: str, rate_hz: float = 100.0, clock_offset_s: float = 0.0,
                 topic: bytes = ROBOT_TOPIC, duration_s: float | None = None,
                 start_ns: int | None = None, stall_every_s: float = 0.0, stall_s: float = 3.0) -> None:
        if stall_every_s < 0 or stall_s < 0:
            raise ValueError("robot stall intervals must not be negative")
        super().__init__(duration_s, start_ns)
        self.address, self.topic = address, topic
        self.period_ns = int(NS_PER_S / rate_hz)
        # samples published between two stalls (0: never stall)
        self.stall_every = max(1, round(stall_every_s * rate_hz)) if stall_every_s > 0 else 0
        self.stall_ns = int(stall_s * NS_PER_S)
        self.stalls = 0
        self.clock_offset_s = clock_offset_s
        self.endpoint = ""
        self._socket: zmq.Socket | None = None

    def _open(self) -> None:
        self._socket = zmq_context().socket(zmq.PUB)
        self._socket.bind(self.address)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=CLOSE_LINGER_MS)

    def _due_ns(self, k: int) -> int:
        stalls_before = k // self.stall_every if self.stall_every else 0
        return k * self.period_ns + stalls_before * self.stall_ns

    def _emit(self, k: int) -> None:
        if self.stall_every and k and k % self.stall_every == 0:
            self.stalls += 1
        values = robot_values(k)
        now = time.time() + self.clock_offset_s
        self.send_state(now, now, 0.0, values[:6], values[6:])

    def send_state(self, timestamp: float, send_timestamp: float, force: float, joints, pose) -> None:
        payload = encode_robot(timestamp, send_timestamp, force, joints, pose)
        self._socket.send_multipart([self.topic, payload], copy=False)  # PUB never blocks
        self.sent += 1

    def counters(self) -> dict:
        return {**super().counters(), "stalls": self.stalls}
