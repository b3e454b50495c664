"""Ingest processes against their simulators and against bad input, over loopback."""
from __future__ import annotations

import json
import math
import socket
import struct
import time

import numpy as np
import pytest
import simplejpeg
import zmq

from procs import spawn, stop, wait_for, write_config
from shm_vla import config
from shm_vla.protocol import robot as robot_proto
from shm_vla.protocol import sensor as sensor_proto
from shm_vla.shm import stats as statsmod
from shm_vla.shm.ring import META_DTYPE
from shm_vla.sim import camera, content
from shm_vla.streams import Streams

pytestmark = pytest.mark.slow
CLOCK_OFFSET_S = 2.5


def _snapshot(instance, process):
    try:
        return statsmod.read_snapshot(instance, process)
    except Exception:
        return None


def _up(instance, process):
    snap = _snapshot(instance, process)
    return snap is not None and snap["state"] == "up"


@pytest.fixture
def start_ingest(tmp_path, instance):
    """Start ingest processes; they are stopped at teardown even if the test failed."""
    started = []

    def start(cfg_path, kinds):
        procs = {k: spawn("ingest", k, "--instance", instance, "--config", str(cfg_path),
                          log=tmp_path / f"{k}.log") for k in kinds}
        started.extend(procs.values())
        assert wait_for(lambda: all(_up(instance, f"ingest-{k}") for k in kinds), 30), \
            [(tmp_path / f"{k}.log").read_text() for k in kinds]
        return procs
    yield start
    codes = [stop(p) for p in started]
    assert codes == [0] * len(codes)           # SIGTERM is a clean exit


def _steady_rate(meta: np.ndarray) -> float:
    t = meta["recv_mono_ns"] * 1e-9
    return (len(t) - 1) / (t[-1] - t[0])


@pytest.fixture
def running(tmp_path, instance, start_ingest):
    cfg_path, ports = write_config(tmp_path / "cfg.toml")
    procs = start_ingest(cfg_path, ("sensor", "robot", "camera"))
    return config.load(instance, cfg_path), cfg_path, ports, procs


def test_every_stream_against_its_simulator(running, tmp_path, instance):
    cfg, cfg_path, _, _ = running
    sims = spawn("sim", "all", "--instance", instance, "--config", str(cfg_path), "--duration", "5",
                 "--clock-offset-s", str(CLOCK_OFFSET_S), "--right", log=tmp_path / "sim.log")
    try:
        _check_streams(cfg, instance)
    finally:
        assert stop(sims) == 0


def _check_streams(cfg, instance):
    streams = Streams(cfg)
    sensor, robot = streams.attach_sensor(), streams.attach_robot()
    views = [streams.attach_view(i) for i in range(5)]
    assert wait_for(lambda: sensor.head > 2000 and robot.head > 300 and min(v.head for v in views) >= 14, 15)
    # rates over a steady window, from our receive times
    s_out, s_meta = np.zeros((1300, cfg.sensor_channels), np.float32), np.zeros(1300, META_DTYPE)
    assert sensor.window(1300, s_out, s_meta) == 1300
    assert _steady_rate(s_meta) == pytest.approx(cfg.sensor.rate_hz, rel=0.05)
    counters = content.sensor_counters(s_out)
    assert (np.diff(counters) == 1).all()                       # contiguous, ordered, no duplicates
    r_out, r_meta = np.zeros((200, 12), np.float32), np.zeros(200, META_DTYPE)
    assert robot.window(200, r_out, r_meta) == 200
    assert _steady_rate(r_meta) == pytest.approx(cfg.robot.rate_hz, rel=0.05)
    assert (np.diff(content.robot_counters(r_out)) == 1).all()
    frame = np.zeros((10, 360, 640, 3), np.uint8)
    f_meta = np.zeros(10, META_DTYPE)
    for i, ring in enumerate(views):
        assert ring.window(10, frame, f_meta) == 10
        decoded = [content.frame_counter(f) for f in frame]
        assert {v for v, _ in decoded} == {i}                    # the camera landed in its view
        assert np.diff([c for _, c in decoded]).tolist() == [1] * 9
        assert _steady_rate(f_meta) == pytest.approx(cfg.camera.rate_hz, rel=0.05)
        label = f_meta["label"][-1].decode()
        assert ("oak" in label) if i == 4 else ("left" in label)
    # clock offsets: sender clock = ours + 2.5 s, estimate within 1 ms of the smallest delay
    # from stamp to receipt (the offset is an upper bound: no estimator sees a fixed delay);
    # the simulated camera sender encodes every frame for at least ENCODE_MIN_MS
    for proc, floor_ms in (("ingest-sensor", 0.0), ("ingest-robot", 0.0), ("ingest-camera", camera.ENCODE_MIN_MS)):
        values = statsmod.read_snapshot(instance, proc)["values"]
        bias_ms = values["clock_offset_ms"] + CLOCK_OFFSET_S * 1e3
        limit_ms = 1.0 if floor_ms == 0 else 10.0           # cameras: min of ~15 frames a view so far
        assert floor_ms - 1.0 < bias_ms < floor_ms + limit_ms, (proc, values)
        assert not any(k.startswith("errors.") for k in values), values
    cam = statsmod.read_snapshot(instance, "ingest-camera")["values"]
    assert cam["ignored_right_images"] > 0
    jpeg = streams.attach_jpeg(0)
    j_out, j_meta = np.zeros((1, cfg.camera.jpeg_max_bytes), np.uint8), np.zeros(1, META_DTYPE)
    assert jpeg.latest(j_out, j_meta) >= 0
    raw = j_out[0, : int(j_meta["aux"][0])].tobytes()
    assert content.frame_counter(simplejpeg.decode_jpeg(raw, "RGB"))[0] == 0   # the received bytes, kept


def _send_udp(port, payloads):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
            time.sleep(0.002)


def test_sensor_bad_datagrams_are_counted_and_never_stored(tmp_path, instance, start_ingest):
    cfg_path, ports = write_config(tmp_path / "cfg.toml")
    start_ingest(cfg_path, ("sensor",))
    cfg = config.load(instance, cfg_path)
    dtype = sensor_proto.record_dtype(cfg.sensor.ascan_len)
    good = np.zeros(3, dtype)
    content.fill_sensor(good, 100)
    datagram = sensor_proto.encode_datagram(good)
    nan = good.copy()
    nan["ascan"][1, 7] = np.nan
    inf = good.copy()
    inf["force"][0] = np.inf
    bad = [datagram[:-10],                                   # truncated
           datagram + b"\0" * 7,                             # oversized
           struct.pack("<I", 5) + datagram[4:],              # wrong count
           struct.pack("<I", 0),                             # no records
           b"\x01",                                          # shorter than the count
           sensor_proto.encode_datagram(nan), sensor_proto.encode_datagram(inf)]
    _send_udp(ports["sensor"], bad + [datagram])
    ring = Streams(cfg).attach_sensor()
    assert wait_for(lambda: ring.head >= 7, 5)
    time.sleep(0.2)
    values = statsmod.read_snapshot(instance, "ingest-sensor")["values"]
    assert values["errors.length"] == 3 and values["errors.count"] == 2
    assert values["nonfinite_records"] == 2 and values["drops"] == 2
    out = np.zeros((ring.head, cfg.sensor_channels), np.float32)
    k = ring.window(ring.head, out)
    assert k == 7 and np.isfinite(out).all()                  # 2 + 2 finite records, then 3 good ones
    assert content.sensor_counters(out[-3:]).tolist() == [100, 101, 102]
    # a sender restart (timestamps back in time) is accepted, counted, and re-estimates the clock
    early = good.copy()
    early["timestamp"] -= 1000
    early["send_timestamp"] -= 1000
    _send_udp(ports["sensor"], [sensor_proto.encode_datagram(early)])
    assert wait_for(lambda: statsmod.read_snapshot(instance, "ingest-sensor")["values"]["sender_restarts"] == 1, 5)
    assert ring.head == 10


def _push(port):
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(f"tcp://127.0.0.1:{port}")
    return push


def test_camera_bad_messages_flood_and_resize(tmp_path, instance, start_ingest):
    cfg_path, ports = write_config(tmp_path / "cfg.toml")
    start_ingest(cfg_path, ("camera",))
    cfg = config.load(instance, cfg_path)
    push = _push(ports["camera"])
    jpeg = content.frame_jpeg(0, 7)
    meta = lambda cam, ts=1.0: json.dumps({"camera": cam, "timestamp": ts, "extra": [1]}).encode()  # noqa: E731
    cases = {
        "frames": [[meta("zed_41182735_left")], [meta("zed_41182735_left"), jpeg, b"x"]],
        "utf8": [[b"\xff\xfe", jpeg]],
        "json": [[b"{not json", jpeg]],
        "not_object": [[b"[1, 2]", jpeg]],
        "timestamp": [[json.dumps({"camera": "oak"}).encode(), jpeg],
                      [json.dumps({"camera": "oak", "timestamp": "noon"}).encode(), jpeg]],
        # two views: a second frame for the same view could supersede the first before decoding
        "jpeg": [[meta("zed_41182735_left"), b"not a jpeg at all"], [meta("zed_44377151_left"), jpeg[:200]]],
        "unknown_camera": [[meta("webcam"), jpeg]],
    }
    for msgs in cases.values():
        for m in msgs:
            push.send_multipart(m)
    push.send_multipart([meta("zed_41182735_right"), jpeg])
    small = simplejpeg.encode_jpeg(np.ascontiguousarray(content.frame_image(1, 3)[::2, ::2]), 90)
    push.send_multipart([meta("zed_49429257_left", 2.0), small])      # another size: resized
    ring = Streams(cfg).attach_view(1)
    assert wait_for(lambda: ring.head == 1, 5)
    values = wait_for(lambda: (v := statsmod.read_snapshot(instance, "ingest-camera")["values"])
                      .get("errors.unknown_camera") and v, 5)
    for kind, msgs in cases.items():
        assert values[f"errors.{kind}"] == len(msgs), (kind, values)
    assert values["ignored_right_images"] == 1 and values["resized_frames"] == 1
    out = np.zeros((1, 360, 640, 3), np.uint8)
    ring.latest(out)
    assert content.frame_counter(out[0]) == (1, 3)
    assert Streams(cfg).attach_view(0).head == 0                       # nothing bad was stored
    # a flood for one view: bounded, the newest frame is kept
    for c in range(300):
        push.send_multipart([meta("zed_41182735_left", 10.0 + c), content.frame_jpeg(0, c)])
    view0 = Streams(cfg).attach_view(0)
    assert wait_for(lambda: view0.head > 0 and view0.latest(out) >= 0 and content.frame_counter(out[0]) == (0, 299), 20)
    values = statsmod.read_snapshot(instance, "ingest-camera")["values"]
    assert values["frames.view1"] + values["superseded_frames"] == 300
    push.close(0)


def test_robot_bad_messages_publisher_restart_and_stall(tmp_path, instance, start_ingest):
    cfg_path, ports = write_config(tmp_path / "cfg.toml")
    start_ingest(cfg_path, ("robot",))
    cfg = config.load(instance, cfg_path)
    ring = Streams(cfg).attach_robot()
    ctx = zmq.Context.instance()

    def publish(first, n, bad=False):
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.bind(f"tcp://127.0.0.1:{ports['robot']}")
        time.sleep(0.5)                                                  # slow-joiner: let SUB connect
        if bad:
            pub.send_multipart([b"robot_state", b"\0" * 60])             # wrong length
            pub.send_multipart([b"robot_stateX", b"\0" * 68])            # wrong topic
            pub.send_multipart([b"robot_state"])                         # one frame
            pub.send_multipart([b"robot_state", robot_proto.encode_robot(math.nan, 1, 0, [0] * 6, [0] * 6)])
        for c in range(first, first + n):
            now = time.time()
            v = content.robot_values(c)
            pub.send_multipart([b"robot_state", robot_proto.encode_robot(now, now, 0.0, v[:6], v[6:])])
            time.sleep(0.01)
        return pub

    pub = publish(0, 30, bad=True)
    assert wait_for(lambda: ring.head == 30, 5)
    values = statsmod.read_snapshot(instance, "ingest-robot")["values"]
    assert values["errors.length"] == 1 and values["errors.topic"] == 1
    assert values["errors.frames"] == 1 and values["errors.nonfinite"] == 1
    pub.close(0)                                                         # publisher stops: age grows
    age1 = ring.age_ns()
    time.sleep(0.3)
    assert ring.age_ns() > age1 + 250e6
    pub = publish(30, 30)                                                # restarted publisher
    assert wait_for(lambda: ring.head >= 50, 10), ring.head
    out = np.zeros((20, 12), np.float32)
    ring.window(20, out)
    assert (np.diff(content.robot_counters(out)) == 1).all()
    pub.close(0)
