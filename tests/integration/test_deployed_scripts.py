"""The seed's analysis scripts on the session of a real `shm-vla run flow --sim --save-data`.

The run has held ticks: its robot ingest is stopped (SIGSTOP) for a second, so the gate
withholds commands (stale_robot) until it is resumed. Then: every file of the session
matches the schema of docs/SESSION_FILES.md (names, order, types, units); the deployed
scripts (re-implemented in tests/deployed_scripts.py) read it without an error and report
the ticks that ran, in the right units; our analyzer and summary still report the held
ticks by reason, the VL updates and the freshness of every tick.
"""
from __future__ import annotations

import json
import os
import signal
import time
import uuid

import numpy as np
import pytest

from deployed_scripts import analyze_performance, analyze_results
from procs import spawn, stop, wait_for, write_config
from session_schema import check_session
from shm_vla import analyze
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.shm import segment
from shm_vla.shm import stats as statsmod

pytestmark = pytest.mark.slow
ROBOT_STOP_S = 1.0      # > act.max_robot_age_ms (200 ms): ticks held as stale_robot


def _commands(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deployed")
    instance = f"t{uuid.uuid4().hex[:10]}"
    ckpt = make_checkpoint(tmp / "flow.pt", "tiny", "flow")
    cfg_path, _ = write_config(tmp / "cfg.toml")
    out = tmp / "out"
    log = out / f"commands_{instance}.jsonl"
    start_s = time.time()
    sup = spawn("run", "flow", "--instance", instance, "--config", str(cfg_path), "--checkpoint", str(ckpt),
                "--out", str(out), "--sim", "--save-data", log=tmp / "run.log")
    try:
        assert wait_for(lambda: _commands(log) > 20, 90), (tmp / "run.log").read_text()[-3000:]
        pid = statsmod.read_snapshot(instance, "ingest-robot")["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(ROBOT_STOP_S)
        finally:
            os.kill(pid, signal.SIGCONT)
        n_resumed = _commands(log)
        assert wait_for(lambda: _commands(log) > n_resumed + 20, 60)
    finally:
        assert stop(sup, timeout=30) == 0
        segment.remove_instance(instance)
    end_s = time.time()
    (root,) = out.glob("async_inference_*")
    files = check_session(root, (start_s, end_s))      # every file against the documented schema
    return {"root": root, "stamp": root.name.removeprefix("async_inference_"), **files}


def test_every_file_matches_the_documented_schema_and_held_ticks_are_apart(session):
    held, actions, results = session["held"], session["actions"], session["results"]
    assert {t["held"] for t in held} >= {"stale_robot"}, [t["held"] for t in held]
    ids = sorted(t["action_id"] for t in actions + held)
    assert ids == list(range(ids[0], ids[0] + len(ids)))            # one line per tick, in one file or the other
    assert [r["action_id"] for r in results] == [t["action_id"] for t in actions]   # a result per action line
    for t in actions:                                                # no tick line with zero times
        assert t["action_prediction_time"] > 0 and t["total_time"] > 0 and t["held"] is None


def test_analyze_performance_reads_every_line_and_sees_only_the_ticks_that_ran(session):
    timings, actions, vl = session["timings"], session["actions"], session["vl"]
    report = analyze_performance(session["root"] / f"performance_timings_{session['stamp']}.jsonl")
    assert report["total_actions"] == len(timings) == len(actions) + len(vl)
    # the action lines' times and the VL lines' zeros (as the deployed receiver writes them), nothing else
    prediction_ms = [t["action_prediction_time"] for t in actions]
    assert report["mean_action_ms"] * len(timings) == pytest.approx(sum(prediction_ms))
    assert report["action_prediction"]["max"] == max(prediction_ms)
    timed_sensor = [t for t in actions if t["sensor_encoding_ms"] is not None]
    assert (report["sensor_encoding"] or {"count": 0})["count"] == len(timed_sensor)
    assert report["total"]["max"] == max(t["total_time"] for t in actions)
    assert report["verdict"] in ("EXCELLENT", "GOOD", "ACCEPTABLE", "NEEDS OPTIMIZATION")


def test_analyze_inference_logs_reads_the_inference_time_in_seconds(session):
    actions = session["actions"]
    report = analyze_results(session["root"] / f"inference_results_{session['stamp']}.json")
    assert report["total_actions"] == len(actions)
    total_ms = np.array([t["total_time"] for t in actions])
    assert report["inference_time"]["mean"] == pytest.approx(total_ms.mean())       # ms, as the tick took
    assert report["inference_time"]["max"] == pytest.approx(total_ms.max()) and total_ms.max() < 1000
    assert report["unique_vl_updates"] >= 2


def test_our_analyzer_and_summary_still_report_held_ticks_vl_updates_and_freshness(session, capsys):
    held, actions, vl = session["held"], session["actions"], session["vl"]
    reasons = {r: sum(t["held"] == r for t in held) for r in {t["held"] for t in held}}
    assert analyze.main([str(session["root"]), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == {"read": len(session["timings"]) + len(held), "actions": len(actions),
                                 "held": len(held), "vl_updates": len(vl), "invalid": 0}
    assert report["warnings"] == []
    assert report["holds"]["by_reason"] == reasons and report["holds"]["total"] == len(held)
    assert report["stages"]["total"]["count"] == len(actions)
    assert report["stages"]["action_prediction"]["min_ms"] > 0
    assert report["freshness"]["robot_age"]["count"] == len(actions) + len(held)
    assert report["freshness"]["robot_age"]["max_ms"] > ROBOT_STOP_S * 1e3 / 2      # the stop shows
    summary = json.loads((session["root"] / f"performance_summary_{session['stamp']}.json").read_text())
    assert summary["total_actions"] == len(actions) and summary["holds"] == {"total": len(held), "by_reason": reasons}
    assert summary["vl_encoding"]["count"] == len(vl)
    assert summary["recorder"] == {"records_written": len(session["timings"]), "held_written": len(held),
                                   "results_written": len(actions), "lost": 0}
