"""The timing-record schema and the bounded-memory statistics of a session.

A session can run for hours (36 000 ticks an hour at 10 Hz), so the summary written at
shutdown never keeps the records: each statistic is a running count, mean and variance
(Welford), exact min and max, and a fixed-size logarithmic histogram for percentiles.

Histogram accuracy: bins grow by 1 % from 1 µs (1e-3 ms) to 1e7 ms, so a percentile is
reported as the geometric middle of the bin that holds it: within 0.5 % (relative) of
a value in that bin, clamped to the exact min and max. Values below 1 µs (negatives
included) share one bin; values above 1e7 ms share the last one. Memory is about 20 KiB
per statistic whatever the session length.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from .. import tick
from ..finite import finite_or_none

# --------------------------------------------------------------------------- record schema
# The fields the deployed receiver writes on *every* line of performance_timings, in this
# order, always numbers (times in ms): the deployed scripts read them from every line.
# All tick fields are declared in shm_vla/tick.py; these derive from it.
DEPLOYED_TIMING_FIELDS = tick.line_fields("deployed")
# The per-stage times of a tick, under their deployed names, and the key of each stage's own
# measurement (null where act could not time that stage on its own).
MEASURED_FIELDS = tick.MEASURED_FIELDS
SPLIT_FIELDS = tuple(MEASURED_FIELDS)
# A tick line (action or held): the deployed fields, then these (null allowed).
ADDED_ACTION_FIELDS = tick.line_fields("added")
ACTION_FIELDS = DEPLOYED_TIMING_FIELDS + ADDED_ACTION_FIELDS
# Known extras of a tick line, written after ACTION_FIELDS in this order: each stage's own
# measurement, then capture-time ages.
ACTION_EXTRA_FIELDS = tick.line_fields("extra")
# A VL update line: the deployed fields (those that do not apply are 0, action_id too),
# then these extras.
VL_REQUIRED_FIELDS = ("timestamp", "vl_update_number", "vl_update_time")
VL_DEFAULTS = {"action_id": 0, "sensor_encoding_time": 0.0, "robot_encoding_time": 0.0,
               "action_prediction_time": 0.0, "total_time": 0.0, "sensor_buffer_size": 0,
               "robot_buffer_size": 0}
VL_EXTRA_FIELDS = ("view_skew_ms", "capture_timestamps")

# Stage name -> field holding its time in ms (the analyzer prints them in this order).
STAGE_FIELDS = {
    "action_prediction": "action_prediction_time",
    "sensor_encoding": "sensor_encoding_time",
    "robot_encoding": "robot_encoding_time",
    "total": "total_time",
    "vl_encoding": "vl_update_time",
}
# Input name -> field holding its age (ms) at inference.
FRESHNESS_FIELDS = {
    "sensor_age": "sensor_age_ms",
    "robot_age": "robot_age_ms",
    "vl_age": "vl_age_ms",
    "frame_age": "frame_age_ms",
    "view_skew": "view_skew_ms",
}
LATENESS_FIELD = "tick_lateness_ms"
HELD_FIELD = "held"
MAX_HOLD_REASONS = 64   # distinct reasons kept; more are counted under OTHER_REASON
OTHER_REASON = "other"


def number(record: dict, key: str) -> float | None:
    """The finite number in record[key], else None (missing, null, text, bool, NaN, inf)."""
    return finite_or_none(record.get(key))


def deployed_split(measured: dict, total_ms: float) -> dict:
    """The deployed stage fields of an action line from the measured stage times (None =
    act could not time that stage on its own, e.g. one CUDA graph for the whole head).

    The deployed scripts read these fields from every line as numbers, so a stage that was
    not timed gets a stand-in: 0 for the encoders (the deployed scripts keep only values
    > 0 of those two: 0 is their "not timed"), and for action_prediction_time the part of
    total_time no timed encoder accounts for (an upper bound; never 0, which they would
    keep as a 0 ms prediction)."""
    out = {name: measured.get(name) for name in SPLIT_FIELDS}
    for name in ("sensor_encoding_time", "robot_encoding_time"):
        if out[name] is None:
            out[name] = 0.0
    if out["action_prediction_time"] is None:
        timed = sum(measured.get(name) or 0.0 for name in ("sensor_encoding_time", "robot_encoding_time"))
        out["action_prediction_time"] = max(total_ms - timed, 0.0)
    return out


def stage_ms(record: dict, stage: str) -> float | None:
    """The measured time of a stage in a tick line, None where it was not timed.

    Our lines carry each stage's own measurement in a `*_ms` extra (null = not timed; the
    deployed field then holds a stand-in, see deployed_split). Lines without it (the
    deployed receiver's, our older ones) have only the deployed field, where an encoder
    time of 0 means "not timed", as the deployed scripts read it."""
    field = STAGE_FIELDS[stage]
    if field in MEASURED_FIELDS and MEASURED_FIELDS[field] in record:
        return number(record, MEASURED_FIELDS[field])
    value = number(record, field)
    if field in ("sensor_encoding_time", "robot_encoding_time") and value is not None and value <= 0:
        return None
    return value


def is_held(record: dict) -> bool:
    """A tick whose command was withheld (its line names the reason)."""
    return record.get(HELD_FIELD) not in (None, False, "")


def is_action_record(record: dict) -> bool:
    """A tick line: it carries an action_id and is not a pure VL update line.

    As the deployed analysis tells them apart, a line with vl_update_time > 0 reports a VL
    update; it is a VL update only (the deployed receiver's, and ours) when no tick time
    is in it (total_time absent or 0). Our older VL update lines had no action_id."""
    action_id = record.get("action_id")
    if action_id is None or isinstance(action_id, bool):
        return False
    vl_time_ms, total_ms = number(record, "vl_update_time"), number(record, "total_time")
    return not (vl_time_ms is not None and vl_time_ms > 0 and not (total_ms is not None and total_ms > 0))


class VlUpdateFilter:
    """Selects each VL update once.

    A VL update record is any record with vl_update_time > 0. Deployed receivers also put
    the VL time in the action record of the tick that encoded, and a pipeline may repeat
    it in several records, so consecutive records with the same vl_update_number count
    once (a restarted VL process that numbers from 1 again still counts).
    """

    def __init__(self) -> None:
        self._last_number: Any = object()

    def is_new_update(self, record: dict) -> bool:
        vl_time_ms = number(record, "vl_update_time")
        if vl_time_ms is None or vl_time_ms <= 0:
            return False
        update_number = record.get("vl_update_number")
        if update_number is not None and update_number == self._last_number:
            return False
        self._last_number = update_number
        return True


# --------------------------------------------------------------------------- statistics
class LogHistogram:
    """Fixed-size histogram with 1 % wide bins on a log scale (see the module docstring)."""

    LOW = 1e-3        # ms; one bin below
    HIGH = 1e7        # ms; one bin above
    GROWTH = 1.01

    def __init__(self) -> None:
        self._log_growth = math.log(self.GROWTH)
        self._inner_bins = math.ceil(math.log(self.HIGH / self.LOW) / self._log_growth)
        self.counts = [0] * (self._inner_bins + 2)

    def _index(self, value: float) -> int:
        if value < self.LOW:
            return 0
        if value >= self.HIGH:
            return self._inner_bins + 1
        return 1 + min(int(math.log(value / self.LOW) / self._log_growth), self._inner_bins - 1)

    def _bin_value(self, index: int) -> float:
        if index == 0:
            return self.LOW / 2
        if index > self._inner_bins:
            return self.HIGH
        return self.LOW * self.GROWTH ** (index - 1) * math.sqrt(self.GROWTH)

    def add(self, value: float) -> None:
        self.counts[self._index(value)] += 1

    def percentile(self, q: float, count: int) -> float:
        """Value at percentile q (0..100) of count samples, as the middle of its bin."""
        rank = q / 100.0 * (count - 1)   # numpy's default: position among sorted samples
        target = math.floor(rank + 0.5)
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen > target:
                return self._bin_value(index)
        return self._bin_value(len(self.counts) - 1)


class RunningStats:
    """Count, mean, std (population, as numpy), min, max, and histogram percentiles."""

    def __init__(self) -> None:
        self.count = 0
        self._mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._hist = LogHistogram()

    def add(self, value: float | None) -> None:
        if value is None:
            return
        self.count += 1
        delta = value - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (value - self._mean)
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self._hist.add(value)

    def add_many(self, values: Iterable[float | None]) -> None:
        for value in values:
            self.add(value)

    @property
    def mean(self) -> float | None:
        return self._mean if self.count else None

    @property
    def std(self) -> float | None:
        return math.sqrt(self._m2 / self.count) if self.count else None

    def percentile(self, q: float) -> float | None:
        if not self.count:
            return None
        return min(max(self._hist.percentile(q, self.count), self.min), self.max)

    def to_dict(self, keys: Iterable[str]) -> dict:
        """The named entries, e.g. ("count", "mean_ms", "p95_ms"); null when empty."""
        return {key: self._entry(key) for key in keys}

    def _entry(self, key: str) -> Any:
        name = key[:-3] if key.endswith("_ms") else key
        if name == "count":
            return self.count
        if name in ("mean", "std"):
            return getattr(self, name)
        if name in ("min", "max"):
            return getattr(self, name) if self.count else None
        if name.startswith("p") and name[1:].isdigit():
            return self.percentile(float(name[1:]))
        raise KeyError(f"unknown statistic {key!r}")


class HoldCounter:
    """Withheld ticks by reason, with a bounded number of distinct reasons."""

    def __init__(self, max_reasons: int = MAX_HOLD_REASONS) -> None:
        self.by_reason: dict[str, int] = {}
        self._max_reasons = max_reasons

    def add(self, reason: Any) -> None:
        if reason is None or reason is False or reason == "":
            return
        key = str(reason)
        if key not in self.by_reason and len(self.by_reason) >= self._max_reasons:
            key = OTHER_REASON
        self.by_reason[key] = self.by_reason.get(key, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": dict(sorted(self.by_reason.items()))}


# --------------------------------------------------------------------------- the summary
_FULL = ("count", "mean_ms", "std_ms", "min_ms", "max_ms", "p50_ms", "p95_ms", "p99_ms")
_TAIL = ("count", "p50_ms", "p99_ms", "max_ms")


class SessionSummary:
    """Accumulates timing records into performance_summary_<stamp>.json, in bounded memory.

    Stage times come from the ticks that ran (the action lines); jitter, freshness and
    holds from every tick, held ones included (the held_ticks lines)."""

    def __init__(self) -> None:
        self.stages = {name: RunningStats() for name in STAGE_FIELDS}
        self.lateness_abs = RunningStats()
        self.ages = {name: RunningStats() for name in FRESHNESS_FIELDS}
        self.holds = HoldCounter()
        self._vl_filter = VlUpdateFilter()
        self.total_actions = 0
        self.timing_records = 0
        self.held_records = 0
        self.result_records = 0
        self.lost_records = 0
        self._first_action_s: float | None = None
        self._last_action_s: float | None = None

    def add_timing(self, record: dict) -> None:
        """One line of the timings file: an action record, a VL update record, or both
        (an older file may also hold a held tick here)."""
        self.timing_records += 1
        if self._vl_filter.is_new_update(record):
            self.stages["vl_encoding"].add(number(record, "vl_update_time"))
        if is_action_record(record):
            self._add_tick(record)

    def add_held(self, record: dict) -> None:
        """One line of the held ticks file."""
        self.held_records += 1
        self._add_tick(record)

    def _add_tick(self, record: dict) -> None:
        lateness_ms = number(record, LATENESS_FIELD)
        self.lateness_abs.add(None if lateness_ms is None else abs(lateness_ms))
        for name, field in FRESHNESS_FIELDS.items():
            self.ages[name].add(number(record, field))
        if is_held(record):
            self.holds.add(record.get(HELD_FIELD))
            return
        self.total_actions += 1
        for name in STAGE_FIELDS:
            if name != "vl_encoding":
                self.stages[name].add(stage_ms(record, name))
        timestamp_s = number(record, "timestamp")
        if timestamp_s is not None:
            if self._first_action_s is None:
                self._first_action_s = timestamp_s
            self._last_action_s = timestamp_s

    def note_result(self) -> None:
        self.result_records += 1

    def note_lost(self, n: int) -> None:
        self.lost_records += int(n)

    @property
    def elapsed_s(self) -> float:
        if self._first_action_s is None or self._last_action_s is None:
            return 0.0
        return max(self._last_action_s - self._first_action_s, 0.0)

    def to_dict(self) -> dict:
        elapsed_s = self.elapsed_s
        # Rate of intervals between the first and last tick: N ticks span N-1 periods.
        fps = (self.total_actions - 1) / elapsed_s if elapsed_s > 0 else 0.0
        stages = self.stages
        return {
            "total_actions": self.total_actions,
            "elapsed_time_sec": elapsed_s,
            "average_fps": fps,
            "vl_encoding": stages["vl_encoding"].to_dict(_FULL),
            "sensor_encoding": stages["sensor_encoding"].to_dict(("mean_ms", "std_ms")),
            "robot_encoding": stages["robot_encoding"].to_dict(("mean_ms", "std_ms")),
            "action_prediction": stages["action_prediction"].to_dict(_FULL[1:]),
            "total_inference": stages["total"].to_dict(("mean_ms", "std_ms", "min_ms", "max_ms")),
            "jitter": self.lateness_abs.to_dict(("count", "mean_ms", "p50_ms", "p99_ms", "max_ms")),
            "freshness": {name: stats.to_dict(_TAIL) for name, stats in self.ages.items()},
            "holds": self.holds.to_dict(),
            "recorder": {
                "records_written": self.timing_records,
                "held_written": self.held_records,
                "results_written": self.result_records,
                "lost": self.lost_records,
            },
        }
