"""Checks a session directory against the schema written down in docs/SESSION_FILES.md.

The page holds one table per record kind, each after a marker line
``<!-- schema: NAME -->``, with the columns ``field | type | unit | ...``. This module reads
those tables and checks every line of every file of a session against them: the field
names in their order, the type of each value, and the units, by relations that hold only
in the documented units (e.g. a result's ``inference_time`` is its tick's ``total_time``;
a tick's ``vl_age_ms`` is the time since the line of the VL update it used). So the page
and the files cannot drift apart without a test failing.

Types: number (finite int or float), integer, string, boolean, object, null, ``list of T``,
``T or null`` (null allowed), ``absent`` (held-ticks overrides: the field is not written),
and for .npz arrays ``DTYPE[N]`` / ``DTYPE[N, L]``.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[1] / "docs" / "SESSION_FILES.md"
TO_S = {"ms": 1e-3, "s": 1.0}
# tolerances of the unit relations (the quantities are taken a few reads apart)
SAME_TICK_S = 0.025
MAX_ERRORS_SHOWN = 20


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    unit: str


def doc_tables(path: Path = DOC) -> dict[str, list[Field]]:
    """Every schema table of the page, by name, rows in order."""
    tables, lines = {}, path.read_text().splitlines()
    for i, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- schema: ([\w-]+) -->", line.strip())
        if not marker:
            continue
        rows = []
        for row in lines[i + 3:]:          # the marker, the header, the |---| line
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            rows.append(Field(cells[0].strip("`"), cells[1], cells[2]))
        tables[marker.group(1)] = rows
    return tables


def type_ok(value, type_text: str) -> bool:
    if type_text.endswith(" or null"):
        return value is None or type_ok(value, type_text[: -len(" or null")])
    if type_text.startswith("list of "):
        return isinstance(value, list) and all(type_ok(v, type_text[len("list of "):]) for v in value)
    if type_text == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if type_text == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_text == "null":
        return value is None
    simple = {"string": str, "boolean": bool, "object": dict}
    if type_text not in simple:
        raise ValueError(f"unknown type {type_text!r} in {DOC.name}")
    return isinstance(value, simple[type_text])


class SessionSchema:
    """The record kinds of a session, as the page defines them."""

    def __init__(self, tables: dict[str, list[Field]] | None = None) -> None:
        t = doc_tables() if tables is None else tables
        deployed = t["timings-deployed"]
        self.action = deployed + t["timings-action"]
        self.vl = deployed + t["timings-vl"]
        overrides = {f.name: f for f in t["held-overrides"]}
        self.held = [overrides.get(f.name, f) for f in self.action if overrides.get(f.name, f).type != "absent"]
        self.result = t["results"]
        self.robot_state = t["results-robot_state"]
        self.robot_csv = t["robot-csv"]
        self.sensor_npz = t["sensor-npz"]
        self.vl_npz = t["vl-features-npz"]
        self.summary = t["summary"]
        self.shadow = t["shadow"]
        self.deployed = deployed

    def unit(self, kind: list[Field], name: str) -> float:
        """Seconds per unit of a field (ms or s), as documented."""
        unit = next(f.unit for f in kind if f.name == name)
        return TO_S[unit]


class Checker:
    """Collects every deviation of a session from the schema (assert_ok raises with them)."""

    def __init__(self, schema: SessionSchema, window_s: tuple[float, float]) -> None:
        self.schema, self.window_s, self.errors = schema, window_s, []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def assert_ok(self) -> None:
        shown = "\n".join(self.errors[:MAX_ERRORS_SHOWN])
        assert not self.errors, f"{len(self.errors)} deviation(s) from {DOC.name}:\n{shown}"

    def line(self, record: dict, fields: list[Field], where: str) -> None:
        names = [f.name for f in fields]
        if list(record) != names:
            self.error(f"{where}: fields {list(record)}, documented {names}")
        for f in fields:
            if f.name in record and not type_ok(record[f.name], f.type):
                self.error(f"{where}: {f.name} = {record[f.name]!r} is not {f.type}")
            if "timestamp" in f.name and f.unit in TO_S and f.name in record:
                self.epoch(record[f.name], TO_S[f.unit], f"{where}: {f.name}")

    def epoch(self, value, to_s: float, where: str) -> None:
        """A wall-clock time of the run, in the documented unit."""
        values = value if isinstance(value, list) else [value]
        lo, hi = self.window_s
        for v in values:
            if isinstance(v, (int, float)) and not lo <= v * to_s <= hi:
                self.error(f"{where}: {v} is not a time of the run ({lo:.3f}..{hi:.3f} s)")

    def close_to(self, a_s: float, b_s: float, tolerance_s: float, where: str) -> None:
        if not abs(a_s - b_s) <= tolerance_s:
            self.error(f"{where}: {a_s:.6f} s vs {b_s:.6f} s (tolerance {tolerance_s * 1e3:.1f} ms)")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_vl_line(record: dict) -> bool:
    """The deployed rule: a timings line with vl_update_time > 0 reports a VL update."""
    return record["vl_update_time"] > 0


def check_session(root: Path, window_s: tuple[float, float], schema: SessionSchema | None = None) -> dict:
    """Check every file of a session; returns its parsed lines (timings, held, results)."""
    schema = schema or SessionSchema()
    c = Checker(schema, window_s)
    stamp = root.name.removeprefix("async_inference_")
    timings = _jsonl(root / f"performance_timings_{stamp}.jsonl")
    held = _jsonl(root / f"held_ticks_{stamp}.jsonl")
    results = json.loads((root / f"inference_results_{stamp}.json").read_text())
    if results != _jsonl(root / f"inference_results_{stamp}.jsonl"):
        c.error("inference_results .json and .jsonl differ")
    actions = [t for t in timings if not is_vl_line(t)]
    vls = [t for t in timings if is_vl_line(t)]
    for i, t in enumerate(timings):
        c.line(t, schema.vl if is_vl_line(t) else schema.action, f"timings line {i + 1}")
    for i, t in enumerate(held):
        c.line(t, schema.held, f"held_ticks line {i + 1}")
        if not t.get("held"):
            c.error(f"held_ticks line {i + 1}: no reason")
    for i, r in enumerate(results):
        c.line(r, schema.result, f"result {i + 1}")
        c.line(r.get("robot_state", {}), schema.robot_state, f"result {i + 1} robot_state")
    _check_units(c, schema, actions, vls, held, results)
    _check_summary(c, schema, json.loads((root / f"performance_summary_{stamp}.json").read_text()))
    if (root / f"robot_state_{stamp}.csv").exists():
        _check_robot_csv(c, schema, root / f"robot_state_{stamp}.csv")
    if (root / f"sensor_data_{stamp}.npz").exists():
        _check_npz(c, schema.sensor_npz, root / f"sensor_data_{stamp}.npz")
    if (root / f"vl_features_{stamp}.npz").exists():
        _check_npz(c, schema.vl_npz, root / f"vl_features_{stamp}.npz")
        _check_replay_inputs(c, root, stamp, actions, vls)
    shadow = []
    if (root / f"shadow_results_{stamp}.jsonl").exists():
        shadow = _jsonl(root / f"shadow_results_{stamp}.jsonl")
        _check_shadow(c, schema, shadow, actions, held, results)
    c.assert_ok()
    return {"timings": timings, "actions": actions, "vl": vls, "held": held, "results": results, "shadow": shadow}


def _check_shadow(c: Checker, schema: SessionSchema, shadow, actions, held, results) -> None:
    """Every shadow line pairs with a live tick that ran the model, and its numbers relate."""
    ticks = {t["action_id"]: t for t in actions + [h for h in held if h["held"] == "nonfinite_output"]}
    live = {r["action_id"]: r for r in results}
    for i, line in enumerate(shadow):
        where = f"shadow line {i + 1} (action {line.get('action_id')})"
        c.line(line, schema.shadow, where)
        tick = ticks.get(line.get("action_id"))
        if tick is None:
            c.error(f"{where}: no live tick that ran the model")
            continue
        c.close_to(line["timestamp"], tick["timestamp"], 1e-9, f"{where}: timestamp vs the live tick's")
        result = live.get(line["action_id"])
        if result is not None and line["live_first_action"] != result["actions"][0]:
            c.error(f"{where}: live_first_action is not the live result's first action")
        if line["divergence"] is not None:
            expect = np.abs(np.array(line["first_action"]) - np.array(line["live_first_action"]))
            if not np.allclose(line["divergence"], expect, rtol=1e-6, atol=1e-6):
                c.error(f"{where}: divergence is not abs(first_action - live_first_action)")
        if (line["sensor_rows"], line["robot_rows"]) != (tick["sensor_buffer_size"], tick["robot_buffer_size"]):
            c.error(f"{where}: window rows differ from the live tick's")


def _check_units(c: Checker, schema: SessionSchema, actions, vls, held, results) -> None:
    """Relations that hold only in the documented units."""
    a_s = lambda name: schema.unit(schema.action, name)          # noqa: E731  seconds per unit
    vl_s = lambda name: schema.unit(schema.vl, name)             # noqa: E731
    by_id = {t["action_id"]: t for t in actions}
    for r in results:                                           # the result of a tick is its total time
        tick = by_id.get(r.get("action_id"))
        if tick is None:
            c.error(f"result of action {r.get('action_id')}: no action line")
            continue
        where = f"action {tick['action_id']}"
        c.close_to(r["inference_time"] * schema.unit(schema.result, "inference_time"),
                   tick["total_time"] * a_s("total_time"), 1e-9, f"{where}: inference_time vs total_time")
        c.close_to(r["inference_time_ms"] * schema.unit(schema.result, "inference_time_ms"),
                   tick["total_time"] * a_s("total_time"), 1e-9, f"{where}: inference_time_ms vs total_time")
        c.close_to(r["timestamp"], tick["timestamp"], 1e-9, f"{where}: result and tick timestamp")
        robot_age = tick["robot_age_ms"]
        if robot_age is not None:                              # the newest robot sample's age at the tick
            c.close_to(robot_age * a_s("robot_age_ms"), tick["timestamp"] - r["robot_state"]["timestamp"],
                       SAME_TICK_S, f"{where}: robot_age_ms vs robot_state.timestamp")
    for t in actions:                                           # the stages add up to at most the total
        split_s = sum(t[name] * a_s(name) for name in ("sensor_encoding_time", "robot_encoding_time",
                                                         "action_prediction_time"))
        if split_s > t["total_time"] * a_s("total_time") + 1e-6:
            c.error(f"action {t['action_id']}: stage times exceed total_time")
        if t["vl_update_time"] != 0:
            c.error(f"action {t['action_id']}: vl_update_time {t['vl_update_time']} (deployed: 0 on action lines)")
    vl_by_number = {}
    for v in vls:
        vl_by_number[v["vl_update_number"]] = v
        captures = v["capture_timestamps"]
        if v["view_skew_ms"] is not None:
            c.close_to(v["view_skew_ms"] * vl_s("view_skew_ms"), (max(captures) - min(captures)) * vl_s("capture_timestamps"),
                       1e-5, f"VL update {v['vl_update_number']}: view_skew_ms vs capture_timestamps")
        if any(v[name] != 0 for name in ("action_id", "sensor_encoding_time", "robot_encoding_time",
                                         "action_prediction_time", "total_time", "sensor_buffer_size",
                                         "robot_buffer_size")):
            c.error(f"VL update {v['vl_update_number']}: a field that does not apply is not 0")
    for t in actions + held:                                    # ages of the VL feature used
        v = vl_by_number.get(t["vl_update_number"])
        if v is None or t["vl_age_ms"] is None:
            continue
        where = f"tick {t['action_id']}"
        c.close_to(t["vl_age_ms"] * a_s("vl_age_ms"), t["timestamp"] - v["timestamp"], SAME_TICK_S,
                   f"{where}: vl_age_ms vs its VL update line")
        if t["frame_age_ms"] is not None:
            oldest_s = min(v["capture_timestamps"]) * vl_s("capture_timestamps")
            c.close_to(t["frame_age_ms"] * a_s("frame_age_ms"), t["timestamp"] - oldest_s, SAME_TICK_S,
                       f"{where}: frame_age_ms vs capture_timestamps")


def _check_summary(c: Checker, schema: SessionSchema, summary: dict) -> None:
    names = [f.name for f in schema.summary]
    if list(summary) != names:
        c.error(f"summary: keys {list(summary)}, documented {names}")
    for f in schema.summary:
        value = summary.get(f.name)
        if not type_ok(value, f.type):
            c.error(f"summary: {f.name} = {value!r} is not {f.type}")
        elif f.unit == "ms" and isinstance(value, dict):   # statistics of ms values: named *_ms
            stats = [value] if "count" in value or any(k.endswith("_ms") for k in value) else value.values()
            for entry in stats:
                bad = [k for k in (entry or {}) if k != "count" and not k.endswith("_ms")]
                if bad:
                    c.error(f"summary: {f.name} has {bad}, not in ms")


def _check_robot_csv(c: Checker, schema: SessionSchema, path: Path) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    names = [f.name for f in schema.robot_csv]
    if rows[0] != names:
        c.error(f"{path.name}: header {rows[0]}, documented {names}")
    for i, row in enumerate(rows[1:], 2):
        try:
            values = [float(v) for v in row]
        except ValueError:
            c.error(f"{path.name} line {i}: not all numbers")
            continue
        for f, v in zip(schema.robot_csv, values):
            if "timestamp" in f.name:
                c.epoch(v, TO_S[f.unit], f"{path.name} line {i}: {f.name}")


def _check_npz(c: Checker, table: list[Field], path: Path) -> None:
    with np.load(path) as data:
        if sorted(data.files) != sorted(f.name for f in table):
            c.error(f"{path.name}: arrays {sorted(data.files)}")
            return
        lengths = set()
        for f in table:
            dtype, dims = re.fullmatch(r"(\w+)\[([\w, ]+)\]", f.type).groups()
            array = data[f.name]
            if array.dtype != np.dtype(dtype) or array.ndim != len(dims.split(",")):
                c.error(f"{path.name}: {f.name} is {array.dtype} {array.shape}, documented {f.type}")
            lengths.add(len(array))
            if "timestamp" in f.name and len(array):
                c.epoch([float(array.min()), float(array.max())], TO_S[f.unit], f"{path.name}: {f.name}")
        if len(lengths) != 1:
            c.error(f"{path.name}: arrays of different lengths {lengths}")


def _check_replay_inputs(c: Checker, root: Path, stamp: str, actions: list[dict], vls: list[dict]) -> None:
    """--save-data: every tick that ran finds its inputs in the session (what shm-vla replay
    reads): its VL feature by vl_record, its sensor and robot windows by ring record number."""
    with np.load(root / f"vl_features_{stamp}.npz") as vl, np.load(root / f"sensor_data_{stamp}.npz") as sensor:
        vl_records, sensor_records = set(vl["records"].tolist()), set(sensor["records"].tolist())
        if vl["updates"].tolist() != [v["vl_update_number"] for v in vls]:
            c.error("vl_features updates differ from the VL update lines")
    with open(root / f"robot_state_{stamp}.csv", newline="") as f:
        robot_records = {int(row[-1]) for row in list(csv.reader(f))[1:]}
    for t in actions:
        where = f"tick {t['action_id']}"
        if t["vl_record"] not in vl_records:
            c.error(f"{where}: vl_record {t['vl_record']} not in vl_features")
        for name, records in (("sensor", sensor_records), ("robot", robot_records)):
            newest, rows = t[f"{name}_record"], t[f"{name}_buffer_size"]
            missing = set(range(newest - rows + 1, newest + 1)) - records
            if rows < 1 or missing:
                c.error(f"{where}: {name} window of {rows} records ending at {newest}: {len(missing)} not recorded")
