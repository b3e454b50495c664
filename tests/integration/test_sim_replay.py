"""--replay: a recorded session directory is sent again with its relative timing."""
import socket
import time

import numpy as np
import pytest
import zmq

from shm_vla.protocol.camera import parse_camera
from shm_vla.protocol.robot import parse_robot
from shm_vla.protocol.sensor import DATAGRAM_MAX_BYTES, parse_datagram, record_dtype
from shm_vla.sim.content import fill_sensor, frame_jpeg, robot_values
from shm_vla.sim.replay import ReplayError, build_replay, datagram_starts

pytestmark = pytest.mark.slow
T0 = 1_700_000_000.0
HEADER = ("recv_timestamp,origin_timestamp,send_timestamp,force_placeholder,"
          + ",".join(f"joint_{i}" for i in range(1, 7)) + ",pose_x,pose_y,pose_z,pose_a,pose_b,pose_r")


def _write_session(root):
    for i in range(3):
        (root / "View1").mkdir(exist_ok=True)
        (root / "View1" / f"zed_41182735_left_{T0 + 0.1 * i:.3f}.jpg").write_bytes(frame_jpeg(0, i))
    (root / "View5").mkdir()
    (root / "View5" / f"oak_d_{T0 + 0.05:.3f}.jpg").write_bytes(frame_jpeg(4, 0))
    rows = [HEADER]
    for k in range(20):
        stamp = T0 + 0.01 * k
        rows.append(",".join(str(v) for v in [stamp + 0.001, stamp, stamp + 0.0005, 0.0, *robot_values(k)]))
    (root / "robot_state_20240101_000000.csv").write_text("\n".join(rows) + "\n")
    records = np.zeros(30, dtype=record_dtype(1025))
    fill_sensor(records, 0)
    records["timestamp"] = T0 + np.arange(30) / 650
    records["send_timestamp"] = records["timestamp"][4::5].repeat(5)   # 5 records per datagram
    np.savez(root / "sensor_data_20240101_000000.npz", timestamps=records["timestamp"],
             send_timestamps=records["send_timestamp"], forces=records["force"], alines=records["ascan"])
    return records


def test_datagram_starts_groups_by_send_time_and_limit():
    stamps = np.array([1, 1, 1, 2, 3, 3, 3, 3, 3], dtype=float)
    assert datagram_starts(stamps, 2).tolist() == [0, 2, 3, 4, 6, 8]


def test_empty_or_missing_directory(tmp_path):
    with pytest.raises(ReplayError):
        build_replay(tmp_path / "nope", "tcp://127.0.0.1:1", "tcp://127.0.0.1:*", ("127.0.0.1", 1))
    with pytest.raises(ReplayError):
        build_replay(tmp_path, "tcp://127.0.0.1:1", "tcp://127.0.0.1:*", ("127.0.0.1", 1))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("keep", [False, True])
def test_replay_sends_every_stream_in_order(tmp_path, keep):
    records = _write_session(tmp_path)
    ctx = zmq.Context.instance()
    pull, sub = ctx.socket(zmq.PULL), ctx.socket(zmq.SUB)
    pull.bind("tcp://127.0.0.1:*")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    senders = build_replay(tmp_path, pull.getsockopt_string(zmq.LAST_ENDPOINT), "tcp://127.0.0.1:*",
                           udp.getsockname(), keep_timestamps=keep)
    cams, robots, sensor = [], [], []
    buf = bytearray(DATAGRAM_MAX_BYTES)
    try:
        for sender in senders:
            sender.start()
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(next(s for s in senders if s.name == "robot").endpoint)
        end = time.monotonic() + 2.0
        while time.monotonic() < end and (len(cams) < 4 or len(robots) < 20 or len(sensor) < 6):
            if pull.poll(5):
                cams.append((time.monotonic(), parse_camera(pull.recv_multipart())))
            if sub.poll(5):
                robots.append(parse_robot(sub.recv_multipart()))
            try:
                nbytes = udp.recv_into(buf)
                sensor.append(parse_datagram(buf, nbytes, records.dtype).copy())
            except BlockingIOError:
                pass
    finally:
        for sender in senders:
            sender.stop()
        pull.close(linger=0), sub.close(linger=0), udp.close()
    assert all(s.error is None for s in senders)
    shift = 0.0 if keep else time.time() - T0
    names = [c[1][0] for c in cams]
    assert names == ["zed_41182735_left", "oak_d", "zed_41182735_left", "zed_41182735_left"]
    assert all(abs(c[1][1] - shift - T0 - d) < (0.01 if keep else 3.0) for c, d in zip(cams, [0, 0.05, 0.1, 0.2]))
    assert cams[-1][0] - cams[0][0] > 0.15                       # 0.2 s of original timing
    sent_robot = np.array([r["joints"][0] for r in robots])
    assert len(robots) == 20 and np.array_equal(sent_robot, [robot_values(k)[0] for k in range(20)])
    stamps = np.array([float(r["timestamp"]) for r in robots])
    assert np.allclose(np.diff(stamps), 0.01, atol=1e-6)         # relative times kept exactly
    got = np.concatenate(sensor)
    assert len(sensor) == 6 and np.array_equal(got["ascan"], records["ascan"])
    assert np.allclose(got["timestamp"] - records["timestamp"], got["timestamp"][0] - records["timestamp"][0])
    if keep:
        assert np.array_equal(got["send_timestamp"], records["send_timestamp"])
