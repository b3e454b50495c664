"""Simulated force + OCT sensor: UDP datagrams of ``records_per_datagram`` records
(default 10, as the real sensor sends) at ``rate_hz`` records/s, with an optional
sender clock offset (for the ingest's offset estimator) and any rate (to flood)."""
from __future__ import annotations

import socket
import time

import numpy as np

from ..protocol.sensor import COUNT_BYTES, max_records, record_dtype, write_count
from .base import NS_PER_S, ScheduledSender
from .content import fill_sensor


def parse_host_port(address: str) -> tuple[str, int]:
    """'127.0.0.1:9999' -> ('127.0.0.1', 9999)."""
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


class SensorSim(ScheduledSender):
    """Datagram k holds records k*n .. k*n+n-1; record i's content encodes counter i and
    its timestamp is the sender's nominal sample time (start + i / rate + offset)."""

    name = "sensor"

    def __init__(self, address: tuple[str, int], rate_hz: float = 650.0, records_per_datagram: int = 10,
                 ascan_len: int = 1025, clock_offset_s: float = 0.0, duration_s: float | None = None,
                 start_ns: int | None = None) -> None:
        super().__init__(duration_s, start_ns)
        self.dtype = record_dtype(ascan_len)
        if not 1 <= records_per_datagram <= max_records(self.dtype):
            raise ValueError(f"records per datagram must be in 1..{max_records(self.dtype)}")
        self.address, self.rate_hz = address, rate_hz
        self.records_per_datagram = records_per_datagram
        self.clock_offset_s = clock_offset_s
        self.records_sent = 0
        self._buf = bytearray(COUNT_BYTES + records_per_datagram * self.dtype.itemsize)
        self._records = np.frombuffer(self._buf, self.dtype, records_per_datagram, COUNT_BYTES)
        write_count(self._buf, records_per_datagram)
        self._socket: socket.socket | None = None
        self._start_wall_s = 0.0

    def _open(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()

    def _due_ns(self, k: int) -> int:
        # the datagram leaves once its last record has been sampled
        return int((k + 1) * self.records_per_datagram * NS_PER_S / self.rate_hz)

    def _emit(self, k: int) -> None:
        if not self._start_wall_s:
            self._start_wall_s = self.schedule_start_wall_s()
        first = k * self.records_per_datagram
        fill_sensor(self._records, first)
        counters = np.arange(first, first + self.records_per_datagram, dtype=np.float64)
        self._records["timestamp"] = self._start_wall_s + counters / self.rate_hz + self.clock_offset_s
        self._records["send_timestamp"] = time.time() + self.clock_offset_s
        self.send_datagram(self._buf, self.records_per_datagram)

    def send_datagram(self, datagram, record_count: int) -> None:
        try:
            self._socket.sendto(datagram, self.address)
            self.sent += 1
            self.records_sent += record_count
        except OSError:  # ENOBUFS under a flood: the datagram is lost, as on a real network
            self.dropped += 1

    def counters(self) -> dict:
        return {**super().counters(), "records_sent": self.records_sent}
