"""`shm-vla shadow --instance NAME`: a candidate checkpoint beside act, on the same inputs, never commanding.

Started by `shm-vla run` (and by shm-vla-shadow@.service) when `shadow.checkpoint` is set.
It wakes on the results ring (futex wait), takes the newest live tick once (when it falls
behind it skips to the newest and counts the ticks skipped), and for a tick whose inputs
passed act's gate:

  1. reads exactly the input records that tick used, by record number: the VL feature
     `vl_record`, and the `sensor_buffer_size` / `robot_buffer_size` records ending at
     `sensor_record` / `robot_record`, front-padded with zeros as act pads them; a record
     overwritten since is a miss (counted and recorded, never a read of newer data);
  2. runs its own head through act's runner code (make_runner: flow or regression, sizes
     inferred from its checkpoint, which must fit the live streams);
  3. publishes its chunk, the live tick's first action, their per-axis divergence, its
     would-be command after act's clamp and its times to the shadow_results ring, which the
     recorder writes to shadow_results_<stamp>.jsonl (fields: shadow_tick.py).

It cannot command: it has no command socket (nothing here makes one). It cannot delay act:
act reads nothing the shadow writes; the shadow runs at CPU niceness `shadow.nice` (set
before torch starts a thread), one torch thread, and on CUDA a stream of lower priority than
act's (`shadow.stream_priority`); what it misses is counted, never waited for. A tick the
gate held is not shadowed (the gate would hold the shadow too): counted as `live_held`.

Without `shadow.checkpoint` (the systemd unit starts with every instance) it says so,
reports ready to systemd and exits 0, leaving nothing in shared memory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time

import numpy as np

from .. import config as configmod
from .. import pipeline as P
from .. import shadow_tick as S
from ..process import Runtime, attach_when_ready, parse_args, run_process
from ..protocol.robot import ROBOT_DIMS
from ..sdnotify import Notifier
from ..shm.ring import META_DTYPE, Ring
from ..shm.segment import ShmError
from ..streams import DP_DIMS, HOLD_REASONS, Streams
from .act import make_runner
from .rolling import RollingGauges

WAIT_S = 0.1
# live ticks whose inputs passed the gate: the model ran (a nonfinite output is the live head's own)
SHADOWED_HOLDS = frozenset({"", "nonfinite_output"})
ROLLING_TICKS = 100            # stat's p50/p99 of latency, delay and divergence: the last 10 s at 10 Hz
HASH_CHUNK_BYTES = 1 << 20


# --------------------------------------------------------------------------- the checkpoint
@dataclasses.dataclass(frozen=True)
class Identity:
    """Which checkpoint a shadow record came from: its path and the sha256 of the file."""
    path: str
    sha256: str


def identity_of(path: str) -> Identity:
    """The absolute path and the sha256 of a checkpoint file (read once, at start)."""
    path = os.path.abspath(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return Identity(path, digest.hexdigest())


def load_shadow(cfg):
    """The shadow checkpoint, checked against the configured streams (sensor window and
    channels, robot values per row); CheckpointError (one line, exit 2) otherwise."""
    from ..model import CheckpointError, load_checkpoint
    if not cfg.shadow.checkpoint:
        raise configmod.ConfigError("config key shadow.checkpoint is empty: no shadow to run")
    if len(os.path.abspath(cfg.shadow.checkpoint).encode()) > S.CHECKPOINT_BYTES:
        raise configmod.ConfigError(f"config key shadow.checkpoint: the path is longer than {S.CHECKPOINT_BYTES} "
                                    "bytes (each shadow record names it)")
    try:
        return load_checkpoint(cfg.shadow.checkpoint, cfg.model, sensor_window=cfg.sensor.window,
                               sensor_channels=cfg.sensor_channels, robot_dims=ROBOT_DIMS)
    except CheckpointError as exc:
        raise CheckpointError(f"shadow.checkpoint: {exc}") from None


def check_fits(info, vl_dim: int, robot_window: int, action_dim: int) -> None:
    """ConfigError unless the shadow's head reads what act reads (the VL feature width, the
    robot window) and writes as many action values (for the divergence)."""
    wrong = [f"{what} {mine} where act's is {live}" for what, mine, live in (
        ("VL feature width", info.vl_dim, vl_dim), ("robot window", info.robot_window, robot_window),
        ("action width", info.action_dim, action_dim)) if mine != live]
    if wrong:
        raise configmod.ConfigError(f"shadow.checkpoint {info.path} does not fit the live streams: {'; '.join(wrong)}")


def make_shadow_runner(cfg, loaded):
    """act's runner (make_runner) with the shadow's device, dtype and CUDA stream priority, and
    one torch thread."""
    model = dataclasses.replace(cfg.model, act_device=cfg.shadow.device or cfg.model.act_device,
                                act_dtype=cfg.shadow.dtype or cfg.model.act_dtype, act_threads=1,
                                act_stream_priority=cfg.shadow.stream_priority, act_compile=False)
    return make_runner(dataclasses.replace(cfg, model=model), loaded)


def lower_priority(rt: Runtime, nice: int) -> None:
    """At least `nice` for this thread (and the threads it starts later); never raised."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    rt.log.info("running at nice %d", os.getpriority(os.PRIO_PROCESS, 0))


# --------------------------------------------------------------------------- reading what act read
class RecordReader:
    """Copies the input records a live tick names, by record number, into a runner's buffers."""

    def __init__(self, sensor_window: int, robot_window: int, vl_ring: Ring, sensor_ring: Ring, robot_ring: Ring):
        self.vl_ring, self.sensor_ring, self.robot_ring = vl_ring, sensor_ring, robot_ring
        self.vl_rec = np.zeros(1, vl_ring.dtype)
        self.vl_meta = np.zeros(1, META_DTYPE)
        self.sensor_meta = np.zeros(sensor_window, META_DTYPE)
        self.robot_meta = np.zeros(robot_window, META_DTYPE)

    def read(self, live, runner) -> str:
        """Fill runner.vl_in / sensor_in / robot_in with the live tick's records; returns "" or
        the miss (a STATUSES name) when one of them was overwritten since."""
        if not self._exact(self.vl_ring, int(live["vl_record"]), 1, self.vl_rec, self.vl_meta):
            return "missed_vl_feature"
        runner.vl_in[:] = self.vl_rec["feature"][0]
        if not self._exact(self.sensor_ring, int(live["sensor_record"]), int(live["sensor_buffer_size"]),
                           runner.sensor_in, self.sensor_meta):
            return "missed_sensor"
        if not self._exact(self.robot_ring, int(live["robot_record"]), int(live["robot_buffer_size"]),
                           runner.robot_in, self.robot_meta):
            return "missed_robot"
        return ""

    @staticmethod
    def _exact(ring: Ring, last: int, rows: int, buf: np.ndarray, meta: np.ndarray) -> bool:
        """buf[-rows:] <- records last-rows+1 .. last, zeros before them; False if any is gone."""
        n = len(buf)
        if rows < 1 or rows > n or last < rows - 1:
            return False
        buf[: n - rows] = 0.0
        got = ring.since(last - rows + 1, buf[n - rows:], meta[:rows], max_n=rows)
        return got.lost == 0 and got.count == rows


# --------------------------------------------------------------------------- the worker
class ShadowWorker:
    def __init__(self, rt: Runtime, runner, reader: RecordReader, results: Ring, out: Ring, identity: Identity,
                 model_type: str):
        cfg = rt.cfg
        self.rt, self.runner, self.reader, self.results, self.out = rt, runner, reader, results, out
        self.limits = np.array([cfg.act.clamp_mm] * 3 + [cfg.act.clamp_deg] * 3, np.float32)
        self._live = np.zeros(1, results.dtype)
        self._live_meta = np.zeros(1, META_DTYPE)
        self._rec = np.zeros((), out.dtype)
        self._blank = np.zeros((), out.dtype)
        for name in ("actions", "live_first_action", "divergence", "dp", "inference_ms", "delay_ms"):
            self._blank[name] = np.nan
        self._blank["checkpoint"] = identity.path.encode()
        self._blank["checkpoint_sha256"] = identity.sha256.encode()
        self._blank["model_type"] = S.MODEL_TYPES.index(model_type)
        self.next_record = self._start_record()
        self._pending_skipped = 0
        s = rt.stats
        self.ticks = s.counter("ticks")
        self.missed = s.counter("missed")
        self.skipped = s.counter("skipped")
        self.live_held = s.counter("live_held")
        self.nonfinite = s.counter("nonfinite_output")
        self.rate_hz = s.gauge("rate_hz", 0.0)
        self.latency = RollingGauges(s, "latency_ms", size=ROLLING_TICKS, every=10)
        self.delay = RollingGauges(s, "delay_ms", size=ROLLING_TICKS, every=10)
        self.divergence = [RollingGauges(s, f"divergence.{axis}", size=ROLLING_TICKS, every=10)
                           for axis in range(out.dtype["divergence"].shape[0])]
        self._rate_start_ns, self._rate_ticks = time.monotonic_ns(), 0

    def _start_record(self) -> int:
        """The live tick to take first: after the last one this shadow took (a restarted shadow
        counts the ticks it missed while down as skipped), else the next one to come."""
        head = self.results.head
        if self.out.head > 0:
            last = np.zeros(1, self.out.dtype)
            self.out.latest(last)
            if int(last["action_id"][0]) < head:
                return int(last["action_id"][0]) + 1
        return head

    def step(self) -> bool:
        """Take the newest live tick if there is a new one; True when one was taken."""
        newest = self.results.latest(self._live, self._live_meta)
        if newest < self.next_record:
            return False
        skipped = newest - self.next_record
        if skipped:
            self.skipped.inc(skipped)
            self._pending_skipped += skipped
        self.next_record = newest + 1
        live = self._live[0]
        if HOLD_REASONS[int(live["held"])] not in SHADOWED_HOLDS:
            self.live_held.inc()
            return True
        self._shadow(live)
        return True

    def _shadow(self, live) -> None:
        rec = self._rec
        rec[...] = self._blank
        for name in ("action_id", "timestamp", "tick_mono_ns", "vl_record", "sensor_record", "robot_record"):
            rec[name] = live[name]
        rec["sensor_rows"], rec["robot_rows"] = live["sensor_buffer_size"], live["robot_buffer_size"]
        live_first = live["actions"][0]
        rec["live_first_action"] = live_first
        try:
            status = self.reader.read(live, self.runner)
        except ShmError as exc:                 # no consistent read within its bound: a miss too
            self.rt.rlog.error("read", "shadow input read failed: %s", exc)
            status = "read_error"
        if not status:
            status = self._infer(rec, live_first, int(live["noise_seed"]))
        rec["status"] = S.STATUSES.index(status)
        rec["skipped"] = self._pending_skipped
        self._pending_skipped = 0
        rec["delay_ms"] = (time.monotonic_ns() - int(live["tick_mono_ns"])) / 1e6
        with self.out.loan(src_ts=float(live["timestamp"])) as slot:
            slot[...] = rec
        self.ticks.inc()
        self.delay.add(float(rec["delay_ms"]))
        if status in S.MISSES:
            self.missed.inc()
            self.rt.rlog.warning("missed", "shadow missed tick %d: %s (the shadow fell behind the rings)",
                                 int(live["action_id"]), status)

    def _infer(self, rec, live_first, live_seed: int) -> str:
        # a flow head starts from the live tick's noise (its seed; -1: none), so that the
        # divergence measures the checkpoints, not two draws of noise
        res = self.runner.run(live_seed if live_seed >= 0 else None)
        rec["actions"] = res.actions
        rec["inference_ms"] = res.total_ms
        self.latency.add(res.total_ms)
        if not np.isfinite(res.actions).all():
            self.nonfinite.inc()
            return "nonfinite_output"
        first = res.actions[0]
        np.abs(first - live_first, out=rec["divergence"])
        np.clip(first[:DP_DIMS], -self.limits, self.limits, out=rec["dp"])
        if np.isfinite(live_first).all():
            for axis, gauges in enumerate(self.divergence):
                gauges.add(float(rec["divergence"][axis]))
        return "ok"

    def publish_rate(self, now_ns: int) -> None:
        elapsed = now_ns - self._rate_start_ns
        if elapsed >= 1_000_000_000:
            ticks = self.ticks.value
            self.rate_hz.set((ticks - self._rate_ticks) * 1e9 / elapsed)
            self._rate_start_ns, self._rate_ticks = now_ns, ticks

    def loop(self) -> None:
        while self.rt.running:
            self.rt.housekeeping()
            if self.results.wait(self.next_record, WAIT_S):
                self.step()
            self.publish_rate(time.monotonic_ns())


# --------------------------------------------------------------------------- the process
def _attach_live(rt: Runtime, streams: Streams, info):
    """The rings act reads and writes, checked against the shadow's head; None if asked to stop."""
    cfg = rt.cfg
    wanted = ((streams.attach_results, "the results ring"),
              (lambda: Ring.attach(cfg.instance, P.VL_FEATURE, prefix=cfg.shm.prefix), "the VL feature ring"),
              (streams.attach_sensor, "the sensor ring"), (streams.attach_robot, "the robot ring"))
    rings = []
    for attach, what in wanted:
        ring = attach_when_ready(rt, attach, what)
        if ring is None:
            for r in rings:
                r.close()
            return None
        rings.append(ring)
    results, vl = rings[0], rings[1]
    windows = results.layout.get("extras", {})
    if windows.get("sensor_window") != cfg.sensor.window:
        raise configmod.ConfigError(f"act reads a sensor window of {windows.get('sensor_window')} rows, this "
                                    f"process's configuration says {cfg.sensor.window} (sensor.window)")
    check_fits(info, vl.dtype["feature"].shape[0], windows.get("robot_window"), results.dtype["actions"].shape[1])
    return rings


def run(rt: Runtime) -> int:
    cfg = rt.cfg
    lower_priority(rt, cfg.shadow.nice)           # first: every thread started later inherits it
    loaded = load_shadow(cfg)                      # a missing or bad file: one line, exit 2
    identity = identity_of(cfg.shadow.checkpoint)
    info = loaded.info
    runner = make_shadow_runner(cfg, loaded)
    runner.run()                                   # warm-up (and graph capture on CUDA)
    streams = Streams(cfg)
    rings = _attach_live(rt, streams, info)
    if rings is None:
        return 0
    results, vl, sensor, robot = rings
    for ring, stream in zip(rings, (P.RESULTS, P.VL_FEATURE, P.SENSOR, P.ROBOT)):
        rt.watch_reads(ring, stream)
    out = streams.create_shadow_results(info.horizon, info.action_dim)
    reader = RecordReader(cfg.sensor.window, info.robot_window, vl, sensor, robot)
    worker = ShadowWorker(rt, runner, reader, results, out, identity, info.model_type)
    rt.ready(f"shadow {info.model_type} {identity.path} (sha256 {identity.sha256[:12]}) on "
             f"{cfg.shadow.device or cfg.model.act_device}")
    try:
        worker.loop()
    finally:
        out.close()
        for ring in rings:
            ring.close()
    return 0


NOT_CONFIGURED = "no shadow configured (shadow.checkpoint is empty): nothing to run"


def main(argv: list[str]) -> int:
    from ..model import CheckpointError
    _, cfg = parse_args("shm-vla shadow", argv)
    if not cfg.shadow.checkpoint:                  # under systemd: started with every instance
        print(f"shm-vla shadow: {NOT_CONFIGURED}", file=sys.stderr, flush=True)
        notifier = Notifier()
        notifier.ready(NOT_CONFIGURED)             # Type=notify: an exit before READY=1 would be a failure
        notifier.close()
        return 0
    return run_process("shm-vla shadow", P.SHADOW, argv, lambda rt, args: run(rt), config_errors=(CheckpointError,))
