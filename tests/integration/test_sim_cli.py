"""`shm-vla sim ...` as a process: bounded runs, SIGTERM exits 0, config errors exit 2."""
import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from shm_vla.protocol.sensor import record_dtype

pytestmark = pytest.mark.slow


def _free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _sim(*args):
    return [sys.executable, "-m", "shm_vla.cli", "sim", *args, "--instance", "simtest"]


@pytest.mark.timeout(30)
def test_bounded_run_prints_a_summary():
    port = _free_port(socket.SOCK_DGRAM)
    done = subprocess.run(_sim("sensor", "--address", f"127.0.0.1:{port}", "--duration", "0.5",
                               "--records-per-datagram", "10", "--rate-hz", "2000"),
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["sensor"]["records_sent"] == summary["sensor"]["sent"] * 10 > 0


@pytest.mark.timeout(30)
def test_all_until_sigterm_exits_cleanly(tmp_path):
    ports = [_free_port() for _ in range(3)]
    sets = [f"camera.bind=tcp://0.0.0.0:{ports[0]}", f"robot.connect=tcp://{{robot_ip}}:{ports[1]}",
            f"command.connect=tcp://{{robot_ip}}:{ports[2]}", f"sensor.bind=0.0.0.0:{_free_port(socket.SOCK_DGRAM)}"]
    cmd = _sim("all", "--log", str(tmp_path / "cmds.jsonl"))
    for item in sets:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary) == {"camera", "robot", "sensor", "commands"}
    assert summary["robot"]["sent"] > 0 and summary["sensor"]["sent"] > 0
    assert summary["sensor"]["records_sent"] == 10 * summary["sensor"]["sent"]     # the real sensor's batches
    assert summary["camera"]["out_of_order"] > 0                    # realistic by default: 4 encoders reorder


@pytest.mark.timeout(30)
def test_replay_of_a_sensor_session_runs_to_its_end(tmp_path):
    records = np.zeros(12, dtype=record_dtype(1025))
    records["send_timestamp"] = 1e9 + np.arange(12) // 4 * 0.01     # 3 datagrams of 4 records
    np.savez(tmp_path / "sensor_data_x.npz", timestamps=records["timestamp"], forces=records["force"],
             send_timestamps=records["send_timestamp"], alines=records["ascan"])
    port = _free_port(socket.SOCK_DGRAM)
    done = subprocess.run(_sim("sensor", "--replay", str(tmp_path), "--address", f"127.0.0.1:{port}"),
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["sensor"]["records_sent"] == 12


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [["robot", "--set", "robot.rate_hz=-1"], ["all", "--address", "tcp://127.0.0.1:1"],
                                  ["all", "--rate-hz", "10"], ["robot", "--robot-stall-every", "-1"],
                                  ["sensor", "--replay", "/nonexistent/session"]])
def test_configuration_errors_exit_2_with_one_line(args):
    done = subprocess.run(_sim(*args, "--duration", "0.2"), capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
