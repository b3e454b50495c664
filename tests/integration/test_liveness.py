"""One liveness rule everywhere, checked against a real zombie writer.

A zombie is a process that has exited but that its parent has not reaped yet: its
/proc/<pid>/stat entry stays (state Z, same start time), but the kernel has already
closed its descriptors and so dropped its segment locks. `shm ls`, stat, `shm-vla run`
and `shm clean` must all call its segments stale.
"""
from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from procs import REPO, wait_for
from shm_vla import config, supervise
from shm_vla.shm import cli as shm_cli
from shm_vla.shm import segment as segmod
from shm_vla.shm import stats as statsmod

WRITER = """
import sys, numpy as np
from shm_vla.shm.ring import Ring
from shm_vla.shm.stats import Stats
ring = Ring.create(sys.argv[1], "results", np.float32, (4,), 8)
ring.write(np.zeros(4, np.float32))
stats = Stats.create(sys.argv[1], "act")
stats.set_state("up")
print("ready", flush=True)
sys.stdin.readline()          # exits when the test closes its stdin
"""


def _state(pid: int) -> str:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return data[data.rfind(b")") + 2:].split()[0].decode()


def _writer(instance: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, instance], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _ls(instance: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert shm_cli.main(["ls", "--instance", instance]) == 0
    return out.getvalue()


def _views(instance: str) -> dict:
    """What each consumer of the rule says about the instance."""
    names = segmod.instance_segments(instance)
    assert len(names) == 2, names
    return {"inspect": [segmod.inspect(n).alive for n in names],
            "ls": ["live" in line.split()[3] for line in _ls(instance).splitlines()[1:]],
            "stat": statsmod.read_snapshot(instance, "act")["state"]}


def test_a_zombie_writer_is_dead_for_ls_stat_run_and_clean(instance):
    live = _writer(instance)
    try:
        views = _views(instance)
        assert views == {"inspect": [True, True], "ls": [True, True], "stat": "up"}
        with pytest.raises(segmod.ShmError, match="already running"):
            supervise._fresh_instance(config.load(instance))
        # the writer exits; its parent (this test) does not reap it: a zombie
        live.stdin.close()
        assert wait_for(lambda: _state(live.pid) == "Z", 10), "the writer did not become a zombie"
        assert segmod.process_start_ticks(live.pid) is not None     # still in /proc, same start time
        views = _views(instance)
        assert views == {"inspect": [False, False], "ls": [False, False], "stat": "down"}
        supervise._fresh_instance(config.load(instance))          # not refused: removes the stale segments
        assert segmod.instance_segments(instance) == []
        assert _state(live.pid) == "Z"                             # all of it while the zombie was there
    finally:
        if not live.stdin.closed:
            live.stdin.close()
        live.wait(10)


def test_clean_agrees_with_ls_about_a_zombie(instance):
    proc = _writer(instance)
    try:
        proc.stdin.close()
        assert wait_for(lambda: _state(proc.pid) == "Z", 10)
        assert "stale" in _ls(instance) and "live" not in _ls(instance)
        assert segmod.remove_instance(instance) == 2
    finally:
        proc.wait(10)
