"""The action tick in one process: real rings, a real tiny model, a real PULL socket as the robot."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq

from procs import free_port
from shm_vla import config
from shm_vla.gate import Gate
from shm_vla.model import load_checkpoint
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.process import Runtime
from shm_vla.streams import HOLD_REASONS, Streams
from shm_vla.workers.act import ActWorker, Commander, Inputs, make_runner


@pytest.fixture
def rig(tmp_path, instance):
    port = free_port()
    cfg = config.load(instance, None, [f'command.connect="tcp://127.0.0.1:{port}"', "act.auto_start=true"])
    ckpt = make_checkpoint(tmp_path / "flow.pt", "tiny", "flow")
    cfg.model.checkpoint = str(ckpt)
    loaded = load_checkpoint(ckpt, cfg.model)
    streams = Streams(cfg)
    rings = {"vl": streams.create_vl(loaded.info.vl_dim), "sensor": streams.create_sensor(),
             "robot": streams.create_robot()}
    results = streams.create_results(loaded.info.horizon, loaded.info.action_dim)
    rt = Runtime(cfg, "act")
    sink = zmq.Context.instance().socket(zmq.PULL)
    sink.bind(f"tcp://127.0.0.1:{port}")
    runner = make_runner(cfg, loaded)
    inputs = Inputs(cfg.sensor.window, loaded.info.robot_window, rings["vl"], rings["sensor"], rings["robot"])
    worker = ActWorker(rt, runner, inputs, results, Commander(rt))
    time.sleep(0.3)                                   # let the PUSH connect (IMMEDIATE drops otherwise)
    yield worker, rings, results, sink, cfg
    worker.commander.close()
    sink.close(0)
    rt.close()


def _feed(rings, vl_value=0.1, n_sensor=70, n_robot=20, captured_ago_ms=1.0, sensor_capture=None):
    """Fresh inputs, received now; captured `captured_ago_ms` ago (sensor: per record, if given)."""
    now = time.monotonic_ns()
    captured = now - int(captured_ago_ms * 1e6)
    for i in range(n_sensor):
        capture = captured if sensor_capture is None else sensor_capture(i, n_sensor, now)
        rings["sensor"].write(np.full(1026, 0.01, np.float32), capture_mono_ns=capture)
    for _ in range(n_robot):
        rings["robot"].write(np.full(12, 1.0, np.float32), capture_mono_ns=captured)
    with rings["vl"].loan() as slot:
        slot["feature"] = vl_value
        slot["update"] = rings["vl"].head + 1
        slot["frame_recv_mono_ns"] = now
        slot["capture_mono_ns"] = captured


def _last_result(results):
    out = np.zeros(1, results.dtype)
    results.latest(out)
    return out[0]


def _recv(sink, timeout_ms=1000):
    if sink.poll(timeout_ms):
        return json.loads(sink.recv())
    return None


def test_no_command_without_inputs_then_start_then_clamped_dpose(rig):
    worker, rings, results, sink, cfg = rig
    worker.tick(time.monotonic_ns(), 0.0)
    assert HOLD_REASONS[_last_result(results)["held"]] == "no_vl_feature"
    assert _recv(sink, 200) is None
    _feed(rings)
    worker.tick(time.monotonic_ns(), 0.0)
    assert _recv(sink) == {"cmd": "start", "start_joints": cfg.command.start_joints, "lock_j6": False}
    r = _last_result(results)
    cmd = _recv(sink)
    assert cmd["cmd"] == "dpose" and r["held"] == 0 and r["sent"] == 1
    limits = np.array([cfg.act.clamp_mm] * 3 + [cfg.act.clamp_deg] * 3)
    np.testing.assert_allclose(cmd["dp"], np.clip(r["actions"][0, :6], -limits, limits), atol=1e-7)
    assert np.isfinite(r["actions"]).all() and r["sensor_buffer_size"] == 65 and r["robot_buffer_size"] == 20
    assert r["sensor_age_ms"] >= 0 and r["robot_age_ms"] >= 0


def test_a_restarted_act_never_resends_the_start_command(rig):
    worker, rings, results, sink, cfg = rig
    _feed(rings)
    worker.tick(time.monotonic_ns(), 0.0)
    assert _recv(sink)["cmd"] == "start" and _recv(sink)["cmd"] == "dpose"
    again = ActWorker(worker.rt, worker.runner, worker.inputs, results, worker.commander)   # a restart
    _feed(rings)
    again.tick(time.monotonic_ns(), 0.0)
    assert _recv(sink)["cmd"] == "dpose"


def test_robot_window_is_front_padded_while_the_ring_fills(rig):
    worker, rings, results, sink, cfg = rig
    _feed(rings, n_robot=7)
    worker.tick(time.monotonic_ns(), 0.0)
    robot_in = worker.runner.robot_in
    assert (robot_in[:-7] == 0).all() and (robot_in[-7:] == 1).all()


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("where", ["read", "inference", "send"])
def test_a_tick_that_raises_is_still_published_and_leaves_no_slot_open(rig, monkeypatch, where):
    """Issue 12 item 4: an error anywhere in the tick, not only a shared-memory read error,
    propagates (the process exits and is restarted), but the tick is published first, held as
    tick_error, and no results slot is left open; the next tick is an ordinary one."""
    worker, rings, results, sink, cfg = rig
    _feed(rings)
    worker.tick(time.monotonic_ns(), 0.0)
    assert _recv(sink)["cmd"] == "start" and _recv(sink)["cmd"] == "dpose"
    first = _last_result(results)["action_id"]
    target = {"read": (worker.inputs, "read"), "inference": (worker.runner, "run"),
              "send": (worker.commander, "send")}[where]
    monkeypatch.setattr(*target, _raise(RuntimeError(f"{where} failed")))
    _feed(rings)
    with pytest.raises(RuntimeError, match=f"{where} failed"):
        worker.tick(time.monotonic_ns(), 0.0)
    assert results.head == 2 and not (results.seqs & 1).any()
    r = _last_result(results)
    assert HOLD_REASONS[r["held"]] == "tick_error" and r["sent"] == 0 and r["action_id"] == first + 1
    assert r["total_ms"] > 0 and worker.held["tick_error"].value == 1
    assert _recv(sink, 200) is None
    monkeypatch.undo()
    _feed(rings)
    worker.tick(time.monotonic_ns(), 0.0)
    r = _last_result(results)
    assert r["held"] == 0 and r["sent"] == 1 and r["action_id"] == first + 2 and results.head == 3
    assert _recv(sink)["cmd"] == "dpose"


def test_stale_inputs_and_nonfinite_output_withhold_the_command(rig):
    worker, rings, results, sink, cfg = rig
    _feed(rings)
    time.sleep(cfg.act.max_sensor_age_ms / 1e3 + 0.05)
    rings["vl"].write(rings["vl"].payload[0])           # keep VL fresh; sensor and robot go stale
    worker.tick(time.monotonic_ns(), 0.0)
    assert HOLD_REASONS[_last_result(results)["held"]] == "stale_sensor"
    assert _recv(sink, 200) is None
    _feed(rings, vl_value=3e38)                         # finite input that overflows in the head
    worker.tick(time.monotonic_ns(), 0.0)
    r = _last_result(results)
    assert HOLD_REASONS[r["held"]] == "nonfinite_output"
    assert r["sent"] == 0
    while (msg := _recv(sink, 200)) is not None:
        assert msg["cmd"] == "start"                    # the auto-start went out, no dpose
    _feed(rings)
    worker.tick(time.monotonic_ns(), 0.0)
    assert _last_result(results)["held"] == 0           # commands resume by themselves


def test_a_backlog_fresh_by_receipt_but_old_by_capture_is_never_commanded(rig):
    """The SIGSTOP drill in one process: records received just now, captured 2.4 s ago."""
    worker, rings, results, sink, cfg = rig
    _feed(rings, captured_ago_ms=2400.0)
    worker.tick(time.monotonic_ns(), 0.0)
    r = _last_result(results)
    assert HOLD_REASONS[r["held"]] == "stale_sensor" and r["sensor_recv_age_ms"] < 100
    assert r["sensor_age_ms"] >= 2400 and r["sent"] == 0


def test_a_window_with_old_records_behind_a_fresh_one_is_held(rig):
    """Only the newest records are fresh (a backlog half drained): the window bound holds it."""
    worker, rings, results, sink, cfg = rig
    def capture(i, n, now):       # all but the last 3 records captured 2 s ago
        return now - (2_000_000_000 if i < n - 3 else 1_000_000)
    _feed(rings, sensor_capture=capture)
    worker.tick(time.monotonic_ns(), 0.0)
    r = _last_result(results)
    assert HOLD_REASONS[r["held"]] == "stale_sensor_window" and r["sensor_age_ms"] < 100
    assert r["sensor_window_age_ms"] >= 2000


def test_records_without_a_capture_time_hold_as_unsynced(rig):
    worker, rings, results, sink, cfg = rig
    _feed(rings, sensor_capture=lambda i, n, now: -1 if i == n - 30 else now)
    worker.tick(time.monotonic_ns(), 0.0)
    assert HOLD_REASONS[_last_result(results)["held"]] == "unsynced_sensor"


def test_make_runner_follows_the_model_config(tmp_path, instance):
    cfg = config.load(instance, None, ["model.flow_steps=3", "model.flow_solver=\"rk4\"", "model.act_compile=true",
                                       "model.act_stream_priority=0"])
    loaded = load_checkpoint(make_checkpoint(tmp_path / "flow.pt", "tiny", "flow"), cfg.model)
    runner = make_runner(cfg, loaded)
    assert (runner.flow_steps, runner.solver, runner.compiled, runner.horizon) == (3, "rk4", True, 8)
    assert runner.stage_timing == "events"


STAGES = ("sensor_encoding_ms", "robot_encoding_ms", "action_prediction_ms")


def test_stage_times_are_measured_and_a_held_tick_has_none(rig):
    """Issue 11 item 5: a tick that ran has its split; a held tick ran no stage: NaN, never 0."""
    worker, rings, results, sink, cfg = rig
    worker.tick(time.monotonic_ns(), 0.0)
    held = _last_result(results)
    assert HOLD_REASONS[held["held"]] == "no_vl_feature"
    assert all(np.isnan(held[f]) for f in STAGES) and held["total_ms"] > 0
    _feed(rings)
    worker.tick(time.monotonic_ns(), 0.0)
    ran = _last_result(results)
    assert ran["held"] == 0 and all(ran[f] > 0 for f in STAGES)
    assert sum(ran[f] for f in STAGES) <= ran["total_ms"]


def test_stage_timing_off_records_not_measured(rig, instance):
    worker, rings, results, sink, cfg = rig
    cfg.model.stage_timing = "off"
    worker.runner = make_runner(cfg, worker.runner.heads)
    _feed(rings)
    worker.tick(time.monotonic_ns(), 0.0)
    r = _last_result(results)
    assert r["held"] == 0 and r["sent"] == 1                # the command does not depend on the timing
    assert all(np.isnan(r[f]) for f in STAGES) and r["total_ms"] > 0


def test_each_result_names_the_records_it_used(rig):
    """A shadow or a replay reads exactly the inputs act used: their record numbers."""
    worker, rings, results, sink, cfg = rig
    worker.tick(time.monotonic_ns(), 0.0)
    r = _last_result(results)
    assert (r["vl_record"], r["sensor_record"], r["robot_record"]) == (-1, -1, -1)
    _feed(rings)
    worker.tick(time.monotonic_ns(), 0.0)
    r = _last_result(results)
    assert r["vl_record"] == rings["vl"].head - 1
    assert r["sensor_record"] == rings["sensor"].head - 1 and r["sensor_buffer_size"] == cfg.sensor.window
    assert r["robot_record"] == rings["robot"].head - 1
