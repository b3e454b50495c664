"""A shadow beside act on the simulators: real processes, real sockets, loopback.

The shadow records paired actions (every line's action_id is a live tick of the session,
with the same input records), the command sink receives act's commands only, the shadow
process holds no socket at all, kill -9 of the shadow is restarted while act ticks on, and a
bad shadow checkpoint stops `shm-vla run` with one line and exit 2 before anything starts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from procs import REPO, spawn, stop, wait_for, write_config
from session_schema import check_session
from shm_vla import config
from shm_vla.model.make_checkpoint import deployed_state_dict, make_checkpoint, preset_sizes, random_heads
from shm_vla.shm import segment as segmod
from shm_vla.shm import stats as statsmod
from test_pipeline import _commands, _jsonl, _session, _ticks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    narrow = dataclasses.replace(preset_sizes("tiny", "flow"), vl_dim=32, fusion_width=32 + 2 * 64)
    torch.save({"model_state_dict": deployed_state_dict(random_heads(narrow))}, root / "narrow.pt")
    return {"flow": make_checkpoint(root / "flow.pt", "tiny", "flow"),
            "flow-other": make_checkpoint(root / "flow1.pt", "tiny", "flow", seed=1),
            "regression": make_checkpoint(root / "reg.pt", "tiny", "regression"),
            "narrow": root / "narrow.pt"}


def _start(tmp_path, instance, model, ckpt, shadow):
    cfg_path, ports = write_config(tmp_path / "cfg.toml")
    out = tmp_path / "out"
    sup = spawn("run", model, "--instance", instance, "--config", str(cfg_path), "--checkpoint", str(ckpt),
                "--out", str(out), "--sim", "--set", f'shadow.checkpoint="{shadow}"', log=tmp_path / "run.log")
    return sup, config.load(instance, cfg_path), ports, out


def _up(instance: str, process: str) -> dict | None:
    try:
        snap = statsmod.read_snapshot(instance, process)
    except segmod.ShmError:
        return None
    return snap if snap["alive"] and snap["state"] == "up" else None


def _shadow_ticks(instance: str) -> int:
    snap = _up(instance, "shadow")
    return snap["values"].get("ticks", 0) if snap else 0


def _log(tmp_path) -> str:
    return (tmp_path / "run.log").read_text()[-4000:]


def _shadow_lines(sess: Path) -> list[dict]:
    return _jsonl(next(sess.glob("shadow_results_*.jsonl")))


def _only_acts_commands(out: Path, instance: str, sess: Path) -> None:
    """The sink got exactly the commands of the results act sent, in order: nothing from the shadow."""
    stamp = sess.name[len("async_inference_"):]
    results = json.loads((sess / f"inference_results_{stamp}.json").read_text())
    sent = [r["dp"] for r in results if r["sent"]]
    received = [c["command"]["dp"] for c in _commands(out / f"commands_{instance}.jsonl")
                if c["valid"] and c["command"]["cmd"] == "dpose"]
    assert len(received) == len(sent) > 0
    np.testing.assert_allclose(received, sent, atol=1e-7)


def _skipped_ledger(lines: list[dict], ticks: list[dict]) -> None:
    """Between two shadow lines every live tick was held (not shadowed) or is counted skipped."""
    held = {t["action_id"] for t in ticks if t["held"] and t["held"] != "nonfinite_output"}
    for before, after in zip(lines, lines[1:]):
        between = set(range(before["action_id"] + 1, after["action_id"]))
        assert len(between) - len(between & held) <= after["skipped"] <= len(between), (before, after)


def test_a_regression_shadow_of_acts_checkpoint_records_acts_actions_never_commands_and_survives_kill_9(
        tmp_path, instance, checkpoints):
    sup, cfg, ports, out = _start(tmp_path, instance, "regression", checkpoints["regression"],
                                  checkpoints["regression"])
    try:
        assert wait_for(lambda: _shadow_ticks(instance) > 20, 90), _log(tmp_path)
        # no command socket by construction: the shadow holds no network socket at all (act does)
        shadow_pid, act_pid = _up(instance, "shadow")["pid"], _up(instance, "act")["pid"]
        assert psutil.Process(shadow_pid).net_connections(kind="inet") == []
        assert any(c.raddr and c.raddr.port == ports["command"]
                   for c in psutil.Process(act_pid).net_connections(kind="inet"))
        assert psutil.Process(shadow_pid).nice() >= cfg.shadow.nice
        # shm-vla-stat: the shadow's rate, latency and divergence (0: the same checkpoint)
        stat = subprocess.run([sys.executable, "-m", "shm_vla.cli", "stat", "--instance", instance, "--config",
                               str(tmp_path / "cfg.toml"), "--once", "--json"], capture_output=True, text=True,
                              timeout=60, cwd=REPO)
        snap = json.loads(stat.stdout)
        shadow = snap["shadow"]               # stat's config has no shadow (--set went to the run): shown anyway
        assert shadow["state"] == "up" and not shadow["configured"] and shadow["ticks"] > 20
        assert snap["streams"]["shadow_results"]["present"]
        assert shadow["divergence_p99"] == [0.0] * 7 and shadow["latency_ms_p99"] > 0

        act_ticks = statsmod.read_snapshot(instance, "act")["values"]["ticks"]
        os.kill(shadow_pid, signal.SIGKILL)
        assert wait_for(lambda: (s := _up(instance, "shadow")) and s["pid"] != shadow_pid, 60), _log(tmp_path)
        after_restart = _shadow_ticks(instance)
        assert wait_for(lambda: _shadow_ticks(instance) > after_restart + 10, 60), _log(tmp_path)
        assert _up(instance, "act")["pid"] == act_pid           # act ticked on through it all
        assert statsmod.read_snapshot(instance, "act")["values"]["ticks"] > act_ticks + 10
        restarts = statsmod.read_snapshot(instance, "supervisor")["values"]
        assert restarts["restarts.shadow"] == 1 and restarts["restarts.act"] == 0
        assert wait_for(lambda: statsmod.read_snapshot(instance, "record")["values"]["shadow_written"]
                        >= _shadow_ticks(instance), 10)
        assert statsmod.read_snapshot(instance, "record")["values"]["shadow_lost"] == 0
    finally:
        assert stop(sup, timeout=30) == 0

    sess = _session(out)
    files = check_session(sess, (time.time() - 600, time.time() + 1))     # the shadow lines too (schema)
    lines, ticks = files["shadow"], _ticks(sess)
    ids = [t["action_id"] for t in ticks]
    assert ids == list(range(len(ids)))                         # act's ticks: no gap, one numbering
    ok = [line for line in lines if line["status"] == "ok"]
    assert len(ok) > 30 and len(ok) >= len(lines) - 2
    live = {r["action_id"]: r for r in files["results"]}
    for line in ok:                                              # the same records in, the same actions out
        assert line["actions"] == live[line["action_id"]]["actions"], line["action_id"]
        assert line["divergence"] == [0.0] * 7
    assert len({line["checkpoint_sha256"] for line in lines}) == 1
    restart = [line for line in lines if line["skipped"] > 0]
    assert restart, "the restart's gap is counted as skipped"
    _skipped_ledger(lines, ticks)
    _only_acts_commands(out, instance, sess)


def test_another_flow_checkpoint_beside_a_flow_act_is_analysed_and_never_commands(tmp_path, instance, checkpoints):
    sup, cfg, ports, out = _start(tmp_path, instance, "flow", checkpoints["flow"], checkpoints["flow-other"])
    try:
        assert wait_for(lambda: _shadow_ticks(instance) > 40, 90), _log(tmp_path)
        view = subprocess.run([sys.executable, "-m", "shm_vla.cli", "stat", "--instance", instance, "--config",
                               str(tmp_path / "cfg.toml"), "--once"], capture_output=True, text=True, timeout=60,
                              cwd=REPO, env={**os.environ, "COLUMNS": "200"})
        assert "shadow" in view.stdout and "divergence" in view.stdout, view.stdout
    finally:
        assert stop(sup, timeout=30) == 0
    sess = _session(out)
    files = check_session(sess, (time.time() - 600, time.time() + 1))
    lines = files["shadow"]
    assert {line["model_type"] for line in lines} == {"flow_matching"}
    assert all(max(line["divergence"]) > 0 for line in lines if line["status"] == "ok")
    _only_acts_commands(out, instance, sess)
    png = tmp_path / "a.png"
    result = subprocess.run([sys.executable, "-m", "shm_vla.cli", "analyze", str(sess), "--json", "--plot", str(png)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    shadow = json.loads(result.stdout)["shadow"]
    assert shadow["ticks"] == len(lines) and shadow["unpaired"] == 0
    assert shadow["checkpoints"][0]["path"] == str(checkpoints["flow-other"])
    assert len(shadow["divergence"]["p99"]) == 7 and min(shadow["divergence"]["p99"]) > 0
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("shadow, line", [
    ("missing.pt", "shadow.checkpoint: checkpoint {path}: no such file"),
    ("narrow", "shadow.checkpoint {path} does not fit the live streams: VL feature width 32 where act's is 64"),
])
def test_a_bad_shadow_checkpoint_stops_the_run_before_anything_starts(tmp_path, instance, checkpoints, shadow,
                                                                      line):
    path = checkpoints.get(shadow, tmp_path / shadow)
    sup, _, _, _ = _start(tmp_path, instance, "flow", checkpoints["flow"], path)
    assert sup.wait(120) == 2
    log = (tmp_path / "run.log").read_text()
    assert f"shm-vla run: {line.format(path=path)}" in log, log
    assert segmod.instance_segments(instance) == []              # nothing was started
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("async_inference_*"))


def test_a_shadow_checkpoint_that_turns_bad_is_given_up_and_the_live_loop_runs_on(tmp_path, instance, checkpoints):
    """The file is replaced by junk during the run and the shadow dies: its next start is a
    configuration error (exit 2), not restarted; act keeps commanding."""
    candidate = tmp_path / "candidate.pt"
    shutil.copy(checkpoints["flow-other"], candidate)
    sup, cfg, ports, out = _start(tmp_path, instance, "flow", checkpoints["flow"], candidate)
    log = out / f"commands_{instance}.jsonl"
    try:
        assert wait_for(lambda: _shadow_ticks(instance) > 10, 90), _log(tmp_path)
        candidate.write_bytes(b"not a checkpoint any more")
        os.kill(_up(instance, "shadow")["pid"], signal.SIGKILL)
        assert wait_for(lambda: "shadow exited with a configuration error; not restarting it" in _log(tmp_path),
                        60), _log(tmp_path)
        assert "shadow.checkpoint: checkpoint" in _log(tmp_path)
        n = len(_commands(log))
        assert wait_for(lambda: len(_commands(log)) > n + 10, 30)           # act commands on
        assert statsmod.read_snapshot(instance, "supervisor")["values"]["gave_up.shadow"] == 1
        assert statsmod.read_snapshot(instance, "supervisor")["values"]["restarts.act"] == 0
    finally:
        assert stop(sup, timeout=30) == 0
    _only_acts_commands(out, instance, _session(out))
