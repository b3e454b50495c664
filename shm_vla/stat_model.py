"""The data behind `shm-vla-stat`: one snapshot of an instance, read only from shared memory.

Everything here attaches read-only: segments are opened O_RDONLY and mapped PROT_READ,
so this module cannot create, lock or write any segment (a stray write would raise).
The snapshot is a plain dict with the stable schema documented in docs/STAT.md
(``schema_version``); values that are unknown (no process, gauge never set) are None.
Each section carries ``levels``: "ok" | "warn" | "bad" | "none" per value, from the
thresholds in config (``stat.warn_periods``, ``stat.stale_periods`` and the stream rates).
"""
from __future__ import annotations

import time

import numpy as np

from .config import Config
from .finite import finite_or_none
from .shm import segment as segmod
from .shm import stats as statsmod
from .shm.ring import Ring
from . import pipeline as P

SCHEMA_VERSION = 2                # 2: the `shadow` section, the record's shadow counters
RATE_WINDOW_S = 2.0               # ring-derived rates: records received in the last 2 s ...
RATE_WINDOW_PERIODS = 4           # ... or the last 4 periods, whichever is longer
HEARTBEAT_WARN_MS = 1000.0        # a live process whose heartbeat is older is stuck (loops beat every <= 0.2 s)
HEARTBEAT_BAD_MS = 5000.0
INGEST_STANDARD = {"messages", "bytes", "records", "drops", "rate_hz", "last_src_ts", "latency_ms",
                   "latency_max_ms", "clock_offset_ms"}
RETRIES_PREFIX = "read_retries."


# --------------------------------------------------------------------------- read-only access
def attach_read_only(name: str) -> segmod.Segment:
    """Map a segment PROT_READ from an O_RDONLY descriptor (no create, no lock, no write)."""
    return segmod.Segment.attach(name, read_only=True)


def read_stats(instance: str, process: str, prefix: str) -> dict:
    """A process's stats snapshot (shm.stats reads through a read-only mapping)."""
    snap = statsmod.read_snapshot(instance, process, prefix)
    snap.pop("process", None)
    return snap


def _supervised_state(sup_values: dict, name: str, restarts) -> str:
    """A dead child of a live supervisor: 'restarting' while a restart is pending (the
    supervisor's restart_pending.<name> gauge), 'failed' once it gave up (gave_up.<name>,
    a configuration error), else 'down'. Older supervisors without those gauges: a
    restart counter means 'restarting'."""
    if _num(sup_values, f"gave_up.{name}"):
        return "failed"
    pending = _num(sup_values, f"restart_pending.{name}")
    if pending is None:
        return "restarting" if restarts is not None else "down"
    return "restarting" if pending else "down"


def read_ring(instance: str, stream: str, prefix: str, expected_hz: float) -> dict:
    """Records, newest-record age and receive rate of one ring (unchecked meta reads)."""
    info = {"present": False, "writer_alive": False, "health": None, "records": None, "depth": None,
            "expected_hz": expected_hz, "rate_hz": None, "age_ms": None}
    try:
        seg = attach_read_only(segmod.segment_name(instance, stream, prefix))
    except segmod.ShmError:
        return info
    try:
        layout = seg.layout()
        if layout.get("kind") != "ring":
            return info
        ring = Ring(seg, layout)
        age = ring.age_ns()            # reads the clock after the record: never negative
        now_ns = time.monotonic_ns()
        info.update(present=True, writer_alive=seg.writer_alive(), health=ring.health(), records=ring.head,
                    depth=ring.depth, age_ms=None if age is None else age / 1e6,
                    rate_hz=_ring_rate(ring, expected_hz, now_ns))
        ring.close()
    except (segmod.ShmError, ValueError, KeyError, TypeError):   # not a ring we can read
        seg.close()
    return info


def _ring_rate(ring: Ring, expected_hz: float, now_ns: int) -> float:
    """Records per second received within the rate window (0 when none)."""
    head = ring.head
    records = ring.meta["record"].copy()
    recv = ring.meta["recv_mono_ns"].copy()
    window_ns = int(max(RATE_WINDOW_S, RATE_WINDOW_PERIODS / expected_hz) * 1e9)
    keep = (records >= max(0, head - (ring.depth - 1))) & (records < head) & (recv >= now_ns - window_ns)
    times = np.sort(recv[keep])
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return float((len(times) - 1) * 1e9 / (times[-1] - times[0]))


# --------------------------------------------------------------------------- levels
class Thresholds:
    """Colour rules (docs/STAT.md, "Levels"), all derived from config."""

    def __init__(self, cfg: Config):
        self.warn = cfg.stat.warn_periods
        self.stale = cfg.stat.stale_periods
        self.tick_ms = 1e3 / cfg.act.tick_hz
        self.vl_interval_ms = 1e3 * cfg.act.vl_reuse / cfg.act.tick_hz
        self.max_skew_ms = cfg.vl.max_skew_ms
        self.tick_hz = cfg.act.tick_hz
        self.results_depth = cfg.shm.results_depth

    def age(self, age_ms, expected_hz: float) -> str:
        if age_ms is None:
            return "none"
        periods = age_ms * expected_hz / 1e3
        return "bad" if periods > self.stale else "warn" if periods > self.warn else "ok"

    def rate(self, rate_hz, expected_hz: float) -> str:
        if rate_hz is None:
            return "none"
        return "bad" if rate_hz * self.stale < expected_hz else "warn" if rate_hz * self.warn < expected_hz else "ok"

    @staticmethod
    def duration(ms, budget_ms: float, warn_fraction: float) -> str:
        if ms is None:
            return "none"
        return "bad" if ms > budget_ms else "warn" if ms > budget_ms * warn_fraction else "ok"

    def tick_duration(self, ms) -> str:
        return self.duration(ms, self.tick_ms, 1 / self.warn)

    def encode(self, ms) -> str:
        return self.duration(ms, self.vl_interval_ms, 1 / self.warn)

    def skew(self, ms) -> str:
        return self.duration(ms, self.max_skew_ms, 1 / self.warn)

    def lag(self, records) -> str:
        if records is None:
            return "none"
        return "bad" if records >= self.results_depth / 2 else "warn" if records > self.tick_hz else "ok"

    @staticmethod
    def count(n) -> str:
        return "none" if n is None else "warn" if n > 0 else "ok"

    @staticmethod
    def process(state: str, alive: bool, heartbeat_age_ms: float) -> str:
        if state in ("down", "failed", "hung"):
            return "bad"
        if state in ("starting", "stopping", "restarting", "unknown"):
            return "warn"
        if state == "stopped":
            return "none"
        if alive and heartbeat_age_ms > HEARTBEAT_BAD_MS:
            return "bad"
        return "warn" if alive and heartbeat_age_ms > HEARTBEAT_WARN_MS else "ok"


# --------------------------------------------------------------------------- process sampling
class ProcessSampler:
    """CPU% and RSS by pid (psutil), keeping each process between refreshes for CPU%."""

    def __init__(self):
        self._procs: dict[tuple, object] = {}

    def sample(self, pid: int, started_wall_ns: int) -> tuple[float | None, int | None]:
        """(cpu_percent since the previous sample, rss_bytes); cpu None on the first sample."""
        import psutil
        key = (pid, started_wall_ns)
        first = key not in self._procs
        try:
            proc = self._procs.get(key) or psutil.Process(pid)
            self._procs[key] = proc
            cpu = proc.cpu_percent(None)
            rss = int(proc.memory_info().rss)
        except (psutil.Error, OSError):
            self._procs.pop(key, None)
            return None, None
        return (None if first else float(cpu)), rss

    def forget_except(self, keys: set) -> None:
        for key in set(self._procs) - keys:
            del self._procs[key]


def gpu_memory(cfg: Config) -> dict | None:
    """Device-wide memory of each CUDA device in config; None when no GPU is configured."""
    devices = sorted({d for d in (cfg.model.vl_device, cfg.model.act_device) if d.startswith("cuda")})
    if not devices:
        return None
    try:
        import torch
        if not torch.cuda.is_available():
            return {"devices": [], "error": "CUDA is not available to this process"}
        out = []
        for name in devices:
            free, total = torch.cuda.mem_get_info(torch.device(name))
            out.append({"device": name, "used_bytes": int(total - free), "total_bytes": int(total)})
        return {"devices": out, "error": None}
    except Exception as exc:     # torch missing or a driver error: shown, never fatal
        return {"devices": [], "error": f"{type(exc).__name__}: {exc}"}


# --------------------------------------------------------------------------- snapshot
def _num(values: dict, name: str):
    """A stats value, None when absent or a gauge never set (NaN)."""
    return finite_or_none(values.get(name))


def _with_prefix(values: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}


def expected_rates(cfg: Config, present=lambda name: False) -> dict:
    """Nominal records per second of every ring stat shows (not the JPEG copies; a stream of an
    optional stage when this configuration runs the stage, or `present(name)`)."""
    return {name: stream.rate_hz(cfg) for name, stream in P.STREAMS.items()
            if name not in P.JPEGS and (P.STAGES[stream.writer].runs(cfg) or present(name))}


# Input kind -> (its ingest process, the rings it writes that stat shows).
INPUTS = {kind: (stage.name, tuple(s for s in stage.writes if s not in P.JPEGS))
          for kind, stage in P.INGEST_STAGES.items()}


def _processes(cfg: Config, sampler: ProcessSampler | None, th: Thresholds) -> dict:
    found = {}
    for name in statsmod.list_processes(cfg.instance, cfg.shm.prefix):
        try:
            found[name] = read_stats(cfg.instance, name, cfg.shm.prefix)
        except segmod.ShmError:
            continue            # being (re)initialised, or not ours: skip this refresh
    sup = found.get(P.SUPERVISOR)
    supervising = bool(sup and sup["alive"] and sup["last_state"] in ("up", "restarting"))
    out = {}
    for name, snap in sorted(found.items()):
        restarts = _num(sup["values"], f"restarts.{name}") if sup else None
        if not snap["alive"] and supervising:
            snap["state"] = _supervised_state(sup["values"], name, restarts)
        elif snap["state"] == "up" and snap["heartbeat_age_ms"] > cfg.supervise.hang_timeout_s * 1e3:
            snap["state"] = "hung"       # alive but its loop stopped (the supervisor kills and restarts it)
        cpu = rss = None
        if snap["alive"] and sampler is not None:
            cpu, rss = sampler.sample(snap["pid"], snap["started_wall_ns"])
        retries = _with_prefix(snap["values"], RETRIES_PREFIX)
        out[name] = {**snap, "cpu_percent": cpu, "rss_bytes": rss, "restarts": restarts,
                     "read_retries": sum(retries.values()) if retries else None,
                     "level": th.process(snap["state"], snap["alive"], snap["heartbeat_age_ms"])}
    if sampler is not None:
        sampler.forget_except({(p["pid"], p["started_wall_ns"]) for p in out.values() if p["alive"]})
    return out


def _proc_head(procs: dict, name: str) -> tuple[dict, dict]:
    p = procs.get(name)
    return ({"process": name, "state": p["state"] if p else "absent"}, p["values"] if p else {})


def _input(cfg: Config, kind: str, procs: dict, streams: dict, th: Thresholds) -> dict:
    process, rings = INPUTS[kind]
    head, v = _proc_head(procs, process)
    per_stream = streams[rings[0]]["expected_hz"]
    expected = per_stream * len(rings)
    ages = [streams[r]["age_ms"] for r in rings]
    age = None if any(a is None for a in ages) else max(ages)
    errors = _with_prefix(v, "errors.")
    extra = {k: x for k, x in v.items() if k not in INGEST_STANDARD and not k.startswith("errors.")}
    out = {**head, "expected_hz": expected, "rate_hz": _num(v, "rate_hz"), "age_ms": age,
           "latency_ms": _num(v, "latency_ms"), "latency_max_ms": _num(v, "latency_max_ms"),
           "clock_offset_ms": _num(v, "clock_offset_ms"), "messages": _num(v, "messages"),
           "records": _num(v, "records"), "drops": _num(v, "drops"), "errors": errors,
           "errors_total": sum(errors.values()) if v else None, "counters": extra}
    out["levels"] = {"rate_hz": th.rate(out["rate_hz"], expected) if v else "none",
                     "age_ms": th.age(age, per_stream), "latency_ms": th.tick_duration(out["latency_ms"]),
                     "latency_max_ms": th.tick_duration(out["latency_max_ms"]),
                     "drops": th.count(out["drops"]), "errors_total": th.count(out["errors_total"])}
    return out


def _vl(procs: dict, streams: dict, th: Thresholds) -> dict:
    head, v = _proc_head(procs, P.VL)
    ring = streams[P.VL_FEATURE]
    out = {**head, **{k: _num(v, k) for k in ("updates", "encode_ms", "encode_ms_p50", "encode_ms_p99",
                                               "view_skew_ms", "over_skew_sets", "rejected_sets", "read_errors",
                                               "unsynced_sets", "stale_sets", "mixed_trigger_sets",
                                               "incomplete_trigger_timeouts", "torn_sets")},
           "feature_age_ms": ring["age_ms"], "feature_rate_hz": ring["rate_hz"]}
    out["levels"] = {"encode_ms_p50": th.encode(out["encode_ms_p50"]), "encode_ms_p99": th.encode(out["encode_ms_p99"]),
                     "feature_age_ms": th.age(ring["age_ms"], ring["expected_hz"]),
                     "view_skew_ms": th.skew(out["view_skew_ms"]), "rejected_sets": th.count(out["rejected_sets"]),
                     "read_errors": th.count(out["read_errors"]), "torn_sets": th.count(out["torn_sets"])}
    return out


def _act(cfg: Config, procs: dict, streams: dict, th: Thresholds) -> dict:
    head, v = _proc_head(procs, P.ACT)
    held = _with_prefix(v, "held.")
    names = ("ticks", "missed_ticks", "clamped_ticks", "rate_hz", "latency_ms_p50", "latency_ms_p99",
             "lateness_ms_p50", "lateness_ms_p99", "commands_sent", "commands_failed", "vl_update_number")
    out = {**head, **{k: _num(v, k) for k in names}, "expected_hz": cfg.act.tick_hz, "held": held,
           "held_total": sum(held.values()) if v else None, "result_age_ms": streams[P.RESULTS]["age_ms"]}
    out["levels"] = {"rate_hz": th.rate(out["rate_hz"], cfg.act.tick_hz) if v else "none",
                     "latency_ms_p50": th.tick_duration(out["latency_ms_p50"]),
                     "latency_ms_p99": th.tick_duration(out["latency_ms_p99"]),
                     "lateness_ms_p50": th.tick_duration(out["lateness_ms_p50"]),
                     "lateness_ms_p99": th.tick_duration(out["lateness_ms_p99"]),
                     "missed_ticks": th.count(out["missed_ticks"]), "held_total": th.count(out["held_total"]),
                     "commands_failed": th.count(out["commands_failed"]),
                     "result_age_ms": th.age(out["result_age_ms"], cfg.act.tick_hz)}
    return out


def _record(procs: dict, th: Thresholds) -> dict:
    head, v = _proc_head(procs, P.RECORD)
    names = ("records_written", "vl_updates_written", "lag_records", "lost", "frames_written",
             "robot_rows_written", "sensor_records_written", "data_lost", "shadow_written", "shadow_lost",
             "disk_free_mb", "disk_pauses", "vl_lost")
    out = {**head, **{k: _num(v, k) for k in names}}
    paused = _num(v, "disk_paused")
    out["disk_paused"] = None if paused is None else bool(paused)
    out["levels"] = {"lag_records": th.lag(out["lag_records"]), "lost": th.count(out["lost"]),
                     "data_lost": th.count(out["data_lost"]), "shadow_lost": th.count(out["shadow_lost"]),
                     "vl_lost": th.count(out["vl_lost"]),
                     "disk_paused": "none" if paused is None else "bad" if paused else "ok"}
    return out


SHADOW_COUNTERS = ("ticks", "missed", "skipped", "live_held", "nonfinite_output")
SHADOW_GAUGES = ("rate_hz", "latency_ms_p50", "latency_ms_p99", "delay_ms_p50", "delay_ms_p99")


def _divergence(values: dict, quantile: str) -> list:
    """The shadow's per-axis divergence gauges divergence.<axis>_<quantile>, in axis order."""
    axes = sorted(int(k[len("divergence."):-len(quantile) - 1]) for k in values
                  if k.startswith("divergence.") and k.endswith(f"_{quantile}"))
    return [_num(values, f"divergence.{axis}_{quantile}") for axis in axes]


def _shadow(cfg: Config, procs: dict, streams: dict, th: Thresholds) -> dict:
    head, v = _proc_head(procs, P.SHADOW)
    p99 = _divergence(v, "p99")
    out = {**head, "configured": bool(cfg.shadow.checkpoint),
           **{k: _num(v, k) for k in SHADOW_COUNTERS + SHADOW_GAUGES},
           "divergence_p50": _divergence(v, "p50"), "divergence_p99": p99,
           "divergence_max_p99": max((x for x in p99 if x is not None), default=None),
           "result_age_ms": streams.get(P.SHADOW_RESULTS, {}).get("age_ms")}
    # no level on its rate: the shadow runs only the ticks the gate passed, so it is low while act holds
    out["levels"] = {"latency_ms_p50": th.tick_duration(out["latency_ms_p50"]),
                     "latency_ms_p99": th.tick_duration(out["latency_ms_p99"]),
                     "delay_ms_p99": th.tick_duration(out["delay_ms_p99"]),
                     "missed": th.count(out["missed"]), "skipped": th.count(out["skipped"]),
                     "nonfinite_output": th.count(out["nonfinite_output"])}
    return out


def _streams(cfg: Config, th: Thresholds) -> dict:
    out = {}
    def present(name: str) -> bool:        # a ring of an optional stage this config does not run
        return (segmod.SHM_DIR / segmod.segment_name(cfg.instance, name, cfg.shm.prefix).lstrip("/")).exists()
    for name, hz in expected_rates(cfg, present).items():
        s = read_ring(cfg.instance, name, cfg.shm.prefix, hz)
        s["levels"] = {"age_ms": th.age(s["age_ms"], hz), "rate_hz": th.rate(s["rate_hz"], hz)}
        out[name] = s
    return out


def build_snapshot(cfg: Config, sampler: ProcessSampler | None = None, with_gpu: bool = True) -> dict:
    """One snapshot of the instance (schema: docs/STAT.md)."""
    th = Thresholds(cfg)
    procs = _processes(cfg, sampler, th)
    streams = _streams(cfg, th)
    return {
        "schema_version": SCHEMA_VERSION,
        "instance": cfg.instance,
        "prefix": cfg.shm.prefix,
        "wall_time_ns": time.time_ns(),
        "processes_total": len(procs),
        "processes_up": sum(1 for p in procs.values() if p["alive"]),
        "processes": procs,
        "inputs": {kind: _input(cfg, kind, procs, streams, th) for kind in INPUTS},
        "streams": streams,
        "vl": _vl(procs, streams, th),
        "act": _act(cfg, procs, streams, th),
        "record": _record(procs, th),
        "shadow": _shadow(cfg, procs, streams, th),
        "gpu": gpu_memory(cfg) if with_gpu else None,
    }
