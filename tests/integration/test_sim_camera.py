"""Camera simulator against a plain PULL receiver: format, names, rate, frame counters,
the realistic sender's trigger and reordering."""
import json
import time

import numpy as np
import pytest
import zmq

from shm_vla.config import CameraConfig
from shm_vla.protocol.camera import CameraMapper, JpegDecoder, parse_camera
from shm_vla.sim import camera
from shm_vla.sim.camera import CameraSim, camera_names
from shm_vla.sim.content import frame_counter

pytestmark = pytest.mark.slow


def _receive(pull, seconds):
    messages, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        if pull.poll(50):
            messages.append((time.time(), pull.recv_multipart()))
    return messages


@pytest.mark.timeout(20)
def test_cameras_send_decodable_self_checking_frames():
    cfg = CameraConfig()
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind("tcp://127.0.0.1:*")
    cameras = camera_names(cfg, include_right=True)
    sim = CameraSim(pull.getsockopt_string(zmq.LAST_ENDPOINT), cameras, rate_hz=5.0, clock_offset_s=-3.0,
                    duration_s=1.1)
    try:
        with sim:
            messages = _receive(pull, 1.6)
    finally:
        pull.close(linger=0)
    assert sim.error is None and sim.dropped == 0
    mapper, decoder = CameraMapper(cfg), JpegDecoder(640, 360, "RGB")
    image = np.zeros((360, 640, 3), np.uint8)
    frames_by_camera = {}
    for recv_wall_s, frames in messages:
        name, stamp, jpeg = parse_camera(frames)
        assert abs((stamp + 3.0) - recv_wall_s) < 0.5      # injected sender clock offset
        decoder.decode_into(jpeg, image)
        view, counter = frame_counter(image)
        expected_view = mapper.view_index(name)
        if expected_view is None:                          # a right image: ignored by the ingest
            assert name.endswith("_right")
            expected_view = mapper.view_index(name.replace("_right", "_left"))
        assert view == expected_view
        frames_by_camera.setdefault(name, []).append(counter)
    assert set(frames_by_camera) == {name for name, _ in cameras}
    assert {n for n, _ in cameras if "oak" in n} == {"oak_d"} and len(cameras) == 9
    for name, counters in frames_by_camera.items():
        assert counters == list(range(len(counters))), name      # ordered, no gaps, no duplicates
        assert 5 <= len(counters) <= 7, name                     # 5 Hz for 1.1 s
    assert sorted(mapper.view_index(n) for n in frames_by_camera if "right" not in n) == [0, 1, 2, 3, 4]


def _run(profile, seconds):
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind("tcp://127.0.0.1:*")
    sim = CameraSim(pull.getsockopt_string(zmq.LAST_ENDPOINT), camera_names(CameraConfig()), rate_hz=5.0,
                    clock_offset_s=-3.0, duration_s=seconds, profile=profile)
    try:
        with sim:
            messages = _receive(pull, seconds + 0.5)
    finally:
        pull.close(linger=0)
    assert sim.error is None and sim.dropped == 0
    return sim, [(recv, parse_camera(frames)[:2], json.loads(frames[0])["frame"]) for recv, frames in messages]


@pytest.mark.timeout(30)
def test_realistic_cameras_share_a_trigger_and_arrive_reordered_and_late():
    sim, received = _run("realistic", 4.0)
    stamps = np.array([stamp for _, (_, stamp), _ in received])
    out_of_order = int((np.diff(stamps) < 0).sum())
    assert out_of_order > 0 and out_of_order == sim.out_of_order       # as sent: ZeroMQ keeps the order
    by_frame = {}
    for recv_wall_s, (name, stamp), frame in received:
        by_frame.setdefault(frame, []).append(stamp)
        # sent after its capture (encoding), tens of ms at most
        assert camera.ENCODE_MIN_MS - 1 <= (recv_wall_s - (stamp + 3.0)) * 1e3 <= 500
    for frame, frame_stamps in by_frame.items():
        if len(frame_stamps) == 5:
            assert (max(frame_stamps) - min(frame_stamps)) * 1e3 <= 5.0       # one trigger, per-camera stamps
    assert sum(len(s) == 5 for s in by_frame.values()) >= 18


@pytest.mark.timeout(30)
def test_ideal_cameras_arrive_in_order():
    sim, received = _run("ideal", 1.5)
    stamps = [stamp for _, (_, stamp), _ in received]
    assert stamps == sorted(stamps) and sim.out_of_order == 0 and len(stamps) >= 35
