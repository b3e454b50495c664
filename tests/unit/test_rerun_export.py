"""`shm-vla analyze SESSION --rerun OUT.rrd` on a session written by the real SessionWriter,
read back with rerun-sdk's own reader: entities, row counts, times and values."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rerun", reason="pip install shm-vla[rerun] (Python >= 3.11)")
import simplejpeg  # noqa: E402

import rrd_contents  # noqa: E402
from shm_vla import analyze, rerun_export  # noqa: E402
from shm_vla.workers.session_files import SessionWriter  # noqa: E402
from shm_vla.workers.session_stats import ACTION_FIELDS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0
TICKS, HELD = 20, {3: "stale_robot", 7: "no_vl_feature"}
SENSOR_HZ, SENSOR_N, ASCAN_LEN = 650.0, 900, 32
ROBOT_N = 50
LIMIT = 0.1


def _jpeg(value: int) -> bytes:
    return simplejpeg.encode_jpeg(np.full((8, 16, 3), value, np.uint8), quality=90)


def _tick(i: int) -> dict:
    record = {name: 1.0 for name in ACTION_FIELDS}
    record.update(timestamp=T0 + 0.1 * i, action_id=i, vl_update_number=1 + i // 4, vl_update_time=0.0,
                  total_time=5.0 + i, tick_lateness_ms=0.1 * i, sensor_age_ms=2.0 + i, held=HELD.get(i))
    return record


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    """A session with --save-data: view k has k frames, robot and sensor rows, 20 ticks of which
    2 held, 4 VL updates, results with every other command clamped and the last one not sent."""
    out = tmp_path_factory.mktemp("sessions")
    writer = SessionWriter(out, stamp="20270115_093000", save_data=True)
    frames = {}
    for k in range(1, 6):
        for j in range(k):
            jpeg = _jpeg(40 * k + j)
            writer.write_frame(f"View{k}", f"cam{k}", T0 + 0.2 * j + 0.01 * k, jpeg)
            frames.setdefault(f"camera/view{k}", []).append((T0 + 0.2 * j + 0.01 * k, jpeg))
    robot = np.zeros((ROBOT_N, 16))
    robot[:, 1] = T0 + np.arange(ROBOT_N) / 100.0           # origin_timestamp
    robot[:, 4:10] = np.arange(6) + np.arange(ROBOT_N)[:, None] * 0.01
    writer.write_robot_rows(robot)
    sensor_t = T0 + np.arange(SENSOR_N) / SENSOR_HZ
    forces = np.sin(np.arange(SENSOR_N) / 10.0).astype(np.float32)
    alines = np.random.default_rng(0).random((SENSOR_N, ASCAN_LEN), dtype=np.float32)
    writer.write_sensor_records(sensor_t, sensor_t, forces, alines)
    for u in range(4):
        writer.write_vl_update({"timestamp": T0 + 0.4 * u, "vl_update_number": u + 1, "vl_update_time": 20.0 + u,
                                "view_skew_ms": 3.0, "capture_timestamps": [T0] * 5})
    results = []
    for i in range(TICKS):
        writer.write_timing(_tick(i))
        if i in HELD:
            continue
        actions = np.full((8, 7), 0.05 * (1 + i % 3), np.float32)
        dp = np.clip(actions[0, :6], -LIMIT, LIMIT)
        result = {"timestamp": T0 + 0.1 * i, "actions": actions, "delta": None, "inference_time": 5.0,
                  "vl_update_number": 1, "robot_state": {"joints": [0.0] * 6, "pose": [0.0] * 6, "timestamp": T0},
                  "action_id": i, "dp": dp, "sent": i != TICKS - 1, "clamped": bool((actions[0, :6] > LIMIT).any())}
        writer.write_result(result)
        results.append(result)
    writer.close()
    return {"dir": writer.path, "frames": frames, "robot": robot, "sensor_t": sensor_t, "forces": forces,
            "results": results}


@pytest.fixture(scope="module")
def rrd(session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rrd") / "session.rrd"
    assert analyze.main([str(session["dir"]), "--rerun", str(out)]) == 0
    return out


def test_entities_and_row_counts(session, rrd):
    results = session["results"]
    buckets = np.floor((session["sensor_t"] - session["sensor_t"][0]) * rerun_export.ASCAN_PLOT_HZ)
    expected = {
        **{entity: len(frames) for entity, frames in session["frames"].items()},
        "robot/joints": ROBOT_N, "robot/pose": ROBOT_N,
        "sensor/force": SENSOR_N, "sensor/ascan": len(np.unique(buckets)),
        "sensor/ascan_image": int(np.ceil(SENSOR_N / SENSOR_HZ / rerun_export.MMODE_BLOCK_S)),
        "action/chunk": len(results), "action/model": len(results),
        "action/command": sum(r["sent"] for r in results),
        "events/clamped": sum(r["clamped"] for r in results), "events/held": len(HELD),
        "timing/total_ms": TICKS, "timing/tick_lateness_ms": TICKS, "ages/sensor_age_ms": TICKS,
        "timing/vl_encode_ms": 4,
    }
    counts = rrd_contents.rows(rrd)
    assert {entity: counts[entity] for entity in expected} == expected
    assert 0 < expected["events/clamped"] < len(results) and expected["action/command"] == len(results) - 1


def test_frames_are_the_recorded_jpeg_bytes_at_their_capture_time(session, rrd):
    for entity, frames in session["frames"].items():
        logged = rrd_contents.column(rrd, entity, "EncodedImage:blob")
        assert [round(t, 6) for t, _ in logged] == [round(t, 6) for t, _ in sorted(frames)]
        assert [bytes(blob[0]) for _, blob in logged] == [jpeg for _, jpeg in sorted(frames)]
        media = rrd_contents.column(rrd, entity, "EncodedImage:media_type")
        assert {m[0] for _, m in media} == {"image/jpeg"}


def test_values_and_events(session, rrd):
    force = rrd_contents.column(rrd, "sensor/force", "Scalars:scalars")
    np.testing.assert_allclose([v[0] for _, v in force], session["forces"], rtol=1e-6)
    np.testing.assert_allclose([t for t, _ in force], session["sensor_t"], atol=1e-6)
    joints = rrd_contents.column(rrd, "robot/joints", "Scalars:scalars")
    np.testing.assert_allclose([v for _, v in joints], session["robot"][:, 4:10])
    np.testing.assert_allclose([t for t, _ in joints], session["robot"][:, 1], atol=1e-6)
    sent = [r for r in session["results"] if r["sent"]]
    command = rrd_contents.column(rrd, "action/command", "Scalars:scalars")
    np.testing.assert_allclose([v for _, v in command], [r["dp"] for r in sent], rtol=1e-6)
    held = rrd_contents.column(rrd, "events/held", "TextLog:text")
    assert [round(t - T0, 3) for t, _ in held] == [0.3, 0.7]
    assert "stale_robot" in held[0][1][0] and "no_vl_feature" in held[1][1][0]
    chunk = rrd_contents.column(rrd, "action/chunk", "Tensor:data")
    assert len(chunk) == len(session["results"])
    for (t, (tensor,)), result in zip(chunk, session["results"]):
        assert tensor["shape"] == [8, 7] and t == pytest.approx(result["timestamp"], abs=1e-6)
        np.testing.assert_allclose(tensor["buffer"], result["actions"].ravel())
    total = rrd_contents.column(rrd, "timing/total_ms", "Scalars:scalars")
    assert [v[0] for _, v in total] == [5.0 + i for i in range(TICKS)]


def test_damaged_files_are_skipped_and_named(session, tmp_path):
    """A line cut by a crash and a result without a chunk: the rest is written, each named."""
    damaged = tmp_path / session["dir"].name
    subprocess.run(["cp", "-r", str(session["dir"]), str(damaged)], check=True)
    timings = next(damaged.glob("performance_timings_*.jsonl"))
    timings.write_text(timings.read_text() + '{"timestamp": 1800000009.0, "action_')
    results = next(damaged.glob("inference_results_*.jsonl"))
    results.write_text(results.read_text() + '{"timestamp": 1800000009.0, "actions": null}\n')
    summary = rerun_export.write_recording(damaged, tmp_path / "d.rrd")
    assert any("1 line(s) not JSON objects" in w for w in summary.warnings), summary.warnings
    assert any("1 record(s) without a time or an H x A chunk" in w for w in summary.warnings), summary.warnings
    assert rrd_contents.rows(tmp_path / "d.rrd")["action/chunk"] == len(session["results"])


def test_sensor_npz_is_memory_mapped(session):
    arrays = rerun_export.npz_arrays(next(session["dir"].glob("sensor_data_*.npz")))
    assert isinstance(arrays["alines"], np.memmap) and arrays["alines"].shape == (SENSOR_N, ASCAN_LEN)
    np.testing.assert_array_equal(arrays["forces"], session["forces"])


def test_without_the_extra_one_line_and_the_analysis_still_printed(session, tmp_path):
    code = ("import sys; sys.modules['rerun'] = None\n"
            "from shm_vla import analyze\n"
            f"sys.exit(analyze.main([{str(session['dir'])!r}, '--rerun', {str(tmp_path / 'x.rrd')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert "verdict:" in result.stdout
    assert result.stderr.strip() == ("shm-vla analyze: --rerun needs rerun-sdk: pip install shm-vla[rerun]; "
                                     "no recording written")
    assert not (tmp_path / "x.rrd").exists()
