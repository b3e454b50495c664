"""A reader whose configuration differs from its ring's writer (issue 12, item 3), with real
processes: the VL process configured for BGR frames beside a camera ingest that writes RGB.

It waits (the writer may be one that a restart is replacing) with one warning, holding no
mapping of the refused ring; a writer of its configuration taking over lets it start; a live
writer that still disagrees at shm.attach_timeout_s ends it with one configuration-error line
and exit 2 (never restarted), no traceback.
"""
from __future__ import annotations

import time

import pytest

from procs import spawn, stop, wait_for, write_config
from shm_vla import config
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.shm import stats as statsmod
from shm_vla.streams import N_VIEWS, Streams

pytestmark = pytest.mark.slow

BOUND_S = 8.0


def _state(instance, process):
    try:
        return statsmod.read_snapshot(instance, process)["state"]
    except Exception:
        return None


def _view1_maps(pid: int, instance: str) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(f"shm-vla.{instance}.view1" in line for line in f)


def _lines(log, *words):
    return [line for line in log.read_text().splitlines() if all(w in line for w in words)]


@pytest.fixture
def vl_bgr(tmp_path, instance):
    """Start `shm-vla vl` configured for BGR frames; it is stopped at teardown."""
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    ckpt = make_checkpoint(tmp_path / "flow.pt", "tiny", "flow")
    started = []

    def start():
        log = tmp_path / "vl.log"
        proc = spawn("vl", "--instance", instance, "--config", str(cfg_path), "--set", 'camera.channel_order="BGR"',
                     "--set", f"shm.attach_timeout_s={BOUND_S}", "--set", f'model.checkpoint="{ckpt}"', log=log)
        started.append(proc)
        return proc, log
    yield cfg_path, start
    for proc in started:
        stop(proc)


def _wait_refused(proc, log, instance):
    """The VL process waits on view 1 with one warning naming both channel orders, and never
    keeps the refused ring mapped: at most the attempt in progress maps it (a ring left open
    at each refusal would add a mapping per retry, every 0.1 s)."""
    assert wait_for(lambda: _lines(log, "waiting up to", "of camera view 1") or proc.poll() is not None, 60), log.read_text()
    assert proc.poll() is None, log.read_text()
    warning = _lines(log, "waiting up to", "of camera view 1")
    assert len(warning) == 1 and "WARNING" in warning[0], log.read_text()
    assert "channel_order 'RGB'" in warning[0] and "'BGR'" in warning[0]
    maps = []
    for _ in range(20):
        maps.append(_view1_maps(proc.pid, instance))
        time.sleep(0.1)
    assert max(maps) <= 1, maps


def test_a_live_writer_of_another_configuration_is_one_config_error_line(vl_bgr, instance, tmp_path):
    cfg_path, start = vl_bgr
    camera = spawn("ingest", "camera", "--instance", instance, "--config", str(cfg_path),
                   "--set", 'camera.channel_order="RGB"', log=tmp_path / "camera.log")
    try:
        assert wait_for(lambda: _state(instance, "ingest-camera") == "up", 30), (tmp_path / "camera.log").read_text()
        vl, log = start()
        _wait_refused(vl, log, instance)
        vl.wait(BOUND_S + 30)
        text = log.read_text()
        assert vl.returncode == config.EXIT_CONFIG_ERROR, text    # not restarted by `shm-vla run` or systemd
        assert "Traceback" not in text
        error = _lines(log, "ERROR")
        assert len(error) == 1 and "configuration error: camera view 1" in error[0], text
        assert "channel_order 'RGB'" in error[0] and "'BGR'" in error[0] and f"pid {camera.pid}" in error[0]
        assert _state(instance, "ingest-camera") == "up"          # the writer is not disturbed
    finally:
        assert stop(camera) == 0


def test_a_writer_of_this_configuration_taking_over_lets_the_reader_start(vl_bgr, instance):
    """The case the wait is for: the ring is written for another configuration, then its
    writer is replaced by one of this configuration (here: a writer that exits, and one that
    takes over its stale segments). The reader starts, with no error."""
    cfg_path, start = vl_bgr
    rgb = Streams(config.load(instance, cfg_path, ['camera.channel_order="RGB"']))
    old = [rgb.create_view(i) for i in range(N_VIEWS)]
    vl, log = start()
    try:
        _wait_refused(vl, log, instance)
        for ring in old:
            ring.close()                                           # the old writer is gone: stale
        bgr = Streams(config.load(instance, cfg_path, ['camera.channel_order="BGR"']))
        new = [bgr.create_view(i) for i in range(N_VIEWS)]         # replaces them (another layout)
        assert wait_for(lambda: _state(instance, "vl") == "up", BOUND_S + 30), log.read_text()
        assert not _lines(log, "ERROR") and "Traceback" not in log.read_text()
        assert stop(vl) == 0
        for ring in new:
            ring.close()
    finally:
        stop(vl)
