"""The recorder's checkpoint: continuing a cut-off session, the choice of session, the lock."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shm_vla.workers.session_files import SessionClosedError, SessionWriter, recover
from shm_vla.workers.session_state import (
    STATE_FILE, SessionBusy, SessionLock, SessionState, plan_session, read_state,
)
from shm_vla.workers.session_stats import is_action_record
from test_session_files import action_record, crash, read_lines, result_record, vl_record

RUN = {"boot_id": "b", "results_inode": 7}
OTHER_RUN = {"boot_id": "b", "results_inode": 8}


def _writer(out, run=RUN, cursors=None, instance="i", **kw) -> SessionWriter:
    return SessionWriter(out, save_data=True, flush_every=2, state=SessionState(instance, run, cursors=cursors or {}),
                         **kw)


def _write(writer: SessionWriter, first: int, last: int) -> None:
    """Records first..last-1 as the recorder writes them: a timing, a result unless held, data rows."""
    for i in range(first, last):
        writer.write_timing(action_record(i))
        if i % 10 != 9:
            writer.write_result(result_record(i))
        if i % 4 == 0:
            writer.write_vl_update(vl_record(i // 4))
        writer.write_robot_rows(np.full(16, float(i)))
        writer.write_sensor_records([float(i)], [float(i)], [0.5], np.full((1, 1025), float(i)))


def test_resume_cuts_what_came_after_the_checkpoint_and_goes_on_without_a_duplicate(tmp_path):
    writer = _writer(tmp_path)
    _write(writer, 0, 23)
    writer.checkpoint({"results": 23})
    _write(writer, 23, 30)                 # written (and partly flushed) after the checkpoint
    writer.flush()
    crash(writer)
    assert len(read_lines(writer.paths.timings)) > 23 + 23 // 4 + 1

    plan = plan_session(tmp_path, "i", lambda s: s.run == RUN)
    assert plan.resume == writer.path and plan.cursors == {"results": 23} and plan.finalise == []
    resumed = SessionWriter.resume(plan.resume, save_data=True, flush_every=2)
    _write(resumed, 23, 40)                # the continuing recorder reads from the checkpoint on
    summary = resumed.close({"results": 40})

    timings, held = read_lines(writer.paths.timings), read_lines(writer.paths.held)
    ticks = [t for t in timings if is_action_record(t)] + held
    assert sorted(t["action_id"] for t in ticks) == list(range(40))
    assert [t["action_id"] for t in held] == [9, 19, 29, 39]
    assert [t["vl_update_number"] for t in timings if not is_action_record(t)] == list(range(10))
    results = json.loads(writer.paths.results_json.read_text())
    assert [round(r["actions"][0][0] * 100) for r in results] == [i for i in range(40) if i % 10 != 9]
    robot = np.loadtxt(writer.paths.robot_csv, delimiter=",", skiprows=1)
    assert robot[:, 0].tolist() == list(range(40))
    with np.load(writer.paths.sensor_npz) as sensor:
        assert sensor["timestamps"].tolist() == list(range(40))
    assert summary["total_actions"] == 36 and summary["recorder"]["results_written"] == len(results) == 36
    assert summary["recorder"]["records_written"] == len(timings) and summary["recorder"]["held_written"] == 4
    state = read_state(writer.path)
    assert state.phase == "closed" and state.cursors == {"results": 40}


def test_lost_records_are_kept_across_a_restart(tmp_path):
    writer = _writer(tmp_path)
    writer.note_lost(3)
    writer.checkpoint({"results": 0})
    crash(writer)
    resumed = SessionWriter.resume(writer.path, save_data=True)
    resumed.note_lost(2)
    assert resumed.close()["recorder"]["lost"] == 5


def test_recover_of_a_cut_off_session_counts_the_checkpointed_losses_and_closes_it(tmp_path):
    writer = _writer(tmp_path)
    _write(writer, 0, 5)
    writer.note_lost(4)
    writer.checkpoint({"results": 5})
    crash(writer)
    recover(writer.path)
    summary = json.loads(writer.paths.summary.read_text())
    assert summary["recorder"]["lost"] == 4 and summary["total_actions"] == 5     # ticks 0..4: none held
    assert read_state(writer.path).phase == "closed"


def test_a_live_writers_session_is_never_resumed_nor_recovered(tmp_path):
    writer = _writer(tmp_path)
    _write(writer, 0, 3)
    with pytest.raises(SessionBusy, match="in use"):
        recover(writer.path)
    with pytest.raises(SessionBusy):
        SessionWriter.resume(writer.path)
    assert not writer.paths.summary.exists()
    writer.close()
    with SessionLock(writer.path):         # close() let it go
        pass


def test_a_closed_session_is_not_resumed(tmp_path):
    writer = _writer(tmp_path)
    writer.close({"results": 0})
    with pytest.raises(ValueError, match="no checkpoint of a session being recorded"):
        SessionWriter.resume(writer.path)
    with pytest.raises(SessionClosedError):
        writer.checkpoint({"results": 1})


def _session(out, run, phase, cursors, instance="i"):
    writer = _writer(out, run, cursors, instance)
    if phase == "closed":
        writer.close(cursors)
        return writer.path
    crash(writer)
    if phase == "closing":
        state = read_state(writer.path)
        state.phase = "closing"
        (writer.path / STATE_FILE).write_text(json.dumps(state.to_dict()))
    return writer.path


def test_plan_continues_this_runs_session_and_finalises_every_other_cut_off_one(tmp_path):
    other_run = _session(tmp_path, OTHER_RUN, "recording", {"results": 900})
    other_instance = _session(tmp_path, RUN, "recording", {"results": 5}, instance="j")
    _session(tmp_path, OTHER_RUN, "closed", {"results": 1000})
    mine = _session(tmp_path, RUN, "recording", {"results": 50, "vl_feature": 12})
    plan = plan_session(tmp_path, "i", lambda s: s.run == RUN)
    assert plan.resume == mine and plan.cursors == {"results": 50, "vl_feature": 12}
    assert plan.finalise == [other_run]
    assert other_instance not in plan.finalise


def test_plan_after_a_close_of_this_run_starts_a_new_session_where_it_ended(tmp_path):
    closed = _session(tmp_path, RUN, "closed", {"results": 70})
    plan = plan_session(tmp_path, "i", lambda s: s.run == RUN)
    assert plan.resume is None and plan.cursors == {"results": 70} and plan.finalise == []
    closing = _session(tmp_path, RUN, "closing", {"results": 90})   # killed while finalising
    plan = plan_session(tmp_path, "i", lambda s: s.run == RUN)
    assert plan.resume is None and plan.cursors == {"results": 90} and plan.finalise == [closing]
    assert closed not in plan.finalise


def test_plan_of_a_new_run_starts_its_rings_from_the_start(tmp_path):
    old = _session(tmp_path, OTHER_RUN, "recording", {"results": 90})
    plan = plan_session(tmp_path, "i", lambda s: s.run == RUN)
    assert plan.resume is None and plan.cursors == {} and plan.finalise == [old]


def test_a_session_whose_files_are_shorter_than_its_checkpoint_is_finalised_not_continued(tmp_path):
    mine = _session(tmp_path, RUN, "recording", {"results": 4})
    state = read_state(mine)
    timings = next(name for name in state.sizes if name.startswith("performance_timings"))
    state.sizes[timings] += 100          # a machine crash lost pages the checkpoint counted on
    (mine / STATE_FILE).write_text(json.dumps(state.to_dict()))
    plan = plan_session(tmp_path, "i", lambda s: s.run == RUN)
    assert plan.resume is None and plan.cursors == {"results": 4} and plan.finalise == [mine]


def test_unreadable_state_is_no_state(tmp_path):
    (tmp_path / STATE_FILE).write_text("{not json")
    assert read_state(tmp_path) is None
    (tmp_path / STATE_FILE).write_text(json.dumps({"instance": "i", "run": {}, "phase": "odd"}))
    assert read_state(tmp_path) is None


def test_a_session_continued_twice_keeps_its_data_from_before_the_first_restart(tmp_path):
    writer = _writer(tmp_path)
    _write(writer, 0, 6)
    writer.checkpoint({"results": 6})
    crash(writer)
    crash(SessionWriter.resume(writer.path, save_data=True))     # killed again before its first record
    resumed = SessionWriter.resume(writer.path, save_data=True)
    _write(resumed, 6, 8)
    resumed.close({"results": 8})
    with np.load(writer.paths.sensor_npz) as sensor:
        assert sensor["timestamps"].tolist() == list(range(8))
    assert np.loadtxt(writer.paths.robot_csv, delimiter=",", skiprows=1)[:, 0].tolist() == list(range(8))


def _shadow_line(i: int) -> dict:
    return {"action_id": i, "status": "ok", "divergence": [0.01 * i]}


def test_the_shadow_file_is_cut_back_with_the_others_and_goes_on_without_a_duplicate(tmp_path):
    """A recorder killed between checkpoints: the shadow lines written after the checkpoint are
    cut off and read again from the shadow's ring, as every other file's (no line twice)."""
    writer = _writer(tmp_path, shadow=True)
    for i in range(12):
        writer.write_shadow(_shadow_line(i))
    writer.checkpoint({"results": 0, "shadow_results": 12})
    assert f"shadow_results_{writer.stamp}.jsonl" in read_state(writer.path).sizes
    for i in range(12, 17):
        writer.write_shadow(_shadow_line(i))
    writer.flush()
    crash(writer)
    plan = plan_session(tmp_path, "i", lambda s: s.run == RUN)
    assert plan.resume == writer.path and plan.cursors["shadow_results"] == 12
    resumed = SessionWriter.resume(plan.resume, save_data=True, flush_every=2, shadow=True)
    for i in range(12, 20):
        resumed.write_shadow(_shadow_line(i))
    resumed.close({"results": 0, "shadow_results": 20})
    assert [line["action_id"] for line in read_lines(writer.paths.shadow_results)] == list(range(20))


def test_recover_cuts_a_torn_shadow_line(tmp_path):
    writer = _writer(tmp_path, shadow=True)
    writer.write_shadow(_shadow_line(0))
    writer.flush()
    crash(writer)
    with open(writer.paths.shadow_results, "a") as f:
        f.write('{"action_id": 1, "sta')                  # the crash cut this line
    report = recover(writer.path)
    assert writer.paths.shadow_results.name in report["trimmed"]
    assert [line["action_id"] for line in read_lines(writer.paths.shadow_results)] == [0]


def test_write_shadow_needs_a_writer_made_for_a_shadow(tmp_path):
    writer = _writer(tmp_path)
    with pytest.raises(ValueError, match="shadow=True"):
        writer.write_shadow(_shadow_line(0))
    writer.close()
    assert not writer.paths.shadow_results.exists()
