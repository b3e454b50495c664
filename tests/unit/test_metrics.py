"""The Prometheus exporter in-process: real stats segments and rings, the real collector and
registry, parsed back with prometheus-client's own text parser (no HTTP here; the live test
scrapes a running cell over loopback: tests/integration/test_metrics_live.py)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

prometheus_client = pytest.importorskip("prometheus_client", reason="pip install shm-vla[metrics]")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from shm_vla import config as configmod  # noqa: E402
from shm_vla import metrics, stat_view  # noqa: E402
from shm_vla.shm import segment as segmod  # noqa: E402
from shm_vla.shm import stats as statsmod  # noqa: E402
from shm_vla.streams import Streams  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("test_metrics")


@pytest.fixture
def cell(instance):
    """act alive in this process (ticks, holds, rolling gauges), record dead (its writer exited),
    and a robot ring with 3 records."""
    code = f"from shm_vla.shm.stats import Stats\nStats.create('{instance}', 'record').set_state('up')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30, cwd=REPO)
    act = statsmod.Stats.create(instance, "act")
    act.counter("ticks").inc(5)
    act.counter("held.stale_robot").inc(2)
    act.counter("held.no_vl_feature").inc(1)
    act.counter("commands_sent").inc(2)
    act.gauge("latency_ms_p50").set(12.5)
    act.gauge("latency_ms_p99").set(40.0)
    act.set_state("up")
    ring = Streams(configmod.load(instance)).create_robot()
    for _ in range(3):
        ring.write(np.zeros(12, np.float32))
    yield instance
    ring.close()
    act.close()


def scrape(names: list[str]) -> dict:
    """One scrape through a real registry: family name -> parsed family."""
    registry = prometheus_client.CollectorRegistry()
    registry.register(metrics.CellsCollector(metrics.Cells(names, None, [], LOG), _Log()))
    text = prometheus_client.generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


class _Log:
    """RateLimitedLog's interface, keeping what it is told."""

    def __init__(self):
        self.lines = []

    def warning(self, key, msg, *args):
        self.lines.append(msg % args)


def value(families: dict, name: str, **labels) -> float:
    """The one sample of family `name` (without PREFIX, counters without _total) with these labels."""
    family = families[metrics.PREFIX + name.removesuffix("_total")]
    found = [s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())
             and not s.name.endswith("_created")]
    assert len(found) == 1, (name, labels, family.samples)
    return found[0]


def test_names_types_and_values_against_the_stats(cell):
    families = scrape([cell])
    for name, family in families.items():
        assert name.startswith(metrics.PREFIX)
        kind, _, label_names = metrics.CATALOG[name[len(metrics.PREFIX):] + ("_total" if family.type == "counter" else "")]
        assert family.type == kind
        for sample in family.samples:
            assert set(sample.labels) == set(label_names), sample
            if kind == "counter":
                assert sample.name == name + "_total"
    cfg = configmod.load(cell)
    assert value(families, "act_ticks_total", cell=cell) == 5
    assert value(families, "act_commands_sent_total", cell=cell) == 2
    assert value(families, "act_held_ticks_total", cell=cell, reason="stale_robot") == 2
    assert value(families, "act_held_ticks_total", cell=cell, reason="no_vl_feature") == 1
    assert value(families, "act_tick_latency_seconds", cell=cell, quantile="0.5") == pytest.approx(0.0125)
    assert value(families, "act_tick_latency_seconds", cell=cell, quantile="0.99") == pytest.approx(0.040)
    assert value(families, "act_expected_rate_hertz", cell=cell) == cfg.act.tick_hz
    assert value(families, "cell_processes", cell=cell) == 2
    assert value(families, "cell_processes_up", cell=cell) == 1
    assert value(families, "process_up", cell=cell, process="act") == 1
    assert value(families, "process_up", cell=cell, process="record") == 0
    for process, state in (("act", "up"), ("record", "down")):     # one state at a time
        states = {s.labels["state"]: s.value for s in families["shm_vla_process_state"].samples
                  if s.labels["process"] == process}
        assert states[state] == 1 and sum(states.values()) == 1, states
    assert value(families, "process_cpu_seconds_total", cell=cell, process="act") > 0     # this process
    assert "record" not in {s.labels["process"] for s in families["shm_vla_process_cpu_seconds"].samples}
    assert value(families, "stream_records_total", cell=cell, stream="robot") == 3
    assert 0 <= value(families, "stream_age_seconds", cell=cell, stream="robot") < 60
    assert value(families, "stream_age_limit_seconds", cell=cell, stream="robot") == cfg.act.max_robot_age_ms / 1e3
    assert value(families, "stream_age_limit_seconds", cell=cell, stream="view3") == cfg.act.max_frame_age_ms / 1e3
    assert value(families, "stream_writer_up", cell=cell, stream="robot") == 1
    assert "sensor" not in {s.labels["stream"] for s in families["shm_vla_stream_records"].samples}  # no ring
    assert value(families, "exporter_snapshot_ok", cell=cell) == 1


def test_a_scrape_writes_nothing(cell):
    """Segments are read through PROT_READ mappings: not one byte or mtime changes."""
    paths = [segmod.SHM_DIR / n.lstrip("/") for n in segmod.instance_segments(cell)]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}
    for _ in range(3):
        scrape([cell])
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}
    assert after == before


def test_every_cell_on_the_host_and_a_broken_one(cell, tmp_path, monkeypatch):
    """Without --instance every cell with a stats segment is exported, found at each scrape;
    one whose config is invalid is exporter_snapshot_ok 0, and the others still export."""
    other = cell[::-1]
    stats = statsmod.Stats.create(other, "act")
    try:
        assert {cell, other} <= set(statsmod.list_instances())
        monkeypatch.setattr(configmod, "CONFIG_DIR", tmp_path)
        (tmp_path / f"{other}.toml").write_text("[act]\ntick_hz = -1\n")
        log = _Log()
        registry = prometheus_client.CollectorRegistry()
        registry.register(metrics.CellsCollector(metrics.Cells([], None, [], LOG), log))
        families = {f.name: f for f in text_string_to_metric_families(prometheus_client.generate_latest(registry).decode())}
        assert value(families, "exporter_snapshot_ok", cell=other) == 0
        assert value(families, "exporter_snapshot_ok", cell=cell) == 1
        assert value(families, "act_ticks_total", cell=cell) == 5
        assert other not in {s.labels["cell"] for s in families["shm_vla_act_ticks"].samples}
        assert any("tick_hz" in line for line in log.lines), log.lines
    finally:
        stats.close()
        segmod.remove_instance(other)


def test_families_refuse_wrong_labels():
    families = metrics.Families()
    families.add("act_ticks_total", {"cell": "a"}, 1)
    with pytest.raises(ValueError, match="labels"):
        families.add("act_ticks_total", {"cell": "a", "process": "act"}, 1)


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9500", ("127.0.0.1", 9500)), ("0.0.0.0:0", ("0.0.0.0", 0)),
                                            ("[::1]:9500", ("::1", 9500)), ("localhost:80", ("localhost", 80))])
def test_parse_listen(text, expected):
    assert metrics.parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9500", ":9500", "host:", "host:port", "host:70000"])
def test_parse_listen_rejects(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.parse_listen(text)


@pytest.mark.parametrize("argv, message", [
    (["--prometheus", "9500"], "expected HOST:PORT"),
    (["--prometheus", "127.0.0.1:0", "--once"], "no --once or --json"),
    (["--instance", "a", "--instance", "b"], "one --instance for the view"),
    (["--prometheus", "127.0.0.1:0", "--config", "x.toml"], "exactly one --instance"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert stat_view.main(argv) == 2
    assert message in capsys.readouterr().err


def test_docs_list_every_metric():
    """docs/STAT.md's table: one row per metric of the catalogue, with its type and labels."""
    rows = {}
    for line in (REPO / "docs" / "STAT.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`shm_vla_"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    expected = {metrics.PREFIX + name: (kind, ", ".join(l for l in labels if l != "cell") or "-")
                for name, (kind, _, labels) in metrics.CATALOG.items()}
    assert rows == expected


def test_the_shadows_metrics_come_from_its_stats(instance):
    """A shadow's counters and rolling gauges (one divergence gauge pair per action axis) as metrics;
    a cell without a shadow has none of them."""
    shadow = statsmod.Stats.create(instance, "shadow")
    try:
        shadow.counter("ticks").inc(40)
        shadow.counter("skipped").inc(3)
        shadow.gauge("latency_ms_p99").set(4.0)
        for axis in range(7):
            shadow.gauge(f"divergence.{axis}_p50").set(0.01 * axis)
            shadow.gauge(f"divergence.{axis}_p99").set(0.02 * axis)
        shadow.set_state("up")
        families = scrape([instance])
        assert value(families, "shadow_ticks_total", cell=instance) == 40
        assert value(families, "shadow_skipped_total", cell=instance) == 3
        assert value(families, "shadow_latency_seconds", cell=instance, quantile="0.99") == pytest.approx(0.004)
        assert value(families, "shadow_divergence", cell=instance, axis="6", quantile="0.99") == pytest.approx(0.12)
        assert len(families["shm_vla_shadow_divergence"].samples) == 14
    finally:
        shadow.close()
    segmod.remove_instance(instance)
    assert not any(name.startswith("shm_vla_shadow") for name in scrape([instance]))
