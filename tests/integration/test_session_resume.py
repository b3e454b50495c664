"""A writer SIGKILLed at random moments, again and again, then continued: every record once.

The "rings" here are a deterministic record generator (record i is built from i), so the
test runs without shared memory; the child process is a recorder's session logic as in
workers/record.py: plan_session, resume or a new session, checkpoints between batches.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from procs import REPO
from shm_vla.workers.session_state import find_sessions

TOTAL = 3000
KILLS = 8

CHILD = """
import sys, time
import numpy as np
from shm_vla.workers.session_files import SessionWriter, recover
from shm_vla.workers.session_state import SessionState, plan_session
from shm_vla.workers.session_stats import ACTION_FIELDS

out, total = sys.argv[1], int(sys.argv[2])
RUN = {"boot_id": "test", "results_inode": 1}
plan = plan_session(out, "inst", lambda s: s.run == RUN)
for root in plan.finalise:
    recover(root)
options = dict(save_data=True, flush_every=3, views=("View1",), shadow=True)
if plan.resume is not None:
    writer = SessionWriter.resume(plan.resume, **options)
else:
    writer = SessionWriter(out, state=SessionState("inst", RUN, cursors=plan.cursors), **options)
i = plan.cursors.get("results", 0)
print("start", i, flush=True)
while i < total:
    for _ in range(4):                     # one "drain": a batch of records
        record = {k: 1.0 for k in ACTION_FIELDS}
        record.update(action_id=i, timestamp=1e9 + i, held=None if i % 7 else "stale_robot")
        writer.write_timing(record)
        if i % 7:
            writer.write_result({"timestamp": 1e9 + i, "i": i})
        writer.write_robot_rows(np.full(16, float(i)), [i])
        writer.write_sensor_records([float(i)], [float(i)], [0.5], np.full((1, 8), float(i)), [i])
        if i % 4 == 0:                     # a VL update every 4 ticks (replay's features)
            writer.write_vl_features([i // 4], [i // 4 + 1], np.full((1, 16), float(i), np.float32), np.zeros((1, 5)))
        writer.write_frame("View1", "cam", float(i), b"\\xff\\xd8" + bytes(200))
        if i % 3:                          # a shadow line for some ticks (its own ring and cursor)
            writer.write_shadow({"action_id": i})
        i += 1
    writer.checkpoint({"results": i, "shadow_results": i})
    time.sleep(0.001)
writer.close({"results": i})
print("done", flush=True)
"""


def _child(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(out), str(TOTAL)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sigkill_at_any_moment_then_continue_keeps_every_record_once(tmp_path):
    rng = random.Random(7)
    starts = []
    for _ in range(KILLS):
        child = _child(tmp_path)
        line = child.stdout.readline().split()
        assert line[0] == "start", line
        starts.append(int(line[1]))
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    child = _child(tmp_path)
    assert child.stdout.readline().startswith("start")
    assert child.stdout.readline().strip() == "done"
    assert child.wait(30) == 0
    assert starts == sorted(starts) and starts[-1] > 0, starts      # it made progress between kills

    sessions = find_sessions(tmp_path, "inst")
    assert all(state.phase == "closed" for _, state in sessions)
    ids, results, robot, sensor, summaries, shadow = [], [], [], [], [], []
    robot_records, sensor_records, vl_records = [], [], []
    for root, _ in sessions:
        ticks = _lines(next(root.glob("performance_timings_*.jsonl"))) + _lines(next(root.glob("held_ticks_*.jsonl")))
        ids += sorted(t["action_id"] for t in ticks)
        results += [r["i"] for r in json.loads(next(root.glob("inference_results_*.json")).read_text())]
        rows = np.loadtxt(next(root.glob("robot_state_*.csv")), delimiter=",", skiprows=1, ndmin=2)
        robot += rows[:, 0].tolist()
        robot_records += rows[:, -1].astype(int).tolist()
        with np.load(next(root.glob("sensor_data_*.npz"))) as data:
            sensor += data["timestamps"].tolist()
            sensor_records += data["records"].tolist()
        with np.load(next(root.glob("vl_features_*.npz"))) as data:
            vl_records += data["records"].tolist()
            assert (data["features"][:, 0] == data["records"] * 4).all()     # each row whole, with its number
        summaries.append(json.loads(next(root.glob("performance_summary_*.json")).read_text()))
        shadow += [line["action_id"] for line in _lines(next(root.glob("shadow_results_*.jsonl")))]
    assert ids == list(range(TOTAL))
    assert shadow == [i for i in range(TOTAL) if i % 3]
    assert results == [i for i in range(TOTAL) if i % 7]
    assert robot == sensor == list(range(TOTAL))
    assert robot_records == sensor_records == list(range(TOTAL))          # ring record numbers: each once
    assert vl_records == list(range(TOTAL // 4))
    assert sum(s["total_actions"] + s["recorder"]["held_written"] for s in summaries) == TOTAL
    assert sum(s["holds"]["total"] for s in summaries) == len(range(0, TOTAL, 7))
    assert sum(s["recorder"]["results_written"] for s in summaries) == len(results)
    frames = sorted(p.name for root, _ in sessions for p in (root / "View1").iterdir())
    assert len(frames) == len(set(frames)) and not [f for f in frames if f.endswith(".tmp")]


def _recover_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shm_vla.cli", "recover", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_recover_command_finalises_a_cut_off_session_and_leaves_a_live_one_alone(tmp_path):
    child = _child(tmp_path)                     # a live recorder's session
    assert child.stdout.readline().startswith("start")
    try:
        (root, _), = find_sessions(tmp_path, "inst")
        busy = _recover_cli(str(root))
        assert busy.returncode == 1 and "in use by another process" in busy.stderr, busy
        assert not list(root.glob("performance_summary_*.json"))
    finally:
        child.send_signal(signal.SIGKILL)        # now it is cut off
        child.wait(10)
    done = _recover_cli(str(tmp_path))           # a folder of sessions: each unfinished one
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"finalised {root}") and "summary written" in done.stdout
    assert "VL features assembled" in done.stdout and list(root.glob("vl_features_*.npz"))
    timings = _lines(next(root.glob("performance_timings_*.jsonl")))
    held = _lines(next(root.glob("held_ticks_*.jsonl")))
    summary = json.loads(next(root.glob("performance_summary_*.json")).read_text())
    results = json.loads(next(root.glob("inference_results_*.json")).read_text())
    assert summary["total_actions"] == len(timings) > 0 and summary["recorder"]["held_written"] == len(held) > 0
    assert summary["recorder"]["results_written"] == len(results) > 0
    assert "already complete" in _recover_cli(str(root)).stdout
    missing = _recover_cli(str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "not a session directory" in missing.stderr
