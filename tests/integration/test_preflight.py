"""`shm-vla check`: what must hold before an instance starts (the systemd instance unit runs it
before any stage), each refusal one line with its status. A full /dev/shm: test_shm_full.py."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from procs import REPO, write_config
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.shm.stats import Stats


@pytest.fixture(scope="module")
def flow_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "flow.pt", "tiny", "flow")


def _check(instance, cfg_path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shm_vla.cli", "check", "--instance", instance,
                           "--config", str(cfg_path), *extra], capture_output=True, text=True, timeout=120, cwd=REPO)


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def test_a_startable_instance_passes(tmp_path, instance, flow_checkpoint):
    cfg_path, _ = write_config(tmp_path / "cfg.toml", f'[model]\ncheckpoint = "{flow_checkpoint}"\n')
    result = _check(instance, cfg_path, "--model", "flow")
    assert result.returncode == 0, result.stderr
    assert f"instance {instance} ready to start: 6 stages" in result.stdout


def test_the_wrong_model_type_and_a_bad_shadow_are_configuration_errors(tmp_path, instance, flow_checkpoint):
    cfg_path, _ = write_config(tmp_path / "cfg.toml", f'[model]\ncheckpoint = "{flow_checkpoint}"\n')
    result = _check(instance, cfg_path, "--model", "regression")
    assert result.returncode == 2 and "holds a flow_matching model" in _one_line(result)
    result = _check(instance, cfg_path, "--set", f'shadow.checkpoint="{tmp_path / "none.pt"}"')
    assert result.returncode == 2 and "none.pt" in _one_line(result)


def test_a_running_instance_is_refused(tmp_path, instance, flow_checkpoint):
    cfg_path, _ = write_config(tmp_path / "cfg.toml", f'[model]\ncheckpoint = "{flow_checkpoint}"\n')
    live = Stats.create(instance, "act")                 # a live writer of the instance: this process
    try:
        result = _check(instance, cfg_path)
    finally:
        live.close()
    assert result.returncode == 1 and "is already running" in _one_line(result)


def test_a_held_input_port_is_refused(tmp_path, instance, flow_checkpoint):
    cfg_path, ports = write_config(tmp_path / "cfg.toml", f'[model]\ncheckpoint = "{flow_checkpoint}"\n')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", ports["sensor"]))
        result = _check(instance, cfg_path)
    assert result.returncode == 2 and str(ports["sensor"]) in _one_line(result)


def test_an_out_dir_below_the_disk_reserve_is_a_warning_not_a_refusal(tmp_path, instance, flow_checkpoint):
    cfg_path, _ = write_config(tmp_path / "cfg.toml", f'[model]\ncheckpoint = "{flow_checkpoint}"\n')
    out = f'record.out_dir="{tmp_path / "sessions"}"'           # not made yet: its parent is checked
    result = _check(instance, cfg_path, "--set", out, "--set", "record.reserve_mb=1e12")
    assert result.returncode == 0 and "ready to start" in result.stdout
    assert "warning" in _one_line(result) and "the recorder will pause until there is room" in result.stderr
    assert _check(instance, cfg_path, "--set", out).stderr == ""
