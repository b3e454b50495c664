"""The Prometheus exporter against a live cell: `shm-vla run flow --sim` and
`shm-vla stat --prometheus` as real processes, scraped over loopback HTTP and parsed with
prometheus-client's own parser; then the exporter stalled, killed, and the cell stopped."""
from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request

import pytest

prometheus_client = pytest.importorskip("prometheus_client", reason="pip install shm-vla[metrics]")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from procs import REPO, free_port, spawn, stop, wait_for, write_config  # noqa: E402
from shm_vla import config, metrics  # noqa: E402
from shm_vla.model.make_checkpoint import make_checkpoint  # noqa: E402
from shm_vla.shm import segment as segmod  # noqa: E402
from shm_vla.shm import stats as statsmod  # noqa: E402
from shm_vla.stat_model import read_ring  # noqa: E402

pytestmark = pytest.mark.slow
DASHBOARD = REPO / "tools" / "grafana" / "shm-vla.json"
PROCESSES = {"supervisor", "ingest-camera", "ingest-robot", "ingest-sensor", "vl", "act", "record"}


def get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def parse(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(families: dict, name: str, **labels) -> list:
    family = families.get(metrics.PREFIX + name.removesuffix("_total"))
    return [] if family is None else [s for s in family.samples
                                      if all(s.labels.get(k) == v for k, v in labels.items())]


def one(families: dict, name: str, **labels) -> float:
    found = samples(families, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0].value


def act_values(instance: str, process: str = "act") -> dict:
    try:
        return statsmod.read_snapshot(instance, process)["values"]
    except segmod.SegmentMissing:      # not started yet
        return {}


def warmed_up(instance: str) -> bool:
    """Commands going out, and the rolling p50/p99 gauges published (every 10 ticks, every 5 encodes)."""
    vl = act_values(instance, "vl")
    return act_values(instance).get("commands_sent", 0) > 20 and vl.get("updates", 0) > 10


def try_get(url: str, timeout: float) -> str | None:
    try:
        return get(url, timeout)
    except (OSError, urllib.error.URLError):
        return None


def test_scrape_a_live_cell_then_stall_kill_and_stop(tmp_path, instance):
    ckpt = make_checkpoint(tmp_path / "flow.pt", "tiny", "flow")
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    cfg = config.load(instance, cfg_path)
    sup = spawn("run", "flow", "--instance", instance, "--config", str(cfg_path), "--checkpoint", str(ckpt),
                "--out", str(tmp_path / "out"), "--sim", log=tmp_path / "run.log")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    exporter_args = ("stat", "--instance", instance, "--config", str(cfg_path), "--prometheus", f"127.0.0.1:{port}")
    exporter = None
    try:
        assert wait_for(lambda: warmed_up(instance), 90), \
            (tmp_path / "run.log").read_text()[-3000:]
        segments = set(segmod.instance_segments(instance))
        exporter = spawn(*exporter_args, log=tmp_path / "exporter.log")
        assert wait_for(lambda: try_get(url, 2.0), 30), (tmp_path / "exporter.log").read_text()

        # ---- names, types and values against the stats, read just before and after the scrape
        before, sensor_before = act_values(instance), read_ring(instance, "sensor", cfg.shm.prefix, 650.0)
        families = parse(get(url))
        after, sensor_after = act_values(instance), read_ring(instance, "sensor", cfg.shm.prefix, 650.0)
        for name, family in families.items():
            kind = metrics.CATALOG[name[len(metrics.PREFIX):] + ("_total" if family.type == "counter" else "")][0]
            assert family.type == kind, name
        ticks = one(families, "act_ticks_total", cell=instance)
        assert before["ticks"] <= ticks <= after["ticks"], (before["ticks"], ticks, after["ticks"])
        assert after["ticks"] - before["ticks"] <= 3         # the bracket is tight: the scrape is quick
        sent = one(families, "act_commands_sent_total", cell=instance)
        assert before["commands_sent"] <= sent <= after["commands_sent"]
        sensor = one(families, "stream_records_total", cell=instance, stream="sensor")
        assert sensor_before["records"] <= sensor <= sensor_after["records"]
        assert {s.labels["process"] for s in samples(families, "process_up", cell=instance)} == PROCESSES
        assert all(s.value == 1 for s in samples(families, "process_up", cell=instance))
        assert all(one(families, "process_state", cell=instance, process=p, state="up") == 1 for p in PROCESSES)
        held = {k[len("held."):] for k in after if k.startswith("held.")}
        assert {s.labels["reason"] for s in samples(families, "act_held_ticks_total", cell=instance)} == held
        assert one(families, "act_expected_rate_hertz", cell=instance) == cfg.act.tick_hz
        assert 0 < one(families, "act_tick_latency_seconds", cell=instance, quantile="0.99") < 10
        assert 0 < one(families, "vl_encode_seconds", cell=instance, quantile="0.5") < 60
        for stream, limit_ms in (("sensor", cfg.act.max_sensor_age_ms), ("robot", cfg.act.max_robot_age_ms),
                                 ("vl_feature", cfg.act.max_vl_age_ms)):
            assert one(families, "stream_age_limit_seconds", cell=instance, stream=stream) == limit_ms / 1e3
            assert 0 <= one(families, "stream_age_seconds", cell=instance, stream=stream) < 60
        assert one(families, "exporter_snapshot_ok", cell=instance) == 1
        # every metric the Grafana dashboard reads is served (errors only once an error was counted)
        served = {name + ("_total" if f.type == "counter" else "") for name, f in families.items()}
        dashboard = set(re.findall(r"\bshm_vla_[a-z0-9_]+", DASHBOARD.read_text()))
        assert dashboard - {"shm_vla_input_errors_total"} <= served, dashboard - served

        # ---- a stalled exporter: scrapes time out, the cell does not notice
        os.kill(exporter.pid, signal.SIGSTOP)
        try:
            ticks_stopped = act_values(instance)["ticks"]
            assert try_get(url, 1.0) is None
            assert wait_for(lambda: act_values(instance)["ticks"] >= ticks_stopped + 5, 30)
        finally:
            os.kill(exporter.pid, signal.SIGCONT)
        assert wait_for(lambda: try_get(url, 5.0), 30)

        # ---- a killed exporter: nothing of the cell changes, a new one carries on with the same counters
        os.kill(exporter.pid, signal.SIGKILL)
        exporter.wait(10)
        assert set(segmod.instance_segments(instance)) == segments       # it created nothing
        ticks_killed = act_values(instance)["ticks"]
        exporter = spawn(*exporter_args, log=tmp_path / "exporter.log")
        text = wait_for(lambda: try_get(url, 2.0), 30)
        assert text and one(parse(text), "act_ticks_total", cell=instance) >= ticks_killed   # no reset

        # ---- the cell stopped: still exported, every process down
        assert stop(sup, timeout=30) == 0
        families = parse(get(url))
        assert one(families, "exporter_snapshot_ok", cell=instance) == 1
        assert one(families, "cell_processes_up", cell=instance) == 0
        assert all(s.value == 0 for s in samples(families, "process_up", cell=instance))
        assert stop(exporter) == 0                                          # SIGTERM: exit 0
    finally:
        stop(sup, timeout=30)
        if exporter is not None:
            stop(exporter)
