"""`shm-vla replay` on sessions of real pipelines (`shm-vla run ... --sim --save-data`): through
the checkpoint they were recorded with, bit-exact (CPU, float32, the recorded thread count);
through another, a reported difference; a recorder killed mid-session (SIGKILL) still leaves a
replayable session; a session without --save-data is one line."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from procs import REPO, spawn, stop, wait_for, write_config
from replay_rig import replay_checkpoints, sized_checkpoint
from shm_vla.shm import stats as statsmod
from shm_vla.shm.segment import remove_instance

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return replay_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _commands(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _run(tmp_path: Path, instance: str, ckpt: Path, model: str, save_data: bool = True, kill_recorder: bool = False,
         commands: int = 30) -> tuple[Path, str]:
    """A supervised pipeline on the simulators until `commands` commands went out (and as many
    again after a SIGKILL of the recorder); its one session directory and the run's log."""
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    out, log = tmp_path / "out", tmp_path / "run.log"
    sup = spawn("run", model, "--instance", instance, "--config", str(cfg_path), "--checkpoint", str(ckpt),
                "--out", str(out), "--sim", *(["--save-data"] if save_data else []), log=log)
    sent = out / f"commands_{instance}.jsonl"
    try:
        assert wait_for(lambda: _commands(sent) > commands, 90), log.read_text()[-3000:]
        if kill_recorder:
            pid = statsmod.read_snapshot(instance, "record")["pid"]
            os.kill(pid, signal.SIGKILL)
            n_kill = _commands(sent)
            assert wait_for(lambda: (s := statsmod.read_snapshot(instance, "record"))["pid"] != pid and s["alive"],
                            30)
            assert wait_for(lambda: _commands(sent) > n_kill + commands, 90)
    finally:
        assert stop(sup, timeout=30) == 0
    (session,) = out.glob("async_inference_*")
    return session, log.read_text()


def _replay(session: Path, ckpt: Path, *args: str) -> tuple[int, dict | None, str]:
    proc = subprocess.run([sys.executable, "-m", "shm_vla.cli", "replay", str(session), "--checkpoint", str(ckpt),
                           "--json", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else None, proc.stderr


def _results(session: Path) -> list[dict]:
    return json.loads(next(session.glob("inference_results_*.json")).read_text())


@pytest.fixture(scope="module")
def flow_session(tmp_path_factory, checkpoints):
    """A flow session whose recorder was SIGKILLed mid-session and continued it."""
    import uuid
    tmp, instance = tmp_path_factory.mktemp("flow"), f"t{uuid.uuid4().hex[:10]}"
    try:
        session, log = _run(tmp, instance, checkpoints["flow"], "flow", kill_recorder=True)
        assert "continuing this run's session" in log
        yield session
    finally:
        remove_instance(instance)            # what the stopped run left in /dev/shm


def test_a_session_with_a_recorder_restart_replays_bit_exactly_through_its_checkpoint(flow_session, checkpoints):
    code, report, err = _replay(flow_session, checkpoints["flow"])
    assert code == 0, err
    results = _results(flow_session)
    assert report["ticks"] == len(results) > 60                        # every tick that ran, across the kill
    assert all(reason.startswith("held.") for reason in report["skipped"]), report["skipped"]
    assert report["max_abs_diff"] == 0.0 and report["bit_exact"] and report["nonfinite_ticks"] == 0
    assert report["checkpoint"]["same_file_as_recorded"] is True
    assert report["replayed_on"] == {**report["replayed_on"], "device": "cpu", "dtype": "float32", "threads": 1}


def test_the_recorded_frames_re_encode_to_the_recorded_features(flow_session, checkpoints):
    code, report, err = _replay(flow_session, checkpoints["flow"], "--vl")
    assert code == 0, err
    vl = report["vl"]
    assert vl["updates_reencoded"] > 10 and vl["max_abs_diff"] == 0.0 and vl["bit_exact"]
    assert report["max_abs_diff"] == 0.0 and report["ticks"] == len(_results(flow_session))


def test_vl_skips_the_ticks_whose_frames_are_missing_or_unreadable(flow_session, checkpoints, tmp_path):
    session = Path(shutil.copytree(flow_session, tmp_path / flow_session.name))
    stamp = session.name.removeprefix("async_inference_")
    with np.load(session / f"vl_features_{stamp}.npz") as vl:
        used = vl["capture_timestamps"][[3, 6]]                   # the frames of two VL updates
    gone = next((session / "View2").glob(f"*_{used[0][1]:.3f}.jpg"))
    gone.unlink()
    bad = next((session / "View4").glob(f"*_{used[1][3]:.3f}.jpg"))
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    code, report, err = _replay(session, checkpoints["flow"], "--vl")
    assert code == 0, err
    assert report["vl"]["updates_without_frames"] == 2 and report["skipped"]["frames_not_recorded"] > 0
    assert report["ticks"] + report["skipped"]["frames_not_recorded"] == len(_results(session))
    assert report["max_abs_diff"] == 0.0 and report["vl"]["max_abs_diff"] == 0.0


def test_a_checkpoint_of_another_vl_width_replays_through_the_re_encoded_frames(flow_session, tmp_path):
    narrow = sized_checkpoint(tmp_path / "vl32.pt", vl_dim=32)
    code, report, err = _replay(flow_session, narrow)
    assert code == 2 and report is None and "--vl" in err and len(err.strip().splitlines()) == 1
    code, report, err = _replay(flow_session, narrow, "--vl")
    assert code == 0, err
    assert report["vl"]["width"] == [64, 32] and report["vl"]["max_abs_diff"] is None
    assert report["ticks"] == len(_results(flow_session)) and report["max_abs_diff"] > 0


def test_another_checkpoint_reports_its_difference(flow_session, checkpoints, tmp_path):
    code, report, err = _replay(flow_session, checkpoints["flow_other"], "--plot", str(tmp_path / "d.png"))
    assert code == 0, err
    assert report["ticks"] == len(_results(flow_session)) and report["max_abs_diff"] > 0.01
    assert report["checkpoint"]["same_file_as_recorded"] is False and (tmp_path / "d.png").exists()
    code, report, err = _replay(flow_session, checkpoints["flow_other"], "--fail-above", "1e-6")
    assert code == 1 and "max |diff|" in err


def test_a_regression_session_replays_bit_exactly_and_through_a_flow_head(tmp_path, instance, checkpoints):
    session, _ = _run(tmp_path, instance, checkpoints["regression"], "regression", commands=20)
    code, report, err = _replay(session, checkpoints["regression"])
    assert code == 0, err
    assert report["ticks"] == len(_results(session)) > 20 and report["max_abs_diff"] == 0.0
    code, report, err = _replay(session, checkpoints["flow"])     # no seeds recorded: act's rule draws them
    assert code == 0, err
    assert report["ticks"] == len(_results(session)) and report["max_abs_diff"] > 0.01


def test_a_session_recorded_without_save_data_is_one_clear_line(tmp_path, instance, checkpoints):
    session, _ = _run(tmp_path, instance, checkpoints["flow"], "flow", save_data=False, commands=5)
    code, report, err = _replay(session, checkpoints["flow"])
    assert code == 2 and report is None
    assert len(err.strip().splitlines()) == 1 and "recorded without --save-data" in err, err
