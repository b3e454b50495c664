"""`shm-vla-stat --instance NAME --rerun TARGET`: the instance's live counters, streamed to Rerun.

TARGET is a running viewer's gRPC address (`rerun+http://HOST:9876/proxy`, what `rerun` prints
when it starts) or a file `OUT.rrd`. Every `--interval` seconds the snapshot that stat shows
(stat_model.py, docs/STAT.md) is logged on the timeline `wall_time`:

    live/act/rate_hz, live/act/latency_ms (p50, p99), live/act/lateness_ms_p99,
    live/act/ticks, live/act/held_total, live/act/commands_sent
    live/ages/<stream>_ms        age of the newest record of each ring
    live/vl/encode_ms (p50, p99), live/vl/view_skew_ms
    live/record/lag_records, live/record/disk_free_mb
    live/process/<name>/up       1 while the process is alive and up, else 0

A value stat does not have (a process not running, a ring not made yet) is left out of that
sample. Read-only from shared memory like stat itself; SIGINT/SIGTERM end it with a complete
file. The recorded-session counterpart is `shm-vla analyze SESSION --rerun` (rerun_export.py).
"""
from __future__ import annotations

import math
import signal
import time

import rerun as rr

from .stat_model import ProcessSampler, build_snapshot

TIMELINE = "wall_time"
FLUSH_TIMEOUT_S = 5.0
APP_ID = "shm-vla-live"


def _samples(snap: dict) -> list[tuple[str, list[float]]]:
    """(entity, values) of one snapshot: every value present and finite."""
    act, vl, rec = snap["act"], snap["vl"], snap["record"]
    out = [("live/act/rate_hz", [act["rate_hz"]]),
           ("live/act/latency_ms", [act["latency_ms_p50"], act["latency_ms_p99"]]),
           ("live/act/lateness_ms_p99", [act["lateness_ms_p99"]]),
           ("live/act/ticks", [act["ticks"]]), ("live/act/held_total", [act["held_total"]]),
           ("live/act/commands_sent", [act["commands_sent"]]),
           ("live/vl/encode_ms", [vl["encode_ms_p50"], vl["encode_ms_p99"]]),
           ("live/vl/view_skew_ms", [vl["view_skew_ms"]]),
           ("live/record/lag_records", [rec["lag_records"]]), ("live/record/disk_free_mb", [rec["disk_free_mb"]])]
    out += [(f"live/ages/{name}_ms", [s["age_ms"]]) for name, s in snap["streams"].items()]
    out += [(f"live/process/{name}/up", [float(p["alive"] and p["state"] == "up")])
            for name, p in snap["processes"].items()]
    return [(entity, [float(v) for v in values]) for entity, values in out
            if all(v is not None and math.isfinite(float(v)) for v in values)]


def open_stream(instance: str, target: str) -> rr.RecordingStream:
    rec = rr.RecordingStream(APP_ID, recording_id=f"{instance}-{time.time_ns()}")
    if target.endswith(".rrd"):
        rec.save(target)
    else:
        rec.connect_grpc(target)
    rec.log("live/act/latency_ms", rr.SeriesLines(names=["p50", "p99"]), static=True)
    rec.log("live/vl/encode_ms", rr.SeriesLines(names=["p50", "p99"]), static=True)
    return rec


def log_snapshot(rec: rr.RecordingStream, snap: dict, wall_s: float) -> int:
    """One sample of every value; returns how many entities got one."""
    rec.set_time(TIMELINE, timestamp=wall_s)
    samples = _samples(snap)
    for entity, values in samples:
        rec.log(entity, rr.Scalars(values))
    return len(samples)


def stream(cfg, target: str, interval_s: float, once: bool = False) -> int:
    """Until KeyboardInterrupt (SIGINT/SIGTERM), or one sample with `once`; the stream is
    flushed and closed on the way out."""
    rec = open_stream(cfg.instance, target)
    sampler = ProcessSampler()
    try:
        while True:
            log_snapshot(rec, build_snapshot(cfg, sampler, with_gpu=False), time.time())
            if once:
                return 0
            time.sleep(interval_s)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)       # a second Ctrl+C must not cut the file short
        rec.flush(timeout_sec=FLUSH_TIMEOUT_S)    # bounded: a viewer that went away must not hold us
        rec.disconnect()
