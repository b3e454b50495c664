"""`shm-vla-stat --rerun`: a live instance's counters streamed to Rerun (here to an .rrd file,
the same stream a viewer gets), read back with rerun-sdk's reader; a stop leaves a complete file."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings

import pytest

pytest.importorskip("rerun", reason="pip install shm-vla[rerun] (Python >= 3.11)")

import rrd_contents  # noqa: E402
from procs import REPO, spawn, stop, write_config  # noqa: E402
from shm_vla.model.make_checkpoint import make_checkpoint  # noqa: E402
from shm_vla.shm import segment as segmod  # noqa: E402
from shm_vla.shm import stats as statsmod  # noqa: E402

pytestmark = pytest.mark.slow


def _act_ticks(instance: str) -> int:
    try:
        return statsmod.read_snapshot(instance, "act")["values"].get("ticks", 0)
    except segmod.ShmError:
        return 0


def _values(rrd, entity: str) -> list:
    out = []
    for chunk in rrd_contents.chunks(rrd):
        if chunk.entity_path == "/" + entity:
            assert "wall_time" in chunk.timeline_names
            out += chunk.to_record_batch().column("Scalars:scalars").to_pylist()
    return out


def test_a_live_instance_streamed_to_rerun(tmp_path, instance):
    ckpt = make_checkpoint(tmp_path / "flow.pt", "tiny", "flow")
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    sup = spawn("run", "flow", "--instance", instance, "--config", str(cfg_path), "--checkpoint", str(ckpt),
                "--out", str(tmp_path / "out"), "--sim", "--duration", "60", log=tmp_path / "run.log")
    rrd = tmp_path / "live.rrd"
    try:
        deadline = time.monotonic() + 90
        while _act_ticks(instance) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _act_ticks(instance) >= 20, (tmp_path / "run.log").read_text()[-3000:]
        live = subprocess.Popen([sys.executable, "-m", "shm_vla.cli", "stat", "--instance", instance, "--config",
                                 str(cfg_path), "--rerun", str(rrd), "--interval", "0.2"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)
        live.send_signal(signal.SIGTERM)
        _, err = live.communicate(timeout=30)
        assert live.returncode == 0 and "Traceback" not in err, err
    finally:
        stop(sup, timeout=30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = rrd_contents.rows(rrd)
    assert not [w for w in caught if "footer" in str(w.message)]        # closed properly
    n = rows["live/act/rate_hz"]
    assert n >= 8                                                        # ~15 samples in 3 s at 0.2 s
    for entity in ("live/act/latency_ms", "live/ages/results_ms", "live/ages/sensor_ms", "live/vl/encode_ms",
                   "live/record/lag_records", "live/process/act/up", "live/process/record/up"):
        assert rows[entity] == n, (entity, rows)
    assert all(v == [1.0] for v in _values(rrd, "live/process/act/up"))
    assert all(8.0 <= v[0] <= 12.0 for v in _values(rrd, "live/act/rate_hz")[-3:])
    assert all(len(v) == 2 for v in _values(rrd, "live/act/latency_ms"))   # p50, p99


def test_rerun_is_not_combined_with_json_or_prometheus():
    for extra in (["--json"], ["--prometheus", "127.0.0.1:0"]):
        result = subprocess.run([sys.executable, "-m", "shm_vla.cli", "stat", "--rerun", "x.rrd", *extra],
                                capture_output=True, text=True, timeout=60, cwd=REPO)
        assert result.returncode == 2 and "--rerun streams to Rerun" in result.stderr
