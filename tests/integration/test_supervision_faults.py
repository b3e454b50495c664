"""Supervision under faults (issue 10, item 3), with real processes on loopback:

  * SIGKILL of `shm-vla run`: every child stops (parent-death signal), so no command
    follows the supervisor's death;
  * a child whose parent is gone without the signal (it was never armed) stops through
    its liveness check;
  * a hung child (SIGSTOP) is shown as hung, then killed and restarted by the supervisor.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from procs import REPO, spawn, stop, wait_for, write_config
from shm_vla import config, lifeline, stat_model
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.shm import stats as statsmod

pytestmark = pytest.mark.slow
CHILDREN = ("ingest-camera", "ingest-robot", "ingest-sensor", "vl", "act", "record")


def _snap(instance, process):
    try:
        return statsmod.read_snapshot(instance, process)
    except Exception:
        return None


def _up(instance, process) -> bool:
    snap = _snap(instance, process)
    return snap is not None and snap["state"] == "up"


def _commands(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.fixture
def pipeline(tmp_path, instance):
    """`shm-vla run flow` with separately started simulated peers (they outlive the supervisor)."""
    started = []

    def start(extra_config: str = ""):
        ckpt = make_checkpoint(tmp_path / "flow.pt", "tiny", "flow")
        cfg_path, _ = write_config(tmp_path / "cfg.toml", extra_config)
        sup = spawn("run", "flow", "--instance", instance, "--config", str(cfg_path), "--checkpoint", str(ckpt),
                    "--out", str(tmp_path / "out"), log=tmp_path / "run.log")
        log = tmp_path / "commands.jsonl"
        sims = spawn("sim", "all", "--instance", instance, "--config", str(cfg_path), "--log", str(log),
                     log=tmp_path / "sim.log")
        started.extend([sup, sims])
        assert wait_for(lambda: len(_commands(log)) > 5, 90), (tmp_path / "run.log").read_text()[-3000:]
        return sup, log, cfg_path
    yield start
    for proc in started:
        stop(proc, timeout=30)


def test_sigkill_of_the_supervisor_stops_every_child_and_every_command(pipeline, instance):
    sup, log, _ = pipeline()
    pids = {name: _snap(instance, name)["pid"] for name in CHILDREN}
    os.kill(sup.pid, signal.SIGKILL)
    t_kill = time.monotonic_ns()
    try:
        gone = wait_for(lambda: not any(_pid_alive(p) for p in pids.values()), 10, interval=0.01)
        stopped_s = (time.monotonic_ns() - t_kill) / 1e9
        orphans = {n: p for n, p in pids.items() if _pid_alive(p)}
    finally:
        for pid in pids.values():          # never leave orphans behind, whatever happened
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert gone, orphans
    assert stopped_s < 5.0, stopped_s          # ~0.2 s measured; the bound is generous for a loaded CI
    time.sleep(1.0)
    late = [c for c in _commands(log) if c["recv_monotonic_ns"] > t_kill + 300_000_000]
    assert late == []                          # nothing commanded once the supervisor is gone


def test_a_child_whose_supervisor_vanished_without_a_signal_stops_by_itself(tmp_path, instance):
    """The liveness check alone: a shell stands in for a supervisor that died before the
    parent-death signal was armed (the child is started without it)."""
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    script = (f'export {lifeline.SUPERVISOR_PID_ENV}=$$; '
              f'"{sys.executable}" -m shm_vla.cli ingest robot --instance {instance} --config {cfg_path} '
              f'> {tmp_path / "robot.log"} 2>&1 & echo $!; sleep 4')
    shell = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, cwd=REPO, start_new_session=True)
    child = int(shell.stdout.readline())
    try:
        assert wait_for(lambda: _up(instance, "ingest-robot"), 30), (tmp_path / "robot.log").read_text()
        assert _pid_alive(child)
        shell.wait(10)                         # the "supervisor" exits; the child is re-parented
        assert wait_for(lambda: not _pid_alive(child), 5, interval=0.01)
    finally:
        if _pid_alive(child):
            os.kill(child, signal.SIGKILL)
    assert "supervisor (pid" in (tmp_path / "robot.log").read_text()


def test_a_hung_child_is_shown_hung_then_killed_and_restarted(pipeline, instance):
    sup, log, cfg_path = pipeline("[supervise]\nhang_timeout_s = 2.0\n")
    cfg = config.load(instance, cfg_path)
    old = _snap(instance, "ingest-robot")["pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        seen_hung = wait_for(lambda: stat_model.build_snapshot(cfg, with_gpu=False)["processes"]
                             ["ingest-robot"]["state"] == "hung", 10, interval=0.05)
        restarted = wait_for(lambda: (s := _snap(instance, "ingest-robot")) is not None and s["pid"] != old
                             and s["state"] == "up", 30)
    finally:
        if _pid_alive(old):
            os.kill(old, signal.SIGKILL)
    sup_values = _snap(instance, "supervisor")["values"]
    assert seen_hung and restarted
    assert sup_values["hangs.ingest-robot"] == 1 and sup_values["restarts.ingest-robot"] == 1
    n = len(_commands(log))
    assert wait_for(lambda: len(_commands(log)) > n + 5, 30)      # commanding again after the restart
