"""A full /dev/shm, in a private tmpfs (a private mount namespace), never the machine's.

Each scenario runs as a child `unshare -m sh -c 'mount -t tmpfs -o size=NNk tmpfs /dev/shm && ...'`:
the tmpfs exists only for the processes inside, and vanishes with them. The supervisor's
policy for a child that exits for want of shared memory is also tested with stand-in
children (no tmpfs needed).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from procs import REPO, write_config
from shm_vla import config
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.shm.segment import EXIT_SHM_FULL
from shm_vla.shm.stats import Stats
from shm_vla.supervise import SHM_FULL_TRIES, START_UP_RESTARTS, Child, Supervisor

MOUNT = "mount -t tmpfs -o size={kb}k tmpfs /dev/shm"


def _private_shm_works() -> str:
    """'' if a private tmpfs can be mounted on /dev/shm here, else why not."""
    try:
        proc = subprocess.run(["unshare", "-m", "sh", "-c", MOUNT.format(kb=64) + " && test ! -e /dev/shm/x"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare unavailable: {exc}"
    return "" if proc.returncode == 0 else f"no private mount namespace here: {proc.stderr.strip()}"


_WHY_NOT = _private_shm_works()
needs_private_shm = pytest.mark.skipif(bool(_WHY_NOT), reason=_WHY_NOT or "ok")


def in_private_shm(kb: int, shell: str, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run `shell` (sh code; "$@" is argv) with /dev/shm a private tmpfs of `kb` KiB."""
    return subprocess.run(["unshare", "-m", "sh", "-c", MOUNT.format(kb=kb) + " && " + shell, "sh", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def python_in_private_shm(kb: int, code: str) -> subprocess.CompletedProcess:
    return in_private_shm(kb, 'exec "$@"', sys.executable, "-c", textwrap.dedent(code))


def _result(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_private_shm
def test_a_creation_that_does_not_fit_leaves_no_segment():
    res = _result(python_in_private_shm(512, """
        import json, os
        import numpy as np
        from shm_vla.shm.ring import Ring
        from shm_vla.shm.segment import ShmFull
        from shm_vla.shm.stats import Stats
        out = {}
        try:
            Ring.create("full", "big", np.uint8, (256 << 10,), 4)       # ~1 MiB in 512 KiB
        except ShmFull as exc:
            out["error"] = str(exc)
        out["left"] = sorted(os.listdir("/dev/shm"))
        st = os.statvfs("/dev/shm")
        out["used"] = (st.f_blocks - st.f_bfree) * st.f_frsize
        ring = Ring.create("full", "small", np.uint8, (64 << 10,), 4)   # the space is still there
        stats = Stats.create("full", "act")
        out["after"] = sorted(os.listdir("/dev/shm"))
        print(json.dumps(out))
    """))
    assert "/dev/shm is full" in res["error"] and "shm-vla.full.big" in res["error"]
    assert res["left"] == [] and res["used"] == 0              # nothing half-made, no page kept
    assert res["after"] == ["shm-vla.full.small", "shm-vla.full.stats.act"]


@needs_private_shm
def test_b_reader_never_grows_a_segment_nor_sigbuses():
    """A segment with missing pages (as an older writer or a stray tool could leave) and one
    shorter than its header says are refused with one clear error: no page is added, even
    with room, and no SIGBUS when the tmpfs is full."""
    res = _result(python_in_private_shm(1024, """
        import ctypes, json, os
        import numpy as np
        from shm_vla.shm.ring import Ring
        from shm_vla.shm.segment import ShmError
        from shm_vla.shm.stats import Stats, read_snapshot
        libc = ctypes.CDLL(None, use_errno=True)
        PUNCH_HOLE = 0x02 | 0x01                     # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

        def punch(path, offset, length):
            fd = os.open(path, os.O_RDWR)
            assert libc.fallocate(fd, PUNCH_HOLE, ctypes.c_long(offset), ctypes.c_long(length)) == 0
            os.close(fd)

        def blocks(path):
            return os.stat(path).st_blocks

        def attach_error(fn):
            try:
                fn().close()
            except ShmError as exc:
                return str(exc)
            return None

        out = {}
        w = Ring.create("rd", "holes", np.uint8, (64 << 10,), 4)
        for i in range(3):
            w.write(np.full(64 << 10, i, np.uint8))
        path = "/dev/shm/shm-vla.rd.holes"
        punch(path, 8192, 128 << 10)                 # pages in the data area go missing
        before = blocks(path)
        out["holes"] = attach_error(lambda: Ring.attach("rd", "holes", np.uint8, (64 << 10,)))
        out["grew"] = blocks(path) - before
        stats = Stats.create("rd", "act")
        punch("/dev/shm/shm-vla.rd.stats.act", 4096, 4096)
        try:
            read_snapshot("rd", "act")
            out["stats"] = None
        except ShmError as exc:
            out["stats"] = str(exc)
        # shorter than the header says
        short = Ring.create("rd", "short", np.uint8, (4096,), 4)
        os.truncate("/dev/shm/shm-vla.rd.short", 4096 + 1024)
        out["short"] = attach_error(lambda: Ring.attach("rd", "short", np.uint8, (4096,)))
        # now with the tmpfs full: a reader that touched a missing page would die of SIGBUS
        fill = os.open("/dev/shm/filler", os.O_CREAT | os.O_RDWR, 0o600)
        st = os.statvfs("/dev/shm")
        os.posix_fallocate(fill, 0, st.f_bavail * st.f_frsize)
        out["full_free"] = os.statvfs("/dev/shm").f_bavail
        out["holes_full"] = attach_error(lambda: Ring.attach("rd", "holes", np.uint8, (64 << 10,)))
        print(json.dumps(out))
    """))
    assert "not fully allocated" in res["holes"] and res["grew"] == 0
    assert "not fully allocated" in res["stats"]
    assert res["full_free"] == 0 and "not fully allocated" in res["holes_full"]
    assert "shorter than its header says" in res["short"]


# ------------------------------------------------------------------------ shm-vla run
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "flow.pt", "tiny", "flow")


def _instance_pids(instance: str) -> list[int]:
    """Processes of this test's (uniquely named) instance still running."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if instance.encode() in cmdline and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def run_args(tmp_path, instance, checkpoint):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    yield [sys.executable, "-m", "shm_vla.cli", "run", "flow", "--instance", instance, "--config", str(cfg_path),
           "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--duration", "5"]
    for pid in _instance_pids(instance):      # whatever a failing run left behind (ours, by pid)
        os.kill(pid, signal.SIGKILL)


@needs_private_shm
def test_c_run_with_too_small_dev_shm_exits_2_with_one_line(run_args, instance):
    proc = in_private_shm(5 << 10, '"$@"; rc=$?; echo "left: $(ls -A /dev/shm)"; exit $rc', *run_args,
                          timeout=90)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    shm_lines = [line for line in lines if "/dev/shm" in line]
    assert len(shm_lines) == 1, lines
    assert re.search(r"shm-vla run: /dev/shm has 5\.0 MiB free, instance '\w+' \(\d+ segments\) needs "
                     r"[\d.]+ MiB \(\d+ bytes\)", shm_lines[0]), shm_lines[0]
    assert "Traceback" not in proc.stderr
    assert "supervisor:" not in proc.stderr and f"instance {instance}, sessions" not in proc.stderr  # nothing started
    assert proc.stdout.strip() == "left:"            # no segment, not even the supervisor's stats
    assert _instance_pids(instance) == []


@needs_private_shm
def test_check_under_systemd_finds_too_small_dev_shm_with_status_75(run_args, instance):
    """What the instance unit runs before any stage: the stages' own status for a full /dev/shm."""
    at = run_args.index
    check = run_args[:3] + ["check"] + run_args[at("--instance"):at("--checkpoint")] + \
        ["--set", f'model.checkpoint="{run_args[at("--checkpoint") + 1]}"']
    proc = in_private_shm(5 << 10, '"$@"; rc=$?; echo "left: $(ls -A /dev/shm)"; exit $rc', *check, timeout=90)
    assert proc.returncode == EXIT_SHM_FULL, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert re.search(r"shm-vla check: /dev/shm has 5\.0 MiB free, instance '\w+' \(\d+ segments\) needs", line), line
    assert proc.stdout.strip() == "left:"


FILLER = """
import os, sys, time
# Wait for the supervisor's stats segment (created after its pre-check, just before it
# starts the children), then take every free page: the children find /dev/shm full.
marker = f"/dev/shm/shm-vla.{sys.argv[1]}.stats.supervisor"
deadline = time.monotonic() + 60
while not os.path.exists(marker) and time.monotonic() < deadline:
    time.sleep(0.005)
fd = os.open("/dev/shm/filler", os.O_CREAT | os.O_RDWR, 0o600)
for _ in range(100):
    st = os.statvfs("/dev/shm")
    try:
        os.posix_fallocate(fd, os.fstat(fd).st_size, st.f_bavail * st.f_frsize)
    except OSError:
        continue
    if os.statvfs("/dev/shm").f_bavail == 0:
        break
"""


@needs_private_shm
def test_d_shm_full_at_run_time_is_no_restart_storm_and_the_run_ends(run_args, instance, tmp_path):
    # what the pre-check asks for, from its own one line
    probe = in_private_shm(1024, 'exec "$@"', *run_args, timeout=90)
    assert probe.returncode == 2, probe.stderr[-3000:]
    needed = int(re.search(r"\((\d+) bytes\)", probe.stderr).group(1))
    filler = tmp_path / "filler.py"
    filler.write_text(FILLER)
    run = run_args + ["--set", "supervise.restart_backoff_max_s=1.0"]
    t0 = time.monotonic()
    proc = in_private_shm(needed // 1024 + 64, f'{sys.executable} {filler} {instance} & exec "$@"', *run,
                          timeout=150)
    elapsed = time.monotonic() - t0
    out = proc.stderr
    assert proc.returncode == EXIT_SHM_FULL, out[-3000:]
    assert "could not get its shared memory 3 times (/dev/shm full); stopping the pipeline" in out
    exits = re.findall(r"supervisor: (\S+) exited with (-?\d+)", out)
    assert exits and all(code == str(EXIT_SHM_FULL) for _, code in exits), exits   # never a SIGBUS (-7) or 1
    per_child = {name: sum(1 for n, _ in exits if n == name) for name, _ in exits}
    assert max(per_child.values()) <= 2, per_child                  # at most 2 restarts each: no storm
    assert "Traceback" not in out
    assert len(re.findall(r"/dev/shm is full", out)) <= 3 * 6       # one line per failed start
    assert elapsed < 120                                             # the run ended by itself
    assert _instance_pids(instance) == []                            # and took every child with it


# ------------------------------------------------------------------------ supervisor policy
def _child(name: str, code: int) -> Child:
    return Child(name, [sys.executable, "-c", f"raise SystemExit({code})"])


def _watch(sup: Supervisor, until, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:
        sup.watch_once()
        time.sleep(0.02)


def test_supervisor_retries_shm_full_with_the_longest_backoff_then_stops(instance):
    cfg = config.load(instance, None, ["supervise.restart_backoff_s=0.2", "supervise.restart_backoff_max_s=0.4"])
    stats = Stats.create(instance, "supervisor")
    logs: list[str] = []
    full, crash = _child("vl", EXIT_SHM_FULL), _child("act", 1)
    sup = Supervisor(cfg, [full, crash], stats, log=logs.append)
    try:
        sup.start_all()
        _watch(sup, lambda: sup.failed)
        assert "vl could not get its shared memory 3 times" in sup.failed
        assert full.exits == [EXIT_SHM_FULL] * SHM_FULL_TRIES and full.restarts == SHM_FULL_TRIES - 1
        assert not full.restart and full.restart_at is None          # given up: no restart pending
        waits = [line for line in logs if line.startswith("supervisor: vl exited")]
        assert waits == [f"supervisor: vl exited with {EXIT_SHM_FULL} (/dev/shm full, try {i} of 3); "
                         "restart in 0.4 s" for i in (1, 2)]
        assert any(line.startswith("supervisor: act exited with 1; restart in 0.2 s") for line in logs)
    finally:
        sup.stop_all()
        stats.close()


def test_a_stage_that_gave_up_ends_the_start_up_so_duration_counts(instance):
    cfg = config.load(instance, None, [])
    stats = Stats.create(instance, "supervisor")
    sup = Supervisor(cfg, [_child("act", config.EXIT_CONFIG_ERROR)], stats, log=lambda m: None)
    try:
        assert not sup.start_up_over(cfg)
        sup.start_all()
        _watch(sup, lambda: sup.start_up_over(cfg))
        assert sup.start_up_over(cfg)           # it never comes up: --duration counts from now
    finally:
        sup.stop_all()
        stats.close()


def test_a_stage_in_a_crash_loop_ends_the_start_up_after_its_third_restart(instance):
    cfg = config.load(instance, None, ["supervise.restart_backoff_s=0.1", "supervise.restart_backoff_max_s=0.2"])
    stats = Stats.create(instance, "supervisor")
    looping = _child("act", 1)                  # exit 1: restarted every time, never up
    sup = Supervisor(cfg, [looping], stats, log=lambda m: None)
    try:
        sup.start_all()
        _watch(sup, lambda: looping.restarts >= START_UP_RESTARTS - 1)
        assert not sup.start_up_over(cfg)       # two restarts: still starting up
        _watch(sup, lambda: sup.start_up_over(cfg))
        assert looping.restarts == START_UP_RESTARTS and looping.restart   # still restarted, and counted
    finally:
        sup.stop_all()
        stats.close()
