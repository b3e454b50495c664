"""A recorded session as a Rerun recording: `shm-vla analyze SESSION --rerun OUT.rrd`.

Everything is logged on one timeline, ``capture_time`` (wall-clock seconds): each record at
the time it was captured, on its sender's clock (camera frames: the capture time in the
file name; robot rows: ``origin_timestamp``; sensor records: ``timestamps``), and the
pipeline's own records at the tick or publish time the recorder wrote. The session files
do not keep the senders' clock offsets, so a sender whose clock is off shows shifted by
that much (shm-vla-stat shows the offsets live).

Entities (docs/RERUN.md; rows = what the session holds):

    camera/<view>            EncodedImage: the recorded JPEG bytes as they are (the viewer
                             decodes them, once)
    sensor/force             Scalars, every record
    sensor/ascan             BarChart of the A-scan, at most ASCAN_PLOT_HZ per second
    sensor/ascan_image       Image: M-mode blocks of MMODE_BLOCK_S (depth down, time right),
                             at most MMODE_ROWS_HZ A-scans per second, grey levels over the
                             session's 1st..99th percentile
    robot/joints, robot/pose Scalars (6 series each), every row
    action/chunk             Tensor: each tick's H x A action chunk
    action/model             Scalars: the chunk's first action (x, y, z, a, b, r), unclamped
    action/command           Scalars: the command actually sent (after the clamp)
    events/held              TextLog (warning): each withheld tick and its reason
    events/clamped           TextLog: each tick the clamp changed
    timing/<stage>_ms        Scalars: tick stage times, tick lateness, VL encode time
    ages/<input>_ms          Scalars: input ages at each tick (and the VL view skew)

Files are read defensively, older and newer schemas alike (docs/SESSION_FILES.md): a
missing file or field leaves its entities out, an unreadable line is skipped and counted.
Memory stays bounded: frames go out in batches, the sensor arrays are memory-mapped from
the (uncompressed) .npz, robot rows are read in chunks.
"""
from __future__ import annotations

import csv
import json
import math
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import rerun as rr
import rerun.blueprint as rrb

from shm_vla.workers.session_files import ROBOT_CSV_HEADER, iter_json_lines, npz_arrays
from shm_vla.workers.session_stats import (
    FRESHNESS_FIELDS, HELD_FIELD, LATENESS_FIELD, VlUpdateFilter, is_action_record, number,
)

APPLICATION_ID = "shm-vla"
TIMELINE = "capture_time"
FRAME_BATCH = 64                 # JPEGs per send (bounded memory)
ROBOT_BATCH = 20_000             # CSV rows per send
SENSOR_BATCH = 100_000           # force values per send
ASCAN_PLOT_HZ = 30.0
MMODE_BLOCK_S = 1.0
MMODE_ROWS_HZ = 100.0
MMODE_RANGE_SAMPLE = 2000        # A-scans sampled across the session for the grey-level range
AXES = ("x", "y", "z", "a", "b", "r")
JOINTS = tuple(f"joint_{i}" for i in range(1, 7))
POSE = tuple(f"pose_{axis}" for axis in AXES)
STAGES = ("total_time", "action_prediction_time", "sensor_encoding_time", "robot_encoding_time")


@dataclass
class ExportSummary:
    """Rows written per entity, and what was skipped."""

    rows: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return ", ".join(f"{name} {n}" for name, n in sorted(self.rows.items()))


# --------------------------------------------------------------------------- the writer
class _Log:
    """The recording stream, counting rows per entity; strict: a wrong call raises."""

    def __init__(self, rec: rr.RecordingStream) -> None:
        self.rec = rec
        self.summary = ExportSummary()

    def columns(self, entity: str, times: np.ndarray, columns) -> None:
        if len(times):
            self.rec.send_columns(entity, indexes=[rr.TimeColumn(TIMELINE, timestamp=times)], columns=columns,
                                  strict=True)
            self.summary.rows[entity] += len(times)

    def scalars(self, entity: str, times, values) -> None:
        """Rows whose values are all finite (a missing value is NaN)."""
        times, values = np.asarray(times, np.float64), np.asarray(values, np.float64)
        keep = np.isfinite(times) & np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        self.columns(entity, times[keep], rr.Scalars.columns(scalars=values[keep]))

    def events(self, entity: str, times: list, texts: list, level: str) -> None:
        self.columns(entity, np.asarray(times, np.float64),
                     rr.TextLog.columns(text=texts, level=[level] * len(texts)))

    def at(self, entity: str, time_s: float, archetype) -> None:
        self.rec.set_time(TIMELINE, timestamp=time_s)
        self.rec.log(entity, archetype, strict=True)
        self.summary.rows[entity] += 1

    def series_names(self, entity: str, names) -> None:
        self.rec.log(entity, rr.SeriesLines(names=list(names)), static=True, strict=True)


def write_recording(session_dir: str | Path, out_path: str | Path) -> ExportSummary:
    """Write the session in session_dir as a Rerun recording (.rrd) at out_path."""
    session_dir, out_path = Path(session_dir), Path(out_path)
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"{out_path.parent}: no such directory")
    views = _view_dirs(session_dir)
    rec = rr.RecordingStream(APPLICATION_ID)
    rec.set_log_time_enabled(False)       # the time of the export means nothing: one timeline
    rec.save(out_path, default_blueprint=_blueprint([v.name.lower() for v in views]))
    rec.send_recording_name(session_dir.name)
    log = _Log(rec)
    try:
        for view in views:
            _frames(log, view)
        _robot(log, session_dir)
        _sensor(log, session_dir)
        _timings(log, session_dir)
        _results(log, session_dir)
    finally:
        rec.flush()
        rec.disconnect()
    return log.summary


def _blueprint(views: list[str]) -> rrb.Blueprint:
    """The default layout: cameras on top, then sensor, robot and action, then timing."""
    cameras = [rrb.Spatial2DView(origin=f"camera/{v}", name=v) for v in views]
    return rrb.Blueprint(rrb.Vertical(
        rrb.Grid(*cameras) if cameras else rrb.TextLogView(origin="events", name="events"),
        rrb.Horizontal(rrb.TimeSeriesView(origin="sensor/force", name="force"),
                       rrb.BarChartView(origin="sensor/ascan", name="A-scan"),
                       rrb.Spatial2DView(origin="sensor/ascan_image", name="A-scans over time")),
        rrb.Horizontal(rrb.TimeSeriesView(origin="robot/joints", name="joints"),
                       rrb.TimeSeriesView(origin="robot/pose", name="pose"),
                       rrb.TimeSeriesView(origin="action", contents=["action/model", "action/command"],
                                          name="model vs command"),
                       rrb.TensorView(origin="action/chunk", name="action chunk")),
        rrb.Horizontal(rrb.TimeSeriesView(origin="timing", name="tick times (ms)"),
                       rrb.TimeSeriesView(origin="ages", name="input ages (ms)"),
                       rrb.TextLogView(origin="events", name="holds and clamps")),
    ), collapse_panels=True)


# --------------------------------------------------------------------------- camera frames
def _view_dirs(session_dir: Path) -> list[Path]:
    return sorted(p for p in session_dir.iterdir() if p.is_dir() and any(p.glob("*.jpg"))) \
        if session_dir.is_dir() else []


def _frame_times(view: Path, summary: ExportSummary) -> list[tuple[float, Path]]:
    """(capture time, path) of each <camera>_<timestamp>.jpg, in time order."""
    frames, bad = [], 0
    for path in view.glob("*.jpg"):
        try:
            frames.append((float(path.stem.rpartition("_")[2]), path))
        except ValueError:
            bad += 1
    if bad:
        summary.warnings.append(f"{view.name}: {bad} file(s) not named <camera>_<timestamp>.jpg, skipped")
    return sorted(frames)


def _frames(log: _Log, view: Path) -> None:
    entity = f"camera/{view.name.lower()}"
    frames = _frame_times(view, log.summary)
    for start in range(0, len(frames), FRAME_BATCH):
        batch = frames[start:start + FRAME_BATCH]
        blobs = [path.read_bytes() for _, path in batch]
        log.columns(entity, np.array([t for t, _ in batch]),
                    rr.EncodedImage.columns(blob=blobs, media_type=["image/jpeg"] * len(blobs)))


# --------------------------------------------------------------------------- robot
def _robot(log: _Log, session_dir: Path) -> None:
    for path in sorted(session_dir.glob("robot_state_*.csv")):
        log.series_names("robot/joints", JOINTS)
        log.series_names("robot/pose", POSE)
        for rows in _csv_chunks(path, log.summary):
            times = rows[:, ROBOT_CSV_HEADER.index("origin_timestamp")]
            log.scalars("robot/joints", times, rows[:, [ROBOT_CSV_HEADER.index(c) for c in JOINTS]])
            log.scalars("robot/pose", times, rows[:, [ROBOT_CSV_HEADER.index(c) for c in POSE]])


def _csv_chunks(path: Path, summary: ExportSummary) -> Iterator[np.ndarray]:
    """N x len(ROBOT_CSV_HEADER) float64 arrays in header order, ROBOT_BATCH rows at a time."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        missing = [c for c in ROBOT_CSV_HEADER if c not in header]
        if missing:
            summary.warnings.append(f"{path.name}: columns {', '.join(missing)} missing, robot not exported")
            return
        columns = [header.index(c) for c in ROBOT_CSV_HEADER]
        rows, bad = [], 0
        for row in reader:
            try:
                rows.append([float(row[i]) for i in columns])
            except (ValueError, IndexError):
                bad += 1            # a line cut by a crash
            if len(rows) == ROBOT_BATCH:
                yield np.array(rows)
                rows = []
        if rows:
            yield np.array(rows)
    if bad:
        summary.warnings.append(f"{path.name}: {bad} unreadable row(s) skipped")


# --------------------------------------------------------------------------- sensor
def _sensor(log: _Log, session_dir: Path) -> None:
    for path in sorted(session_dir.glob("sensor_data_*.npz")):
        try:
            arrays = npz_arrays(path)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            log.summary.warnings.append(f"{path.name}: unreadable ({exc}), sensor not exported")
            continue
        times = np.asarray(arrays.get("timestamps", np.empty(0)), np.float64)
        if "forces" in arrays:
            for start in range(0, len(times), SENSOR_BATCH):
                log.scalars("sensor/force", times[start:start + SENSOR_BATCH],
                            arrays["forces"][start:start + SENSOR_BATCH])
        alines = arrays.get("alines")
        if alines is not None and alines.ndim == 2 and len(alines) == len(times) and len(times):
            _ascans(log, times, alines)


def _first_per_bucket(times: np.ndarray, bucket_s: float) -> np.ndarray:
    """Index of the first record in each bucket_s-long interval (decimation by time)."""
    buckets = np.floor((times - times[0]) / bucket_s)
    return np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])


def _ascans(log: _Log, times: np.ndarray, alines: np.ndarray) -> None:
    for i in _first_per_bucket(times, 1.0 / ASCAN_PLOT_HZ):
        log.at("sensor/ascan", float(times[i]), rr.BarChart(np.asarray(alines[i], np.float32)))
    sample = np.asarray(alines[np.linspace(0, len(alines) - 1, min(len(alines), MMODE_RANGE_SAMPLE)).astype(int)])
    finite = sample[np.isfinite(sample)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    scale = 255.0 / (high - low) if high > low else 0.0
    rows = _first_per_bucket(times, 1.0 / MMODE_ROWS_HZ)
    blocks = _first_per_bucket(times[rows], MMODE_BLOCK_S)
    for start, end in zip(blocks, np.r_[blocks[1:], len(rows)]):
        block = np.nan_to_num(np.asarray(alines[rows[start:end]], np.float32), nan=low)
        grey = np.clip((block - low) * scale, 0, 255).astype(np.uint8).T      # depth down, time right
        log.at("sensor/ascan_image", float(times[rows[start]]), rr.Image(np.ascontiguousarray(grey)))


# --------------------------------------------------------------------------- ticks
@dataclass
class _Ticks:
    """Columns of the tick and VL update lines (NaN where a value is missing)."""

    times: list = field(default_factory=list)
    values: dict = field(default_factory=lambda: {name: [] for name in _TICK_SCALARS})
    held_times: list = field(default_factory=list)
    held_texts: list = field(default_factory=list)
    vl_times: list = field(default_factory=list)
    vl_ms: list = field(default_factory=list)

    def add(self, record: dict) -> None:
        time_s = _float(number(record, "timestamp"))
        self.times.append(time_s)
        for name, get in _TICK_SCALARS.items():
            self.values[name].append(_float(get(record)))
        held = record.get(HELD_FIELD)
        if held not in (None, False, ""):
            self.held_times.append(time_s)
            self.held_texts.append(f"held: {held} (tick {record.get('action_id')})")


def _stage_ms(record: dict, name: str) -> float | None:
    """A stage's own measurement where the line has one (`*_ms`, null: not timed on its own),
    else the deployed `*_time` field."""
    measured = name.removesuffix("_time") + "_ms"
    return number(record, measured) if measured in record else number(record, name)


_TICK_SCALARS = {
    **{f"timing/{name.removesuffix('_time')}_ms": (lambda r, n=name: _stage_ms(r, n)) for name in STAGES},
    f"timing/{LATENESS_FIELD}": lambda r: number(r, LATENESS_FIELD),
    **{f"ages/{name}_ms": (lambda r, f=f: number(r, f)) for name, f in FRESHNESS_FIELDS.items()},
}


def _float(value: float | None) -> float:
    return math.nan if value is None else value


def _timings(log: _Log, session_dir: Path) -> None:
    """Tick lines (and held ticks, in the timings or in held_ticks_*) and VL updates."""
    ticks = _Ticks()
    vl_filter = VlUpdateFilter()
    for path in sorted(session_dir.glob("performance_timings_*.jsonl")):
        for record in _records(path, log.summary):
            if vl_filter.is_new_update(record):
                ticks.vl_times.append(_float(number(record, "timestamp")))
                ticks.vl_ms.append(_float(number(record, "vl_update_time")))
            if is_action_record(record):
                ticks.add(record)
    for path in sorted(session_dir.glob("held_ticks_*.jsonl")):
        for record in _records(path, log.summary):
            ticks.add(record)
    for entity, values in ticks.values.items():
        log.scalars(entity, ticks.times, values)
    log.scalars("timing/vl_encode_ms", ticks.vl_times, ticks.vl_ms)
    log.events("events/held", ticks.held_times, ticks.held_texts, "WARN")


def _records(path: Path, summary: ExportSummary) -> Iterator[dict]:
    """The objects of a JSON Lines file; lines that are not (a crash's last line) are counted."""
    lines = good = 0
    with open(path, "rb") as f:
        lines = sum(1 for line in f if line.strip())
    for _, _, obj in iter_json_lines(path):
        if isinstance(obj, dict):
            good += 1
            yield obj
    if lines > good:
        summary.warnings.append(f"{path.name}: {lines - good} line(s) not JSON objects, skipped")


# --------------------------------------------------------------------------- results
def _result_records(session_dir: Path, summary: ExportSummary) -> Iterator[dict]:
    """inference_results: the streamed .jsonl, else the .json list of an older session."""
    for path in sorted(session_dir.glob("inference_results_*.jsonl")):
        yield from _records(path, summary)
        return
    for path in sorted(session_dir.glob("inference_results_*.json")):
        try:
            records = json.loads(path.read_text())
        except (ValueError, OSError) as exc:
            summary.warnings.append(f"{path.name}: unreadable ({exc})")
            return
        yield from (r for r in records if isinstance(r, dict)) if isinstance(records, list) else ()


def _results(log: _Log, session_dir: Path) -> None:
    model_t, model, command_t, command, clamp_t, clamp_texts, bad = [], [], [], [], [], [], 0
    for record in _result_records(session_dir, log.summary):
        time_s = number(record, "timestamp")
        try:
            chunk = np.asarray(record.get("actions"), np.float32)
            dp = np.asarray(record["dp"], np.float64) if record.get("dp") is not None else None
        except (TypeError, ValueError):
            chunk, dp = None, None
        if time_s is None or chunk is None or chunk.ndim != 2 or chunk.shape[1] < len(AXES):
            bad += 1
            continue
        log.at("action/chunk", time_s, rr.Tensor(chunk, dim_names=["step", "action"]))
        model_t.append(time_s)
        model.append(chunk[0, :len(AXES)])
        if record.get("sent") and dp is not None and dp.shape == (len(AXES),):
            command_t.append(time_s)
            command.append(dp)
        if record.get("clamped"):
            clamp_t.append(time_s)
            clamp_texts.append(f"clamped (tick {record.get('action_id')}): model {_fmt(chunk[0, :len(AXES)])}"
                               f" -> command {_fmt(dp) if dp is not None else '?'}")
    if bad:
        log.summary.warnings.append(f"inference_results: {bad} record(s) without a time or an H x A chunk, skipped")
    for entity, times, values in (("action/model", model_t, model), ("action/command", command_t, command)):
        if times:
            log.series_names(entity, AXES)
            log.scalars(entity, times, np.array(values))
    log.events("events/clamped", clamp_t, clamp_texts, "INFO")


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{v:+.3f}" for v in values) + ")"
