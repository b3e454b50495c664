"""`shm-vla checkpoint info|verify` and `shm-vla make-checkpoint` through the installed command."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FIXTURES = ["seed_flow_small.pt", "seed_regression_small.pt", "seed_flow_forceaware_small.pt"]


def shm_vla(*args, check=False):
    exe = REPO / ".venv" / "bin" / "shm-vla"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "shm_vla.cli"]
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("name", FIXTURES)
def test_verify_fixture(shared_fixtures, name):
    proc = shm_vla("checkpoint", "verify", shared_fixtures / name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("ok", "FAIL"))]
    assert len(lines) == 3 and all(l.startswith("ok") for l in lines)
    assert "3/3 cases within 1e-05" in proc.stdout


@pytest.mark.parametrize("name", FIXTURES)
def test_info_fixture_json(shared_fixtures, name):
    proc = shm_vla("checkpoint", "info", shared_fixtures / name, "--json", check=True)
    info = json.loads(proc.stdout)
    cfg = torch.load(shared_fixtures / name, weights_only=True)["fixture_config"]
    assert info["model_type"] == cfg["model_type"]
    assert info["sensor_encoder_variant"] == cfg["sensor_encoder_type"]
    assert info["vl_dim"] == cfg["vl_dim"] and info["hidden_dim"] == cfg["hidden_dim"]
    assert info["parameter_count"] > 0 and info["dtypes"]
    forceaware = cfg["sensor_encoder_type"] == "force_aware"
    assert any("LAST channel" in w for w in info["warnings"]) == forceaware
    if forceaware:
        ok = shm_vla("checkpoint", "info", shared_fixtures / name, "--json", "--set", "sensor.force_position=last",
                     check=True)
        assert json.loads(ok.stdout)["warnings"] == []


def test_info_human(shared_fixtures):
    proc = shm_vla("checkpoint", "info", shared_fixtures / "seed_flow_forceaware_small.pt", check=True)
    assert "force_aware" in proc.stdout and "warning:" in proc.stdout and "parameters" in proc.stdout


def test_verify_detects_a_wrong_weight(shared_fixtures, tmp_path):
    fx = torch.load(shared_fixtures / "seed_flow_small.pt", weights_only=True)
    fx["model_state_dict"]["action_expert.output_head.1.bias"] += 0.01
    bad = tmp_path / "bad.pt"
    torch.save(fx, bad)
    proc = shm_vla("checkpoint", "verify", bad)
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "0/3 cases" in proc.stdout


def test_make_checkpoint_info_and_errors(tmp_path):
    out = tmp_path / "t.pt"
    shm_vla("make-checkpoint", "--preset", "tiny", "--type", "regression", "--sensor-encoder", "force-aware", out,
            check=True)
    info = json.loads(shm_vla("checkpoint", "info", out, "--json", check=True).stdout)
    assert info["model_type"] == "regression" and info["sensor_encoder_variant"] == "force_aware"
    assert info["extra"]["epoch"] == 0
    proc = shm_vla("checkpoint", "verify", out)
    assert proc.returncode == 2 and "no reference 'cases'" in proc.stderr
    proc = shm_vla("checkpoint", "info", tmp_path / "missing.pt")
    assert proc.returncode == 2 and "no such file" in proc.stderr
