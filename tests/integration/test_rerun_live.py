"""A session recorded by the real pipeline (`shm-vla run flow --sim --save-data`), written as a
Rerun recording by `shm-vla analyze --rerun` (a real process), read back with rerun-sdk's
reader: every entity holds as many rows as the session files hold records."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("rerun", reason="pip install shm-vla[rerun] (Python >= 3.11)")

import rrd_contents  # noqa: E402
from procs import REPO, spawn, stop, write_config  # noqa: E402
from shm_vla.model.make_checkpoint import make_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path else []


def _is_vl_update_only(line: dict) -> bool:
    """As the deployed analysis reads timings: vl_update_time > 0 and no tick time."""
    return (line.get("vl_update_time") or 0) > 0 and not (line.get("total_time") or 0) > 0


def test_recorded_session_as_rerun_recording(tmp_path, instance):
    ckpt = make_checkpoint(tmp_path / "flow.pt", "tiny", "flow")
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    out = tmp_path / "out"
    sup = spawn("run", "flow", "--instance", instance, "--config", str(cfg_path), "--checkpoint", str(ckpt),
                "--out", str(out), "--sim", "--save-data", "--duration", "6", log=tmp_path / "run.log")
    try:
        assert sup.wait(180) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        stop(sup, timeout=30)
    (session,) = out.glob("async_inference_*")
    rrd = tmp_path / "session.rrd"
    result = subprocess.run([sys.executable, "-m", "shm_vla.cli", "analyze", str(session), "--rerun", str(rrd)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert f"rerun recording written to {rrd}" in result.stdout

    timings = _lines(next(session.glob("performance_timings_*.jsonl")))
    ticks = [t for t in timings if not _is_vl_update_only(t)]
    ticks += _lines(next(session.glob("held_ticks_*.jsonl"), None))        # newer sessions keep holds apart
    results = _lines(next(session.glob("inference_results_*.jsonl")))
    with np.load(next(session.glob("sensor_data_*.npz"))) as sensor:
        sensor_records = len(sensor["forces"])
    robot_rows = len(next(session.glob("robot_state_*.csv")).read_text().splitlines()) - 1
    expected = {f"camera/{view.name.lower()}": len(list(view.glob("*.jpg"))) for view in session.glob("View*")}
    expected.update({
        "robot/joints": robot_rows, "robot/pose": robot_rows, "sensor/force": sensor_records,
        "action/chunk": len(results), "action/command": sum(bool(r["sent"]) for r in results),
        "events/held": sum(bool(t.get("held")) for t in ticks), "events/clamped": sum(bool(r["clamped"]) for r in results),
        "timing/tick_lateness_ms": len(ticks),
        "timing/vl_encode_ms": len({t["vl_update_number"] for t in timings if (t.get("vl_update_time") or 0) > 0}),
    })
    assert len(expected) == 14 and min(expected.values()) >= 0 and expected["camera/view1"] > 0
    assert expected["sensor/force"] > 0 and expected["action/chunk"] > 0 and expected["robot/joints"] > 0
    counts = rrd_contents.rows(rrd)
    assert {entity: counts[entity] for entity in expected} == expected
    assert counts["sensor/ascan"] > 0 and counts["sensor/ascan_image"] > 0
