"""`shm-vla act --instance NAME`: the 10 Hz action loop.

Every tick, on an absolute schedule (next = previous + period; a late tick is measured, a
missed one counted and skipped, never caught up in a burst):

  1. read the newest VL feature and the sensor and robot windows from shared memory
     straight into the runner's (pinned) input buffers, front-padding with zeros while a
     ring fills, as deployed;
  2. gate: no command if any input is missing or stale by capture time (the whole window,
     not only its newest record; see gate.py), or (after inference) if the output is not
     finite; the reason is recorded, counted and logged at a bounded rate;
  3. run the head (a flow head from the tick's seeded noise: tick.tick_noise_seed,
     recorded with the tick, so that `shm-vla replay` re-runs it exactly); clamp the first
     action's first 6 values per axis;
  4. send {"cmd": "dpose"} without blocking (a full queue or absent robot is counted);
  5. publish the whole result, timings and input ages to the results ring.
"""
from __future__ import annotations

import time

import numpy as np
import zmq

from .. import pipeline as P
from .. import tick
from ..gate import Gate, InputAges
from ..process import Runtime, attach_when_ready, run_process
from ..protocol import command as command_proto
from ..protocol.robot import ROBOT_DIMS
from ..shm.ring import CAPTURE_UNKNOWN_NS, META_DTYPE
from ..shm.segment import ShmError
from ..streams import DP_DIMS, HOLD_REASONS, Streams
from .rolling import RollingGauges

STAGE_FIELDS = ("sensor_encoding_ms", "robot_encoding_ms", "action_prediction_ms")


class Inputs:
    """The three input rings and the per-tick metadata buffers."""

    def __init__(self, sensor_window: int, robot_window: int, vl_ring, sensor_ring, robot_ring):
        self.vl_ring, self.sensor_ring, self.robot_ring = vl_ring, sensor_ring, robot_ring
        self.vl_rec = np.zeros(1, vl_ring.dtype)
        self.vl_meta = np.zeros(1, META_DTYPE)
        self.sensor_meta = np.zeros(sensor_window, META_DTYPE)
        self.robot_meta = np.zeros(robot_window, META_DTYPE)
        self.sensor_window, self.robot_window = sensor_window, robot_window

    def read(self, runner) -> tuple[bool, int, int]:
        """Fill the runner's buffers; returns (have_vl, sensor rows, robot rows)."""
        have_vl = self.vl_ring.latest(self.vl_rec, self.vl_meta) >= 0
        if have_vl:
            runner.vl_in[:] = self.vl_rec["feature"][0]
        ks = self.sensor_ring.window(self.sensor_window, runner.sensor_in, self.sensor_meta)
        runner.sensor_in[: self.sensor_window - ks] = 0.0
        kr = self.robot_ring.window(self.robot_window, runner.robot_in, self.robot_meta)
        runner.robot_in[: self.robot_window - kr] = 0.0
        return have_vl, ks, kr


def _span_ms(window: int, rate_hz: float) -> float:
    """Nominal time from a window's oldest record to its newest."""
    return (window - 1) / rate_hz * 1e3


def _capture_age_ms(capture_mono_ns: int, now_ns: int) -> float:
    return np.nan if capture_mono_ns == CAPTURE_UNKNOWN_NS else (now_ns - capture_mono_ns) / 1e6


def _window_ages(meta, rows: int, now_ns: int) -> tuple[float, float, float]:
    """(newest by capture, newest by receipt, oldest by capture) of the `rows` newest
    records, right-aligned in meta; NaN where a capture time is unknown."""
    if rows == 0:
        return np.inf, np.inf, np.inf
    capture = meta["capture_mono_ns"][-rows:]
    oldest = int(capture.min())       # min: also catches an unknown (-1) anywhere in the window
    return (_capture_age_ms(int(capture[-1]), now_ns), (now_ns - int(meta["recv_mono_ns"][-1])) / 1e6,
            _capture_age_ms(oldest, now_ns))


CLOSE_LINGER_MS = 50                               # half a 10 Hz tick


class Commander:
    """The command socket: PUSH, never blocking, never queueing for an absent robot."""

    def __init__(self, rt: Runtime):
        cfg = rt.cfg
        # its own context: closing a socket only hands its queue to the context's I/O thread,
        # and only terminating the context waits out the linger (the process ends with _exit)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, cfg.command.sndhwm)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)     # no queue to a robot that is not connected
        # At exit a command handed to the socket less than half a tick ago is still delivered
        # (so a result recorded as sent was sent); nothing older waits, since IMMEDIATE and
        # the small SNDHWM keep the queue short, and a longer wait would delay the stop.
        self.sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        self.sock.connect(cfg.address(cfg.command.connect))
        self.sent = rt.stats.counter("commands_sent")
        self.failed = rt.stats.counter("commands_failed")
        self.rt = rt

    def send(self, data: bytes) -> bool:
        try:
            self.sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self.failed.inc()
            self.rt.rlog.warning("send", "command not sent: robot receiver absent or not reading")
            return False
        self.sent.inc()
        return True

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()          # returns once the queue is delivered, or after CLOSE_LINGER_MS


class ActWorker:
    def __init__(self, rt: Runtime, runner, inputs: Inputs, results_ring, commander: Commander):
        cfg = rt.cfg
        self.rt, self.cfg = rt, cfg
        self.runner, self.inputs, self.results, self.commander = runner, inputs, results_ring, commander
        self.gate = Gate(cfg.act, sensor_span_ms=_span_ms(inputs.sensor_window, cfg.sensor.rate_hz),
                         robot_span_ms=_span_ms(inputs.robot_window, cfg.robot.rate_hz))
        self.ages = InputAges()
        self.limits = np.array([cfg.act.clamp_mm] * 3 + [cfg.act.clamp_deg] * 3, np.float32)
        self.dp = np.zeros(DP_DIMS, np.float32)
        self._blank = np.zeros((), results_ring.dtype)     # every tick's record starts from this
        self._rec = np.zeros((), results_ring.dtype)       # the tick's record, copied into a slot at the end
        # whole records are copied as raw bytes: one memcpy (~1 us) where a structured copy
        # goes field by field (~10 us)
        self._raw = np.dtype((np.void, results_ring.dtype.itemsize))
        self._blank_raw, self._rec_raw = self._blank.view(self._raw), self._rec.view(self._raw)
        self._blank["actions"] = np.nan
        self._blank["delta"] = np.nan
        self._blank["dp"] = np.nan
        for used in ("vl_record", "sensor_record", "robot_record", "noise_seed"):
            self._blank[used] = -1                         # no input read (yet) this tick
        for stage in STAGE_FIELDS:                       # a held tick ran no stage: not measured, not 0
            self._blank[stage] = np.nan
        # Auto-start moves the robot to its start joints: never again in a session that has
        # already ticked (act restarted after a crash finds the results ring non-empty).
        self.started = not cfg.act.auto_start or results_ring.head > 0
        if cfg.act.auto_start and self.started:
            rt.log.warning("auto-start skipped: this session already ticked (%d results); "
                           "a restarted act process never re-sends the start command", results_ring.head)
        # action_id = the result's record number: a restarted act takes over the same ring
        # and carries on, so ids stay unique and increasing for the whole run
        self.action_id = results_ring.head
        s = rt.stats
        self.ticks = s.counter("ticks")
        self.missed = s.counter("missed_ticks")
        self.clamped = s.counter("clamped_ticks")
        self.held = {r: s.counter(f"held.{r}") for r in HOLD_REASONS if r}
        self.lateness = RollingGauges(s, tick.stat_gauge("tick_lateness_ms"), every=10)
        self.latency = RollingGauges(s, tick.stat_gauge("total_ms"), every=10)
        self.rate_hz = s.gauge("rate_hz", 0.0)
        self.last_vl_update = s.gauge("vl_update_number")
        self._rate_start_ns, self._rate_ticks = time.monotonic_ns(), self.action_id

    # ------------------------------------------------------------------ one tick
    def tick(self, scheduled_ns: int, lateness_ms: float) -> None:
        """One tick, published whatever happens in it.

        The record is built in a private buffer and copied into a results slot at the end, so
        no slot is open across the reads, the inference and the send. A tick that raises is
        still published, held as `tick_error` (its `sent` says whether the command had gone
        out), before the exception ends the process (exit 1, restarted)."""
        t0 = time.monotonic_ns()
        rec = self._rec
        self._rec_raw[...] = self._blank_raw
        rec["action_id"] = self.action_id
        rec["timestamp"] = time.time()
        rec["tick_mono_ns"] = t0
        rec["tick_lateness_ms"] = lateness_ms
        reason = "tick_error"          # until the tick has decided
        try:
            reason = self._decide_and_send(rec)
        finally:
            rec["held"] = HOLD_REASONS.index(reason)
            if reason:
                self.held[reason].inc()
            total_ms = (time.monotonic_ns() - t0) / 1e6
            rec["total_ms"] = total_ms
            with self.results.loan(src_ts=float(rec["timestamp"]), recv_mono_ns=t0) as slot:
                slot.view(self._raw)[...] = self._rec_raw
            self.action_id += 1
        self.ticks.inc()
        self.latency.add(total_ms)
        self.lateness.add(lateness_ms)

    def _decide_and_send(self, rec) -> str:
        """Read, gate, infer, send: fills `rec`; returns the hold reason ('' = sent)."""
        try:
            have_vl, ks, kr = self.inputs.read(self.runner)
            # ages as of now, after the reads: a record that arrived during them counts as fresh (age >= 0)
            reason = self._check_inputs(rec, time.monotonic_ns(), have_vl, ks, kr)
        except ShmError as exc:
            reason = "read_error"
            self.rt.rlog.error("read", "input read failed: %s", exc)
        if not reason:
            reason = self._infer(rec)
        if not reason and not (self.rt.running and self.rt.parent.alive()):
            reason = "stopping"        # asked to stop during the tick (SIGTERM, supervisor gone): no command
        if not reason and not self.started:
            self.started = self.commander.send(command_proto.encode_start(self.cfg.command.start_joints,
                                                                          self.cfg.command.lock_j6))
            if self.started:
                self.rt.log.info("auto-start: start command sent")
        rec["sent"] = 0
        if not reason and self.started:
            rec["sent"] = self.commander.send(command_proto.encode_dpose(self.dp.tolist()))
        if reason:
            self.rt.rlog.warning(f"held.{reason}", "command withheld: %s", reason)
        return reason

    def _check_inputs(self, rec, now_ns: int, have_vl: bool, ks: int, kr: int) -> str:
        inp, ages = self.inputs, self.ages
        vl = inp.vl_rec[0]
        rec["sensor_buffer_size"], rec["robot_buffer_size"] = ks, kr
        rec["vl_update_number"] = int(vl["update"]) if have_vl else 0
        rec["vl_update_time_ms"] = float(vl["encode_ms"]) if have_vl else 0.0
        rec["view_skew_ms"] = float(vl["skew_ms"]) if have_vl else np.nan
        ages.sensor, ages.sensor_recv, ages.sensor_window = _window_ages(inp.sensor_meta, ks, now_ns)
        ages.robot, ages.robot_recv, ages.robot_window = _window_ages(inp.robot_meta, kr, now_ns)
        ages.vl = (now_ns - int(inp.vl_meta["recv_mono_ns"][0])) / 1e6 if have_vl else np.inf
        ages.frames = _capture_age_ms(int(vl["capture_mono_ns"].min()), now_ns) if have_vl else np.inf
        rec["sensor_age_ms"], rec["sensor_recv_age_ms"], rec["sensor_window_age_ms"] = \
            ages.sensor, ages.sensor_recv, ages.sensor_window
        rec["robot_age_ms"], rec["robot_recv_age_ms"], rec["robot_window_age_ms"] = \
            ages.robot, ages.robot_recv, ages.robot_window
        rec["vl_age_ms"], rec["frame_age_ms"] = ages.vl, ages.frames
        rec["vl_record"] = int(inp.vl_meta["record"][0]) if have_vl else -1
        rec["sensor_record"] = int(inp.sensor_meta["record"][-1]) if ks else -1
        rec["robot_record"] = int(inp.robot_meta["record"][-1]) if kr else -1
        if ks:
            rec["sensor_window_ts"] = (inp.sensor_meta["src_ts"][-ks], inp.sensor_meta["src_ts"][-1])
        if kr:
            rec["robot_window_ts"] = (inp.robot_meta["src_ts"][-kr], inp.robot_meta["src_ts"][-1])
            rec["robot_state"] = self.runner.robot_in[-1]
            rec["robot_ts"] = float(inp.robot_meta["src_ts"][-1])
        if have_vl:
            self.last_vl_update.set(float(vl["update"]))
        return self.gate.check_inputs(have_vl, ks, kr, ages)

    def _infer(self, rec) -> str:
        if not (np.isfinite(self.runner.vl_in).all() and np.isfinite(self.runner.sensor_in).all()
                and np.isfinite(self.runner.robot_in).all()):
            return "nonfinite_input"
        noise_seed = None
        if self.runner.is_flow:
            noise_seed = rec["noise_seed"] = tick.tick_noise_seed(self.cfg.model.seed, self.action_id)
        res = self.runner.run(noise_seed)
        rec["actions"] = res.actions
        rec["has_delta"] = res.delta is not None
        if res.delta is not None:
            rec["delta"] = res.delta
        rec["sensor_encoding_ms"] = res.sensor_encoding_ms         # NaN where the split is not measured
        rec["robot_encoding_ms"] = res.robot_encoding_ms
        rec["action_prediction_ms"] = res.action_prediction_ms
        if not np.isfinite(res.actions).all():
            return "nonfinite_output"
        np.clip(res.actions[0, :DP_DIMS], -self.limits, self.limits, out=self.dp)
        clamped = bool((np.abs(res.actions[0, :DP_DIMS]) > self.limits).any())
        rec["clamped"] = clamped
        if clamped:
            self.clamped.inc()
        rec["dp"] = self.dp
        return ""

    def publish_rate(self, now_ns: int) -> None:
        elapsed = now_ns - self._rate_start_ns
        if elapsed >= 1_000_000_000:
            self.rate_hz.set((self.action_id - self._rate_ticks) * 1e9 / elapsed)
            self._rate_start_ns, self._rate_ticks = now_ns, self.action_id

    # ------------------------------------------------------------------ schedule
    def loop(self) -> None:
        """Absolute-time ticks; lateness measured every tick; missed ticks skipped."""
        period_ns = int(1e9 / self.cfg.act.tick_hz)
        next_ns = time.monotonic_ns() + period_ns
        while self.rt.running:
            self.rt.housekeeping()
            now = time.monotonic_ns()
            if now < next_ns:
                time.sleep(min(next_ns - now, 100_000_000) / 1e9)   # bounded: signals are seen
                continue
            lateness_ns = now - next_ns
            if lateness_ns >= period_ns:
                skipped = lateness_ns // period_ns
                self.missed.inc(skipped)
                next_ns += skipped * period_ns
                lateness_ns = now - next_ns
            self.tick(next_ns, lateness_ns / 1e6)
            next_ns += period_ns
            self.publish_rate(now)


def make_runner(cfg, loaded):
    import torch
    from ..model import TickRunner
    torch.set_num_threads(cfg.model.act_threads)
    dtype = getattr(torch, cfg.model.act_dtype)
    return TickRunner(loaded, device=cfg.model.act_device, dtype=dtype, flow_steps=cfg.model.flow_steps,
                      solver=cfg.model.flow_solver, horizon=cfg.model.flow_horizon,
                      use_cuda_graph=cfg.model.cuda_graph, stream_priority=cfg.model.act_stream_priority,
                      compile=cfg.model.act_compile, stage_timing=cfg.model.stage_timing)


def _log_stage_timing(rt: Runtime, runner) -> None:
    """Say once when the per-stage times are not what the config asked for, or off."""
    wanted = rt.cfg.model.stage_timing
    if runner.stage_timing != wanted:
        rt.log.warning("model.stage_timing %r refused by the CUDA graph (%s); using %r", wanted,
                       "; ".join(runner.capture_refused), runner.stage_timing)
    if runner.stage_timing == "off":
        rt.log.warning("per-stage tick times off: sensor/robot encoding and action prediction times are "
                       "recorded as not measured (NaN in the results ring, null in the session files)%s",
                       "" if wanted == "off" else '; try model.stage_timing = "graphs"')


def run(rt: Runtime) -> int:
    from ..model import load_checkpoint
    cfg = rt.cfg
    streams = Streams(cfg)
    loaded = load_checkpoint(cfg.model.checkpoint, cfg.model, sensor_window=cfg.sensor.window,
                             sensor_channels=cfg.sensor_channels, robot_dims=ROBOT_DIMS)
    info = loaded.info
    runner = make_runner(cfg, loaded)
    runner.run()                                   # warm-up (and graph capture on CUDA)
    _log_stage_timing(rt, runner)
    results = streams.create_results(info.horizon, info.action_dim, info.robot_window)   # windows: for a shadow
    rings = [attach_when_ready(rt, fn, what) for fn, what in (
        (lambda: streams.attach_vl(info.vl_dim), "the VL feature"),
        (streams.attach_sensor, "the sensor ring"), (streams.attach_robot, "the robot ring"))]
    if any(r is None for r in rings):
        return 0
    for ring, stream in zip(rings, (P.VL_FEATURE, P.SENSOR, P.ROBOT)):
        rt.watch_reads(ring, stream)
    inputs = Inputs(cfg.sensor.window, info.robot_window, *rings)
    commander = Commander(rt)
    worker = ActWorker(rt, runner, inputs, results, commander)
    rt.raise_priority(cfg.act.rt_priority, cfg.act.nice)
    rt.ready(f"act {info.model_type} at {cfg.act.tick_hz:g} Hz on {cfg.model.act_device}")
    try:
        worker.loop()
    finally:
        commander.close()
        results.close()
        for ring in rings:
            ring.close()
    return 0


def main(argv: list[str]) -> int:
    from ..model import CheckpointError
    return run_process("shm-vla act", P.ACT, argv, lambda rt, args: run(rt), config_errors=(CheckpointError,))
