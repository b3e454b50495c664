"""shm-vla-stat: snapshots and rendering against a real stats writer and real rings, in-process."""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from shm_vla import config as configmod
from shm_vla import stat_model, stat_view
from shm_vla.shm import segment as segmod
from shm_vla.shm import stats as statsmod
from shm_vla.shm.ring import Ring
from shm_vla.streams import Streams

REPO = Path(__file__).resolve().parents[2]


def render_text(snap: dict, color: bool = False) -> str:
    console = Console(file=io.StringIO(), width=140, record=True, force_terminal=color,
                      color_system="standard" if color else None)
    console.print(stat_view.render(snap))
    return console.export_text(styles=color)


@pytest.fixture
def cfg(instance):
    return configmod.load(instance)


@pytest.fixture
def sensor_writer(cfg):
    """A live ingest-sensor: stats in this process and a sensor ring with 20 records."""
    stats = statsmod.Stats.create(cfg.instance, "ingest-sensor")
    stats.counter("records").inc(20)
    stats.counter("drops").inc(2)
    stats.counter("errors.bad_length").inc(3)
    stats.counter("nonfinite_records")
    stats.gauge("rate_hz").set(650.0)
    stats.gauge("latency_ms").set(0.25)
    stats.set_state("up")
    ring = Streams(cfg).create_sensor()
    row = np.zeros(cfg.sensor_channels, np.float32)
    for _ in range(20):
        ring.write(row)
    yield stats, ring
    ring.close()
    stats.close()


def test_live_writer_snapshot_and_render(cfg, sensor_writer):
    snap = stat_model.build_snapshot(cfg, stat_model.ProcessSampler())
    proc = snap["processes"]["ingest-sensor"]
    assert proc["state"] == "up" and proc["alive"] and proc["level"] == "ok"
    assert proc["rss_bytes"] > 0 and proc["cpu_percent"] is None      # CPU% needs a second sample
    sensor = snap["inputs"]["sensor"]
    assert sensor["records"] == 20 and sensor["drops"] == 2 and sensor["errors"] == {"bad_length": 3}
    assert sensor["rate_hz"] == 650.0 and sensor["counters"] == {"nonfinite_records": 0}
    assert sensor["levels"]["drops"] == "warn" and sensor["levels"]["rate_hz"] == "ok"
    stream = snap["streams"]["sensor"]
    assert stream["present"] and stream["writer_alive"] and stream["records"] == 20
    assert 0 <= stream["age_ms"] < 60_000 and stream["rate_hz"] > 0
    assert snap["streams"]["robot"]["present"] is False and snap["inputs"]["robot"]["state"] == "absent"
    text = render_text(snap)
    assert "ingest-sensor" in text and "bad_length 3" in text and "650.0" in text
    assert "1/1 processes up" in text


def test_cpu_percent_on_second_sample(cfg, sensor_writer):
    sampler = stat_model.ProcessSampler()
    stat_model.build_snapshot(cfg, sampler)
    snap = stat_model.build_snapshot(cfg, sampler)
    assert snap["processes"]["ingest-sensor"]["cpu_percent"] >= 0.0


def _write_aged(ring: Ring, payload, age_ms: float) -> None:
    ring.write(payload, recv_mono_ns=time.monotonic_ns() - int(age_ms * 1e6))


def test_stream_age_levels_follow_config(instance):
    cfg = configmod.load(instance, overrides=["stat.warn_periods=2", "stat.stale_periods=4",
                                              "robot.rate_hz=10.0"])   # period 100 ms
    streams = Streams(cfg)
    robot = streams.create_robot()
    row = np.zeros(12, np.float32)
    levels = []
    for age_ms in (50, 300, 1000):          # 0.5, 3 and 10 periods
        _write_aged(robot, row, age_ms)
        snap = stat_model.build_snapshot(cfg)
        levels.append(snap["streams"]["robot"]["levels"]["age_ms"])
    assert levels == ["ok", "warn", "bad"]
    assert snap["inputs"]["robot"]["levels"]["age_ms"] == "bad"
    colored = render_text(snap, color=True)
    age = f"{snap['inputs']['robot']['age_ms']:.0f}"
    assert re.search(rf"\x1b\[1;31m\s*{age}\x1b", colored)      # the stale age is bold red
    robot.close()


def test_thresholds():
    cfg = configmod.load("t", overrides=["stat.warn_periods=2", "stat.stale_periods=4", "act.tick_hz=10.0"])
    th = stat_model.Thresholds(cfg)
    assert [th.rate(r, 100.0) for r in (None, 60, 40, 20)] == ["none", "ok", "warn", "bad"]
    assert [th.tick_duration(ms) for ms in (None, 40, 60, 120)] == ["none", "ok", "warn", "bad"]
    assert [th.count(n) for n in (None, 0, 1)] == ["none", "ok", "warn"]
    assert [th.lag(n) for n in (0, 10, 11, cfg.shm.results_depth // 2)] == ["ok", "ok", "warn", "bad"]
    assert th.process("up", True, 10.0) == "ok" and th.process("up", True, 1e5) == "bad"
    assert th.process("down", False, 10.0) == "bad" and th.process("restarting", False, 0) == "warn"


def test_dead_process_shows_down_with_last_seen(cfg):
    code = ("from shm_vla.shm.stats import Stats\n"
            f"s = Stats.create('{cfg.instance}', 'act'); s.counter('ticks').inc(7); "
            "s.counter('held.stale_vl').inc(2); s.set_state('up')")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, cwd=REPO)
    snap = stat_model.build_snapshot(cfg, stat_model.ProcessSampler())
    act = snap["processes"]["act"]
    assert act["state"] == "down" and not act["alive"] and act["last_state"] == "up"
    assert act["cpu_percent"] is None and act["rss_bytes"] is None and act["level"] == "bad"
    assert snap["act"]["ticks"] == 7 and snap["act"]["held"] == {"stale_vl": 2}
    assert snap["processes_up"] == 0 and snap["processes_total"] == 1
    text = render_text(snap)
    assert "down" in text and " ago" in text and "stale_vl 2" in text


def test_down_child_of_live_supervisor_is_restarting(cfg):
    sup = statsmod.Stats.create(cfg.instance, "supervisor")
    sup.counter("restarts.vl").inc()
    sup.set_state("restarting")
    code = f"from shm_vla.shm.stats import Stats\nStats.create('{cfg.instance}', 'vl').set_state('up')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, cwd=REPO)
    snap = stat_model.build_snapshot(cfg)
    assert snap["processes"]["vl"]["state"] == "restarting" and snap["processes"]["vl"]["restarts"] == 1
    assert snap["processes"]["supervisor"]["state"] == "restarting"
    sup.close()


def test_supervisor_gauges_tell_restarting_down_and_failed(cfg):
    sup = statsmod.Stats.create(cfg.instance, "supervisor")
    sup.set_state("up")
    for name in ("vl", "act", "record"):
        sup.counter(f"restarts.{name}")
        code = f"from shm_vla.shm.stats import Stats\nStats.create('{cfg.instance}', '{name}').set_state('up')"
        subprocess.run([sys.executable, "-c", code], check=True, timeout=30, cwd=REPO)
    sup.gauge("restart_pending.vl", 0.0).set(1.0)     # waiting out its backoff
    sup.gauge("restart_pending.act", 0.0)             # exited, not (yet) scheduled
    sup.gauge("gave_up.record", 0.0).set(1.0)         # configuration error: not restarted
    procs = stat_model.build_snapshot(cfg)["processes"]
    assert [procs[n]["state"] for n in ("vl", "act", "record")] == ["restarting", "down", "failed"]
    sup.close()


def test_no_processes_at_all(cfg):
    snap = stat_model.build_snapshot(cfg, stat_model.ProcessSampler())
    assert snap["processes"] == {} and snap["processes_total"] == 0
    assert all(s["state"] == "absent" for s in snap["inputs"].values())
    assert snap["vl"]["state"] == snap["act"]["state"] == snap["record"]["state"] == "absent"
    assert not any(s["present"] for s in snap["streams"].values())
    assert f"no processes of instance {cfg.instance}" in render_text(snap)


# ---------------------------------------------------------------------------- JSON schema
NUM = (int, float, type(None))
SCHEMA = {
    "schema_version": int, "instance": str, "prefix": str, "wall_time_ns": int, "processes_total": int,
    "processes_up": int, "processes": dict, "inputs": dict, "streams": dict, "vl": dict, "act": dict,
    "record": dict, "shadow": dict, "gpu": (dict, type(None)),
}
PROCESS = {"pid": int, "alive": bool, "state": str, "last_state": str, "heartbeat_age_ms": float,
           "started_wall_ns": int, "values": dict, "cpu_percent": NUM, "rss_bytes": NUM, "restarts": NUM,
           "read_retries": NUM, "level": str}
INPUT = {"process": str, "state": str, "expected_hz": float, "rate_hz": NUM, "age_ms": NUM, "latency_ms": NUM,
         "latency_max_ms": NUM, "clock_offset_ms": NUM, "messages": NUM, "records": NUM, "drops": NUM,
         "errors": dict, "errors_total": NUM, "counters": dict, "levels": dict}
STREAM = {"present": bool, "writer_alive": bool, "health": (str, type(None)), "records": NUM, "depth": NUM,
          "expected_hz": float, "rate_hz": NUM, "age_ms": NUM, "levels": dict}
VL = {"process": str, "state": str, "updates": NUM, "encode_ms": NUM, "encode_ms_p50": NUM, "encode_ms_p99": NUM,
      "view_skew_ms": NUM, "over_skew_sets": NUM, "rejected_sets": NUM, "read_errors": NUM,
      "unsynced_sets": NUM, "stale_sets": NUM, "mixed_trigger_sets": NUM, "incomplete_trigger_timeouts": NUM,
      "torn_sets": NUM,
      "feature_age_ms": NUM, "feature_rate_hz": NUM, "levels": dict}
ACT = {"process": str, "state": str, "ticks": NUM, "missed_ticks": NUM, "clamped_ticks": NUM, "rate_hz": NUM,
       "expected_hz": float, "latency_ms_p50": NUM, "latency_ms_p99": NUM, "lateness_ms_p50": NUM,
       "lateness_ms_p99": NUM, "commands_sent": NUM, "commands_failed": NUM, "vl_update_number": NUM,
       "held": dict, "held_total": NUM, "result_age_ms": NUM, "levels": dict}
RECORD = {"process": str, "state": str, "records_written": NUM, "vl_updates_written": NUM, "lag_records": NUM,
          "lost": NUM, "frames_written": NUM, "robot_rows_written": NUM, "sensor_records_written": NUM,
          "data_lost": NUM, "shadow_written": NUM, "shadow_lost": NUM, "disk_free_mb": NUM, "disk_pauses": NUM, "vl_lost": NUM,
          "disk_paused": (bool, type(None)), "levels": dict}
SHADOW = {"process": str, "state": str, "configured": bool, "ticks": NUM, "missed": NUM, "skipped": NUM,
          "live_held": NUM, "nonfinite_output": NUM, "rate_hz": NUM, "latency_ms_p50": NUM, "latency_ms_p99": NUM,
          "delay_ms_p50": NUM, "delay_ms_p99": NUM, "divergence_p50": list, "divergence_p99": list,
          "divergence_max_p99": NUM, "result_age_ms": NUM, "levels": dict}
LEVELS = {"ok", "warn", "bad", "none"}


def check(obj: dict, schema: dict, where: str) -> None:
    assert set(obj) == set(schema), f"{where}: keys {sorted(set(obj) ^ set(schema))}"
    for key, kind in schema.items():
        assert isinstance(obj[key], kind), f"{where}.{key}: {obj[key]!r} is not {kind}"
    assert set(obj.get("levels", {}).values()) <= LEVELS


def test_json_schema(cfg, sensor_writer, capsys):
    stats = statsmod.Stats.create(cfg.instance, "vl")
    stats.gauge("encode_ms_p99")                          # never set: NaN must become null
    stats.set_state("up")
    assert stat_view.main(["--instance", cfg.instance, "--once", "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    check(snap, SCHEMA, "snapshot")
    assert snap["schema_version"] == stat_model.SCHEMA_VERSION == 2
    assert set(snap["processes"]) == {"ingest-sensor", "vl"}
    for name, p in snap["processes"].items():
        check(p, PROCESS, name)
    assert snap["processes"]["vl"]["values"] == {"encode_ms_p99": None}
    assert snap["processes"]["ingest-sensor"]["cpu_percent"] is not None   # --once samples CPU twice
    assert set(snap["inputs"]) == {"sensor", "robot", "camera"}
    for name, s in snap["inputs"].items():
        check(s, INPUT, name)
    assert set(snap["streams"]) == {"sensor", "robot", "view1", "view2", "view3", "view4", "view5",
                                    "vl_feature", "results"}
    for name, s in snap["streams"].items():
        check(s, STREAM, name)
    check(snap["vl"], VL, "vl")
    check(snap["act"], ACT, "act")
    check(snap["record"], RECORD, "record")
    check(snap["shadow"], SHADOW, "shadow")
    assert snap["shadow"]["state"] == "absent" and not snap["shadow"]["configured"]     # no shadow here
    assert snap["gpu"] is None                            # model devices are cpu
    stats.close()


def test_docs_describe_every_json_key():
    doc = (REPO / "docs" / "STAT.md").read_text()
    assert "schema_version" in doc
    for schema in (SCHEMA, PROCESS, INPUT, STREAM, VL, ACT, RECORD, SHADOW):
        missing = [k for k in schema if f"`{k}`" not in doc]
        assert not missing, f"docs/STAT.md does not describe {missing}"


def test_gpu_configured_without_cuda_is_reported_not_fatal(instance):
    cfg = configmod.load(instance, overrides=['model.vl_device="cuda:0"'])
    gpu = stat_model.gpu_memory(cfg)
    assert set(gpu) == {"devices", "error"}
    if gpu["error"] is None:                              # a CUDA machine
        assert gpu["devices"][0]["device"] == "cuda:0" and gpu["devices"][0]["total_bytes"] > 0


def test_torch_not_imported_for_cpu_devices(instance):
    code = ("import sys\nfrom shm_vla.stat_view import main\n"
            f"assert main(['--instance', '{instance}', '--once', '--json']) == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=REPO, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------- read-only
def _segment_bytes(instance: str) -> dict:
    return {name: (segmod.SHM_DIR / name.lstrip("/")).read_bytes() for name in segmod.instance_segments(instance)}


def test_reading_never_creates_locks_or_writes(cfg, sensor_writer, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("stat must never create a segment")
    for cls in (segmod.Segment, Ring, statsmod.Stats):
        monkeypatch.setattr(cls, "create", classmethod(refuse))
    monkeypatch.setattr(segmod.fcntl, "flock", refuse)
    before = _segment_bytes(cfg.instance)
    snap = stat_model.build_snapshot(cfg, stat_model.ProcessSampler())
    render_text(snap)
    assert _segment_bytes(cfg.instance) == before
    assert snap["inputs"]["sensor"]["records"] == 20


def test_read_only_mapping_refuses_writes(cfg, sensor_writer):
    seg = stat_model.attach_read_only(segmod.segment_name(cfg.instance, "sensor"))
    ring = Ring(seg, seg.layout())
    with pytest.raises((ValueError, TypeError)):
        ring.payload[0, 0] = 1.0
    assert ring.head == 20
    ring.close()


def test_bad_interval_is_a_usage_error(instance, capsys):
    assert stat_view.main(["--instance", instance, "--interval", "0"]) == 2
    assert "--interval" in capsys.readouterr().err
