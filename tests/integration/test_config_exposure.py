"""Configuration faults and exposure with real processes (issue 10, items 2 and 6): a safety
key that would switch the clamp or the gate off, a listening port another program holds and a
missing group all stop start-up with one line and exit 2, with nothing left behind; allowlisted
senders are admitted and the others refused and counted; session files are 0750/0640."""
from __future__ import annotations

import grp
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import zmq

from procs import REPO, spawn, stop, wait_for, write_config
from shm_vla import config
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.protocol import sensor as sensor_proto
from shm_vla.shm import segment
from shm_vla.shm import stats as statsmod
from shm_vla.sim import content
from shm_vla.streams import Streams

pytestmark = pytest.mark.slow


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A command that must end by itself: a hang is a failure, and its process group is killed."""
    proc = subprocess.Popen([sys.executable, "-m", "shm_vla.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # the children of a supervisor run in sessions of their own: kill them by pid first
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"shm-vla {' '.join(args)} did not stop by itself in {timeout} s:\n{err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _one_config_error_line(result: subprocess.CompletedProcess, key: str, *words: str) -> None:
    """Exit 2 and exactly one line naming the key and what is wrong with it; no traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if key in line]
    assert len(lines) == 1 and all(w in lines[0] for w in words), result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint, so that `shm-vla run` gets past its checkpoint check on any code."""
    return str(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "flow.pt", "tiny", "flow"))


def _snapshot_values(instance, process):
    try:
        return statsmod.read_snapshot(instance, process)["values"]
    except Exception:
        return {}


# --------------------------------------------------------------------------- item 2: safety keys
def test_run_with_an_unbounded_clamp_starts_nothing(tmp_path, instance, checkpoint):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    result = _run("run", "flow", "--sim", "--duration", "2", "--instance", instance, "--config", str(cfg_path),
                  "--checkpoint", checkpoint, "--out", str(tmp_path / "sessions"), "--set", "act.clamp_mm=inf",
                  timeout=90)
    _one_config_error_line(result, "act.clamp_mm", "not finite")
    assert segment.instance_segments(instance) == []
    assert not (tmp_path / "sessions").exists() or not any((tmp_path / "sessions").iterdir())


@pytest.mark.parametrize("override,words", [("act.max_sensor_age_ms=nan", ("act.max_sensor_age_ms", "not finite")),
                                            ("act.max_robot_age_ms=-5", ("act.max_robot_age_ms", "> 0")),
                                            ("act.clamp_deg=0.5", ("act.clamp_deg", "hard ceiling"))])
def test_a_process_with_an_unsafe_key_exits_2(tmp_path, instance, override, words):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    result = _run("ingest", "sensor", "--instance", instance, "--config", str(cfg_path), "--set", override,
                  timeout=20)
    _one_config_error_line(result, *words)
    assert segment.instance_segments(instance) == []


# --------------------------------------------------------------------------- item 6: ports, groups
def _hold(kind: int, port: int) -> socket.socket:
    holder = socket.socket(socket.AF_INET, kind)
    holder.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        holder.listen()
    return holder


@pytest.mark.parametrize("kind,sock_type", [("camera", socket.SOCK_STREAM), ("sensor", socket.SOCK_DGRAM)])
def test_ingest_on_a_port_in_use_exits_2_naming_the_port(tmp_path, instance, kind, sock_type):
    cfg_path, ports = write_config(tmp_path / "cfg.toml")
    with _hold(sock_type, ports[kind]):
        result = _run("ingest", kind, "--instance", instance, "--config", str(cfg_path), timeout=30)
    _one_config_error_line(result, f"{kind}.bind", f"port {ports[kind]} is already in use")


def test_run_refuses_a_port_in_use_before_starting_anything(tmp_path, instance, checkpoint):
    cfg_path, ports = write_config(tmp_path / "cfg.toml")
    with _hold(socket.SOCK_STREAM, ports["camera"]):
        result = _run("run", "flow", "--sim", "--duration", "2", "--instance", instance, "--config", str(cfg_path),
                      "--checkpoint", checkpoint, "--out", str(tmp_path / "sessions"), timeout=90)
    _one_config_error_line(result, "camera.bind", f"port {ports['camera']} is already in use")
    assert "restart" not in result.stderr
    assert segment.instance_segments(instance) == []


@pytest.mark.parametrize("command", [("ingest", "sensor"), ("record", "--out", "{tmp}"),
                                     ("run", "flow", "--sim", "--duration", "2", "--out", "{tmp}",
                                      "--checkpoint", "{ckpt}")])
def test_a_missing_shm_group_exits_2_and_leaves_no_segment(tmp_path, instance, command, checkpoint):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    argv = [a.replace("{tmp}", str(tmp_path / "sessions")).replace("{ckpt}", checkpoint) for a in command]
    result = _run(*argv, "--instance", instance, "--config", str(cfg_path),
                  "--set", 'shm.group="no-such-group-shmvla"', timeout=60)
    _one_config_error_line(result, "shm.group", "does not exist")
    assert segment.instance_segments(instance) == []


# --------------------------------------------------------------------------- item 6: allowlists
def _state(instance, process):
    try:
        return statsmod.read_snapshot(instance, process)["state"]
    except Exception:
        return None


@pytest.fixture
def ingest(tmp_path, instance):
    """Start one ingest process with --set overrides; stopped (cleanly) at teardown."""
    started = []

    def start(kind, *overrides):
        cfg_path, ports = write_config(tmp_path / "cfg.toml")
        log = tmp_path / f"{kind}.log"
        sets = [a for o in overrides for a in ("--set", o)]
        started.append(spawn("ingest", kind, "--instance", instance, "--config", str(cfg_path), *sets, log=log))
        assert wait_for(lambda: _state(instance, f"ingest-{kind}") == "up", 30), log.read_text()
        return config.load(instance, cfg_path, list(overrides)), ports, log
    yield start
    assert [stop(p) for p in started] == [0] * len(started)


def _stat_inputs(instance) -> dict:
    out = subprocess.run([sys.executable, "-m", "shm_vla.cli", "stat", "--instance", instance, "--once", "--json"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["inputs"]


def _udp_from(source: str, port: int, payloads: list) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))                         # the source address the ingest sees
        for p in payloads:
            s.sendto(p, ("127.0.0.1", port))
            time.sleep(0.002)


def test_sensor_allowlist_admits_one_sender_and_counts_the_other(ingest, instance):
    cfg, ports, log = ingest("sensor", 'sensor.allow=["127.0.0.1"]')
    dtype = sensor_proto.record_dtype(cfg.sensor.ascan_len)
    records = np.zeros(2, dtype)
    content.fill_sensor(records, 0)
    datagram = sensor_proto.encode_datagram(records)
    _udp_from("127.0.0.2", ports["sensor"], [datagram] * 5)      # refused: not in sensor.allow
    _udp_from("127.0.0.1", ports["sensor"], [datagram] * 3)      # admitted
    ring = Streams(cfg).attach_sensor()
    assert wait_for(lambda: ring.head == 6 and _snapshot_values(instance, "ingest-sensor")
                    .get("errors.rejected_sender") == 5, 10), (ring.head, _snapshot_values(instance, "ingest-sensor"))
    sensor = _stat_inputs(instance)["sensor"]
    assert sensor["errors"]["rejected_sender"] == 5 and sensor["records"] == 6
    assert "datagram from 127.0.0.2" in log.read_text()
    assert "listens on every interface" not in log.read_text()


def test_an_input_open_to_everyone_warns_at_start(ingest, instance):
    _, _, log = ingest("sensor", f'sensor.bind="0.0.0.0:{_free_udp_port()}"')
    assert "listens on every interface and accepts any sender: set sensor.allow" in log.read_text()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_camera_allowlist_admits_one_sender_and_counts_the_other(ingest, instance):
    cfg, ports, log = ingest("camera", 'camera.allow=["127.0.0.1/32"]')
    ctx = zmq.Context.instance()
    pushes = {}
    for source in ("127.0.0.1", "127.0.0.2"):
        push = pushes[source] = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(f"tcp://{source}:0;127.0.0.1:{ports['camera']}")   # ZeroMQ's source-address syntax
    try:
        ring = Streams(cfg).attach_view(0)
        sent = {"127.0.0.1": 0, "127.0.0.2": 0}

        def send_and_check():
            for source, push in pushes.items():
                meta = json.dumps({"camera": "zed_41182735_left", "timestamp": 100.0 + sent[source]}).encode()
                try:
                    push.send_multipart([meta, content.frame_jpeg(0, sent[source])], zmq.NOBLOCK)
                    sent[source] += 1
                except zmq.Again:
                    pass
            return ring.head >= 3 and _snapshot_values(instance, "ingest-camera").get("errors.rejected_sender")
        assert wait_for(send_and_check, 20, interval=0.1), (ring.head, _snapshot_values(instance, "ingest-camera"))
        values = _snapshot_values(instance, "ingest-camera")
        # every frame stored came from the admitted sender: the refused one never got a message in
        assert values["frames.view1"] + values["superseded_frames"] == values["messages"] <= sent["127.0.0.1"]
        assert _stat_inputs(instance)["camera"]["errors"]["rejected_sender"] >= 1
        assert "connection from 127.0.0.2" in log.read_text()
    finally:
        for push in pushes.values():
            push.close(0)


# --------------------------------------------------------------------------- item 6: session files
def _other_group() -> grp.struct_group | None:
    """A group this user may give files to, other than its own primary group."""
    for g in grp.getgrall():
        if g.gr_gid != os.getegid() and (os.geteuid() == 0 or g.gr_gid in os.getgroups()):
            return g
    return None


@pytest.mark.parametrize("with_group", [False, True])
def test_session_files_are_0750_and_0640(tmp_path, instance, with_group):
    group = _other_group() if with_group else None
    if with_group and group is None:
        pytest.skip("this user belongs to no second group")
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    overrides = ["camera.jpeg_max_bytes=4096"] + ([f'record.group="{group.gr_name}"'] if group else [])
    cfg = config.load(instance, cfg_path, overrides)
    streams = Streams(cfg)
    # what the other processes would create; --save-data: the recorder makes subdirectories too
    rings = [streams.create_results(8, 6), streams.create_vl(16), streams.create_robot(), streams.create_sensor(),
             *(streams.create_jpeg(i) for i in range(5))]
    out = tmp_path / "sessions"
    proc = spawn("record", "--instance", instance, "--config", str(cfg_path), "--out", str(out), "--save-data",
                 *[a for o in overrides for a in ("--set", o)], log=tmp_path / "record.log")
    try:
        assert wait_for(lambda: _state(instance, "record") == "up", 30), (tmp_path / "record.log").read_text()
    finally:
        assert stop(proc) == 0, (tmp_path / "record.log").read_text()
        for ring in rings:
            ring.close()
    sessions = list(out.iterdir())
    assert len(sessions) == 1
    entries = [sessions[0], *sessions[0].rglob("*")]
    assert len(entries) > 3                                             # dirs of the views, streamed files
    for path in entries:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o777 == (0o750 if path.is_dir() else 0o640), (path, oct(mode))
        if group:
            assert path.stat().st_gid == group.gr_gid, path
