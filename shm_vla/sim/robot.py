"""Simulated robot PC: a PUB that binds (the ingest connects) and publishes
[b"robot_state", '<ddf12f' payload] at ``rate_hz`` with self-checking values."""
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
                 start_ns: int | None = None) -> None:
        super().__init__(duration_s, start_ns)
        self.address, self.topic = address, topic
        self.period_ns = int(NS_PER_S / rate_hz)
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
        return k * self.period_ns

    def _emit(self, k: int) -> None:
        values = robot_values(k)
        now = time.time() + self.clock_offset_s
        self.send_state(now, now, 0.0, values[:6], values[6:])

    def send_state(self, timestamp: float, send_timestamp: float, force: float, joints, pose) -> None:
        payload = encode_robot(timestamp, send_timestamp, force, joints, pose)
        self._socket.send_multipart([self.topic, payload], copy=False)  # PUB never blocks
        self.sent += 1
