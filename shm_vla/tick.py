"""The tick record, declared once: each field of the results ring (one record per action
tick, written by act) and the name, place and unit under which the session files carry it.

    ring    the results ring's field; streams.results_dtype is built from this table
    line    its key in a tick line (performance_timings_*.jsonl, held_ticks_*.jsonl), or None
    group   where in the line: "deployed" (the deployed receiver's fields, in its order,
            always numbers: the deployed analysis scripts read them from every line),
            "added" (ours, on every tick line, null allowed), "extra" (ours, after those)
    unit    of the value in the line ("" for counts and ids)
    stat    the act process's rolling stats gauge fed from it (p50/p99 in shm-vla-stat)

The session schema (workers/session_stats.py), the recorder (workers/record.py) and the act
worker's gauges derive from it; docs/SESSION_FILES.md describes the same fields (a test
checks the two agree).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .protocol.robot import ROBOT_DIMS     # a robot state: 6 joints, then 6 pose values

CHUNK = "chunk"              # shape placeholder: (horizon, action_dim) of the checkpoint
DP_DIMS = 6                  # the command: dx, dy, dz (mm), da, db, dr (deg)

# Why a tick withheld its command (the ring's `held`: an index; 0 = command sent). Append
# only: the index is what the ring stores.
HOLD_REASONS = ("", "no_vl_feature", "stale_vl", "stale_sensor", "stale_robot", "no_sensor", "no_robot",
                "nonfinite_output", "nonfinite_input", "read_error",
                "unsynced_sensor", "unsynced_robot", "unsynced_camera",       # no clock offset yet (gate.py)
                "stale_sensor_window", "stale_robot_window", "stale_frames",  # by capture time (gate.py)
                "tick_error",           # the tick raised: published, then the process exits (act.py)
                "stopping")             # act was asked to stop during the tick: no command after that


@dataclass(frozen=True)
class TickField:
    ring: str | None                   # None: a line field with no ring field (a constant)
    dtype: str = "<f8"
    shape: tuple | str = ()
    line: str | None = None
    group: str = ""
    unit: str = ""
    stat: str | None = None


def _line(ring, line=None, group="added", unit="ms", dtype="<f8", stat=None) -> TickField:
    return TickField(ring, dtype, (), line or ring, group, unit, stat)


TICK_FIELDS = (
    # ---- the deployed receiver's fields, in its order
    _line("timestamp", group="deployed", unit="s"),                     # wall clock at the tick
    _line("action_id", group="deployed", unit="", dtype="<i8"),         # = the results record number
    _line("vl_update_number", group="deployed", unit="", dtype="<i8"),  # the VL feature used
    _line(None, "vl_update_time", group="deployed"),                    # 0: only VL update lines report it
    # stage times: the deployed field carries a stand-in where a stage was not timed on its
    # own (session_stats.deployed_split); the "extra" fields below carry what was measured
    _line("sensor_encoding_ms", "sensor_encoding_time", group="deployed"),
    _line("robot_encoding_ms", "robot_encoding_time", group="deployed"),
    _line("action_prediction_ms", "action_prediction_time", group="deployed"),
    _line("total_ms", "total_time", group="deployed", stat="latency_ms"),
    _line("sensor_buffer_size", group="deployed", unit="records", dtype="<i4"),
    _line("robot_buffer_size", group="deployed", unit="records", dtype="<i4"),
    # ---- ours, on every tick line
    _line("tick_lateness_ms", stat="lateness_ms"),   # start minus schedule (negative = early)
    # input ages at the gate (gate.py), by capture time of the newest record; NaN = unsynced
    _line("sensor_age_ms"),
    _line("robot_age_ms"),
    _line("vl_age_ms"),                              # since the feature was published
    _line("frame_age_ms"),                           # since its oldest frame was captured
    _line("view_skew_ms"),
    _line("held", unit="", dtype="u1"),              # HOLD_REASONS index; the line names the reason
    # ---- ours, after those: each stage's own measurement (null: not timed on its own) ...
    _line("sensor_encoding_ms", group="extra"),
    _line("robot_encoding_ms", group="extra"),
    _line("action_prediction_ms", group="extra"),
    # ... and the other bounds of the gate: newest by receipt, oldest of the window by capture
    _line("sensor_recv_age_ms", group="extra"),
    _line("sensor_window_age_ms", group="extra"),
    _line("robot_recv_age_ms", group="extra"),
    _line("robot_window_age_ms", group="extra"),
    # ---- the ring only (inference_results carries the command and the chunk)
    TickField("tick_mono_ns", "<i8"),
    TickField("actions", "<f4", CHUNK),              # the action chunk
    TickField("delta", "<f4", CHUNK),                # regression heads: the predicted delta
    TickField("has_delta", "u1"),
    TickField("sent", "u1"),                         # the command went out on the socket
    TickField("clamped", "u1"),
    TickField("dp", "<f4", (DP_DIMS,)),              # the command, after the clamp
    TickField("vl_update_time_ms", "<f8"),           # encode time of the feature used
    TickField("sensor_window_ts", "<f8", (2,)),      # capture times (sender clock) of the window's oldest, newest
    TickField("robot_window_ts", "<f8", (2,)),
    TickField("robot_state", "<f4", (ROBOT_DIMS,)),  # the newest robot state used
    TickField("robot_ts", "<f8"),                    # its origin timestamp (sender clock)
    # the inputs used, by record number (-1: none): a shadow or a replay reads exactly these
    # (the windows are the sensor_buffer_size / robot_buffer_size records ending there);
    # also on the tick lines, after the other extras (what `shm-vla replay` joins on)
    _line("vl_record", group="extra", unit="", dtype="<i8"),
    _line("sensor_record", group="extra", unit="", dtype="<i8"),
    _line("robot_record", group="extra", unit="", dtype="<i8"),
    # the seed of a flow head's initial noise (-1: none): tick_noise_seed below
    _line("noise_seed", group="extra", unit="", dtype="<i8"),
)


def line_fields(group: str) -> tuple[str, ...]:
    """The line keys of one group, in line order."""
    return tuple(f.line for f in TICK_FIELDS if f.line and f.group == group)


def results_dtype(horizon: int, action_dim: int) -> np.dtype:
    """The results ring's record: every ring field of the table, once."""
    seen, fields = set(), []
    for f in TICK_FIELDS:
        if f.ring is None or f.ring in seen:
            continue
        seen.add(f.ring)
        shape = (horizon, action_dim) if f.shape == CHUNK else f.shape
        fields.append((f.ring, f.dtype, shape) if shape else (f.ring, f.dtype))
    return np.dtype(fields)


def stat_gauge(ring: str) -> str:
    """The act stats gauge (RollingGauges prefix) fed from a ring field."""
    (name,) = {f.stat for f in TICK_FIELDS if f.ring == ring and f.stat}
    return name


# The deployed stage fields -> the line key of their own measurement (same ring field).
MEASURED_FIELDS = {f.line: g.line for f in TICK_FIELDS if f.group == "deployed" and f.ring
                   for g in TICK_FIELDS if g.group == "extra" and g.ring == f.ring}


# torch's CPU generator (mt19937, where TickRunner draws the noise) keeps only the low 32 bits
# of a seed: noise seeds are 32-bit
NOISE_SEED_MASK = 0xFFFF_FFFF
_SEED_MIX = 0x9E37_79B1          # 2^32 / golden ratio: spreads model.seed over the 32 bits


def tick_noise_seed(model_seed: int, action_id: int) -> int:
    """The seed of a flow tick's initial noise (TickRunner.run(noise_seed)): a function of
    (model.seed, action_id) alone, recorded with the tick, so that the noise can be drawn
    again offline (`shm-vla replay`) or by another reader of the same tick. Consecutive
    ticks get consecutive seeds; the generator's seeding scrambles them, so their noise is
    unrelated. A seed repeats after 2^32 ticks (13 years at 10 Hz)."""
    return (int(model_seed) * _SEED_MIX + int(action_id)) & NOISE_SEED_MASK
