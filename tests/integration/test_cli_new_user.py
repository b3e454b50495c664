"""What a new user meets first (issue 11 item 6), as real `shm-vla` processes.

* every command's and subcommand's --help (and -h) prints its usage and exits 0;
* `shm-vla run` without a checkpoint stops with one line that says how to make one (exit 2),
  and so does `shm-vla act`;
* `shm-vla run flow --sim` without a checkpoint runs the simulated cell on a generated tiny one.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from procs import REPO, spawn, stop, wait_for, write_config
from shm_vla.cli import BENCH_DIR, COMMANDS
from shm_vla.ingest.cli import KINDS
from shm_vla.sim.cli import SIMS

SUBCOMMANDS = {"ingest": list(KINDS), "sim": list(SIMS), "shm": ["ls", "clean"], "checkpoint": ["info", "verify"],
               "run": ["flow", "regression"],
               "bench": sorted(p.stem.replace("_", "-") for p in BENCH_DIR.glob("[!_]*.py"))}


def _help_invocations() -> list[list[str]]:
    calls = [["--help"], ["-h"], ["help"]]
    for name in COMMANDS:
        calls += [[name, "--help"], [name, "-h"]]
        calls += [[name, sub, "--help"] for sub in SUBCOMMANDS.get(name, [])]
    return calls


def _cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shm_vla.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.timeout(600)
def test_every_help_exits_0_with_its_usage():
    calls = _help_invocations()
    assert len(calls) > 40 and ["ingest", "--help"] in calls and ["bench", "action-head", "--help"] in calls
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = list(pool.map(_cli, calls))
    bad = [(" ".join(c), p.returncode, (p.stdout + p.stderr)[-300:]) for c, p in zip(calls, done)
           if p.returncode != 0 or "usage" not in p.stdout.lower() or "Traceback" in p.stderr]
    assert not bad, bad


def test_ingest_without_a_kind_is_still_a_usage_error():
    for args in ([], ["bogus"]):
        proc = _cli(["ingest", *args])
        assert proc.returncode == 2 and "usage: shm-vla ingest" in proc.stderr and proc.stdout == ""
    assert "unknown input 'bogus'" in _cli(["ingest", "bogus"]).stderr


@pytest.mark.parametrize("model", ["flow", "regression"])
def test_run_without_a_checkpoint_says_how_to_make_one(tmp_path, instance, model):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    proc = _cli(["run", model, "--instance", instance, "--config", str(cfg_path), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()                    # one line, not a traceback
    assert "no checkpoint configured" in line and f"shm-vla make-checkpoint --type {model} PATH" in line
    assert "--sim" in line and not (tmp_path / "out").exists()


def test_act_without_a_checkpoint_says_how_to_make_one(tmp_path, instance):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    proc = _cli(["act", "--instance", instance, "--config", str(cfg_path)])
    assert proc.returncode == 2, proc.stderr
    assert "no checkpoint configured" in proc.stderr and "shm-vla make-checkpoint" in proc.stderr


def test_act_refuses_a_checkpoint_for_another_robot_record_width(tmp_path, instance):
    """A robot record is 12 values (protocol/robot.py): act stops at start-up, one line and exit 2,
    on a checkpoint whose robot encoder takes 14; it used to start, then crash on its first full
    window of inputs (a traceback, restarted forever)."""
    import dataclasses
    import torch
    from shm_vla.model.make_checkpoint import deployed_state_dict, preset_sizes, random_heads
    sizes = dataclasses.replace(preset_sizes("tiny", "flow"), robot_input_dim=14)
    checkpoint = tmp_path / "robot14.pt"
    torch.save({"model_state_dict": deployed_state_dict(random_heads(sizes))}, checkpoint)
    cfg_path, _ = write_config(tmp_path / "cfg.toml", f'[model]\ncheckpoint = "{checkpoint}"\n')
    proc = _cli(["act", "--instance", instance, "--config", str(cfg_path)], timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "robot values per row 14" in proc.stderr and "says 12" in proc.stderr and "Traceback" not in proc.stderr


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.slow
def test_run_sim_without_a_checkpoint_uses_a_generated_tiny_one(tmp_path, instance):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    out, log = tmp_path / "out", tmp_path / "run.log"
    sup = spawn("run", "flow", "--sim", "--instance", instance, "--config", str(cfg_path), "--out", str(out), log=log)
    commands = out / f"commands_{instance}.jsonl"
    try:
        assert wait_for(lambda: any(c["valid"] and c["command"]["cmd"] == "dpose" for c in _jsonl(commands)), 90), \
            log.read_text()[-3000:]
        time.sleep(2.0)
    finally:
        assert stop(sup, timeout=30) == 0
    text = log.read_text()
    generated = out / ".sim-checkpoints" / "tiny_flow.pt"
    assert f"--sim without a checkpoint: generated a tiny checkpoint: {generated}" in text and generated.is_file()
    # the session's ticks carry a real per-stage split (CPU path: item 5)
    (session,) = out.glob("async_inference_*")
    (timings,) = session.glob("performance_timings_*.jsonl")
    sent = [t for t in _jsonl(timings) if t["vl_update_time"] == 0]      # action lines (held ticks are apart)
    assert sent and all(t["sensor_encoding_time"] > 0 and t["robot_encoding_time"] > 0
                        and t["action_prediction_time"] > 0 for t in sent)
    # a second run reuses the generated checkpoint
    again = spawn("run", "flow", "--sim", "--duration", "1", "--instance", instance, "--config", str(cfg_path),
                  "--out", str(out), log=tmp_path / "run2.log")
    assert again.wait(90) == 0
    assert "using the tiny checkpoint generated earlier" in (tmp_path / "run2.log").read_text()
