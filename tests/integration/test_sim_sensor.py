"""Sensor simulator against a plain UDP socket: datagram format, counters, offset, flood."""
import socket
import time

import numpy as np
import pytest

from shm_vla.protocol.sensor import DATAGRAM_MAX_BYTES, SENSOR_RECORD_DTYPE, finite_mask, parse_datagram
from shm_vla.sim.content import sensor_counters
from shm_vla.sim.sensor import SensorSim

pytestmark = pytest.mark.slow


def _run(rate_hz, per_datagram, duration_s, offset_s=0.0):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.05)
    buf = bytearray(DATAGRAM_MAX_BYTES)
    sim = SensorSim(rx.getsockname(), rate_hz, per_datagram, clock_offset_s=offset_s, duration_s=duration_s)
    counters, offsets, sizes = [], [], []
    try:
        with sim:
            end = time.monotonic() + duration_s + 0.5
            while time.monotonic() < end:
                try:
                    nbytes = rx.recv_into(buf)
                except socket.timeout:
                    continue
                records = parse_datagram(buf, nbytes, SENSOR_RECORD_DTYPE)
                offsets.append(records["send_timestamp"][-1] - time.time())
                assert finite_mask(records).all()
                assert np.all(records["timestamp"] <= records["send_timestamp"] + 1e-3)
                counters.append(sensor_counters(records))
                sizes.append(len(records))
    finally:
        rx.close()
    assert sim.error is None
    return sim, np.concatenate(counters), np.array(offsets), sizes


@pytest.mark.timeout(20)
def test_nominal_rate_contiguous_with_injected_offset():
    sim, counters, offsets, sizes = _run(650.0, 5, 1.2, offset_s=2.5)
    assert set(sizes) == {5}
    assert counters.tolist() == list(range(len(counters)))           # no gaps, no duplicates, ordered
    assert counters.tolist() == list(range(sim.records_sent))        # nothing lost on loopback
    assert 0.8 * 780 <= sim.records_sent <= 780                      # 650 records/s for 1.2 s
    assert abs(np.median(offsets) - 2.5) < 0.05


@pytest.mark.timeout(20)
def test_flood_rate_and_datagram_size_options():
    sim, counters, _, sizes = _run(6500.0, 13, 0.6)
    assert set(sizes) == {13}
    assert np.all(np.diff(counters) > 0)                             # ordered, no duplicates
    assert sim.records_sent >= 0.5 * 6500 * 0.6
