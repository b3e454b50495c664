"""The SIGSTOP drill of issue 10: an ingest process stopped for seconds wakes up to a
backlog (the kernel / ZeroMQ kept the oldest messages); no command may use it.

Real processes on loopback: `shm-vla run flow` and the simulated peers with a sender
clock offset, so that only capture time through the estimated offset can tell the ages.
The check uses the truth: the sender-clock capture times of the oldest and newest record
of the windows each tick used (results ring), against the tick's own wall-clock time.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from procs import spawn, stop, wait_for, write_config
from shm_vla import config
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.shm import stats as statsmod
from shm_vla.streams import HOLD_REASONS, Streams

pytestmark = pytest.mark.slow
SENDER_OFFSET_S = 3.7        # the senders' clocks run this far ahead of ours
SENSOR_STOP_S = 5.0          # 10 records per datagram (the real sensor): the kernel's 8 MB keeps
                             # the oldest ~3 s, drops the rest: the backlog's newest is ~2 s old
ROBOT_STOP_S = 2.0           # ZeroMQ keeps up to 1,000 states (10 s): the whole backlog
SLACK_MS = 20.0              # the tick's timestamp is taken just before its reads


def _act_values(instance):
    return statsmod.read_snapshot(instance, "act")["values"]


def _results(instance, cfg_path) -> np.ndarray:
    cfg = config.load(instance, cfg_path)
    ring = Streams(cfg).attach_results()
    try:
        out = np.zeros(ring.depth - 1, ring.dtype)
        from shm_vla.shm.ring import META_DTYPE
        k = ring.window(ring.depth - 1, out, np.zeros(ring.depth - 1, META_DTYPE))
        return out[len(out) - k:].copy()
    finally:
        ring.close()


def _stop_and_resume(instance, process, seconds):
    pid = statsmod.read_snapshot(instance, process)["pid"]
    os.kill(pid, signal.SIGSTOP)
    t_stop = time.time()
    time.sleep(seconds)
    os.kill(pid, signal.SIGCONT)
    return t_stop


def test_a_stopped_ingest_wakes_to_a_backlog_that_is_never_commanded(tmp_path, instance):
    ckpt = make_checkpoint(tmp_path / "flow.pt", "tiny", "flow")
    # no hang restarts here: this drill is about what a resumed process does
    cfg_path, _ = write_config(tmp_path / "cfg.toml", "[supervise]\nhang_timeout_s = 60.0\n")
    cfg = config.load(instance, cfg_path)
    out = tmp_path / "out"
    sup = spawn("run", "flow", "--instance", instance, "--config", str(cfg_path), "--checkpoint", str(ckpt),
                "--out", str(out), log=tmp_path / "run.log")
    sims = spawn("sim", "all", "--instance", instance, "--config", str(cfg_path), "--clock-offset-s",
                 str(SENDER_OFFSET_S), "--records-per-datagram", "10", "--log", str(tmp_path / "commands.jsonl"), log=tmp_path / "sim.log")
    try:
        assert wait_for(lambda: statsmod.read_snapshot(instance, "act")["values"].get("commands_sent", 0) > 10
                        if instance_up(instance) else False, 90), (tmp_path / "run.log").read_text()[-3000:]
        t_sensor = _stop_and_resume(instance, "ingest-sensor", SENSOR_STOP_S)
        time.sleep(2.0)
        t_robot = _stop_and_resume(instance, "ingest-robot", ROBOT_STOP_S)
        time.sleep(2.0)
        results = _results(instance, cfg_path)
        sensor_backlog = statsmod.read_snapshot(instance, "ingest-sensor")["values"]["stale_backlog"]
        robot_backlog = statsmod.read_snapshot(instance, "ingest-robot")["values"]["stale_backlog"]
    finally:
        stop(sup, timeout=30)
        stop(sims)
    sent = results[results["sent"] == 1]
    assert len(sent) > 30
    # the truth, by the senders' clock: how old was the oldest record each command used
    sensor_span_ms = (cfg.sensor.window - 1) / cfg.sensor.rate_hz * 1e3
    sensor_oldest_ms = (sent["timestamp"] - (sent["sensor_window_ts"][:, 0] - SENDER_OFFSET_S)) * 1e3
    robot_rows = sent["robot_buffer_size"]
    robot_span_ms = (robot_rows.max() - 1) / cfg.robot.rate_hz * 1e3
    robot_oldest_ms = (sent["timestamp"] - (sent["robot_window_ts"][:, 0] - SENDER_OFFSET_S)) * 1e3
    assert sensor_oldest_ms.max() <= cfg.act.max_sensor_age_ms + sensor_span_ms + SLACK_MS, sensor_oldest_ms.max()
    assert robot_oldest_ms.max() <= cfg.act.max_robot_age_ms + robot_span_ms + SLACK_MS, robot_oldest_ms.max()
    # the drill did happen: each resume was held by capture time, counted as a backlog,
    # and commands resumed by themselves afterwards
    reasons = [HOLD_REASONS[h] for h in results["held"]]
    after_sensor = [r for t, r in zip(results["timestamp"], reasons) if t_sensor < t < t_robot]
    after_robot = [r for t, r in zip(results["timestamp"], reasons) if t > t_robot]
    assert {"stale_sensor", "stale_sensor_window"} & set(after_sensor), set(after_sensor)
    assert {"stale_robot", "stale_robot_window"} & set(after_robot), set(after_robot)
    assert sensor_backlog > 0 and robot_backlog > 0
    assert (sent["timestamp"] > t_robot + ROBOT_STOP_S).sum() >= 5


def instance_up(instance) -> bool:
    try:
        return statsmod.read_snapshot(instance, "act")["state"] == "up"
    except Exception:
        return False
