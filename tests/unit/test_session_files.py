"""SessionWriter: the deployed file formats, streaming, crash recovery, bounded memory, statistics."""
from __future__ import annotations

import csv
import json
import math
import re
import tracemalloc

import numpy as np
import pytest

from shm_vla.workers.session_files import (
    ROBOT_CSV_ADDED, ROBOT_CSV_HEADER, SessionClosedError, SessionPaths, SessionWriter, parts_arrays, recover,
)
from shm_vla.workers.session_stats import (
    ACTION_EXTRA_FIELDS, ACTION_FIELDS, DEPLOYED_TIMING_FIELDS, HoldCounter, OTHER_REASON, RunningStats,
    SessionSummary,
)

STAMP = "20240102_030405"
DEPLOYED_SUMMARY = {
    "total_actions": None, "elapsed_time_sec": None, "average_fps": None,
    "vl_encoding": ["count", "mean_ms", "std_ms", "min_ms", "max_ms", "p50_ms", "p95_ms", "p99_ms"],
    "sensor_encoding": ["mean_ms", "std_ms"],
    "robot_encoding": ["mean_ms", "std_ms"],
    "action_prediction": ["mean_ms", "std_ms", "min_ms", "max_ms", "p50_ms", "p95_ms", "p99_ms"],
    "total_inference": ["mean_ms", "std_ms", "min_ms", "max_ms"],
}


def action_record(i: int, **overrides) -> dict:
    record = {
        "timestamp": 1_700_000_000.0 + 0.1 * i, "action_id": i, "vl_update_number": i // 4,
        "vl_update_time": 0.0, "sensor_encoding_time": 1.5, "robot_encoding_time": 2.5,
        "action_prediction_time": 5.0 + (i % 7), "total_time": 10.0 + (i % 11),
        "sensor_buffer_size": 65, "robot_buffer_size": 100,
        "tick_lateness_ms": 0.05 * ((i % 9) - 4), "sensor_age_ms": 2.0 + i % 3, "robot_age_ms": 6.0,
        "vl_age_ms": 150.0, "frame_age_ms": 320.0, "view_skew_ms": 12.0,
        "held": "stale_robot" if i % 10 == 9 else None,
    }
    record.update(overrides)
    return record


def vl_record(n: int, time_ms: float = 40.0) -> dict:
    return {"timestamp": 1_700_000_000.0 + 0.4 * n, "vl_update_number": n, "vl_update_time": time_ms,
            "view_skew_ms": 8.0}


def result_record(i: int) -> dict:
    return {"timestamp": 1_700_000_000.0 + 0.1 * i, "actions": np.full((8, 7), 0.01 * i),
            "delta": None, "inference_time": 5.0, "vl_update_number": i // 4,
            "robot_state": {"joints": np.arange(6.0), "pose": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                            "timestamp": 1_700_000_000.0 + 0.1 * i}}


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def crash(writer: SessionWriter) -> None:
    """What a dead process leaves: the kernel drops its session lock; close() never runs."""
    writer._lock.release()


def test_session_directory_and_file_names(tmp_path):
    with SessionWriter(tmp_path, stamp=STAMP) as writer:
        writer.write_timing(action_record(0))
    names = sorted(p.name for p in writer.path.iterdir())
    assert writer.path == tmp_path / f"async_inference_{STAMP}"
    assert names == [f"held_ticks_{STAMP}.jsonl", f"inference_results_{STAMP}.json",
                     f"inference_results_{STAMP}.jsonl", f"performance_summary_{STAMP}.json",
                     f"performance_timings_{STAMP}.jsonl"]


def test_generated_stamp_is_local_time_and_unique(tmp_path):
    first = SessionWriter(tmp_path)
    second = SessionWriter(tmp_path)
    first.close()
    second.close()
    assert re.fullmatch(r"\d{8}_\d{6}", first.stamp)
    assert second.stamp != first.stamp and second.stamp.startswith(first.stamp[:8])
    with pytest.raises(FileExistsError):
        SessionWriter(tmp_path, stamp=first.stamp)


def test_timings_are_json_lines_with_deployed_field_order(tmp_path):
    with SessionWriter(tmp_path, stamp=STAMP) as writer:
        writer.write_vl_update(dict(reversed(vl_record(1).items())))
        for i in range(5):
            writer.write_timing(dict(reversed(action_record(i, extra_field="kept").items())))
    lines = read_lines(writer.paths.timings)
    assert len(lines) == 6
    assert list(lines[0]) == list(DEPLOYED_TIMING_FIELDS) + ["view_skew_ms"]   # deployed: every field
    assert lines[0]["action_id"] == 0 and lines[0]["total_time"] == 0.0 and lines[0]["vl_update_time"] == 40.0
    known = list(ACTION_FIELDS) + list(ACTION_EXTRA_FIELDS[:3])           # + each stage's own measurement
    assert list(lines[1]) == known + ["extra_field"]
    assert lines[1]["extra_field"] == "kept"
    assert [line["held"] for line in lines[1:]] == [None] * 5


def test_timings_flushed_every_n_records_without_close(tmp_path):
    writer = SessionWriter(tmp_path, stamp=STAMP, flush_every=10)
    for i in range(10):
        writer.write_timing(action_record(i, held=None))
    assert len(writer.paths.timings.read_text().splitlines()) == 10
    writer.close()


def test_results_json_equals_streamed_jsonl_and_is_strict_json(tmp_path):
    with SessionWriter(tmp_path, stamp=STAMP) as writer:
        for i in range(3):
            writer.write_result(result_record(i))
        writer.write_result({**result_record(3), "actions": [[math.nan, math.inf, 1.0]]})
    text = writer.paths.results_json.read_text()
    assert "NaN" not in text and "Infinity" not in text
    results = json.loads(text)
    assert results == read_lines(writer.paths.results_jsonl)
    assert set(results[0]) == {"timestamp", "actions", "delta", "inference_time", "vl_update_number",
                               "robot_state"}
    assert set(results[0]["robot_state"]) == {"joints", "pose", "timestamp"}
    assert np.array(results[2]["actions"]).shape == (8, 7)
    assert results[3]["actions"] == [[None, None, 1.0]]


def test_summary_has_deployed_structure_and_new_sections(tmp_path):
    with SessionWriter(tmp_path, stamp=STAMP) as writer:
        for i in range(40):
            if i % 4 == 0:
                writer.write_vl_update(vl_record(i // 4, time_ms=30.0 + i))
            writer.write_timing(action_record(i))
        writer.note_lost(3)
    summary = json.loads(writer.paths.summary.read_text())
    for key, fields in DEPLOYED_SUMMARY.items():
        assert key in summary
        if fields:
            assert list(summary[key]) == fields
    assert summary["total_actions"] == 36                  # the ticks that ran; 4 were held
    assert summary["elapsed_time_sec"] == pytest.approx(3.8)
    assert summary["average_fps"] == pytest.approx(35 / 3.8)
    assert summary["vl_encoding"]["count"] == 10
    assert summary["vl_encoding"]["min_ms"] == 30.0 and summary["vl_encoding"]["max_ms"] == 66.0
    assert summary["sensor_encoding"]["mean_ms"] == pytest.approx(1.5)
    assert summary["holds"] == {"total": 4, "by_reason": {"stale_robot": 4}}
    assert summary["jitter"]["max_ms"] == pytest.approx(0.2)
    assert set(summary["freshness"]) == {"sensor_age", "robot_age", "vl_age", "frame_age", "view_skew"}
    assert summary["freshness"]["sensor_age"]["max_ms"] == 4.0
    assert summary["recorder"] == {"records_written": 46, "held_written": 4, "results_written": 0, "lost": 3}


def test_vl_update_repeated_in_action_records_counts_once(tmp_path):
    with SessionWriter(tmp_path, stamp=STAMP) as writer:
        writer.write_vl_update(vl_record(7, time_ms=50.0))
        writer.write_timing(action_record(0, vl_update_number=7, vl_update_time=50.0))
        writer.write_timing(action_record(1, vl_update_number=7, vl_update_time=50.0))
        writer.write_timing(action_record(2, vl_update_number=8, vl_update_time=45.0))
    assert writer.summary.stages["vl_encoding"].count == 2


def test_save_data_files(tmp_path):
    jpeg = bytes([0xFF, 0xD8, 0xFF, 0xE0]) + bytes(range(256)) + b"\xff\xd9"
    robot = np.arange(3 * 16, dtype=np.float64).reshape(3, 16) + 0.125
    alines = np.random.default_rng(0).standard_normal((5, 1025)).astype(np.float32)
    with SessionWriter(tmp_path, stamp=STAMP, save_data=True) as writer:
        frame = writer.write_frame("View3", "44377151", 1_700_000_000.12345, jpeg)
        writer.write_robot_rows(robot[:2], [40, 41])
        writer.write_robot_rows(robot[2])                          # ring record not known: -1
        writer.write_sensor_records(np.arange(2.0), np.arange(2.0) + 0.5, np.ones(2), alines[:2], [7, 8])
        writer.write_sensor_records(np.arange(2.0, 5.0), np.arange(2.0, 5.0) + 0.5, np.ones(3), alines[2:],
                                    np.array([9, 10, 11]))
        writer.write_vl_features([3, 4], [4, 5], np.ones((2, 16), np.float32), np.zeros((2, 5)))
    assert frame == writer.path / "View3" / "44377151_1700000000.123.jpg"
    assert frame.read_bytes() == jpeg
    assert sorted(p.name for p in writer.path.glob("View*")) == [f"View{i}" for i in range(1, 6)]
    with open(writer.paths.robot_csv) as f:
        rows = list(csv.reader(f))
    assert rows[0][:16] == ROBOT_CSV_HEADER and len(ROBOT_CSV_HEADER) == 16     # the deployed columns, then ours
    assert rows[0][16:] == ROBOT_CSV_ADDED == ["ring_record"]
    assert rows[0][:4] == ["recv_timestamp", "origin_timestamp", "send_timestamp", "force_placeholder"]
    assert np.array([r[:16] for r in rows[1:]], dtype=np.float64).tolist() == robot.tolist()
    assert [r[16] for r in rows[1:]] == ["40", "41", "-1"]
    with np.load(writer.paths.sensor_npz) as data:
        assert sorted(data.files) == ["alines", "forces", "records", "send_timestamps", "timestamps"]
        assert data["alines"].shape == (5, 1025) and data["alines"].dtype == np.float32
        np.testing.assert_array_equal(data["alines"], alines)
        np.testing.assert_array_equal(data["timestamps"], np.arange(5.0))
        np.testing.assert_array_equal(data["send_timestamps"], np.arange(5.0) + 0.5)
        assert data["records"].tolist() == [7, 8, 9, 10, 11] and data["records"].dtype == np.int64
    with np.load(writer.paths.vl_npz) as data:
        assert data["records"].tolist() == [3, 4] and data["updates"].tolist() == [4, 5]
        assert data["features"].shape == (2, 16) and data["capture_timestamps"].shape == (2, 5)
    assert not writer.paths.sensor_parts.exists() and not writer.paths.vl_parts.exists()


def test_parts_are_read_before_assembly_with_complete_rows_only(tmp_path):
    """A session still being recorded (or cut off): its arrays are readable from the parts."""
    writer = SessionWriter(tmp_path, stamp=STAMP, save_data=True, flush_every=1)
    writer.write_vl_features([0, 1, 2], [1, 2, 3], np.arange(48, dtype=np.float32).reshape(3, 16), np.zeros((3, 5)))
    with open(writer.paths.vl_parts / "features.bin", "ab") as f:
        f.write(b"\0" * 10)                                         # a row torn by a crash
    arrays = parts_arrays(writer.paths.vl_parts)
    assert arrays["records"].tolist() == [0, 1, 2] and arrays["features"].shape == (3, 16)
    assert arrays["features"][2, 15] == 47
    assert parts_arrays(tmp_path / "nothing.parts") == {}
    writer.close()


def test_sensor_npz_assembled_across_copy_chunks(tmp_path):
    rows = 700   # 2.9 MB of alines: several 1 MiB copy chunks, not a multiple of one
    alines = np.random.default_rng(1).standard_normal((rows, 1025)).astype(np.float32)
    with SessionWriter(tmp_path, stamp=STAMP, save_data=True) as writer:
        for start in range(0, rows, 65):
            part = slice(start, min(start + 65, rows))
            n = part.stop - part.start
            writer.write_sensor_records(np.arange(part.start, part.stop, dtype=float), np.zeros(n),
                                        np.zeros(n), alines[part])
    with np.load(writer.paths.sensor_npz) as data:
        np.testing.assert_array_equal(data["alines"], alines)


def test_invalid_writes_are_rejected(tmp_path):
    with SessionWriter(tmp_path, stamp=STAMP) as writer:
        with pytest.raises(KeyError, match="held"):
            writer.write_timing({k: v for k, v in action_record(0).items() if k != "held"})
        with pytest.raises(ValueError, match="vl_update_time"):
            writer.write_vl_update(vl_record(1, time_ms=0.0))
        with pytest.raises(ValueError, match="save_data"):
            writer.write_frame("View1", "cam", 1.0, b"x")
    with SessionWriter(tmp_path, stamp="other", save_data=True) as writer:
        with pytest.raises(ValueError, match="unknown view"):
            writer.write_frame("View9", "cam", 1.0, b"x")
        with pytest.raises(ValueError, match="N x 16"):
            writer.write_robot_rows(np.zeros((2, 15)))
        with pytest.raises(ValueError, match="differ in length"):
            writer.write_sensor_records(np.zeros(2), np.zeros(2), np.zeros(3), np.zeros((2, 1025)))


def test_close_is_idempotent_and_later_writes_fail(tmp_path):
    writer = SessionWriter(tmp_path, stamp=STAMP)
    writer.write_timing(action_record(0))
    first = writer.close()
    summary_text = writer.paths.summary.read_text()
    assert writer.close() == first
    assert writer.paths.summary.read_text() == summary_text
    with pytest.raises(SessionClosedError):
        writer.write_timing(action_record(1))


def test_context_manager_closes_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with SessionWriter(tmp_path, stamp=STAMP) as writer:
            writer.write_timing(action_record(0))
            raise RuntimeError("boom")
    assert writer.closed and writer.paths.summary.exists()


def test_crash_without_close_then_recover(tmp_path):
    alines = np.ones((4, 1025), dtype=np.float32)
    writer = SessionWriter(tmp_path, stamp=STAMP, save_data=True, flush_every=1)
    for i in range(12):
        writer.write_timing(action_record(i))
        writer.write_result(result_record(i))
    writer.write_robot_rows(np.zeros((2, 16)))
    writer.write_sensor_records(np.arange(4.0), np.arange(4.0), np.ones(4), alines)
    # The crash: torn last lines and a torn sensor row; close() never runs.
    paths = writer.paths
    for path in (paths.timings, paths.held, paths.results_jsonl):
        with open(path, "a") as f:
            f.write('{"timestamp": 17000')
    with open(paths.robot_csv, "a") as f:
        f.write("1.0,2.0")
    with open(paths.sensor_parts / "alines.bin", "ab") as f:
        f.write(b"\0" * 100)
    (paths.root / "View1" / "cam_1.000.jpg.tmp").write_bytes(b"\xff\xd8half")
    assert not paths.results_json.exists() and not paths.sensor_npz.exists()
    crash(writer)

    report = recover(paths.root)

    assert sorted(report["trimmed"]) == sorted([paths.timings.name, paths.held.name, paths.results_jsonl.name,
                                                paths.robot_csv.name])
    assert len(read_lines(paths.timings)) == 11 and len(read_lines(paths.held)) == 1   # tick 9 was held
    assert len(json.loads(paths.results_json.read_text())) == 12
    assert len(paths.robot_csv.read_text().splitlines()) == 3
    with np.load(paths.sensor_npz) as data:
        assert data["alines"].shape == (4, 1025) and data["timestamps"].tolist() == [0.0, 1.0, 2.0, 3.0]
    summary = json.loads(paths.summary.read_text())
    assert summary["total_actions"] == 11 and summary["recorder"]["results_written"] == 12
    assert summary["holds"] == {"total": 1, "by_reason": {"stale_robot": 1}}
    assert report["summary_written"] and report["sensor_records"] == 4
    assert report["removed_tmp"] == 1 and list((paths.root / "View1").iterdir()) == []


def test_recover_before_anything_flushed_and_twice(tmp_path):
    writer = SessionWriter(tmp_path, stamp=STAMP, save_data=True, flush_every=1000)
    writer.write_timing(action_record(0))   # still in the process's buffer at the "crash"
    crash(writer)
    recover(writer.path)
    assert json.loads(writer.paths.results_json.read_text()) == []
    assert json.loads(writer.paths.summary.read_text())["total_actions"] == 0
    assert recover(writer.path)["summary_written"] is False


def test_recover_on_a_closed_session_changes_nothing(tmp_path):
    with SessionWriter(tmp_path, stamp=STAMP, save_data=True) as writer:
        writer.write_result(result_record(0))
        writer.write_sensor_records([1.0], [1.0], [0.5], np.zeros((1, 1025)))
    before = {p.name: p.read_bytes() for p in writer.path.iterdir() if p.is_file()}
    report = recover(writer.path)
    after = {p.name: p.read_bytes() for p in writer.path.iterdir() if p.is_file()}
    assert before == after and report["trimmed"] == [] and not report["summary_written"]


def test_recover_rejects_a_non_session_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a session directory"):
        recover(tmp_path)


def _timing_memory_growth_bytes(tmp_path, n_records: int) -> int:
    writer = SessionWriter(tmp_path, stamp=STAMP, flush_every=10)
    for i in range(200):   # warm-up: lazily created objects and caches
        writer.write_timing(action_record(i))
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(200, 200 + n_records):
            writer.write_timing(action_record(i, held=f"reason_{i % 200}"))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    writer.close()
    assert writer.summary.total_actions + writer.summary.held_records == 200 + n_records
    return after - before


def test_memory_does_not_grow_with_records(tmp_path):
    # Keeping 5000 records would take megabytes; the summary holds a fixed-size state.
    assert _timing_memory_growth_bytes(tmp_path, 5000) < 64 * 1024


@pytest.mark.slow
def test_rss_does_not_grow_over_100k_records(tmp_path):
    # tracemalloc would make 100k records slow; the process RSS is coarse but enough here:
    # keeping the records would take well over 100 MB.
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    writer = SessionWriter(tmp_path, stamp=STAMP, flush_every=10)
    for i in range(1000):
        writer.write_timing(action_record(i))
    rss_before_bytes = process.memory_info().rss
    for i in range(1000, 101_000):
        writer.write_timing(action_record(i))
    rss_growth_bytes = process.memory_info().rss - rss_before_bytes
    summary = writer.close()
    assert summary["total_actions"] + summary["recorder"]["held_written"] == 101_000
    assert rss_growth_bytes < 16 * 1024 * 1024


@pytest.mark.parametrize("distribution", ["lognormal", "uniform", "bimodal"])
def test_percentiles_match_numpy_within_one_percent(distribution):
    rng = np.random.default_rng(42)
    values = {
        "lognormal": rng.lognormal(mean=2.0, sigma=0.6, size=20_000),
        "uniform": rng.uniform(0.5, 95.0, size=20_000),
        "bimodal": np.concatenate([rng.normal(8.0, 0.3, 18_500), rng.normal(60.0, 5.0, 1_500)]),
    }[distribution]
    stats = RunningStats()
    stats.add_many(values.tolist())
    for q in (50, 95, 99):
        assert stats.percentile(q) == pytest.approx(np.percentile(values, q), rel=0.01)
    assert stats.mean == pytest.approx(values.mean(), rel=1e-9)
    assert stats.std == pytest.approx(values.std(), rel=1e-6)
    assert (stats.min, stats.max) == (values.min(), values.max())


def test_running_stats_edge_cases():
    empty = RunningStats()
    assert empty.to_dict(("count", "mean_ms", "p99_ms", "min_ms")) == {
        "count": 0, "mean_ms": None, "p99_ms": None, "min_ms": None}
    one = RunningStats()
    one.add(None)
    one.add(0.0)   # below the histogram's first bin: still clamped to the exact min/max
    assert (one.count, one.percentile(50), one.std) == (1, 0.0, 0.0)


def test_hold_reasons_are_bounded():
    holds = HoldCounter(max_reasons=3)
    for reason in ["a", "b", "c", "d", "e", None, "a"]:
        holds.add(reason)
    assert holds.to_dict() == {"total": 6, "by_reason": {"a": 2, "b": 1, "c": 1, OTHER_REASON: 2}}


def test_summary_ignores_bad_values():
    summary = SessionSummary()
    summary.add_timing(action_record(0, total_time="fast", sensor_age_ms=None, tick_lateness_ms=True))
    summary.add_timing(action_record(1, total_time=math.nan))
    out = summary.to_dict()
    assert out["total_actions"] == 2
    assert out["total_inference"]["mean_ms"] is None
    assert out["freshness"]["sensor_age"]["count"] == 1
    assert out["jitter"]["count"] == 1


def test_paths_of_an_existing_session(tmp_path):
    with SessionWriter(tmp_path, stamp=STAMP) as writer:
        pass
    assert SessionPaths.of_dir(writer.path) == writer.paths


def test_files_that_do_not_fit_are_not_started_and_recover_finishes_them(tmp_path, monkeypatch, capsys):
    """The results .json and the sensor .npz are written whole at the end (a copy of their
    data): with too little free (the file system's free space is the hardware boundary here)
    neither is started, the data stays readable (.jsonl, parts), the session stays 'closing',
    and recover finishes it once there is room."""
    from shm_vla.workers import recover_cli, session_files
    from shm_vla.workers.session_state import SessionState, read_state
    rows = 200                                                   # 0.8 MB of alines
    alines = np.random.default_rng(2).standard_normal((rows, 1025)).astype(np.float32)
    writer = SessionWriter(tmp_path, stamp=STAMP, save_data=True,
                           state=SessionState("t", {"boot_id": "b", "results_inode": 1}))
    writer.write_sensor_records(np.arange(rows, dtype=float), np.zeros(rows), np.zeros(rows), alines)
    monkeypatch.setattr(session_files, "free_bytes", lambda path: 1_000_000)
    summary = writer.close({})
    results_json, npz = writer.unfinished
    assert summary is not None and results_json.startswith(f"inference_results_{STAMP}.json needs 0 MB and 1 MB")
    assert npz.startswith(f"sensor_data_{STAMP}.npz (its data stays in sensor_data_{STAMP}.parts/) needs 1 MB")
    assert not writer.paths.results_json.exists()
    paths = writer.paths
    assert paths.sensor_parts.is_dir() and not paths.sensor_npz.exists() and paths.summary.exists()
    assert read_state(paths.root).phase == "closing"
    np.testing.assert_array_equal(parts_arrays(paths.sensor_parts)["alines"], alines)
    assert recover_cli.main([str(tmp_path)]) == 1                # still no room: said, not finalised
    assert "not finalised" in capsys.readouterr().out and read_state(paths.root).phase == "closing"
    monkeypatch.undo()                                           # room again
    assert recover_cli.main([str(tmp_path)]) == 0
    assert f"{rows} sensor records assembled" in capsys.readouterr().out
    assert read_state(paths.root).phase == "closed" and not paths.sensor_parts.exists()
    with np.load(paths.sensor_npz) as data:
        np.testing.assert_array_equal(data["alines"], alines)
    assert recover_cli.main([str(tmp_path)]) == 0 and capsys.readouterr().out == ""   # nothing left to do


def test_recover_keeps_a_live_recorders_reserve(tmp_path, monkeypatch):
    """Finalising an old session beside a live one never eats into the live one's reserve."""
    from shm_vla.workers import session_files
    writer = SessionWriter(tmp_path, stamp=STAMP, flush_every=1)
    writer.write_result(result_record(0))
    crash(writer)
    monkeypatch.setattr(session_files, "free_bytes", lambda path: 100_000_000)
    report = recover(writer.paths.root, reserve_bytes=95_000_000)
    (why,) = report["unfinished"]
    assert "keeping 95 MB for the live session" in why and report["results"] == 1
    assert recover(writer.paths.root)["unfinished"] == [] and writer.paths.results_json.exists()
