"""The shadow's record, declared once: each field of the shadow_results ring (one record per
live tick the shadow ran, written by the shadow process, workers/shadow.py) and its line in
the session file shadow_results_<stamp>.jsonl (docs/SESSION_FILES.md; a test checks the two
agree).

A record pairs with the live tick it shadows by `action_id` (the live results record number)
and names the input records both read (`vl_record`, `sensor_record`, `robot_record`, with the
window rows ending there), so the pair saw the same inputs. `divergence` is the per-axis
|shadow first action - live first action|; `dp` is the command the shadow would have sent
after act's clamp (it sends none: the shadow process has no command socket).
"""
from __future__ import annotations

import numpy as np

from .finite import finite_or_none
from .tick import DP_DIMS

# What became of a live tick the shadow took (the ring's `status`: an index; append only).
STATUSES = ("ok",
            "missed_vl_feature", "missed_sensor", "missed_robot",    # overwritten before the shadow read it
            "nonfinite_output",                                      # the shadow's head gave NaN/Inf
            "read_error")                                            # no consistent read within its bound
MISSES = frozenset(("missed_vl_feature", "missed_sensor", "missed_robot", "read_error"))
MODEL_TYPES = ("flow_matching", "regression")
CHECKPOINT_BYTES = 512          # the checkpoint path in each record (a longer path is refused at start)
SHA256_HEX = 64

# The session line: these keys, in this order (docs/SESSION_FILES.md, "shadow_results").
LINE_FIELDS = ("action_id", "timestamp", "status", "checkpoint", "checkpoint_sha256", "model_type", "actions",
               "first_action", "live_first_action", "divergence", "dp", "inference_ms", "delay_ms", "skipped",
               "vl_record", "sensor_record", "sensor_rows", "robot_record", "robot_rows")


def shadow_dtype(horizon: int, action_dim: int) -> np.dtype:
    """The shadow_results ring's record for a shadow head of this chunk shape."""
    return np.dtype([
        ("action_id", "<i8"),                          # the live tick's action_id
        ("timestamp", "<f8"),                          # the live tick's wall clock (s)
        ("tick_mono_ns", "<i8"),                       # the live tick's start (CLOCK_MONOTONIC)
        ("status", "u1"),                              # STATUSES index
        ("model_type", "u1"),                          # MODEL_TYPES index
        ("checkpoint", f"S{CHECKPOINT_BYTES}"),        # the shadow checkpoint's path ...
        ("checkpoint_sha256", f"S{SHA256_HEX}"),       # ... and the sha256 of its file (hex)
        ("actions", "<f4", (horizon, action_dim)),     # the shadow's chunk (NaN unless ok)
        ("live_first_action", "<f4", (action_dim,)),   # the live tick's first action
        ("divergence", "<f4", (action_dim,)),          # |shadow first action - live first action|
        ("dp", "<f4", (DP_DIMS,)),                     # the shadow's would-be command, after act's clamp
        ("inference_ms", "<f8"),                       # the shadow head's own time (NaN unless it ran)
        ("delay_ms", "<f8"),                           # from the live tick's start to this record
        ("skipped", "<i8"),                            # live ticks not taken just before this one
        ("vl_record", "<i8"), ("sensor_record", "<i8"), ("robot_record", "<i8"),   # the inputs, as live
        ("sensor_rows", "<i4"), ("robot_rows", "<i4"),
    ])


def _finite_list(values) -> list | None:
    """A list of floats, or None when any value is not finite (not computed)."""
    values = np.asarray(values, dtype=np.float64)
    return values.tolist() if np.isfinite(values).all() else None


def shadow_line(r) -> dict:
    """The session line of one shadow_results record, keys in LINE_FIELDS order."""
    ok = STATUSES[int(r["status"])] == "ok"
    actions = r["actions"]
    return {
        "action_id": int(r["action_id"]),
        "timestamp": float(r["timestamp"]),
        "status": STATUSES[int(r["status"])],
        "checkpoint": bytes(r["checkpoint"]).decode(errors="replace"),
        "checkpoint_sha256": bytes(r["checkpoint_sha256"]).decode(errors="replace"),
        "model_type": MODEL_TYPES[int(r["model_type"])],
        "actions": _finite_list(actions) if ok else None,
        "first_action": _finite_list(actions[0]) if ok else None,
        "live_first_action": _finite_list(r["live_first_action"]),
        "divergence": _finite_list(r["divergence"]) if ok else None,
        "dp": _finite_list(r["dp"]) if ok else None,
        "inference_ms": finite_or_none(r["inference_ms"]),
        "delay_ms": finite_or_none(r["delay_ms"]),
        "skipped": int(r["skipped"]),
        "vl_record": int(r["vl_record"]),
        "sensor_record": int(r["sensor_record"]),
        "sensor_rows": int(r["sensor_rows"]),
        "robot_record": int(r["robot_record"]),
        "robot_rows": int(r["robot_rows"]),
    }
