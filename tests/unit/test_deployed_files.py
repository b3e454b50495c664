"""The files the deployed scripts read: the documented schema, the recorder's lines from ring
records (stages timed or not, held ticks), and the analyzer on deployed and older files.

The real-run version of these checks is tests/integration/test_deployed_scripts.py.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from deployed_scripts import analyze_performance, analyze_results
from session_schema import SessionSchema, check_session, doc_tables
from shm_vla import analyze
from shm_vla.shm.ring import META_DTYPE
from shm_vla.streams import HOLD_REASONS, results_dtype, vl_dtype
from shm_vla.workers.record import Recorder
from shm_vla.workers.session_files import ROBOT_CSV_ADDED, ROBOT_CSV_HEADER, SENSOR_ARRAYS, VL_ARRAYS, SessionWriter
from shm_vla.workers.session_stats import (
    ACTION_EXTRA_FIELDS, ADDED_ACTION_FIELDS, DEPLOYED_TIMING_FIELDS, MEASURED_FIELDS, VL_EXTRA_FIELDS,
    SessionSummary,
)


def test_the_documented_tables_are_the_fields_the_writer_writes():
    tables = doc_tables()
    names = {name: [f.name for f in rows] for name, rows in tables.items()}
    assert names["timings-deployed"] == list(DEPLOYED_TIMING_FIELDS)
    assert all(f.type in ("number", "integer") for f in tables["timings-deployed"])   # never null
    assert names["timings-action"] == list(ADDED_ACTION_FIELDS + ACTION_EXTRA_FIELDS)
    assert names["timings-vl"] == list(VL_EXTRA_FIELDS)
    assert [f.name for f in tables["held-overrides"] if f.type == "absent"] == list(MEASURED_FIELDS.values())
    assert names["results"][:6] == ["timestamp", "actions", "delta", "inference_time", "vl_update_number",
                                    "robot_state"]                                    # the deployed record
    assert names["robot-csv"] == ROBOT_CSV_HEADER + ROBOT_CSV_ADDED        # the deployed columns, then ours
    for table, arrays in (("sensor-npz", SENSOR_ARRAYS), ("vl-features-npz", VL_ARRAYS)):
        assert names[table] == list(arrays)
        assert [f.type.split("[")[0] for f in tables[table]] == [np.dtype(d).name for d in arrays.values()]
    assert names["summary"] == list(SessionSummary().to_dict())
    units = {f.name: f.unit for rows in tables.values() for f in rows}
    assert units["inference_time"] == "s" and units["total_time"] == "ms" and units["vl_update_time"] == "ms"


# --------------------------------------------------------------------------- the recorder's lines
class _Counter:
    def inc(self, n: int = 1) -> None:
        pass


def _recorder(writer: SessionWriter) -> Recorder:
    """The record conversion of a Recorder, writing to `writer` (no rings, no process)."""
    recorder = Recorder.__new__(Recorder)
    recorder.writer, recorder.records_written, recorder.vl_written = writer, _Counter(), _Counter()
    return recorder


def _tick(i: int, t0: float, held: str = "", split=(1.5, 0.5, 6.0), total_ms: float = 9.0) -> np.ndarray:
    """A results-ring record as act writes it; a held tick keeps the blank record's zero times."""
    r = np.zeros((), results_dtype(8, 7))
    r["action_id"], r["timestamp"], r["held"] = i, t0 + 0.1 * i, HOLD_REASONS.index(held)
    r["vl_update_number"], r["sensor_buffer_size"], r["robot_buffer_size"] = 1, 65, 100
    r["total_ms"], r["tick_lateness_ms"] = total_ms, 0.2
    for name in ("sensor_age_ms", "robot_age_ms", "vl_age_ms", "frame_age_ms", "view_skew_ms", "sensor_recv_age_ms",
                 "sensor_window_age_ms", "robot_recv_age_ms", "robot_window_age_ms"):
        r[name] = np.nan                       # unknown: null in the files (the unit relations skip them)
    if not held or held == "nonfinite_output":
        r["sensor_encoding_ms"], r["robot_encoding_ms"], r["action_prediction_ms"] = split
    r["actions"] = np.nan if held else 0.01 * i
    r["robot_ts"] = t0
    return r


def _session_from_ring_records(tmp_path: Path) -> tuple[SessionWriter, float]:
    t0 = time.time()
    writer = SessionWriter(tmp_path, stamp="s")
    recorder = _recorder(writer)
    vl = np.zeros(1, vl_dtype(16))
    vl["update"], vl["encode_ms"], vl["capture_ts"] = 1, 25.0, t0 - np.arange(5) * 0.01
    vl["skew_ms"] = 40.0
    meta = np.zeros(1, META_DTYPE)
    meta["recv_wall_ns"] = int(t0 * 1e9)
    recorder._vl(vl, meta)
    nan = math.nan
    ticks = [_tick(0, t0), _tick(1, t0, split=(nan, nan, 7.5)),      # one CUDA graph: encoders not timed
             _tick(2, t0, held="stale_robot"), _tick(3, t0, split=(nan, nan, nan), total_ms=11.0),
             _tick(4, t0, held="nonfinite_output"), _tick(5, t0, held="no_vl_feature"), _tick(6, t0)]
    for r in ticks:
        recorder._action(r, None)
    writer.close()
    return writer, t0


def test_recorder_lines_match_the_schema_and_the_deployed_scripts_read_them(tmp_path):
    writer, t0 = _session_from_ring_records(tmp_path)
    files = check_session(writer.path, (t0 - 1, time.time() + 1))
    actions, held, results = files["actions"], files["held"], files["results"]
    assert [t["action_id"] for t in actions] == [0, 1, 3, 6] and [t["action_id"] for t in held] == [2, 4, 5]
    vl_line = files["vl"][0]
    assert vl_line["action_id"] == 0 and vl_line["vl_update_time"] == 25.0 and vl_line["total_time"] == 0.0
    unsplit = actions[1]                   # the deployed stand-ins, and the file says the split is missing
    assert (unsplit["sensor_encoding_time"], unsplit["robot_encoding_time"], unsplit["action_prediction_time"]) \
        == (0.0, 0.0, 7.5)
    assert unsplit["sensor_encoding_ms"] is None and unsplit["action_prediction_ms"] == 7.5
    nothing_timed = actions[2]
    assert nothing_timed["action_prediction_time"] == 11.0 and nothing_timed["action_prediction_ms"] is None
    assert held[0]["held"] == "stale_robot" and held[0]["action_prediction_time"] is None   # no model ran
    assert held[1]["held"] == "nonfinite_output" and held[1]["action_prediction_time"] == 6.0
    assert [r["inference_time"] for r in results] == [0.009, 0.009, 0.011, 0.009]         # seconds

    perf = analyze_performance(writer.paths.timings)
    assert perf["total_actions"] == 5                                   # 4 action lines, 1 VL update
    assert perf["sensor_encoding"]["count"] == 2                        # timed: ticks 0 and 6 only
    assert perf["action_prediction"]["max"] == 11.0 and perf["mean_action_ms"] == pytest.approx(30.5 / 5)
    assert analyze_results(writer.paths.results_json)["inference_time"]["mean"] == pytest.approx(9.5)

    report = analyze.analyze(analyze.load_session(writer.path))
    assert report["records"] == {"read": 8, "actions": 4, "held": 3, "vl_updates": 1, "invalid": 0}
    assert report["warnings"] == []
    assert report["stages"]["sensor_encoding"]["count"] == 2          # a stage not timed is not a 0 ms sample
    assert report["stages"]["action_prediction"]["count"] == 3
    assert report["holds"]["by_reason"] == {"no_vl_feature": 1, "nonfinite_output": 1, "stale_robot": 1}
    summary = json.loads(writer.paths.summary.read_text())
    assert summary["sensor_encoding"]["mean_ms"] == 1.5 and summary["total_actions"] == 4


# --------------------------------------------------------------------------- other writers' files
def _deployed_line(ts: float, action_id: int, vl_number: int, vl_ms: float = 0, times=(0.0, 0.0, 0.0, 0.0),
                   sizes=(0, 0)) -> str:
    sensor, robot, prediction, total = times
    return json.dumps({"timestamp": ts, "action_id": action_id, "vl_update_number": vl_number,
                       "vl_update_time": vl_ms, "sensor_encoding_time": sensor, "robot_encoding_time": robot,
                       "action_prediction_time": prediction, "total_time": total,
                       "sensor_buffer_size": sizes[0], "robot_buffer_size": sizes[1]})


def test_analyzer_reads_the_deployed_receivers_files(tmp_path):
    # as the deployed receiver writes them: a VL update line carries the action count so far and 0s
    lines = [_deployed_line(1.0, 0, 1, vl_ms=500.0), _deployed_line(1.3, 1, 1, times=(4.0, 2.0, 60.0, 70.0),
                                                                      sizes=(65, 50)),
             _deployed_line(1.4, 2, 1, times=(0.0, 2.5, 65.0, 72.0), sizes=(65, 51)),
             _deployed_line(1.5, 2, 2, vl_ms=520.0), _deployed_line(1.6, 3, 2, times=(5.0, 3.0, 62.0, 75.0),
                                                                   sizes=(65, 52))]
    path = tmp_path / "performance_timings_20251112_160832.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    report = analyze.analyze(analyze.load_session(path))
    assert report["records"] == {"read": 5, "actions": 3, "held": 0, "vl_updates": 2, "invalid": 0}
    assert report["stages"]["vl_encoding"]["count"] == 2 and report["stages"]["total"]["min_ms"] == 70.0
    assert report["stages"]["sensor_encoding"]["count"] == 2          # 0 there means "not timed"
    assert report["verdict"]["label"] == "ACCEPTABLE"


def test_analyzer_reads_our_older_files_with_held_ticks_among_the_actions(tmp_path):
    older_vl = {"timestamp": 1.0, "vl_update_number": 1, "vl_update_time": 30.0, "view_skew_ms": 5.0}
    tick = {"timestamp": 1.1, "action_id": 0, "vl_update_number": 1, "vl_update_time": 0.0,
            "sensor_encoding_time": 1.0, "robot_encoding_time": 1.0, "action_prediction_time": 8.0,
            "total_time": 11.0, "sensor_buffer_size": 65, "robot_buffer_size": 100, "tick_lateness_ms": 0.1,
            "sensor_age_ms": 3.0, "robot_age_ms": 4.0, "vl_age_ms": 100.0, "frame_age_ms": 300.0,
            "view_skew_ms": 5.0, "held": None}
    held = {**tick, "timestamp": 1.2, "action_id": 1, "sensor_encoding_time": 0.0, "robot_encoding_time": 0.0,
            "action_prediction_time": 0.0, "total_time": 0.3, "robot_age_ms": 250.0, "held": "stale_robot"}
    path = tmp_path / "performance_timings_old.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (older_vl, tick, held, {**tick, "timestamp": 1.3,
                                                                                  "action_id": 2})))
    report = analyze.analyze(analyze.load_session(path))
    assert report["records"] == {"read": 4, "actions": 2, "held": 1, "vl_updates": 1, "invalid": 0}
    assert report["stages"]["action_prediction"]["min_ms"] == 8.0     # the held tick is no 0 ms sample
    assert report["holds"] == {"total": 1, "by_reason": {"stale_robot": 1}, "fraction": pytest.approx(1 / 3)}
    assert report["freshness"]["robot_age"]["max_ms"] == 250.0         # held ticks' ages count
    summary = SessionSummary()
    for line in path.read_text().splitlines():
        summary.add_timing(json.loads(line))
    assert summary.total_actions == 2 and summary.holds.by_reason == {"stale_robot": 1}
    assert summary.stages["action_prediction"].min == 8.0


def test_a_deployed_field_that_is_not_a_number_is_refused(tmp_path):
    schema = SessionSchema()
    tick = {f.name: 1 for f in schema.action[:len(DEPLOYED_TIMING_FIELDS) + len(ADDED_ACTION_FIELDS)]}
    tick["held"] = None
    with SessionWriter(tmp_path, stamp="s") as writer:
        with pytest.raises(ValueError, match="total_time"):
            writer.write_timing({**tick, "total_time": None})
        with pytest.raises(ValueError, match="sensor_buffer_size"):
            writer.write_timing({**tick, "sensor_buffer_size": None})
        writer.write_timing({**tick, "held": "stale_sensor", "total_time": None})   # held_ticks: ours, null allowed
