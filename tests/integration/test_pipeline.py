"""End to end on CPU: the supervised pipeline with simulated peers, real processes, loopback."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from procs import spawn, stop, wait_for, write_config
from shm_vla import config
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.shm import stats as statsmod
from shm_vla.workers.session_stats import is_action_record

pytestmark = pytest.mark.slow
RUN_S = 10.0


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"flow": make_checkpoint(root / "flow.pt", "tiny", "flow"),
            "regression": make_checkpoint(root / "reg.pt", "tiny", "regression")}


def _commands(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _session(out: Path) -> Path:
    dirs = sorted(out.glob("async_inference_*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ticks(sess: Path) -> list[dict]:
    """Every tick of a session by action_id: the action lines of the timings and the held ticks."""
    ticks = [t for t in _jsonl(next(sess.glob("performance_timings_*.jsonl"))) if is_action_record(t)]
    return sorted(ticks + _jsonl(next(sess.glob("held_ticks_*.jsonl"))), key=lambda t: t["action_id"])


def _vl_lines(sess: Path) -> list[dict]:
    return [t for t in _jsonl(next(sess.glob("performance_timings_*.jsonl"))) if not is_action_record(t)]


def _start(tmp_path, instance, ckpt, model, sim=True, extra=()):
    cfg_path, ports = write_config(tmp_path / "cfg.toml")
    out = tmp_path / "out"
    args = ["run", model, "--instance", instance, "--config", str(cfg_path), "--checkpoint", str(ckpt),
            "--out", str(out)] + (["--sim"] if sim else []) + list(extra)
    sup = spawn(*args, log=tmp_path / "run.log")
    return sup, cfg_path, ports, out


def _check_session(out: Path, instance: str, cfg, model: str) -> None:
    """The files are complete and every command is the clamped first action of its result."""
    sess = _session(out)
    stamp = sess.name[len("async_inference_"):]
    ticks, vl = _ticks(sess), _vl_lines(sess)
    assert len(vl) >= 5 and all(t["vl_update_time"] > 0 for t in vl)
    assert [t["action_id"] for t in ticks] == list(range(len(ticks)))   # one line per tick
    results = json.loads((sess / f"inference_results_{stamp}.json").read_text())
    summary = json.loads((sess / f"performance_summary_{stamp}.json").read_text())
    assert summary["total_actions"] == len([t for t in ticks if not t["held"]]) == len(results)
    assert summary["recorder"]["lost"] == 0
    sent = [r for r in results if r["sent"]]
    commands = [c["command"]["dp"] for c in _commands(out / f"commands_{instance}.jsonl")
                if c["valid"] and c["command"]["cmd"] == "dpose"]
    assert len(commands) == len(sent) and len(commands) > 0
    limits = np.array([cfg.act.clamp_mm] * 3 + [cfg.act.clamp_deg] * 3)
    for cmd, res in zip(commands, sent):
        expect = np.clip(np.array(res["actions"][0][:6]), -limits, limits)
        np.testing.assert_allclose(cmd, expect, atol=1e-6)
        np.testing.assert_allclose(cmd, res["dp"], atol=1e-7)
        assert (res["delta"] is not None) == (model == "regression")


# each model once, and each way of getting frames to the VL device once (workers/frame_upload.py)
@pytest.mark.parametrize("model, frame_upload", [("flow", "staged"), ("regression", "direct")])
def test_supervised_pipeline_commands_files_and_sigterm(tmp_path, instance, checkpoints, model, frame_upload):
    upload = f'vl.frame_upload="{frame_upload}"'
    sup, cfg_path, _, out = _start(tmp_path, instance, checkpoints[model], model, extra=("--set", upload))
    cfg = config.load(instance, cfg_path, [upload])
    log = out / f"commands_{instance}.jsonl"
    try:
        assert wait_for(lambda: len(_commands(log)) > 0, 60), (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(RUN_S)
    finally:
        assert stop(sup, timeout=30) == 0           # SIGTERM: ordered shutdown
    cmds = [c for c in _commands(log) if c["valid"]]
    t = np.array([c["recv_monotonic_ns"] for c in cmds]) / 1e9
    expected = (t[-1] - t[0]) * cfg.act.tick_hz + 1
    assert len(cmds) >= 0.95 * expected, (len(cmds), expected)
    assert all(c["valid"] for c in _commands(log))
    assert f"frames {frame_upload}" in (tmp_path / "run.log").read_text()     # the VL process's ready line
    _check_session(out, instance, cfg, model)


def _sim(kind, instance, cfg_path, tmp_path, *extra):
    return spawn("sim", kind, "--instance", instance, "--config", str(cfg_path), *extra,
                 log=tmp_path / f"sim_{kind}.log")


def test_stale_robot_holds_commands_then_they_resume(tmp_path, instance, checkpoints):
    sup, cfg_path, _, out = _start(tmp_path, instance, checkpoints["flow"], "flow", sim=False)
    out.mkdir(exist_ok=True)
    log = out / "commands.jsonl"
    sims = {k: _sim(k, instance, cfg_path, tmp_path) for k in ("camera", "sensor", "robot")}
    sims["commands"] = _sim("commands", instance, cfg_path, tmp_path, "--log", str(log))
    try:
        assert wait_for(lambda: len(_commands(log)) > 5, 60), (tmp_path / "run.log").read_text()[-3000:]
        stop(sims["robot"])
        t_stop = time.monotonic_ns()
        time.sleep(1.5)
        cmds = _commands(log)
        after = [c for c in cmds if c["recv_monotonic_ns"] > t_stop]
        assert all(c["recv_monotonic_ns"] - t_stop <= 300e6 for c in after), [c["recv_monotonic_ns"] - t_stop
                                                                                for c in after]
        n_held = len(cmds)
        act = statsmod.read_snapshot(instance, "act")["values"]
        assert act["held.stale_robot"] > 0
        sims["robot"] = _sim("robot", instance, cfg_path, tmp_path)
        assert wait_for(lambda: len(_commands(log)) > n_held + 5, 20)       # resumed by themselves
    finally:
        assert stop(sup, timeout=30) == 0
        for p in sims.values():
            stop(p)
    sess = _session(out)
    assert any(t["held"] == "stale_robot" for t in _jsonl(next(sess.glob("held_ticks_*.jsonl"))))


def test_act_killed_is_restarted_and_recorder_loses_nothing(tmp_path, instance, checkpoints):
    sup, cfg_path, _, out = _start(tmp_path, instance, checkpoints["flow"], "flow")
    log = out / f"commands_{instance}.jsonl"
    try:
        assert wait_for(lambda: len(_commands(log)) > 5, 60), (tmp_path / "run.log").read_text()[-3000:]
        pid = statsmod.read_snapshot(instance, "act")["pid"]
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic_ns()
        assert wait_for(lambda: (s := statsmod.read_snapshot(instance, "act"))["pid"] != pid and s["alive"], 30)
        assert wait_for(lambda: any(c["recv_monotonic_ns"] > t_kill + 0.5e9 for c in _commands(log)), 60)
        assert statsmod.read_snapshot(instance, "supervisor")["values"]["restarts.act"] == 1
        time.sleep(1.0)
    finally:
        assert stop(sup, timeout=30) == 0
    sess = _session(out)
    summary = json.loads(next(sess.glob("performance_summary_*.json")).read_text())
    assert summary["recorder"]["lost"] == 0
    timings = _ticks(sess)
    # two lifetimes of act, one numbering: the restarted act carries on the results ring's record numbers
    ids = [t["action_id"] for t in timings]
    assert ids == list(range(len(ids)))
    gap = np.diff([t["timestamp"] for t in timings])
    assert gap.max() > 0.5, "the restart is not in the session"
    _check_session(out, instance, config.load(instance, cfg_path), "flow")


def test_run_refuses_a_model_type_mismatch(tmp_path, instance, checkpoints):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    proc = spawn("run", "regression", "--instance", instance, "--config", str(cfg_path),
                 "--checkpoint", str(checkpoints["flow"]), "--out", str(tmp_path), log=tmp_path / "run.log")
    assert proc.wait(60) == 2
    assert "holds a flow_matching model" in (tmp_path / "run.log").read_text()


def test_save_data_session_replays_into_a_fresh_pipeline(tmp_path, instance, checkpoints):
    """--save-data writes frames, robot and sensor data as deployed; `sim --replay` plays them back."""
    sup, cfg_path, ports, out = _start(tmp_path, instance, checkpoints["flow"], "flow", extra=["--save-data"])
    log = out / f"commands_{instance}.jsonl"
    try:
        assert wait_for(lambda: len(_commands(log)) > 0, 60), (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(3)
    finally:
        assert stop(sup, timeout=30) == 0
    sess = sorted(out.glob("async_inference_*"))[-1]
    stamp = sess.name[len("async_inference_"):]
    for view in ("View1", "View5"):
        jpgs = sorted((sess / view).glob("*.jpg"))
        assert len(jpgs) >= 10
        assert jpgs[0].read_bytes()[:2] == b"\xff\xd8"
    csv = (sess / f"robot_state_{stamp}.csv").read_text().splitlines()
    assert csv[0].startswith("recv_timestamp,origin_timestamp,send_timestamp,force_placeholder,joint_1")
    assert len(csv) > 300
    npz = np.load(sess / f"sensor_data_{stamp}.npz")
    assert npz["alines"].shape[1] == 1025 and len(npz["timestamps"]) == len(npz["forces"]) > 2000
    # replay the recording into ingest processes and check frames arrive in their views
    from shm_vla.streams import Streams
    ingest = [spawn("ingest", k, "--instance", instance, "--config", str(cfg_path), log=tmp_path / f"i{k}.log")
              for k in ("camera", "robot", "sensor")]
    try:
        time.sleep(2)
        replay = spawn("sim", "all", "--instance", instance, "--config", str(cfg_path), "--replay", str(sess),
                       "--duration", "3", log=tmp_path / "replay.log")
        assert replay.wait(30) == 0
        streams = Streams(config.load(instance, cfg_path))
        assert wait_for(lambda: streams.attach_view(4).head > 5 and streams.attach_sensor().head > 1000, 10)
    finally:
        for p in ingest:
            assert stop(p) == 0


def _descendants(pid: int) -> list[int]:
    """Every process below pid (children are in sessions of their own: not one process group)."""
    parents = {}
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            data = stat_path.read_bytes()
        except OSError:
            continue
        parents.setdefault(int(data[data.rfind(b")") + 2:].split()[1]), []).append(int(stat_path.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_whole_run(sup) -> None:
    """SIGKILL the supervisor and every process it started, all at once: nobody closes anything."""
    for pid in [sup.pid] + _descendants(sup.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sup.wait(10)


def _actions_once(sess: Path) -> list[int]:
    """The action ids of a session's ticks, checked unique, increasing and without a gap."""
    ids = [t["action_id"] for t in _ticks(sess)]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "an action_id repeated or missing"
    return ids


def test_recorder_killed_continues_its_session_with_no_duplicate_and_no_loss(tmp_path, instance, checkpoints):
    sup, cfg_path, _, out = _start(tmp_path, instance, checkpoints["flow"], "flow", extra=["--save-data"])
    log = out / f"commands_{instance}.jsonl"
    try:
        assert wait_for(lambda: len(_commands(log)) > 30, 60), (tmp_path / "run.log").read_text()[-3000:]
        pid = statsmod.read_snapshot(instance, "record")["pid"]
        os.kill(pid, signal.SIGKILL)
        n_kill = len(_commands(log))
        assert wait_for(lambda: (s := statsmod.read_snapshot(instance, "record"))["pid"] != pid and s["alive"], 30)
        assert wait_for(lambda: len(_commands(log)) > n_kill + 30, 60)
    finally:
        assert stop(sup, timeout=30) == 0
    assert "continuing this run's session" in (tmp_path / "run.log").read_text()
    sess = _session(out)                         # one session for the run
    ids = _actions_once(sess)
    assert ids[0] == 0 and len(ids) > n_kill + 30
    _check_session(out, instance, config.load(instance, cfg_path), "flow")   # each sent action once, summary
    stamp = sess.name[len("async_inference_"):]
    vl = [t["vl_update_number"] for t in _vl_lines(sess)]
    assert vl == sorted(set(vl))
    summary = json.loads((sess / f"performance_summary_{stamp}.json").read_text())
    results = json.loads((sess / f"inference_results_{stamp}.json").read_text())
    # a held tick (e.g. while a sender's clock offset warms up) has a held_ticks line, no result
    held = _jsonl(sess / f"held_ticks_{stamp}.jsonl")
    ran = [t for t in _ticks(sess) if not t["held"]]
    assert summary["recorder"]["results_written"] == len(results) == len(ran)
    assert summary["recorder"]["records_written"] == len(ran) + len(vl)          # timing lines
    assert summary["recorder"]["held_written"] == len(held) == len(ids) - len(ran)
    # --save-data: the data files hold no row twice either (the rings are read on from the checkpoint)
    robot = np.loadtxt(sess / f"robot_state_{stamp}.csv", delimiter=",", skiprows=1)
    assert (np.diff(robot[:, 0]) > 0).all()
    with np.load(sess / f"sensor_data_{stamp}.npz") as sensor:
        assert (np.diff(sensor["timestamps"]) > 0).all()
    assert json.loads((sess / "recorder_state.json").read_text())["phase"] == "closed"


def test_whole_run_killed_then_the_next_run_finalises_the_cut_off_session(tmp_path, instance, checkpoints):
    sup, cfg_path, _, out = _start(tmp_path, instance, checkpoints["flow"], "flow")
    log = out / f"commands_{instance}.jsonl"
    try:
        assert wait_for(lambda: len(_commands(log)) > 20, 60), (tmp_path / "run.log").read_text()[-3000:]
    finally:
        _kill_whole_run(sup)
    cut = _session(out)
    assert not list(cut.glob("performance_summary_*.json"))
    sup, _, _, _ = _start(tmp_path, instance, checkpoints["flow"], "flow")   # a new run, same instance and out
    try:
        assert wait_for(lambda: list(cut.glob("performance_summary_*.json")), 60), \
            (tmp_path / "run.log").read_text()[-3000:]
        assert wait_for(lambda: len(list(out.glob("async_inference_*"))) == 2, 30)
        fresh = next(d for d in out.glob("async_inference_*") if d != cut)
        assert wait_for(lambda: sum('"vl_update_time": 0.0,' in line for line in next(fresh.glob(
            "performance_timings_*.jsonl")).read_text().splitlines()) > 5, 60)   # action lines (VL: > 0)
    finally:
        assert stop(sup, timeout=30) == 0
    ids = _actions_once(cut)
    summary = json.loads(next(cut.glob("performance_summary_*.json")).read_text())
    results = json.loads(next(cut.glob("inference_results_*.json")).read_text())
    assert summary["total_actions"] + summary["recorder"]["held_written"] == len(ids)
    assert summary["recorder"]["results_written"] == len(results) > 10
    assert json.loads((cut / "recorder_state.json").read_text())["phase"] == "closed"
    assert _actions_once(fresh)[0] == 0        # the new run's own session, from its start
