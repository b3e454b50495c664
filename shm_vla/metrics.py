"""Prometheus metrics of the cells on this host: `shm-vla-stat --prometheus HOST:PORT`.

prometheus-client's HTTP server serves /metrics in the Prometheus text format. Every
scrape reads one fresh snapshot of every cell with stat_model.build_snapshot, exactly what
`shm-vla-stat --json` shows (segments opened O_RDONLY and mapped PROT_READ: no lock taken,
nothing written, so the exporter cannot disturb a pipeline), and turns it into metric
families (``CellsCollector``). Nothing is cached between scrapes: a value is as old as
the scrape, and counters are the processes' own (they restart from 0 only when the process
does, never when the exporter does). Scrapes are serialised; one takes a few milliseconds
per cell (it reads about 20 small segments and /proc/locks).

Names follow https://prometheus.io/docs/practices/naming/: prefix ``shm_vla_``, counters
end in ``_total``, times in ``_seconds``, rates in ``_hertz``. ``CATALOG`` is the one list
of them (docs/STAT.md, "Prometheus", shows it; the Grafana dashboard's test checks its
queries against it). Labels: ``cell``, ``process``, ``stream``, and ``reason``/``kind``/
``state``/``quantile`` where a family is split. The shm-vla instance name is the label
``cell``, not ``instance``: Prometheus sets ``instance`` itself (the scraped address,
host:port), and an exported ``instance`` would be renamed ``exported_instance`` or, with
``honor_labels``, merge the cells of the same name (``flow``) of different PCs.

Quantiles (tick latency and lateness, VL encode time) are the processes' rolling p50/p99
gauges (the last 200 ticks, the last 100 encodes), exported as gauges with a ``quantile``
label: they are not cumulative, so they are neither summaries nor histograms.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import psutil
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from . import config as configmod
from .config import Config
from .logutil import RateLimitedLog
from .shm import stats as statsmod
from .stat_model import build_snapshot
from . import pipeline as P

PREFIX = "shm_vla_"
GAUGE, COUNTER = "gauge", "counter"
CELL = ("cell",)
CELL_PROCESS = ("cell", "process")
CELL_STREAM = ("cell", "stream")
QUANTILES = (("0.5", "_p50"), ("0.99", "_p99"))
PROCESS_STATES = statsmod.STATES + ("down", "hung", "unknown")

# name (without PREFIX) -> (type, help, label names)
CATALOG: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # cells, and the exporter's view of them
    "cell_processes": (GAUGE, "Processes of the cell with a stats segment.", CELL),
    "cell_processes_up": (GAUGE, "Processes of the cell whose writer is alive.", CELL),
    "exporter_snapshot_ok": (GAUGE, "1 if this scrape read the cell's stats, 0 if it failed (see the exporter's log).", CELL),
    "exporter_snapshot_seconds": (GAUGE, "Time this scrape took to read the cell's stats.", CELL),
    # processes
    "process_up": (GAUGE, "1 while the process holds its stats segment's lock (alive), else 0.", CELL_PROCESS),
    "process_state": (GAUGE, "1 for the process's current state, 0 for the others.", CELL_PROCESS + ("state",)),
    "process_heartbeat_age_seconds": (GAUGE, "Age of the process's last heartbeat (last seen, when down).", CELL_PROCESS),
    "process_start_time_seconds": (GAUGE, "When the process created its stats, Unix time.", CELL_PROCESS),
    "process_restarts_total": (COUNTER, "Restarts of the process by the supervisor (shm-vla run).", CELL_PROCESS),
    "process_hangs_total": (COUNTER, "Hangs of the process detected by the supervisor (killed and restarted).", CELL_PROCESS),
    "process_read_retries_total": (COUNTER, "Seqlock read retries of the process, all rings it reads.", CELL_PROCESS),
    "process_cpu_seconds_total": (COUNTER, "User and system CPU time of the live process.", CELL_PROCESS),
    "process_resident_memory_bytes": (GAUGE, "Resident memory of the live process.", CELL_PROCESS),
    # rings
    "stream_writer_up": (GAUGE, "1 while the ring's writer is alive.", CELL_STREAM),
    "stream_records_total": (COUNTER, "Records published in the ring since it was created.", CELL_STREAM),
    "stream_age_seconds": (GAUGE, "Age of the ring's newest record, by receipt.", CELL_STREAM),
    "stream_age_limit_seconds": (GAUGE, "Age above which the stream is stale: the action gate's limit for the inputs "
                                        "it gates (act.max_*_age_ms), else stat.stale_periods periods.", CELL_STREAM),
    "stream_rate_hertz": (GAUGE, "Records per second received over the last max(2 s, 4 periods).", CELL_STREAM),
    "stream_expected_rate_hertz": (GAUGE, "Configured records per second of the ring.", CELL_STREAM),
    # ingest processes
    "input_messages_total": (COUNTER, "Messages received by the ingest process.", CELL_PROCESS),
    "input_bytes_total": (COUNTER, "Bytes received by the ingest process.", CELL_PROCESS),
    "input_records_total": (COUNTER, "Records stored by the ingest process.", CELL_PROCESS),
    "input_drops_total": (COUNTER, "Records dropped by the ingest process (kernel drops included).", CELL_PROCESS),
    "input_kernel_drops_total": (COUNTER, "Datagrams the kernel dropped before the ingest read them.", CELL_PROCESS),
    "input_errors_total": (COUNTER, "Input errors by kind.", CELL_PROCESS + ("kind",)),
    "input_stale_backlog_total": (COUNTER, "Records older than the gate's limit when received (a backlog).", CELL_PROCESS),
    "input_nonfinite_records_total": (COUNTER, "Records with NaN or Inf.", CELL_PROCESS),
    "input_sender_restarts_total": (COUNTER, "Restarts of the sender seen by the ingest process.", CELL_PROCESS),
    "input_latency_seconds": (GAUGE, "Last transport latency above the estimated clock floor.", CELL_PROCESS),
    "input_latency_max_seconds": (GAUGE, "Worst transport latency in the last second.", CELL_PROCESS),
    "input_clock_offset_seconds": (GAUGE, "Estimated offset of the sender's clock.", CELL_PROCESS),
    "input_rate_hertz": (GAUGE, "Records per second the ingest process stored over the last second.", CELL_PROCESS),
    "camera_frames_total": (COUNTER, "Frames stored per view by the camera ingest.", CELL_STREAM),
    # VL
    "vl_updates_total": (COUNTER, "VL features published.", CELL),
    "vl_over_skew_sets_total": (COUNTER, "View sets whose skew exceeded vl.max_skew_ms.", CELL),
    "vl_rejected_sets_total": (COUNTER, "View sets rejected (not encoded).", CELL),
    "vl_unsynced_sets_total": (COUNTER, "View sets skipped: a frame without a capture time on our clock yet.", CELL),
    "vl_stale_sets_total": (COUNTER, "View sets skipped: older than act.max_frame_age_ms by capture time.", CELL),
    "vl_read_errors_total": (COUNTER, "Frame read errors of the VL process.", CELL),
    "vl_torn_sets_total": (COUNTER, "Features discarded: a frame was overwritten while it was encoded "
                                    "(vl.frame_upload = direct).", CELL),
    "vl_encode_seconds": (GAUGE, "VL encode time, rolling quantiles over the last 100 encodes.", CELL + ("quantile",)),
    "vl_last_encode_seconds": (GAUGE, "The last VL encode time.", CELL),
    "vl_encode_budget_seconds": (GAUGE, "The VL interval (act.vl_reuse / act.tick_hz): an encode must take less.", CELL),
    "vl_view_skew_seconds": (GAUGE, "Newest minus oldest view capture of the last set encoded.", CELL),
    "vl_view_skew_limit_seconds": (GAUGE, "vl.max_skew_ms.", CELL),
    # action
    "act_ticks_total": (COUNTER, "Ticks of the action process.", CELL),
    "act_missed_ticks_total": (COUNTER, "Ticks skipped because the previous one overran.", CELL),
    "act_clamped_ticks_total": (COUNTER, "Ticks whose command the clamp changed.", CELL),
    "act_held_ticks_total": (COUNTER, "Ticks whose command was withheld, by reason.", CELL + ("reason",)),
    "act_commands_sent_total": (COUNTER, "Commands sent to the robot.", CELL),
    "act_commands_failed_total": (COUNTER, "Commands that could not be sent.", CELL),
    "act_tick_latency_seconds": (GAUGE, "Tick latency (start to command), rolling quantiles over the last 200 ticks.",
                                 CELL + ("quantile",)),
    "act_tick_lateness_seconds": (GAUGE, "Tick start minus its scheduled time, rolling quantiles over the last 200 "
                                         "ticks.", CELL + ("quantile",)),
    "act_rate_hertz": (GAUGE, "Ticks per second achieved over the last second.", CELL),
    "act_expected_rate_hertz": (GAUGE, "act.tick_hz.", CELL),
    "act_vl_update_number": (GAUGE, "Number of the VL feature the last tick used.", CELL),
    # recorder
    "record_results_written_total": (COUNTER, "Results (ticks) written to the session.", CELL),
    "record_vl_updates_written_total": (COUNTER, "VL updates written to the session.", CELL),
    "record_lost_total": (COUNTER, "Results overwritten in the ring before the recorder read them.", CELL),
    "record_lag_records": (GAUGE, "Results not yet written.", CELL),
    "record_frames_written_total": (COUNTER, "Camera frames written (--save-data).", CELL),
    "record_robot_rows_written_total": (COUNTER, "Robot rows written (--save-data).", CELL),
    "record_sensor_records_written_total": (COUNTER, "Sensor records written (--save-data).", CELL),
    "record_data_lost_total": (COUNTER, "Data records overwritten before the recorder read them (--save-data).", CELL),
    "record_shadow_written_total": (COUNTER, "Shadow results written to the session.", CELL),
    "record_shadow_lost_total": (COUNTER, "Shadow results overwritten before the recorder read them.", CELL),
    "record_vl_lost_total": (COUNTER, "VL updates overwritten in their ring before the recorder read them.", CELL),
    "record_disk_free_bytes": (GAUGE, "Free bytes on the session directory's file system.", CELL),
    "record_disk_paused": (GAUGE, "1 while recording is paused because free disk is below record.reserve_mb.", CELL),
    "record_disk_pauses_total": (COUNTER, "Times recording paused for want of disk.", CELL),
    # shadow (optional: shadow.checkpoint)
    "shadow_ticks_total": (COUNTER, "Live ticks the shadow took (ran, or missed an input).", CELL),
    "shadow_missed_total": (COUNTER, "Live ticks whose inputs were overwritten before the shadow read them.", CELL),
    "shadow_skipped_total": (COUNTER, "Live ticks the shadow skipped: it fell behind, or was down.", CELL),
    "shadow_live_held_total": (COUNTER, "Live ticks held by the gate, not shadowed.", CELL),
    "shadow_nonfinite_output_total": (COUNTER, "Shadow ticks whose output was not finite.", CELL),
    "shadow_rate_hertz": (GAUGE, "Shadow ticks per second over the last second.", CELL),
    "shadow_latency_seconds": (GAUGE, "The shadow head's time, rolling quantiles over the last 100 shadow ticks.",
                               CELL + ("quantile",)),
    "shadow_delay_seconds": (GAUGE, "From the live tick's start to the shadow's result, rolling quantiles over "
                                    "the last 100 shadow ticks.", CELL + ("quantile",)),
    "shadow_divergence": (GAUGE, "Absolute difference of the shadow's first action from the live one on one action "
                                 "axis (its unit), rolling quantiles over the last 100 shadow ticks.",
                          CELL + ("axis", "quantile")),
}

# snapshot key -> metric name, per section
_INPUT_VALUES = {"messages": "input_messages_total", "records": "input_records_total",
                 "drops": "input_drops_total", "rate_hz": "input_rate_hertz"}
_INPUT_COUNTERS = {"bytes": "input_bytes_total", "kernel_drops": "input_kernel_drops_total",
                   "stale_backlog": "input_stale_backlog_total", "nonfinite_records": "input_nonfinite_records_total",
                   "sender_restarts": "input_sender_restarts_total"}
_INPUT_MS = {"latency_ms": "input_latency_seconds", "latency_max_ms": "input_latency_max_seconds",
             "clock_offset_ms": "input_clock_offset_seconds"}
_VL_COUNTERS = {"updates": "vl_updates_total", "over_skew_sets": "vl_over_skew_sets_total",
                "rejected_sets": "vl_rejected_sets_total", "unsynced_sets": "vl_unsynced_sets_total",
                "stale_sets": "vl_stale_sets_total", "read_errors": "vl_read_errors_total",
                "torn_sets": "vl_torn_sets_total"}
_ACT_VALUES = {"ticks": "act_ticks_total", "missed_ticks": "act_missed_ticks_total",
               "clamped_ticks": "act_clamped_ticks_total", "commands_sent": "act_commands_sent_total",
               "commands_failed": "act_commands_failed_total", "rate_hz": "act_rate_hertz",
               "expected_hz": "act_expected_rate_hertz", "vl_update_number": "act_vl_update_number"}
_RECORD_VALUES = {"records_written": "record_results_written_total",
                  "vl_updates_written": "record_vl_updates_written_total", "lost": "record_lost_total",
                  "lag_records": "record_lag_records", "frames_written": "record_frames_written_total",
                  "robot_rows_written": "record_robot_rows_written_total",
                  "sensor_records_written": "record_sensor_records_written_total",
                  "data_lost": "record_data_lost_total", "shadow_written": "record_shadow_written_total",
                  "shadow_lost": "record_shadow_lost_total", "disk_pauses": "record_disk_pauses_total",
                  "vl_lost": "record_vl_lost_total"}
_SHADOW_VALUES = {"ticks": "shadow_ticks_total", "missed": "shadow_missed_total", "skipped": "shadow_skipped_total",
                  "live_held": "shadow_live_held_total", "nonfinite_output": "shadow_nonfinite_output_total",
                  "rate_hz": "shadow_rate_hertz"}

Sample = tuple[str, dict, float]


# --------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """The configured limits exported beside the values they bound (seconds)."""

    stream_age_s: dict
    vl_encode_budget_s: float
    vl_skew_limit_s: float

    @classmethod
    def of(cls, cfg: Config) -> "Limits":
        act = cfg.act
        ages = {P.SENSOR: act.max_sensor_age_ms / 1e3, P.ROBOT: act.max_robot_age_ms / 1e3,
                P.VL_FEATURE: act.max_vl_age_ms / 1e3, P.RESULTS: cfg.stat.stale_periods / act.tick_hz}
        ages.update({view: act.max_frame_age_ms / 1e3 for view in P.VIEWS})
        return cls(ages, act.vl_reuse / act.tick_hz, cfg.vl.max_skew_ms / 1e3)


# --------------------------------------------------------------------------- snapshot -> samples
def _seconds(ms):
    return None if ms is None else ms / 1e3


def samples(snap: dict, limits: Limits) -> Iterator[Sample]:
    """(metric name, labels, value) of one cell's snapshot (schema: docs/STAT.md); None values skipped."""
    cell = {"cell": snap["instance"]}
    out = [("cell_processes", cell, snap["processes_total"]), ("cell_processes_up", cell, snap["processes_up"])]
    out += _process_samples(cell, snap["processes"])
    out += _stream_samples(cell, snap["streams"], limits)
    for section in snap["inputs"].values():
        out += _input_samples(cell, section)
    out += _vl_samples(cell, snap["vl"], limits)
    out += _act_samples(cell, snap["act"])
    out += _record_samples(cell, snap["record"])
    out += _shadow_samples(cell, snap["shadow"])
    return ((name, labels, value) for name, labels, value in out if value is not None)


def _record_samples(cell: dict, rec: dict) -> list:
    out = [(metric, cell, rec[key]) for key, metric in _RECORD_VALUES.items()]
    free_mb, paused = rec["disk_free_mb"], rec["disk_paused"]
    return out + [("record_disk_free_bytes", cell, None if free_mb is None else free_mb * 1e6),
                  ("record_disk_paused", cell, None if paused is None else int(paused))]


def _process_samples(cell: dict, processes: dict) -> list:
    out = []
    for name, p in processes.items():
        labels = {**cell, "process": name}
        out += [("process_up", labels, int(p["alive"])),
                ("process_heartbeat_age_seconds", labels, p["heartbeat_age_ms"] / 1e3),
                ("process_start_time_seconds", labels, p["started_wall_ns"] / 1e9),
                ("process_restarts_total", labels, p["restarts"]),
                ("process_read_retries_total", labels, p["read_retries"])]
        out += [("process_state", {**labels, "state": state}, int(p["state"] == state)) for state in PROCESS_STATES]
        if p["alive"]:
            cpu_s, rss = _usage(p["pid"])
            out += [("process_cpu_seconds_total", labels, cpu_s), ("process_resident_memory_bytes", labels, rss)]
        if name == P.SUPERVISOR:      # the supervisor counts its children's hangs
            out += [("process_hangs_total", {**cell, "process": key[len("hangs."):]}, value)
                    for key, value in p["values"].items() if key.startswith("hangs.")]
    return out


def _usage(pid: int) -> tuple[float | None, int | None]:
    """CPU seconds and resident bytes of a live process (None when it went away meanwhile)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            return times.user + times.system, proc.memory_info().rss
    except (psutil.Error, OSError):
        return None, None


def _stream_samples(cell: dict, streams: dict, limits: Limits) -> list:
    out = []
    for name, s in streams.items():
        labels = {**cell, "stream": name}
        out += [("stream_expected_rate_hertz", labels, s["expected_hz"]),
                ("stream_age_limit_seconds", labels, limits.stream_age_s.get(name))]
        if s["present"]:
            out += [("stream_writer_up", labels, int(s["writer_alive"])),
                    ("stream_records_total", labels, s["records"]),
                    ("stream_age_seconds", labels, _seconds(s["age_ms"])),
                    ("stream_rate_hertz", labels, s["rate_hz"])]
    return out


def _input_samples(cell: dict, section: dict) -> list:
    labels = {**cell, "process": section["process"]}
    out = [(metric, labels, section[key]) for key, metric in _INPUT_VALUES.items()]
    out += [(metric, labels, _seconds(section[key])) for key, metric in _INPUT_MS.items()]
    out += [(metric, labels, section["counters"].get(key)) for key, metric in _INPUT_COUNTERS.items()]
    out += [("input_errors_total", {**labels, "kind": kind}, n) for kind, n in section["errors"].items()]
    out += [("camera_frames_total", {**cell, "stream": key[len("frames."):]}, n)
            for key, n in section["counters"].items() if key.startswith("frames.")]
    return out


def _vl_samples(cell: dict, vl: dict, limits: Limits) -> list:
    out = [(metric, cell, vl[key]) for key, metric in _VL_COUNTERS.items()]
    out += [("vl_encode_seconds", {**cell, "quantile": q}, _seconds(vl[f"encode_ms{suffix}"])) for q, suffix in QUANTILES]
    out += [("vl_last_encode_seconds", cell, _seconds(vl["encode_ms"])),
            ("vl_view_skew_seconds", cell, _seconds(vl["view_skew_ms"])),
            ("vl_encode_budget_seconds", cell, limits.vl_encode_budget_s),
            ("vl_view_skew_limit_seconds", cell, limits.vl_skew_limit_s)]
    return out


def _act_samples(cell: dict, act: dict) -> list:
    out = [(metric, cell, act[key]) for key, metric in _ACT_VALUES.items()]
    for name, key in (("act_tick_latency_seconds", "latency_ms"), ("act_tick_lateness_seconds", "lateness_ms")):
        out += [(name, {**cell, "quantile": q}, _seconds(act[f"{key}{suffix}"])) for q, suffix in QUANTILES]
    out += [("act_held_ticks_total", {**cell, "reason": reason}, n) for reason, n in act["held"].items()]
    return out


def _shadow_samples(cell: dict, shadow: dict) -> list:
    out = [(metric, cell, shadow[key]) for key, metric in _SHADOW_VALUES.items()]
    for name, key in (("shadow_latency_seconds", "latency_ms"), ("shadow_delay_seconds", "delay_ms")):
        out += [(name, {**cell, "quantile": q}, _seconds(shadow[f"{key}{suffix}"])) for q, suffix in QUANTILES]
    for q, suffix in QUANTILES:
        out += [("shadow_divergence", {**cell, "axis": str(axis), "quantile": q}, value)
                for axis, value in enumerate(shadow[f"divergence{suffix}"])]
    return out


# --------------------------------------------------------------------------- samples -> families
class Families:
    """The metric families of one scrape: one per name, with the samples of every cell."""

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def add(self, name: str, labels: dict, value: float) -> None:
        kind, doc, names = CATALOG[name]
        if set(labels) != set(names):
            raise ValueError(f"{name}: labels {sorted(labels)} are not {sorted(names)}")
        family = self._families.get(name)
        if family is None:
            make = GaugeMetricFamily if kind == GAUGE else CounterMetricFamily
            family = self._families[name] = make(PREFIX + name, doc, labels=list(names))
        family.add_metric([str(labels[key]) for key in names], float(value))

    def all(self) -> list:
        return list(self._families.values())


# --------------------------------------------------------------------------- the cells
@dataclass
class Cell:
    name: str
    config: Config | None          # None: its config is invalid (error says why)
    error: str = ""


class Cells:
    """The cells to export: the ones named, or every cell with a stats segment on this host
    (looked up at each scrape, so a cell started later appears by itself).

    A named cell's config is loaded once, at start (an error stops the exporter, exit 2);
    a found cell's the first time it is seen: /etc/shm-vla/<cell>.toml when it exists, else
    the defaults, with the --set overrides. A found cell whose config is invalid is
    exported with exporter_snapshot_ok 0 (and logged once).
    """

    def __init__(self, names: list[str], config_path: str | None, overrides: list[str], log) -> None:
        self.names = list(names)
        self.overrides = list(overrides)
        self.log = log
        self._known: dict[str, Cell] = {}
        for name in self.names:      # ConfigError propagates: the caller exits 2
            self._known[name] = Cell(name, configmod.check_host(configmod.load(name, config_path, self.overrides)))
        # discovery's prefix: the built-in one or --set shm.prefix (not a cell's file)
        self.prefix = configmod.load("default", os.devnull, self.overrides).shm.prefix

    def __call__(self) -> list[Cell]:
        if self.names:
            return [self._known[name] for name in self.names]
        return [self._cell(name) for name in statsmod.list_instances(self.prefix)]

    def _cell(self, name: str) -> Cell:
        if name not in self._known:
            try:
                self._known[name] = Cell(name, configmod.load(name, None, self.overrides))
            except configmod.ConfigError as exc:
                self.log.error("cell %s: configuration error, not exported: %s", name, exc)
                self._known[name] = Cell(name, None, str(exc))
        return self._known[name]

    def describe(self) -> str:
        return ", ".join(self.names) if self.names else f"every cell on this host (prefix {self.prefix})"


class CellsCollector(Collector):
    """A fresh snapshot of every cell per scrape (read-only), as metric families."""

    def __init__(self, cells: Callable[[], list[Cell]], log: RateLimitedLog) -> None:
        self.cells = cells
        self.log = log
        self._lock = threading.Lock()    # one scrape at a time: bounded work whatever the scrapers do

    def collect(self):
        with self._lock:
            families = Families()
            for cell in self.cells():
                self._collect_cell(cell, families)
            return families.all()

    def _collect_cell(self, cell: Cell, families: Families) -> None:
        labels = {"cell": cell.name}
        start = time.perf_counter()
        try:
            if cell.config is None:
                raise ValueError(f"configuration error: {cell.error}")
            snap = build_snapshot(cell.config, None, with_gpu=False)
            cell_samples = list(samples(snap, Limits.of(cell.config)))
        except Exception as exc:      # one cell's trouble must not hide the others
            self.log.warning(f"snapshot.{cell.name}", "cell %s: no snapshot: %s: %s", cell.name,
                             type(exc).__name__, exc)
            families.add("exporter_snapshot_ok", labels, 0)
            return
        for name, sample_labels, value in cell_samples:
            families.add(name, sample_labels, value)
        families.add("exporter_snapshot_ok", labels, 1)
        families.add("exporter_snapshot_seconds", labels, time.perf_counter() - start)


# --------------------------------------------------------------------------- the server
def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as [ADDR]:PORT) -> (host, port); ValueError with a one-line reason."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--prometheus {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9500 or 127.0.0.1:9500")
    return host, int(port)


def start(listen: tuple[str, int], cells: Cells, log):
    """Serve /metrics in a background thread; returns the HTTP server (server_port: the bound port)."""
    registry = CollectorRegistry()
    registry.register(CellsCollector(cells, RateLimitedLog(log, period_s=60.0, burst=1)))
    server, _thread = start_http_server(listen[1], listen[0], registry=registry)
    return server
