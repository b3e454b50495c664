"""The safety gate: which ticks may produce a command.

A command needs every input present, its sender's clock established, and fresh. Freshness
is judged by *capture* time: the sender's timestamp mapped to our CLOCK_MONOTONIC through
the estimated clock offset (ingest/clock.py). Receipt age is a second bound. So a stalled
sender, a dead or stopped ingest process, a backlog received late (datagrams the kernel
kept while ingest was stopped), or a stuck VL worker all show up as growing ages and stop
commands; they resume by themselves as soon as inputs are fresh again.

The whole window the model sees is bounded, not just its newest record: its oldest
record may be at most the limit plus the window's nominal span old (e.g. 200 ms +
64 / 650 Hz for the sensor). For the VL feature two ages count: since it was published
(max_vl_age_ms) and since the oldest of its frames was captured (max_frame_age_ms).

An age of NaN means "no capture time": the sender's clock offset is not established yet
(or was reset by a sender restart); that holds with its own reason (unsynced_*).
The first failing check names the reason (streams.HOLD_REASONS).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class InputAges:
    """Ages (ms) of what one tick read, filled in place by the action worker every tick.

    For sensor and robot: newest record by capture and by receipt, oldest record of the
    window by capture. NaN: no capture time (unsynced). inf: nothing read.
    """
    sensor: float = math.inf
    sensor_recv: float = math.inf
    sensor_window: float = math.inf
    robot: float = math.inf
    robot_recv: float = math.inf
    robot_window: float = math.inf
    vl: float = math.inf                 # since the feature was published
    frames: float = math.inf             # since its oldest frame was captured


class Gate:
    def __init__(self, act_cfg, sensor_span_ms: float, robot_span_ms: float):
        self.limit_ms = {"sensor": act_cfg.max_sensor_age_ms, "robot": act_cfg.max_robot_age_ms}
        self.window_limit_ms = {"sensor": act_cfg.max_sensor_age_ms + sensor_span_ms,
                                "robot": act_cfg.max_robot_age_ms + robot_span_ms}
        self.max_vl_age_ms = act_cfg.max_vl_age_ms
        self.max_frame_age_ms = act_cfg.max_frame_age_ms

    def check_inputs(self, have_vl: bool, sensor_rows: int, robot_rows: int, ages: InputAges) -> str:
        """'' if the tick may command, else the hold reason (see streams.HOLD_REASONS)."""
        if not have_vl:
            return "no_vl_feature"
        if sensor_rows == 0:
            return "no_sensor"
        if robot_rows == 0:
            return "no_robot"
        for stream, capture_ages in (("sensor", (ages.sensor, ages.sensor_window)),
                                     ("robot", (ages.robot, ages.robot_window))):
            if any(math.isnan(a) for a in capture_ages):
                return f"unsynced_{stream}"
        if math.isnan(ages.frames):
            return "unsynced_camera"
        for stream, newest, recv, window in (("sensor", ages.sensor, ages.sensor_recv, ages.sensor_window),
                                             ("robot", ages.robot, ages.robot_recv, ages.robot_window)):
            # `not <=` also catches NaN (a receipt age is never NaN, but be strict)
            if not (newest <= self.limit_ms[stream] and recv <= self.limit_ms[stream]):
                return f"stale_{stream}"
            if not window <= self.window_limit_ms[stream]:
                return f"stale_{stream}_window"
        if not ages.vl <= self.max_vl_age_ms:
            return "stale_vl"
        if not ages.frames <= self.max_frame_age_ms:
            return "stale_frames"
        return ""
