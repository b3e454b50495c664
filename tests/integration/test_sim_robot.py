"""Robot simulator against a plain SUB: topic, 68-byte payloads, counters, rate."""
import time

import numpy as np
import pytest
import zmq

from shm_vla.protocol.robot import ROBOT_STATE_DTYPE, ROBOT_TOPIC, model_values, parse_robot
from shm_vla.sim.content import robot_counters
from shm_vla.sim.robot import RobotSim

pytestmark = pytest.mark.slow


@pytest.mark.timeout(20)
def test_robot_publishes_contiguous_states_at_100_hz():
    sim = RobotSim("tcp://127.0.0.1:*", rate_hz=100.0, clock_offset_s=1.5, duration_s=1.6)
    received = _receive(sim, 2.0)
    assert sim.error is None
    for recv_wall_s, _, send_s, _ in received:
        assert abs(send_s - 1.5 - recv_wall_s) < 0.5
    counters = robot_counters(np.array([values for *_, values in received]))
    assert np.all(np.diff(counters) == 1)                   # the slow joiner may miss the first few only
    assert counters[0] < 30 and counters[-1] >= 140
    recv = [recv_wall_s for recv_wall_s, *_ in received]
    rate_hz = (len(counters) - 1) / (recv[-1] - recv[0])
    assert 70 < rate_hz < 130                                # roughly 100 Hz (noisy machine)


def _receive(sim, seconds):
    """(receive wall time, timestamp, send timestamp, model values) of every state received."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, ROBOT_TOPIC)
    record, received = np.zeros((), ROBOT_STATE_DTYPE), []
    try:
        with sim:
            sub.connect(sim.endpoint)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if sub.poll(50):
                    parse_robot(sub.recv_multipart(), record)
                    received.append((time.time(), float(record["timestamp"]), float(record["send_timestamp"]),
                                     model_values(record, np.zeros(12, np.float32))))
    finally:
        sub.close(linger=0)
    return received


@pytest.mark.timeout(20)
def test_robot_stalls_then_resumes_with_fresh_timestamps():
    sim = RobotSim("tcp://127.0.0.1:*", rate_hz=100.0, duration_s=2.0, stall_every_s=0.5, stall_s=0.6)
    received = _receive(sim, 2.5)
    assert sim.error is None and sim.stalls >= 1
    recv = np.array([recv_wall_s for recv_wall_s, *_ in received])
    gaps = np.diff(recv)
    assert gaps.max() > 0.5                                       # the stall
    stall = int(np.argmax(gaps))
    assert abs(received[stall + 1][1] - recv[stall + 1]) < 0.1    # the state after it is fresh, not a backlog
    counters = robot_counters(np.array([values for *_, values in received]))
    assert np.all(np.diff(counters) == 1)                         # no burst of missed states: none were made
