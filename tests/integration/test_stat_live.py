"""bin/shm-vla-stat as a real program: in a pseudo-terminal until SIGINT, and --once through both launchers."""
from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from shm_vla import config as configmod
from shm_vla.shm import segment as segmod
from shm_vla.shm import stats as statsmod
from shm_vla.streams import Streams

REPO = Path(__file__).resolve().parents[2]
STAT = str(REPO / "bin" / "shm-vla-stat")


@pytest.fixture
def fake_pipeline(instance):
    """Stats of two live processes (this one) and of a dead one, plus a robot ring."""
    code = f"from shm_vla.shm.stats import Stats\nStats.create('{instance}', 'record').set_state('up')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, cwd=REPO)
    robot = statsmod.Stats.create(instance, "ingest-robot")
    robot.counter("records").inc(3)
    robot.set_state("up")
    act = statsmod.Stats.create(instance, "act")
    act.counter("ticks").inc(5)
    act.set_state("up")
    ring = Streams(configmod.load(instance)).create_robot()
    for _ in range(3):
        ring.write(np.zeros(12, np.float32))
    yield instance
    ring.close()
    act.close()
    robot.close()


def _segments(instance: str) -> dict:
    """Name -> (mtime, contents) of every segment of the instance."""
    paths = [segmod.SHM_DIR / n.lstrip("/") for n in segmod.instance_segments(instance)]
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


def _read_until_exit(fd: int, proc: subprocess.Popen, until: float, stop_when_done: bool) -> bytes:
    out = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:            # EIO: the child closed the terminal
                break
        elif stop_when_done and proc.poll() is not None:
            break
    return out


@pytest.mark.slow
def test_live_view_in_a_pty_until_sigint(fake_pipeline):
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 140, 0, 0))
    proc = subprocess.Popen([sys.executable, STAT, "--instance", fake_pipeline, "--interval", "0.2"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=REPO, start_new_session=True)
    os.close(slave)
    try:
        out = _read_until_exit(master, proc, time.monotonic() + 1.5, stop_when_done=False)
        assert proc.poll() is None, out.decode(errors="replace")
        proc.send_signal(signal.SIGINT)
        out += _read_until_exit(master, proc, time.monotonic() + 10, stop_when_done=True)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    text = out.decode(errors="replace")
    for name in ("ingest-robot", "act", "record", "down", fake_pipeline):
        assert name in text, name
    assert "Traceback" not in text
    assert "\x1b[" in text                    # rendered for a terminal


def test_once_through_both_launchers(fake_pipeline):
    before = _segments(fake_pipeline)
    table = subprocess.run([sys.executable, STAT, "--instance", fake_pipeline, "--once"], capture_output=True,
                           text=True, timeout=60, cwd=REPO)
    assert table.returncode == 0, table.stderr
    assert "ingest-robot" in table.stdout and "record" in table.stdout and "down" in table.stdout
    js = subprocess.run([sys.executable, "-m", "shm_vla.cli", "stat", "--instance", fake_pipeline, "--once",
                         "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert js.returncode == 0, js.stderr
    snap = json.loads(js.stdout)
    assert snap["schema_version"] == 2 and snap["processes_up"] == 2
    assert snap["processes"]["record"]["state"] == "down"
    assert snap["inputs"]["robot"]["records"] == 3 and snap["streams"]["robot"]["records"] == 3
    assert _segments(fake_pipeline) == before          # nothing created, nothing written


def test_once_with_nothing_running(instance):
    run = subprocess.run([sys.executable, STAT, "--instance", instance, "--once"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert run.returncode == 0 and f"no processes of instance {instance}" in run.stdout.replace("\n", " ")
    assert segmod.instance_segments(instance) == []
