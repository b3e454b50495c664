"""`shm-vla analyze PATH [--plot FILE.png] [--compare OTHER] [--json]`: session postmortem.

PATH is a session directory (async_inference_<stamp>/, or a folder of them: the newest is
taken) or one timings file, JSON Lines or the older JSON-list format; the held ticks file
beside it (held_ticks_<stamp>.jsonl) is read too, and a shadow's results
(shadow_results_<stamp>.jsonl: shadow_analysis.py). Stage times come from the ticks that ran,
jitter and input freshness from every tick. Bad input never gives a traceback: what is
valid is analysed and the rest is named in warnings.
Exit codes: 0 something was analysed, 1 nothing valid (or a requested plot or comparison
could not be made), 2 usage error. The --json schema is in docs/SESSION_FILES.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shm_vla import shadow_analysis
from shm_vla.finite import finite_or_none
from shm_vla.workers.session_stats import (
    ACTION_EXTRA_FIELDS, ACTION_FIELDS, FRESHNESS_FIELDS, HELD_FIELD, LATENESS_FIELD, STAGE_FIELDS,
    VL_EXTRA_FIELDS, VlUpdateFilter, is_action_record, is_held, number, stage_ms,
)

SCHEMA_VERSION = 1
BUDGET_MS = 100.0   # one tick at 10 Hz
VERDICTS = ((30.0, "EXCELLENT"), (50.0, "GOOD"), (100.0, "ACCEPTABLE"))
NEEDS_OPTIMIZATION = "NEEDS OPTIMIZATION"
WORST_OUTLIERS = 5
MAX_LISTED_LINES = 5
EXIT_OK, EXIT_NOTHING_VALID, EXIT_USAGE = 0, 1, 2
TICK_STAGES = tuple(name for name in STAGE_FIELDS if name != "vl_encoding")
# Columns of every tick: fields by name, stage times by stage name (stage_ms), "held" 0/1.
_TICK_COLUMNS = ("timestamp", "action_id", LATENESS_FIELD, "held") + TICK_STAGES + tuple(FRESHNESS_FIELDS.values())
_OPTIONAL_FIELDS = (LATENESS_FIELD, HELD_FIELD) + tuple(FRESHNESS_FIELDS.values())
_KNOWN_FIELDS = frozenset(ACTION_FIELDS + ACTION_EXTRA_FIELDS + VL_EXTRA_FIELDS)
MAX_UNKNOWN_FIELDS = 20


class InputError(Exception):
    """Nothing valid could be read; the message is for the user, one line."""


# --------------------------------------------------------------------------- finding the file
def file_beside(timings_file: Path, stem: str) -> Path | None:
    """The session file <stem>_<stamp>.jsonl beside a session's timings file, if there is one."""
    name = timings_file.name
    if not name.startswith("performance_timings_"):
        return None
    stamp = name.removeprefix("performance_timings_").rsplit(".", 1)[0]
    path = timings_file.with_name(f"{stem}_{stamp}.jsonl")
    return path if path.is_file() else None


def held_file_of(timings_file: Path) -> Path | None:
    """The held ticks file beside a session's timings file, if there is one."""
    return file_beside(timings_file, "held_ticks")


def find_timings_file(path: Path) -> tuple[Path, list[str]]:
    """The timings file for PATH and notes on how it was chosen; InputError when there is none."""
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        return path, []
    found = sorted(path.glob("performance_timings_*.jsonl")) or sorted(path.glob("performance_timings_*.json"))
    if found:
        notes = [f"{len(found)} timings files in {path}; analysing {found[-1].name}"] if len(found) > 1 else []
        return found[-1], notes
    sessions = sorted(p for p in path.glob("async_inference_*") if p.is_dir()
                      and any(p.glob("performance_timings_*.json*")))
    if sessions:
        timings, notes = find_timings_file(sessions[-1])
        return timings, [f"{path} is a folder of {len(sessions)} session(s); analysing the newest,"
                         f" {sessions[-1].name}"] + notes
    raise InputError(f"{path}: directory without a performance_timings_* file (not a session directory?)")


# --------------------------------------------------------------------------- parsing
def _iter_json_lines(path: Path, warnings: list[str]) -> Iterator[Any]:
    bad_lines: list[int] = []
    last_line_no, last_bad = 0, False
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            last_line_no = line_no
            text = line.strip()
            last_bad = False
            if not text:
                continue
            try:
                yield json.loads(text)
            except (ValueError, RecursionError):   # RecursionError: absurdly deep nesting
                bad_lines.append(line_no)
                last_bad = True
    if bad_lines:
        truncated = " (the last one is truncated, as a crash leaves it)" if last_bad and \
            bad_lines[-1] == last_line_no else ""
        listed = ", ".join(map(str, bad_lines[:MAX_LISTED_LINES])) + (" ..." if len(bad_lines) > MAX_LISTED_LINES else "")
        warnings.append(f"{len(bad_lines)} line(s) not valid JSON, skipped: line {listed}{truncated}")


def _iter_json_list(path: Path, warnings: list[str]) -> Iterator[Any]:
    """Objects of a JSON array, tolerating a file cut short (reads up to the damage)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            warnings.append("JSON list without its closing ']': the file is truncated; read up to its end")
            return
        if text[pos] == "]":
            return
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            warnings.append(f"JSON list invalid at character {pos} (truncated?); read the records before it")
            return
        yield obj


def _detect_format(path: Path) -> str:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
    if not head:
        raise InputError(f"{path}: empty file")
    return "json-list" if head.startswith("[") else "jsonl"


# --------------------------------------------------------------------------- columns
@dataclass
class Session:
    """The valid content of one timings file, as columns (NaN where a value is missing)."""

    source: Path
    timings_file: Path
    held_file: Path | None
    format: str
    warnings: list[str] = field(default_factory=list)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    vl_timestamps: np.ndarray = field(default_factory=lambda: np.empty(0))
    vl_times_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    holds: Counter = field(default_factory=Counter)
    records_read: int = 0
    invalid_records: int = 0
    recorder: dict | None = None
    shadow: shadow_analysis.ShadowData | None = None

    @property
    def held(self) -> np.ndarray:
        """True for each tick whose command was withheld."""
        return self.columns["held"] > 0

    @property
    def n_actions(self) -> int:
        """Ticks that ran (not held)."""
        return int((~self.held).sum())


class _ColumnBuilder:
    """Collects the fields the analysis needs; memory is 8 bytes per value, not a dict per record."""

    def __init__(self) -> None:
        self.columns = {name: array("d") for name in _TICK_COLUMNS}
        self.vl_timestamps, self.vl_times_ms = array("d"), array("d")
        self.holds: Counter = Counter()
        self.vl_filter = VlUpdateFilter()
        self.missing: Counter = Counter()
        self.invalid_values: Counter = Counter()
        self.unknown_fields: set[str] = set()
        self.records = self.invalid_records = 0

    def add(self, record: Any, held_file: bool = False) -> None:
        """One line of the timings file, or (held_file) of the held ticks file."""
        if not isinstance(record, dict):
            self.invalid_records += 1
            return
        self.records += 1
        if len(self.unknown_fields) < MAX_UNKNOWN_FIELDS:
            self.unknown_fields.update(k for k in record if k not in _KNOWN_FIELDS)
        if not held_file and self.vl_filter.is_new_update(record):
            self.vl_times_ms.append(number(record, "vl_update_time"))
            self.vl_timestamps.append(self._value(record, "timestamp"))
        if held_file or is_action_record(record):
            self._add_tick(record, held_file)

    def _add_tick(self, record: dict, held_file: bool) -> None:
        held = held_file or is_held(record)
        for name, column in self.columns.items():
            if name == "held":
                column.append(1.0 if held else 0.0)
            elif name in STAGE_FIELDS:
                value = None if held else stage_ms(record, name)
                self._value(record, STAGE_FIELDS[name])        # counts a bad value
                column.append(math.nan if value is None else value)
            else:
                column.append(self._value(record, name))
        if held:
            self.holds[str(record.get(HELD_FIELD) or "unnamed")] += 1
        self.missing.update(name for name in _OPTIONAL_FIELDS if name not in record)

    def _value(self, record: dict, name: str) -> float:
        value = number(record, name)
        if value is None:
            if record.get(name) is not None:
                self.invalid_values[name] += 1
            return math.nan
        return value

    def notes(self) -> list[str]:
        notes = []
        if self.invalid_records:
            notes.append(f"{self.invalid_records} JSON value(s) that are not objects, skipped")
        if self.unknown_fields:
            notes.append("unknown fields ignored: " + ", ".join(sorted(self.unknown_fields)))
        for name, count in sorted(self.invalid_values.items()):
            notes.append(f"{count} non-numeric or non-finite value(s) of {name}, treated as missing")
        n_ticks = len(self.columns["timestamp"])
        absent = sorted(name for name, count in self.missing.items() if count == n_ticks and n_ticks)
        if absent:
            notes.append("fields absent (an older format?): " + ", ".join(absent))
        return notes


def load_session(path: Path) -> Session:
    """Read PATH; InputError when nothing valid is in it."""
    try:
        timings_file, notes = find_timings_file(path)
        fmt = _detect_format(timings_file)
        warnings = list(notes)
        builder = _ColumnBuilder()
        reader = _iter_json_list if fmt == "json-list" else _iter_json_lines
        for record in reader(timings_file, warnings):
            builder.add(record)
        held_file = held_file_of(timings_file)
        if held_file is not None:
            held_warnings: list[str] = []
            for record in _iter_json_lines(held_file, held_warnings):
                builder.add(record, held_file=True)
            warnings += [f"{held_file.name}: {w}" for w in held_warnings]
        shadow_file = file_beside(timings_file, "shadow_results")
        shadow = shadow_analysis.load(shadow_file) if shadow_file is not None else None
    except OSError as exc:   # unreadable file or folder, a device, permissions
        raise InputError(f"{exc.filename or path}: cannot read: {exc.strerror or exc}") from None
    warnings += builder.notes()
    if builder.records == 0:
        detail = ("; " + "; ".join(warnings)) if warnings else ""
        raise InputError(f"{timings_file}: no valid timing records{detail}")
    return Session(
        source=path, timings_file=timings_file, held_file=held_file, format=fmt, warnings=warnings,
        columns={name: np.frombuffer(col, dtype=np.float64) for name, col in builder.columns.items()},
        vl_timestamps=np.frombuffer(builder.vl_timestamps, dtype=np.float64),
        vl_times_ms=np.frombuffer(builder.vl_times_ms, dtype=np.float64),
        holds=builder.holds, records_read=builder.records, invalid_records=builder.invalid_records,
        recorder=_recorder_section(timings_file, warnings), shadow=shadow)


def _recorder_section(timings_file: Path, warnings: list[str]) -> dict | None:
    """The recorder counters from the performance_summary beside the timings, if any."""
    stamp = timings_file.name.removeprefix("performance_timings_").rsplit(".", 1)[0]
    summary = timings_file.with_name(f"performance_summary_{stamp}.json")
    if not summary.is_file():
        return None
    try:
        recorder = json.loads(summary.read_text()).get("recorder")
    except (ValueError, OSError, AttributeError):
        warnings.append(f"{summary.name}: unreadable, ignored")
        return None
    return recorder if isinstance(recorder, dict) else None


# --------------------------------------------------------------------------- analysis
def describe(values: np.ndarray) -> dict | None:
    """count, mean, std, min, p50, p95, p99, max (ms) of the finite values; None when none."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"count": int(values.size), "mean_ms": float(values.mean()), "std_ms": float(values.std()),
            "min_ms": float(values.min()), "p50_ms": float(p50), "p95_ms": float(p95),
            "p99_ms": float(p99), "max_ms": float(values.max())}


def verdict(p95_total_ms: float | None) -> dict:
    label = None
    if p95_total_ms is not None:
        label = next((name for limit, name in VERDICTS if p95_total_ms < limit), NEEDS_OPTIMIZATION)
    return {"label": label, "p95_total_ms": p95_total_ms, "budget_ms": BUDGET_MS,
            "thresholds_ms": {name: limit for limit, name in VERDICTS}}


def _outliers(session: Session, threshold_ms: float | None) -> dict | None:
    if threshold_ms is None:
        return None
    total = np.where(session.held, np.nan, session.columns["total"])
    over = np.flatnonzero(np.isfinite(total) & (total > threshold_ms))
    worst = over[np.argsort(total[over])[::-1][:WORST_OUTLIERS]]
    start_s = _start_s(session)
    return {"threshold_ms": threshold_ms, "count": int(over.size), "worst": [
        {"action_id": _int_or_none(session.columns["action_id"][i]),
         "t_s": finite_or_none(session.columns["timestamp"][i] - start_s),
         "total_ms": float(total[i]),
         "action_prediction_ms": finite_or_none(session.columns["action_prediction"][i])}
        for i in worst]}


def _start_s(session: Session) -> float:
    stamps = np.concatenate([session.columns["timestamp"], session.vl_timestamps])
    stamps = stamps[np.isfinite(stamps)]
    return float(stamps.min()) if stamps.size else 0.0


def _int_or_none(value: float) -> int | None:
    value = finite_or_none(value)
    return None if value is None else int(value)


def _duration_and_rate(session: Session) -> tuple[float | None, float | None]:
    """The achieved tick rate: every tick counts, held or not (holds are reported apart)."""
    stamps = session.columns["timestamp"]
    stamps = stamps[np.isfinite(stamps)]
    if stamps.size < 2:
        return None, None
    duration_s = float(stamps.max() - stamps.min())
    # N ticks span N-1 periods (the same rule as the recorder's average_fps).
    return duration_s, ((stamps.size - 1) / duration_s if duration_s > 0 else None)


def analyze(session: Session) -> dict:
    """Everything the report shows, as plain JSON-ready data (schema in docs/SESSION_FILES.md)."""
    cols, held = session.columns, session.held
    stages = {name: describe(session.vl_times_ms if name == "vl_encoding" else cols[name][~held])
              for name in STAGE_FIELDS}
    duration_s, rate_hz = _duration_and_rate(session)
    p95_total_ms = stages["total"]["p95_ms"] if stages["total"] else None
    n_actions, n_held = session.n_actions, int(held.sum())
    warnings = list(session.warnings)
    if n_actions == 0:
        warnings.append("no action records (only VL updates or held ticks): no verdict")
    return {
        "schema_version": SCHEMA_VERSION,
        "source": {"path": str(session.source), "timings_file": str(session.timings_file),
                   "held_file": str(session.held_file) if session.held_file else None, "format": session.format},
        "records": {"read": session.records_read, "actions": n_actions, "held": n_held,
                    "vl_updates": int(session.vl_times_ms.size), "invalid": session.invalid_records},
        "warnings": warnings,
        "duration_s": duration_s,
        "rate_hz": rate_hz,
        "stages": stages,
        "outliers": _outliers(session, p95_total_ms),
        "jitter": describe(np.abs(cols[LATENESS_FIELD])),
        "freshness": {name: describe(cols[f]) for name, f in FRESHNESS_FIELDS.items()},
        "holds": {"total": n_held, "by_reason": dict(sorted(session.holds.items())),
                  "fraction": n_held / (n_actions + n_held) if n_actions + n_held else None},
        "verdict": verdict(p95_total_ms),
        "recorder": session.recorder,
        "shadow": shadow_analysis.report(session.shadow, _start_s(session), cols["action_id"]),
    }


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a == 0:
        return None
    return float(b) / float(a)


def _ratios(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return None
    return {key: _ratio(a[key], b.get(key)) for key in a if key != "count"}


def compare(a: dict, b: dict) -> dict:
    """Two analyses side by side; every ratio is OTHER / PATH (b / a), None where undefined."""
    return {
        "schema_version": SCHEMA_VERSION,
        "a": a,
        "b": b,
        "ratios": {
            "rate_hz": _ratio(a["rate_hz"], b["rate_hz"]),
            "stages": {name: _ratios(a["stages"][name], b["stages"][name]) for name in STAGE_FIELDS},
            "jitter": _ratios(a["jitter"], b["jitter"]),
            "freshness": {name: _ratios(a["freshness"][name], b["freshness"][name]) for name in FRESHNESS_FIELDS},
        },
    }


# --------------------------------------------------------------------------- text
_STAT_KEYS = ("count", "mean_ms", "std_ms", "min_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _table(title: str, rows: dict[str, dict | None]) -> list[str]:
    header = f"  {'':<20}" + "".join(f"{key.removesuffix('_ms'):>9}" for key in _STAT_KEYS)
    lines = [title + "  (ms)", header]
    for name, stats in rows.items():
        cells = "".join(f"{_fmt(stats[key] if stats else None):>9}" for key in _STAT_KEYS)
        lines.append(f"  {name:<20}{cells}" if stats else f"  {name:<20}{'(none)':>9}")
    return lines


def render_text(report: dict) -> str:
    rec = report["records"]
    lines = [f"session: {report['source']['timings_file']} ({report['source']['format']})",
             f"records: {rec['read']} read, {rec['actions']} actions, {rec['held']} held ticks,"
             f" {rec['vl_updates']} VL updates"]
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append(f"duration: {_fmt(report['duration_s'])} s   achieved rate: {_fmt(report['rate_hz'])} Hz")
    lines += [""] + _table("latency per stage", report["stages"])
    out = report["outliers"]
    if out:
        lines += ["", f"outliers beyond p95 of total ({out['threshold_ms']:.2f} ms): {out['count']}"]
        lines += [f"  action {_fmt(w['action_id'])} at {_fmt(w['t_s'])} s: total {w['total_ms']:.2f} ms,"
                  f" prediction {_fmt(w['action_prediction_ms'])} ms" for w in out["worst"]]
    lines += [""] + (_table("tick jitter |lateness|", {"tick_lateness": report["jitter"]})
                     if report["jitter"] else ["tick jitter: not in these records"])
    fresh = report["freshness"]
    lines += [""] + (_table("input freshness (age at inference)", fresh) if any(fresh.values())
                     else ["input freshness: not in these records"])
    holds = report["holds"]
    lines += ["", f"withheld ticks: {holds['total']}" + "".join(
        f"\n  {reason:<20}{count:>9}" for reason, count in holds["by_reason"].items())]
    if report["recorder"]:
        lines.append("recorder: " + ", ".join(f"{k} {v}" for k, v in report["recorder"].items()))
    if report.get("shadow"):
        lines += shadow_analysis.render_text(report["shadow"])
    v = report["verdict"]
    lines += ["", f"verdict: {v['label'] or 'n/a'}" + (
        f" (p95 total {v['p95_total_ms']:.2f} ms; budget {v['budget_ms']:.0f} ms at 10 Hz)" if v["label"] else "")]
    return "\n".join(lines)


def render_compare(result: dict) -> str:
    a, b, ratios = result["a"], result["b"], result["ratios"]
    lines = [f"A: {a['source']['timings_file']}", f"B: {b['source']['timings_file']}",
             "ratio = B / A", "", f"  {'':<28}{'A':>10}{'B':>10}{'B/A':>8}"]

    def row(name: str, va: Any, vb: Any, ratio: Any) -> None:
        lines.append(f"  {name:<28}{_fmt(va):>10}{_fmt(vb):>10}{_fmt(ratio):>8}")

    row("rate_hz", a["rate_hz"], b["rate_hz"], ratios["rate_hz"])
    for group in ("stages", "freshness"):
        for name in a[group]:
            for key in ("mean_ms", "p95_ms", "p99_ms"):
                sa, sb, r = a[group][name], b[group][name], ratios[group][name]
                row(f"{name} {key}", sa and sa[key], sb and sb[key], r and r[key])
    for key in ("p50_ms", "p99_ms", "max_ms"):
        ja, jb, r = a["jitter"], b["jitter"], ratios["jitter"]
        row(f"jitter {key}", ja and ja[key], jb and jb[key], r and r[key])
    lines.append(f"  {'verdict':<28}{a['verdict']['label'] or '-':>10}  {b['verdict']['label'] or '-'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot
def plot(session: Session, report: dict, out_path: Path) -> None:
    """One PNG: histograms per stage, latency/lateness timeline with VL updates, input ages."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, start_s, ran = session.columns, _start_s(session), ~session.held
    t_s = cols["timestamp"] - start_s
    rows = 3 + (session.shadow is not None)         # a shadow's divergence: one more row
    fig = plt.figure(figsize=(18, 11 + 3 * (rows - 3)), constrained_layout=True)
    grid = fig.add_gridspec(rows, len(STAGE_FIELDS))
    for i, name in enumerate(STAGE_FIELDS):
        ax = fig.add_subplot(grid[0, i])
        values = session.vl_times_ms if name == "vl_encoding" else cols[name][ran]
        values = values[np.isfinite(values)]
        if values.size:
            ax.hist(values, bins=50, color=f"C{i}")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{name} (n={values.size})")
        ax.set_xlabel("ms")
    timeline = fig.add_subplot(grid[1, :])
    timeline.plot(t_s[ran], cols["total"][ran], ".", ms=2, label="total latency")
    timeline.plot(t_s[ran], cols["action_prediction"][ran], ".", ms=2, label="action prediction")
    timeline.plot(t_s, cols[LATENESS_FIELD], ".", ms=2, label="tick lateness")
    vl_t_s = session.vl_timestamps[np.isfinite(session.vl_timestamps)] - start_s
    if vl_t_s.size:
        timeline.vlines(vl_t_s, 0, 1, transform=timeline.get_xaxis_transform(), colors="grey",
                        alpha=0.3, lw=0.5, label="VL update")
    timeline.set(title=f"action latency and lateness — verdict {report['verdict']['label']}",
                 xlabel="time (s)", ylabel="ms")
    timeline.legend(loc="upper right", markerscale=4)
    ages = fig.add_subplot(grid[2, :])
    for name, field_name in FRESHNESS_FIELDS.items():
        if np.isfinite(cols[field_name]).any():
            ages.plot(t_s, cols[field_name], ".", ms=2, label=name)
    ages.set(title="input ages at inference", xlabel="time (s)", ylabel="ms")
    if ages.has_data():
        ages.set_yscale("symlog", linthresh=1.0)
        ages.legend(loc="upper right", markerscale=4)
    if session.shadow is not None:
        shadow_analysis.plot_panel(fig.add_subplot(grid[3, :]), session.shadow, start_s)
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shm-vla analyze", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="session directory or performance_timings file")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write one PNG with the plots")
    parser.add_argument("--compare", type=Path, metavar="OTHER", help="a second session, side by side")
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON")
    parser.add_argument("--rerun", type=Path, metavar="OUT.rrd",
                        help="write the session as a Rerun recording (docs/RERUN.md; pip install shm-vla[rerun])")
    return parser


def _parse_args(argv: list[str]) -> argparse.Namespace | int:
    try:
        return _parser().parse_args(argv)
    except SystemExit as exc:   # argparse exits; main() returns codes
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


def _print(text: str) -> None:
    """Print to stdout; a reader that went away (`| head`) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would report the pipe again when flushing stdout at exit: point it at devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _error(message: str) -> None:
    print(f"shm-vla analyze: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(list(sys.argv[1:] if argv is None else argv))
    if isinstance(args, int):
        return args
    try:
        session = load_session(args.path)
    except InputError as exc:
        _error(str(exc))
        return EXIT_NOTHING_VALID
    report = analyze(session)
    code, other = EXIT_OK, None
    if args.compare is not None:
        try:
            other = analyze(load_session(args.compare))
        except InputError as exc:   # still show PATH's analysis, but the comparison failed
            _error(f"--compare: {exc}")
            code = EXIT_NOTHING_VALID
    if other is not None:
        result = compare(report, other)
        _print(json.dumps(result, indent=2) if args.json else render_compare(result))
    else:
        _print(json.dumps(report, indent=2) if args.json else render_text(report))
    if args.plot is not None:
        code = max(code, _write_plot(session, report, args.plot, quiet=args.json))
    if args.rerun is not None:
        code = max(code, _write_rerun(session, args.rerun, quiet=args.json))
    return code


def _write_plot(session: Session, report: dict, out_path: Path, quiet: bool) -> int:
    try:
        plot(session, report, out_path)
    except ImportError:
        _error("--plot needs matplotlib (pip install 'shm-vla[plot]'); no plot written")
        return EXIT_NOTHING_VALID
    except (OSError, ValueError) as exc:
        _error(f"--plot: cannot write {out_path}: {exc}")
        return EXIT_NOTHING_VALID
    if not quiet:
        _print(f"plot written to {out_path}")
    return EXIT_OK


def _write_rerun(session: Session, out_path: Path, quiet: bool) -> int:
    """The whole session directory (frames, robot, sensor, ticks, results) as a Rerun recording."""
    try:
        from shm_vla import rerun_export
    except ImportError as exc:
        if exc.name not in ("rerun", "rerun_bindings"):
            raise
        _error("--rerun needs rerun-sdk: pip install shm-vla[rerun]; no recording written")
        return EXIT_NOTHING_VALID
    try:
        summary = rerun_export.write_recording(session.timings_file.parent, out_path)
    except (OSError, ValueError) as exc:
        _error(f"--rerun: cannot write {out_path}: {exc}")
        return EXIT_NOTHING_VALID
    for warning in summary.warnings:
        _error(f"--rerun: {warning}")
    if not quiet:
        _print(f"rerun recording written to {out_path}: {summary.describe()}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
