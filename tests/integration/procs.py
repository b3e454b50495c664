"""Helpers for tests that run real shm-vla processes on loopback."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, extra: str = "") -> tuple[Path, dict]:
    """A config whose every address is a fresh loopback port; returns (path, ports)."""
    ports = {"camera": free_port(), "robot": free_port(), "sensor": free_port(socket.SOCK_DGRAM),
             "command": free_port()}
    path.write_text(
        f'[camera]\nbind = "tcp://127.0.0.1:{ports["camera"]}"\n'
        f'[robot]\nconnect = "tcp://{{robot_ip}}:{ports["robot"]}"\n'
        f'[sensor]\nbind = "127.0.0.1:{ports["sensor"]}"\n'
        f'[command]\nconnect = "tcp://{{robot_ip}}:{ports["command"]}"\n' + extra)
    return path, ports


def spawn(*args: str, log: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "shm_vla.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                            cwd=REPO, env=full_env, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL the process group if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """predicate() until truthy or timeout. A shared-memory error counts as "not yet": a
    restarted writer re-initialises its segment (its header is invalid for an instant), and
    a reader that looks just then must look again, not fail the test."""
    from shm_vla.shm.segment import ShmError

    def attempt():
        try:
            return predicate()
        except ShmError:
            return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = attempt()
        if value:
            return value
        time.sleep(interval)
    return attempt()
