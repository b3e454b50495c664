"""The safety gate: which ticks may produce a command.

A command needs every input present and fresh. Ages are measured on CLOCK_MONOTONIC
from our own receipt of the newest record, so a stalled sender, a dead ingest process
or a stuck VL worker all show up as growing ages and stop commands; they resume by
themselves as soon as inputs are fresh again. The first failing check names the reason.
"""
from __future__ import annotations


class Gate:
    def __init__(self, act_cfg):
        self.max_age_ms = {"sensor": act_cfg.max_sensor_age_ms, "robot": act_cfg.max_robot_age_ms,
                           "vl": act_cfg.max_vl_age_ms}

    def check_inputs(self, have_vl: bool, sensor_rows: int, robot_rows: int, ages_ms: dict) -> str:
        """'' if the tick may command, else the hold reason (see streams.HOLD_REASONS)."""
        if not have_vl:
            return "no_vl_feature"
        if sensor_rows == 0:
            return "no_sensor"
        if robot_rows == 0:
            return "no_robot"
        for stream in ("sensor", "robot", "vl"):
            # `not <=` also catches NaN
            if not ages_ms[stream] <= self.max_age_ms[stream]:
                return f"stale_{stream}"
        return ""
