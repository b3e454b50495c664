"""`shm-vla replay` in one process: a session made by the real act tick and the real recorder
conversion over real rings (tests/replay_rig.py), replayed through checkpoints.

The real-process version (`shm-vla run ... --save-data`, a recorder killed mid-session, --vl)
is tests/integration/test_replay_pipeline.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from replay_rig import record_session, replay_checkpoints, sized_checkpoint
from shm_vla import replay, tick
from shm_vla.model import TickRunner, load_checkpoint
from shm_vla.workers.session_files import SessionWriter

TICKS = 30


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return replay_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _record(tmp_path: Path, instance: str, ckpt: Path, close: bool = True) -> Path:
    return record_session(tmp_path, instance, ckpt, TICKS, close)


def _main(capsys, *argv) -> tuple[int, dict | str, str]:
    code = replay.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if "--json" in argv and out else out), err


@pytest.mark.parametrize("model", ["flow", "regression"])
def test_a_session_replays_through_its_own_checkpoint_bit_exactly(tmp_path, instance, checkpoints, capsys, model):
    session = _record(tmp_path, instance, checkpoints[model])
    code, report, err = _main(capsys, session, "--checkpoint", checkpoints[model], "--json")
    assert code == 0, err
    ticks = [json.loads(line) for line in next(session.glob("performance_timings_*.jsonl")).read_text().splitlines()]
    ran = [t for t in ticks if t["vl_update_time"] == 0]
    assert report["ticks"] == len(ran) == TICKS and report["skipped"] == {}
    assert report["max_abs_diff"] == 0.0 and report["bit_exact"] and report["command_max_abs_diff"] == 0.0
    assert report["checkpoint"]["same_file_as_recorded"] is True
    assert [t["sensor_buffer_size"] for t in ran][:2] == [7, 14]          # front-padded windows were replayed too
    seeds = [t["noise_seed"] for t in ran]
    if model == "flow":
        assert seeds == [tick.tick_noise_seed(7, t["action_id"]) for t in ran]
    else:
        assert seeds == [-1] * TICKS


def test_another_checkpoint_gives_a_reported_difference(tmp_path, instance, checkpoints, capsys):
    session = _record(tmp_path, instance, checkpoints["flow"])
    code, report, err = _main(capsys, session, "--checkpoint", checkpoints["flow_other"], "--json")
    assert code == 0, err
    assert report["ticks"] == TICKS and report["max_abs_diff"] > 0.01 and not report["bit_exact"]
    assert report["ticks_differing"] == TICKS and report["checkpoint"]["same_file_as_recorded"] is False
    assert len(report["per_tick"]) == TICKS and len(report["first_action_max_abs_diff"]) == 7
    assert report["worst"][0]["max_abs_diff"] == report["max_abs_diff"]
    code, text, err = _main(capsys, session, "--checkpoint", checkpoints["flow_other"], "--fail-above", "1e-3",
                            "--plot", tmp_path / "diff.png")
    assert code == 1 and "max |diff|" in err and "30 tick(s) differ" in text
    assert (tmp_path / "diff.png").stat().st_size > 10_000
    code, _, err = _main(capsys, session, "--checkpoint", checkpoints["flow"], "--fail-above", "0")
    assert code == 0, err


def test_the_noise_seed_drives_the_flow_noise(checkpoints):
    """The recorded seed redraws the tick's noise: the same seed gives the same chunk, another
    seed another; seeds are 32-bit (torch's CPU generator keeps only the low 32 bits)."""
    runner = TickRunner(load_checkpoint(checkpoints["flow"]))
    runner.vl_in[:] = 0.1
    first = runner.run(tick.tick_noise_seed(0, 5)).actions.copy()
    assert np.array_equal(runner.run(tick.tick_noise_seed(0, 5)).actions, first)
    assert not np.array_equal(runner.run(tick.tick_noise_seed(0, 6)).actions, first)
    assert not np.array_equal(runner.run(tick.tick_noise_seed(1, 5)).actions, first)
    seeds = [tick.tick_noise_seed(s, a) for s in (0, 1, 2**40 + 3) for a in (0, 1, 36_000)]
    assert all(0 <= x < 2**32 for x in seeds) and len(set(seeds)) == len(seeds)


def test_a_session_without_save_data_is_one_line_naming_what_is_missing(tmp_path, checkpoints, capsys):
    with SessionWriter(tmp_path, stamp="s") as writer:
        pass
    code, out, err = _main(capsys, writer.path, "--checkpoint", checkpoints["flow"])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "recorded without --save-data" in err and "VL features" in err
    code, _, err = _main(capsys, tmp_path / "nothing", "--checkpoint", checkpoints["flow"])
    assert code == 2 and len(err.splitlines()) == 1 and "not a session directory" in err


def test_a_cut_off_session_replays_its_complete_records(tmp_path, instance, checkpoints, capsys):
    """A recorder killed before close leaves parts, not .npz, and maybe torn last lines."""
    session = _record(tmp_path, instance, checkpoints["flow"], close=False)
    assert not list(session.glob("*.npz")) and list(session.glob("*.parts"))
    timings = next(session.glob("performance_timings_*.jsonl"))
    with open(timings, "a") as f:
        f.write('{"timestamp": 1.0, "action_id": 99, "vl_up')            # a line torn by the kill
    code, report, err = _main(capsys, session, "--checkpoint", checkpoints["flow"], "--json")
    assert code == 0, err
    assert report["finalised"] is False and "not finalised" in report["warnings"][0]
    assert report["ticks"] == TICKS and report["max_abs_diff"] == 0.0


def test_checkpoints_of_other_sizes(tmp_path, instance, checkpoints, capsys):
    session = _record(tmp_path, instance, checkpoints["flow"])
    wide = sized_checkpoint(tmp_path / "vl32.pt", vl_dim=32)
    code, out, err = _main(capsys, session, "--checkpoint", wide)
    assert code == 2 and len(err.splitlines()) == 1
    assert "VL features are 64 wide" in err and "take 32" in err and "--vl" in err
    channels = sized_checkpoint(tmp_path / "c100.pt", sensor_channels=100)
    code, out, err = _main(capsys, session, "--checkpoint", channels)
    assert code == 2 and len(err.splitlines()) == 1 and "sensor channels 100" in err
    # a longer robot window: the recorded rows before each tick's window are there to feed it
    long_window = sized_checkpoint(tmp_path / "tr120.pt", robot_window=120)
    code, report, err = _main(capsys, session, "--checkpoint", long_window, "--json")
    assert code == 0, err
    assert report["ticks"] == TICKS and report["max_abs_diff"] > 0


def test_a_window_the_session_does_not_hold_is_skipped_and_counted(tmp_path, instance, checkpoints, capsys):
    session = _record(tmp_path, instance, checkpoints["flow"])
    stamp = session.name.removeprefix("async_inference_")
    csv = session / f"robot_state_{stamp}.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:1] + lines[1:40] + lines[41:]) + "\n")   # one robot record lost
    code, report, err = _main(capsys, session, "--checkpoint", checkpoints["flow"], "--json")
    assert code == 0, err
    skipped = report["skipped"]["robot_window_not_recorded"]
    assert skipped > 0 and report["ticks"] == TICKS - skipped and report["max_abs_diff"] == 0.0


def test_record_index_finds_whole_windows_only():
    index = replay.RecordIndex(np.array([3, 4, 5, 7, 8]))
    assert index.window(5, 3) == slice(0, 3) and index.window(8, 2) == slice(3, 5)
    assert index.window(7, 2) is None and index.window(9, 1) is None and index.window(2, 1) is None
    shuffled = replay.RecordIndex(np.array([8, 3, 5, 4, 7]))
    assert shuffled.window(5, 3).tolist() == [1, 3, 2]
