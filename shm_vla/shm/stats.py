"""Per-process counters and gauges in shared memory, updated without syscalls.

Each process owns one segment ``/<prefix>.<instance>.stats.<process>``:

    process block (128 B): pid, start ticks, state, heartbeat (CLOCK_MONOTONIC ns),
                           start wall time, number of entries
    entries (64 B each):   name (48 B), kind (counter | gauge), value (8 B)

A counter is a u64 and a gauge an f64 in the same 8 bytes; each update is one aligned
8-byte store, which is atomic on x86-64 and aarch64, so readers need no lock and never
see a torn value. Names are registered at start-up (not on the hot path).
"""
from __future__ import annotations

import os
import time

import numpy as np

from . import segment as segmod

STATES = ("starting", "up", "stopping", "stopped", "restarting", "failed")
KIND_COUNTER, KIND_GAUGE = 1, 2
NAME_BYTES = 48

PROCESS_DTYPE = np.dtype([
    ("pid", "<u8"), ("start_ticks", "<u8"), ("state", "<u4"), ("n_entries", "<u4"),
    ("heartbeat_mono_ns", "<i8"), ("started_wall_ns", "<i8"), ("_pad", "V88"),
])
ENTRY_DTYPE = np.dtype([("name", f"S{NAME_BYTES}"), ("kind", "<u8"), ("value", "<u8")])
assert PROCESS_DTYPE.itemsize == 128 and ENTRY_DTYPE.itemsize == 64


DEFAULT_MAX_ENTRIES = 256


def stats_stream(process: str) -> str:
    return f"stats.{process}"


def stats_data_bytes(max_entries: int = DEFAULT_MAX_ENTRIES) -> int:
    return PROCESS_DTYPE.itemsize + max_entries * ENTRY_DTYPE.itemsize


def stats_footprint(max_entries: int = DEFAULT_MAX_ENTRIES) -> int:
    """Bytes of /dev/shm one process's stats segment takes."""
    return segmod.footprint(stats_data_bytes(max_entries))


class Counter:
    """`inc` is a read-modify-write, not atomic: a counter has one owner thread, or every
    update holds a lock (the camera ingest's decoder threads, ingest/camera.py)."""
    __slots__ = ("_values", "_i")

    def __init__(self, values: np.ndarray, i: int):
        self._values, self._i = values, i

    def inc(self, n: int = 1) -> None:
        self._values[self._i] += n

    @property
    def value(self) -> int:
        return int(self._values[self._i])


class Gauge:
    __slots__ = ("_values", "_i")

    def __init__(self, values: np.ndarray, i: int):
        self._values, self._i = values, i

    def set(self, v: float) -> None:
        self._values[self._i] = v

    @property
    def value(self) -> float:
        return float(self._values[self._i])


class Stats:
    """The writer side, one per process."""

    def __init__(self, seg: segmod.Segment, max_entries: int):
        self.seg = seg
        self.max_entries = max_entries
        base = segmod.HEADER_BYTES
        self.proc = np.ndarray((), PROCESS_DTYPE, buffer=seg.mm, offset=base)
        self.entries = np.ndarray((max_entries,), ENTRY_DTYPE, buffer=seg.mm, offset=base + PROCESS_DTYPE.itemsize)
        off = base + PROCESS_DTYPE.itemsize + ENTRY_DTYPE.fields["value"][1]
        self._u64 = np.ndarray((max_entries,), np.uint64, buffer=seg.mm, offset=off, strides=(64,))
        self._f64 = np.ndarray((max_entries,), np.float64, buffer=seg.mm, offset=off, strides=(64,))
        self._index: dict[str, int] = {}

    @classmethod
    def create(cls, instance: str, process: str, *, max_entries: int = DEFAULT_MAX_ENTRIES,
               prefix: str = segmod.DEFAULT_PREFIX, group: str = "") -> "Stats":
        layout = {"kind": "stats", "process": process, "max_entries": max_entries}
        seg = segmod.Segment.create(segmod.segment_name(instance, stats_stream(process), prefix),
                                    layout, stats_data_bytes(max_entries), group=group)
        stats = cls(seg, max_entries)
        stats.proc["n_entries"] = 0
        stats.proc["pid"] = os.getpid()
        stats.proc["start_ticks"] = segmod.process_start_ticks(os.getpid()) or 0
        stats.proc["started_wall_ns"] = time.time_ns()
        stats.set_state("starting")
        return stats

    def _register(self, name: str, kind: int) -> int:
        if name in self._index:
            return self._index[name]
        raw = name.encode()
        if len(raw) > NAME_BYTES:
            raise ValueError(f"stat name {name!r} longer than {NAME_BYTES} bytes")
        i = int(self.proc["n_entries"])
        if i >= self.max_entries:
            raise ValueError(f"too many stats in {self.seg.name} (max {self.max_entries})")
        self.entries[i] = (raw, kind, 0)
        self.proc["n_entries"] = i + 1   # publish after the entry is complete
        self._index[name] = i
        return i

    def counter(self, name: str) -> Counter:
        return Counter(self._u64, self._register(name, KIND_COUNTER))

    def gauge(self, name: str, initial: float = float("nan")) -> Gauge:
        g = Gauge(self._f64, self._register(name, KIND_GAUGE))
        g.set(initial)
        return g

    def set_state(self, state: str) -> None:
        self.proc["state"] = STATES.index(state)
        self.heartbeat()

    def heartbeat(self) -> None:
        self.proc["heartbeat_mono_ns"] = time.monotonic_ns()

    def close(self) -> None:
        self.proc = self.entries = self._u64 = self._f64 = None
        self.seg.close()


def read_snapshot(instance: str, process: str, prefix: str = segmod.DEFAULT_PREFIX) -> dict:
    """One consistent-enough snapshot of a process's stats (read-only, no locks)."""
    seg = segmod.Segment.attach(segmod.segment_name(instance, stats_stream(process), prefix), read_only=True)
    try:
        layout = seg.layout()
        if layout.get("kind") != "stats":
            raise segmod.LayoutMismatch(f"{seg.name}: not a stats segment")
        if len(seg.mm) < segmod.HEADER_BYTES + stats_data_bytes(int(layout["max_entries"])):
            raise segmod.ShmError(f"{seg.name} is shorter than its layout needs")
        base = segmod.HEADER_BYTES
        proc = np.ndarray((), PROCESS_DTYPE, buffer=seg.mm, offset=base).copy()
        n = min(int(proc["n_entries"]), int(layout["max_entries"]))
        entries = np.ndarray((n,), ENTRY_DTYPE, buffer=seg.mm, offset=base + PROCESS_DTYPE.itemsize).copy()
        alive = seg.writer_alive()
        pid = seg.writer_pid
    finally:
        seg.close()
    values = {}
    for e in entries:
        name = bytes(e["name"]).decode(errors="replace")
        raw = np.array([e["value"]], np.uint64)
        values[name] = int(raw[0]) if int(e["kind"]) == KIND_COUNTER else float(raw.view(np.float64)[0])
    state = STATES[int(proc["state"])] if int(proc["state"]) < len(STATES) else "unknown"
    return {
        "process": process,
        "pid": pid,
        "alive": alive,
        "state": state if alive else "down",
        "last_state": state,
        "heartbeat_age_ms": (time.monotonic_ns() - int(proc["heartbeat_mono_ns"])) / 1e6,
        "started_wall_ns": int(proc["started_wall_ns"]),
        "values": values,
    }


def list_processes(instance: str, prefix: str = segmod.DEFAULT_PREFIX) -> list[str]:
    head = f"/{prefix}.{instance}.stats."
    return [name[len(head):] for name in segmod.instance_segments(instance, prefix) if name.startswith(head)]


def list_instances(prefix: str = segmod.DEFAULT_PREFIX) -> list[str]:
    """Instances with at least one stats segment on this host (names cannot hold '.')."""
    head = f"{prefix}."
    if not segmod.SHM_DIR.is_dir():
        return []
    found = set()
    for path in segmod.SHM_DIR.iterdir():
        instance, _, stream = path.name[len(head):].partition(".")
        if path.name.startswith(head) and instance and stream.startswith("stats."):
            found.add(instance)
    return sorted(found)
