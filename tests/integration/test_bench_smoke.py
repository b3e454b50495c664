"""Smoke runs of bench/e2e.py, bench/baseline_threaded.py and bench/ingest.py with tiny
durations: each runs to the end and prints the documented JSON. Only the schema is checked,
never a timing value (timings on a shared CI machine mean nothing)."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shm_vla.shm import segment

from procs import REPO, spawn, stop, write_config

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 50


def run_bench(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "shm_vla.cli", "bench", *args, "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout)


def check_stats(stats) -> None:
    assert isinstance(stats, dict)
    for key in ("count", "p50_ms", "p99_ms", "max_ms", "mean_ms"):
        assert isinstance(stats[key], (int, float)), key


def check_header(report: dict, name: str) -> None:
    assert report["benchmark"] == name
    assert report["schema"] == f"shm-vla.bench.{name}/1"
    assert report["command"].startswith(f"shm-vla bench {name}")
    assert {"nproc", "cpu_model", "load_avg_at_start"} <= set(report["machine"])
    assert report["errors"] == []


def check_targets(report: dict, names: set) -> None:
    assert set(report["targets"]) == names
    for t in report["targets"].values():
        assert {"target", "value", "met"} <= set(t) and isinstance(t["met"], bool)


def check_e2e_run(run: dict) -> None:
    assert isinstance(run["ticks"], int) and run["ticks"] > 0
    assert isinstance(run["expected_ticks"], int)
    for key in ("jitter_ms", "interval_error_ms", "latency_ms", "action_prediction_ms"):
        check_stats(run[key])
    for name in ("sensor_age", "robot_age", "frame_age", "vl_age"):
        check_stats(run["freshness_ms"][name])
    assert set(run["commands_in_window"]) == {"valid", "invalid"}
    assert run["cpu_pct"] and all(isinstance(v, (int, float)) for v in run["cpu_pct"].values())
    assert "sim" in run["cpu_pct"]
    assert isinstance(run["cpu_total_pct"], float) and isinstance(run["cpu_sims_pct"], float)
    assert {"load1_start", "load1_end", "load1_max", "machine_cpu_pct_mean"} <= set(run["load"])


def test_e2e_json_schema():
    report = run_bench("e2e", "--duration", "1.5", "--warmup", "0.5")
    check_header(report, "e2e")
    assert report["model"] == "flow" and report["baseline_head"] == "seed"
    assert set(report["runs"]) == {"shm_vla", "baseline"}
    for run in report["runs"].values():
        check_e2e_run(run)
    assert {"act", "vl", "record", "ingest-camera", "ingest-robot", "ingest-sensor", "supervisor"} <= \
        set(report["runs"]["shm_vla"]["cpu_pct"])
    assert set(report["runs"]["baseline"]["cpu_pct"]) == {"baseline", "sim"}
    shm_sets = report["runs"]["shm_vla"]["vl_sets"]          # the VL set counters over the window
    assert set(shm_sets) == {"updates", "mixed_trigger_sets", "over_skew_sets", "rejected_sets",
                             "incomplete_trigger_timeouts"} and all(isinstance(v, int) for v in shm_sets.values())
    assert report["runs"]["baseline"]["vl_sets"] is None
    for run in report["runs"].values():
        assert run["view_skew_ms"] is None or check_stats(run["view_skew_ms"]) is None
    assert {"jitter_p99", "sensor_age_p99", "robot_age_p99", "frame_age_p99", "latency_p50", "latency_p99",
            "cpu_total", "interval_error_p99"} == set(report["ratios"])
    check_targets(report, {"shm_vla_jitter_p99_ms", "shm_vla_sensor_age_p99_ms", "jitter_p99_ratio"})


def test_ingest_json_schema():
    report = run_bench("ingest", "--quick", "--duration", "1", "--step-duration", "1", "--rates", "650",
                       "--warmup", "0.5")
    check_header(report, "ingest")
    nominal = report["nominal"]
    assert set(nominal["ingest"]) == {"ingest-camera", "ingest-robot", "ingest-sensor"}
    for row in nominal["ingest"].values():
        assert {"cpu_pct", "records_per_s", "messages_per_s", "drops", "errors"} == set(row)
    assert isinstance(nominal["ingest_cpu_total_pct"], float)
    assert set(nominal["sims"]) == {"sim-camera", "sim-robot", "sim-sensor"}
    steps = report["sensor_steps"]
    assert [s["rate_hz"] for s in steps["steps"]] == [650.0]
    step = steps["steps"][0]
    for key in ("records_sent", "records_stored", "lost", "drops", "kernel_drops", "errors"):
        assert isinstance(step[key], int), key
    assert isinstance(step["zero_loss"], bool) and isinstance(step["sender_limited"], bool)
    check_targets(report, {"ingest_cpu_total_pct", "sensor_sustained_rate_hz"})


def test_baseline_threaded_summary(tmp_path):
    config, _ = write_config(tmp_path / "cfg.toml")
    instance = f"t{uuid.uuid4().hex[:10]}"
    from shm_vla.model.make_checkpoint import make_checkpoint
    ckpt = make_checkpoint(tmp_path / "tiny.pt", "tiny", "regression")
    sim = spawn("sim", "all", "--instance", instance, "--config", str(config), "--duration", "30")
    try:
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "baseline_threaded.py"), "--instance", instance,
                               "--config", str(config), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                               "--duration", "2"], cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    finally:
        stop(sim)
        segment.remove_instance(instance)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model_type"] == "regression" and summary["head"] == "seed"
    assert isinstance(summary["ticks"], int)
    timings = Path(summary["timings"])
    assert timings.parent == Path(summary["session_dir"]) and timings.name.startswith("performance_timings_")
    records = [json.loads(line) for line in timings.read_text().splitlines()]
    actions = [r for r in records if "action_id" in r]
    from shm_vla.workers.session_stats import ACTION_FIELDS
    assert all(list(r) == list(ACTION_FIELDS) for r in actions)


def test_e2e_with_a_shadow_reports_act_with_and_without_it():
    report = run_bench("e2e", "--only", "shm_vla", "--shadow", "--duration", "1.5", "--warmup", "0.5")
    assert set(report["runs"]) == {"shm_vla", "shm_vla_shadow"} and report["shadow"] is True
    for run in report["runs"].values():
        check_e2e_run(run)
    assert report["runs"]["shm_vla"]["shadow"] is None and "shadow" in report["runs"]["shm_vla_shadow"]["cpu_pct"]
    shadow = report["runs"]["shm_vla_shadow"]["shadow"]
    assert shadow["lines"] > 0 and set(shadow) == {"lines", "ok", "missed", "skipped", "inference_ms", "delay_ms"}
    effect = report["shadow_effect"]["jitter_p99_ms"]
    assert set(effect) == {"without", "with", "ratio"} and isinstance(effect["with"], float)


def test_faults_drills_report():
    """bench/faults.py runs every drill and reports what docs/FAULTS.md quotes (short settings);
    with --shadow (a superset: the shadow's own drills too), to keep the suite short."""
    shadow = True
    proc = subprocess.run([sys.executable, "-m", "shm_vla.cli", "bench", "faults", "--stop-s", "1",
                           "--hang-timeout-s", "3", "--json"] + (["--shadow"] if shadow else []),
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["benchmark"] == "faults" and report["command"].startswith("shm-vla bench faults")
    d = report["drills"]
    assert set(d["kill9"]) == {"ingest-camera", "ingest-robot", "ingest-sensor", "vl", "act", "record"} | \
        ({"shadow"} if shadow else set())
    assert all(isinstance(v["restart_s"], float) for v in d["kill9"].values())
    assert d["sigstop_sensor"]["stale_commanded"] == 0 and d["sigstop_sensor"]["commands_after"] > 0
    assert isinstance(d["hang_act"]["restart_s"], float) and d["hang_act"]["commands_while_hung"] == 0
    # at most the one command already on its way when the supervisor died (measured: 0 or 1, < 50 ms)
    late = d["supervisor_sigkill"]["commands_after_death_ms"]
    assert len(late) <= 1 and all(ms < 300 for ms in late), late
    assert isinstance(d["supervisor_sigkill"]["all_stopped_s"], float)
    if shadow:
        assert d["shadow"]["stall"]["skipped"] > 0 and isinstance(d["shadow"]["hang"]["restart_s"], float)
        assert isinstance(d["kill9"]["shadow"]["max_command_gap_ms"], float)
