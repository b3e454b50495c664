"""What the seed system's analysis scripts read from a session, re-implemented for the tests.

The cell's users analyse sessions with two scripts of the seed system (they are not in
this repository; docs/SESSION_FILES.md promises they keep working):

- ``analyze_performance.py performance_timings_<stamp>.jsonl``: loads every line (JSON Lines,
  or a JSON list when the first line starts with ``[``), then reads from *every* line, VL
  update lines included, ``action_prediction_time`` and ``total_time`` as numbers, keeps
  ``sensor_encoding_time`` and ``robot_encoding_time`` where they are ``> 0``, reads the
  first and last line's ``timestamp``; prints count, mean, std, min, p50, p95, p99, max
  (numpy) of each, the lines beyond p95 of the prediction time, and a verdict on the p95
  of ``total_time`` (< 30 EXCELLENT, < 50 GOOD, < 100 ACCEPTABLE, else NEEDS OPTIMIZATION).
- ``analyze_inference_logs.py --results inference_results_<stamp>.json``: ``json.load`` of
  the list, then per record ``timestamp``, ``inference_time * 1000`` (the file holds
  seconds), ``get('vl_update_number', 0)`` and ``actions[0]`` (the first step of the chunk,
  7 values: joints 1-6 and gripper, as a numpy array); the action rate (records / span of
  timestamps), the intervals between records in ms, per-dimension statistics of the first
  step, and the number of distinct VL updates.

Each function below reads the same fields the same way (item access on every record,
``> 0`` comparisons, numpy statistics on plain lists), so a missing field raises KeyError,
a null raises TypeError, and a wrong unit shows in the numbers, as in the scripts. They
return what the scripts print, as a dict.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VERDICTS = ((30.0, "EXCELLENT"), (50.0, "GOOD"), (100.0, "ACCEPTABLE"))
ACTION_NAMES = ("Joint 1", "Joint 2", "Joint 3", "Joint 4", "Joint 5", "Joint 6", "Gripper")


def _stats(values: list) -> dict | None:
    if not values:
        return None   # the script prints nothing for an empty list
    return {"count": len(values), "mean": float(np.mean(values)), "std": float(np.std(values)),
            "min": float(np.min(values)), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "p99": float(np.percentile(values, 99)),
            "max": float(np.max(values))}


def load_timings(path: Path) -> list:
    """JSON Lines, unless the first line starts with '[' (then one JSON list)."""
    with open(path) as f:
        first_line = f.readline()
        f.seek(0)
        if first_line.strip() and not first_line.strip().startswith("["):
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def analyze_performance(path: Path) -> dict:
    """analyze_performance.py on a timings file."""
    timings = load_timings(path)
    action_times = [t["action_prediction_time"] for t in timings]
    sensor_times = [t["sensor_encoding_time"] for t in timings if t["sensor_encoding_time"] > 0]
    robot_times = [t["robot_encoding_time"] for t in timings if t["robot_encoding_time"] > 0]
    total_times = [t["total_time"] for t in timings]
    out = {"total_actions": len(timings), "duration_s": None, "fps": None}
    if len(timings) > 1:
        duration = timings[-1]["timestamp"] - timings[0]["timestamp"]
        out["duration_s"] = duration
        out["fps"] = len(timings) / duration if duration > 0 else 0
    out.update(action_prediction=_stats(action_times), sensor_encoding=_stats(sensor_times),
               robot_encoding=_stats(robot_times), total=_stats(total_times))
    p95_action = np.percentile(action_times, 95)
    out["outliers"] = sorted(t for t in action_times if t > p95_action)
    p95_total = float(np.percentile(total_times, 95))
    out["p95_total_ms"] = p95_total
    out["mean_action_ms"] = float(np.mean(action_times))
    out["verdict"] = next((name for limit, name in VERDICTS if p95_total < limit), "NEEDS OPTIMIZATION")
    return out


def analyze_results(path: Path) -> dict:
    """analyze_inference_logs.py --results on an inference_results .json file."""
    with open(path) as f:
        results = json.load(f)
    timestamps = [r["timestamp"] for r in results]
    inference_times_ms = [r["inference_time"] * 1000 for r in results]
    vl_update_numbers = [r.get("vl_update_number", 0) for r in results]
    intervals_ms = np.diff(timestamps) * 1000
    actions_first = np.array([r["actions"][0] for r in results])
    duration = timestamps[-1] - timestamps[0]
    per_dimension = {name: {"mean": float(actions_first[:, i].mean()), "std": float(actions_first[:, i].std()),
                            "min": float(actions_first[:, i].min()), "max": float(actions_first[:, i].max())}
                     for i, name in enumerate(ACTION_NAMES)}
    unique_vl_updates = len(np.unique(vl_update_numbers))
    return {"total_actions": len(results), "duration_s": duration, "action_rate_hz": len(results) / duration,
            "inference_time": _stats(inference_times_ms), "interval": _stats(list(intervals_ms)),
            "per_dimension": per_dimension, "unique_vl_updates": unique_vl_updates,
            "actions_per_vl_update": len(results) / unique_vl_updates if unique_vl_updates else 0}
