"""A nearly full disk under the recorder, in a private tmpfs (a private mount namespace), never
the machine's disk: the recorder pauses below record.reserve_mb, act goes on commanding, and
recording resumes with nothing lost when room returns within the results ring's span; a stop
while paused still leaves a finalised session (docs/FAULTS.md, "A full disk")."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import REPO, write_config
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.shm import segment as segmod
from shm_vla.shm import stats as statsmod
from shm_vla.workers.session_state import read_state
from shm_vla.workers.session_stats import is_action_record
from test_shm_full import needs_private_shm

pytestmark = needs_private_shm
RESERVE_MB = 40
# A 64 MB file system with a 30 MB filler: 34 MB free, under the reserve from the start. The
# script waits for the test's "go" file, then (FREE set) removes the filler, and stops the
# run STOP_AFTER seconds later; the session is copied out of the tmpfs for the test to read.
SCRIPT = """
mount -t tmpfs -o size=64m tmpfs "$OUT" && head -c 30000000 /dev/zero > "$OUT/filler" || exit 99
"$@" & pid=$!
while [ ! -e "$GO" ] && kill -0 $pid 2>/dev/null; do sleep 0.1; done
[ -n "$FREE" ] && rm -f "$OUT/filler"
sleep "$STOP_AFTER"; kill -TERM $pid; wait $pid; rc=$?
cp -r "$OUT"/async_inference_* "$KEEP"/ && exit $rc
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "flow.pt", "tiny", "flow")


def _values(instance: str, process: str) -> dict:
    try:
        return statsmod.read_snapshot(instance, process)["values"]
    except segmod.ShmError:
        return {}


def _wait(cond, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _drill(tmp_path, instance, checkpoint, free_room: bool, stop_after_s: float):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    out, keep, go = tmp_path / "out", tmp_path / "keep", tmp_path / "go"
    out.mkdir()
    keep.mkdir()
    argv = [sys.executable, "-m", "shm_vla.cli", "run", "flow", "--sim", "--instance", instance, "--config",
            str(cfg_path), "--checkpoint", str(checkpoint), "--out", str(out), "--duration", "120",
            "--set", f"record.reserve_mb={RESERVE_MB}"]
    env = dict(os.environ, OUT=str(out), KEEP=str(keep), GO=str(go), FREE="1" if free_room else "",
               STOP_AFTER=str(stop_after_s), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", SCRIPT, "sh", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert _wait(lambda: _values(instance, "record").get("disk_paused") == 1.0
                     and _values(instance, "act").get("ticks", 0) > 0, 90), "never paused, or act never ticked"
        ticks, written = _values(instance, "act")["ticks"], _values(instance, "record")["records_written"]
        time.sleep(2.0)
        assert _values(instance, "act")["ticks"] >= ticks + 15              # act goes on at 10 Hz
        assert _values(instance, "record")["records_written"] == written     # nothing written while paused
        go.touch()
        if free_room:
            assert _wait(lambda: _values(instance, "record").get("disk_paused") == 0.0, 10), "never resumed"
        log, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log[-3000:]
    (session,) = keep.iterdir()
    return session, log


def _summary(session: Path) -> dict:
    return json.loads(next(session.glob("performance_summary_*.json")).read_text())


def _jsonl(session: Path, prefix: str) -> list[dict]:
    return [json.loads(line) for line in next(session.glob(f"{prefix}*.jsonl")).read_text().splitlines()]


def test_room_returning_within_the_rings_span_resumes_with_nothing_lost(tmp_path, instance, checkpoint):
    session, log = _drill(tmp_path, instance, checkpoint, free_room=True, stop_after_s=2.0)
    assert "recording paused" in log and "recording resumed" in log and "Traceback" not in log
    summary = _summary(session)
    rec = summary["recorder"]
    assert rec["lost"] == 0 and rec["results_written"] > 20                  # the pause's ticks too
    ticks = [t for t in _jsonl(session, "performance_timings_") if is_action_record(t)]
    ids = sorted(t["action_id"] for t in ticks + _jsonl(session, "held_ticks_"))
    assert ids == list(range(len(ids))) and len(ids) > 40                    # every tick, once
    assert read_state(session).phase == "closed"


def test_a_stop_while_paused_still_finalises_the_session(tmp_path, instance, checkpoint):
    session, log = _drill(tmp_path, instance, checkpoint, free_room=False, stop_after_s=0.5)
    assert "recording paused" in log and "not written (counted as lost)" in log
    rec = _summary(session)["recorder"]
    assert rec["lost"] > 20 and rec["results_written"] == 0
    state = read_state(session)
    # the results counted lost are skipped too: a recorder restarted in this run starts after them
    assert state.phase == "closed" and state.cursors["results"] == rec["lost"]
