"""`shm-vla record --instance NAME --out DIR [--save-data]`: the session recorder.

Consumes the results and vl_feature rings with since() (it loses nothing while it keeps
up; overwritten records are counted as lost and written into the summary), and with
--save-data also the jpeg, robot and sensor rings. Files are streamed by SessionWriter
and finalised when the process stops (SIGINT/SIGTERM end the loop, then a last drain).
With --save-data the session can be replayed (`shm-vla replay`): the VL features and the
ring record numbers of the robot and sensor records are saved too, and the configuration.

Restarts keep one record per run (session_state.py): every `record.flush_every` records
the recorder checkpoints its cursors; a recorder restarted within the same run (same
results ring) continues that run's session from the checkpoint, with no record twice.
Sessions of the instance left unfinished by an earlier run (a crash of the whole run or
machine) are finalised in the background at start.

With a shadow configured (`shadow.checkpoint`) it also writes the shadow's results
(shadow_results_<stamp>.jsonl, ShadowTap): the shadow is an optional stage, so its ring is
attached once it exists (looked for once a second) and never waited for.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

from .. import config as configmod
from .. import pipeline as P
from .. import tick
from ..finite import finite_or_none as _num    # a ring value (NaN: not measured) for the files
from ..process import Runtime, attach_when_ready, run_process
from ..shadow_tick import shadow_line
from ..shm.ring import Ring
from ..shm.segment import ShmError
from ..streams import HOLD_REASONS, N_VIEWS, Streams
from ..protocol.sensor import ascan_columns, force_column
from .disk_room import DiskRoom
from .session_files import SessionWriter, recover
from .session_state import SessionBusy, SessionState, plan_session

WAIT_S = 0.1
# The hold reasons act finds after the model ran (act._infer): such a tick's stage times are
# real; on every other held tick no model ran and its stage times are not recorded.
MODEL_RAN_HOLDS = frozenset({"nonfinite_output", "stopping"})
# The ring fields of the per-stage times (tick.py: the deployed fields with a measured extra).
STAGE_TIME_FIELDS = frozenset(f.ring for f in tick.TICK_FIELDS if f.line in tick.MEASURED_FIELDS)
SESSION_UMASK = 0o027      # session files 0640, directories 0750 (as UMask=0027 in the systemd units)


def tick_line(r, held: str) -> dict:
    """The tick line of a results record, field by field as tick.py declares them.

    Each ring field is written once, under its first line name (the session writer adds
    each stage's own measurement to an action line). Stage times are None where a stage
    was not timed on its own (NaN in the ring) or where no model ran (a tick held before
    inference); the hold reason is named; a tick line's vl_update_time is 0 (only VL
    update lines report it, as deployed)."""
    ran = not held or held in MODEL_RAN_HOLDS
    line, written = {}, set()
    for f in tick.TICK_FIELDS:
        if f.line is None or (f.ring is not None and f.ring in written):
            continue
        written.add(f.ring)
        if f.ring is None:
            line[f.line] = 0.0
        elif f.ring == "held":
            line[f.line] = held or None
        elif f.ring in STAGE_TIME_FIELDS and not ran:
            line[f.line] = None
        elif np.dtype(f.dtype).kind in "iu":
            line[f.line] = int(r[f.ring])
        else:
            line[f.line] = _num(r[f.ring])
    return line


class RingCursor:
    """A since() consumer of one ring with its own preallocated batch buffers."""

    def __init__(self, ring: Ring, batch: int, lost_counter=None, start: int = 0, on_lost=None):
        self.ring = ring
        self.batch = min(batch, ring.depth - 1)
        self.out = np.zeros((self.batch,) + ring.shape, ring.dtype)
        self.meta = ring.new_meta(self.batch)     # the stream's own field names
        # a checkpoint past the head means the ring was made afresh since: read it from its start
        self.next_record = start if start <= ring.head else 0
        self.lost = 0
        self.lost_counter = lost_counter
        self.on_lost = on_lost

    def _count_lost(self, n: int) -> None:
        self.lost += n
        if self.lost_counter is not None:
            self.lost_counter.inc(n)
        if self.on_lost is not None:
            self.on_lost(n)

    def skip_unread(self) -> int:
        """Give up the records not read yet, counted as lost (a stop with no room to write them)."""
        n = max(0, self.ring.head - self.next_record)
        self.next_record += n
        if n:
            self._count_lost(n)
        return n

    def drain(self, handle) -> int:
        """Hand every new record batch to handle(out[:n], meta[:n]); returns records handled."""
        total = 0
        while True:
            res = self.ring.since(self.next_record, self.out, self.meta, self.batch)
            if res.lost:
                self._count_lost(res.lost)
            self.next_record = res.next_record
            if res.count == 0:
                return total
            handle(self.out[: res.count], self.meta[: res.count])
            total += res.count


class ShadowTap:
    """The shadow's results ring, read like the others once it exists (the shadow is optional
    and may start late, restart or fail: the recorder never waits for it)."""

    RETRY_S = 1.0

    def __init__(self, rt: Runtime, writer: SessionWriter, start: int = 0):
        self.rt, self.writer, self.start = rt, writer, start
        self.streams = Streams(rt.cfg)
        self.cursor: RingCursor | None = None
        self._next_try = 0.0
        self.written = rt.stats.counter("shadow_written")
        self.lost = rt.stats.counter("shadow_lost")

    def drain(self) -> int:
        if self.cursor is None and not self._attach():
            return 0
        return self.cursor.drain(self._write)

    def _attach(self) -> bool:
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self.RETRY_S
        try:
            ring = self.streams.attach_shadow_results()
        except ShmError:              # not (yet) there, or being replaced: look again later
            return False
        self.cursor = RingCursor(ring, 64, self.lost, self.start)
        self.rt.watch_reads(ring, P.SHADOW_RESULTS)
        self.rt.log.info("recording the shadow's results from record %d", self.cursor.next_record)
        return True

    def _write(self, out, meta) -> None:
        for r in out:
            self.writer.write_shadow(shadow_line(r))
        self.written.inc(len(out))

    def position(self) -> int:
        """The next shadow record to write (the checkpoint's until the ring is attached)."""
        return self.start if self.cursor is None else self.cursor.next_record


class Recorder:
    def __init__(self, rt: Runtime, writer: SessionWriter, results: Ring, vl: Ring | None, data_rings: dict,
                 cursors: dict | None = None):
        """cursors: where each ring's reading starts (a checkpoint's), by ring name; else 0."""
        self.rt, self.writer = rt, writer
        start = cursors or {}
        s = rt.stats
        self.records_written = s.counter("records_written")
        self.vl_written = s.counter("vl_updates_written")
        self.lost = s.counter("lost")
        self.lag = s.gauge("lag_records", 0.0)
        self.results = RingCursor(results, 64, self.lost, start.get(P.RESULTS, 0), writer.note_lost)
        self.vl_lost = s.counter("vl_lost")
        self.vl = RingCursor(vl, 16, self.vl_lost, start.get(P.VL_FEATURE, 0)) if vl is not None else None
        self.data = data_rings
        self.shadow = ShadowTap(rt, writer, start.get(P.SHADOW_RESULTS, 0)) if rt.cfg.shadow.checkpoint else None
        self.checkpoint_every = rt.cfg.record.flush_every
        self._since_checkpoint = 0
        self.room = DiskRoom(writer.path, rt.cfg.record.reserve_mb, s, rt.log)
        self.cursors = {}
        if data_rings:
            cfg = rt.cfg
            self.frames = s.counter("frames_written")
            self.robot_rows = s.counter("robot_rows_written")
            self.sensor_records = s.counter("sensor_records_written")
            self.data_lost = s.counter("data_lost")
            self.cursors = {name: RingCursor(ring, 4 if name in P.JPEGS else 512, self.data_lost,
                                             start.get(name, 0))
                            for name, ring in data_rings.items()}
            width = cfg.sensor_channels
            self.fcol = force_column(cfg.sensor.force_position, width)
            self.acols = ascan_columns(cfg.sensor.force_position, width)
            self.views = cfg.camera.views

    # ---- record conversion
    def _action(self, r, meta) -> None:
        held = HOLD_REASONS[int(r["held"])]
        total_ms = _num(r["total_ms"])
        timing = tick_line(r, held)
        self.writer.write_timing(timing)   # a held tick goes to held_ticks_<stamp>.jsonl
        if held:
            return   # no command: nothing for inference_results
        state = r["robot_state"]
        self.writer.write_result({
            "timestamp": float(r["timestamp"]),
            "actions": r["actions"].tolist(),
            "delta": r["delta"].tolist() if r["has_delta"] else None,
            "inference_time": total_ms / 1000.0,      # seconds, as deployed
            "vl_update_number": int(r["vl_update_number"]),
            "robot_state": {"joints": state[:6].tolist(), "pose": state[6:].tolist(),
                            "timestamp": float(r["robot_ts"])},
            "inference_time_ms": total_ms, "action_id": int(r["action_id"]),
            "dp": r["dp"].tolist(), "sent": bool(r["sent"]), "clamped": bool(r["clamped"]),
        })
        self.records_written.inc()

    def _results(self, out, meta) -> None:
        for r, m in zip(out, meta):
            self._action(r, m)

    def _vl(self, out, meta) -> None:
        for r, m in zip(out, meta):
            self.writer.write_vl_update({
                "timestamp": m["recv_wall_ns"] * 1e-9, "vl_update_number": int(r["update"]),
                "vl_update_time": float(r["encode_ms"]), "view_skew_ms": float(r["skew_ms"]),
                "capture_timestamps": r["capture_ts"].tolist()})
            self.vl_written.inc()
        if self.writer.save_data:
            self._vl_features(out, meta)

    def _vl_features(self, out, meta) -> None:
        """--save-data: the features themselves, by ring record number (what ticks name)."""
        self.writer.write_vl_features(meta["record"], out["update"], out["feature"], out["capture_ts"])

    def _jpeg(self, view: int):
        def handle(out, meta):
            for row, m in zip(out, meta):
                camera = bytes(m["label"]).decode(errors="replace") or self.views[view]
                self.writer.write_frame(self.views[view], camera, float(m["src_ts"]), row[: int(m["jpeg_bytes"])])
                self.frames.inc()
        return handle

    def _robot(self, out, meta) -> None:
        rows = np.empty((len(out), 16))
        rows[:, 0] = meta["recv_wall_ns"] * 1e-9
        rows[:, 1] = meta["src_ts"]
        rows[:, 2] = meta["send_ts"]
        rows[:, 3] = meta["force"]
        rows[:, 4:] = out
        self.writer.write_robot_rows(rows, meta["record"])
        self.robot_rows.inc(len(out))

    def _sensor(self, out, meta) -> None:
        self.writer.write_sensor_records(meta["src_ts"], meta["send_ts"], out[:, self.fcol], out[:, self.acols],
                                         meta["record"])
        self.sensor_records.inc(len(out))

    # ---- loop
    def drain(self) -> int:
        n = self.results.drain(self._results)
        if self.vl is not None:
            n += self.vl.drain(self._vl)
        if self.shadow is not None:
            n += self.shadow.drain()
        for name, cursor in self.cursors.items():
            if name in P.JPEGS:
                n += cursor.drain(self._jpeg(P.JPEGS.index(name)))
            elif name == P.ROBOT:
                n += cursor.drain(self._robot)
            else:
                n += cursor.drain(self._sensor)
        self.lag.set(float(self.results.ring.head - self.results.next_record))
        return n

    def positions(self) -> dict:
        """The next record of every ring read, by ring name (what a checkpoint saves)."""
        out = {P.RESULTS: self.results.next_record}
        if self.vl is not None:
            out[P.VL_FEATURE] = self.vl.next_record
        if self.shadow is not None:
            out[P.SHADOW_RESULTS] = self.shadow.position()
        out.update((name, cursor.next_record) for name, cursor in self.cursors.items())
        return out

    def loop(self) -> None:
        while self.rt.running:
            self.rt.housekeeping()
            if self.room.low():
                self._paused()
                continue
            self.results.ring.wait(self.results.next_record, WAIT_S)
            self._since_checkpoint += self.drain()
            if self._since_checkpoint >= self.checkpoint_every:
                self._checkpoint()
        if not self.room.paused:
            self.drain()              # what arrived before the stop
            return
        # stopped while paused: the reserve is for finalising, not for the backlog. What is not
        # written is counted lost and skipped, so a recorder restarted in this run (a new
        # session: this one is finalised) does not write it after all.
        unwritten = self.results.skip_unread()
        others = sum(c.skip_unread() for c in self._other_cursors())
        self.rt.log.warning("stopped while recording was paused for want of disk: %d results and %d other "
                            "records not written (counted as lost)", unwritten, others)

    def _other_cursors(self) -> list:
        shadow = self.shadow.cursor if self.shadow is not None else None
        return [c for c in (self.vl, shadow, *self.cursors.values()) if c is not None]

    def _checkpoint(self) -> None:
        self.writer.checkpoint(self.positions())   # between drains: files and cursors agree
        self._since_checkpoint = 0

    def _paused(self) -> None:
        """Disk nearly full: what is written is made durable once, then nothing more until
        there is room (disk_room.py)."""
        if self._since_checkpoint:
            self._checkpoint()
        self.lag.set(float(self.results.ring.head - self.results.next_record))
        time.sleep(WAIT_S)


def _attach_data_rings(rt: Runtime, streams: Streams) -> dict | None:
    rings = {}
    wanted = [(P.JPEGS[i], lambda i=i: streams.attach_jpeg(i)) for i in range(N_VIEWS)]
    wanted += [(P.ROBOT, streams.attach_robot), (P.SENSOR, streams.attach_sensor)]
    for name, attach in wanted:
        ring = attach_when_ready(rt, attach, f"the {name} ring")
        if ring is None:
            return None
        rings[name] = ring
    return rings


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def run_identity(results: Ring) -> dict:
    """The run a results ring belongs to: its shared-memory object (inode) in this boot.

    A new run starts from removed segments (`shm-vla run`, or `shm clean` under systemd),
    so act creates a new object; an act restarted within the run takes over the same one.
    """
    return {"boot_id": _boot_id(), "results_inode": int(results.seg.inode)}


def open_session(rt: Runtime, out_dir: str, save_data: bool, results: Ring) -> tuple[SessionWriter, dict, list]:
    """The writer, the cursors to start from, and the cut-off sessions to finalise (plan_session)."""
    cfg = rt.cfg
    run_id = run_identity(results)
    # a checkpoint ahead of the ring cannot be of this ring (an inode reused after a wrap)
    plan = plan_session(out_dir, cfg.instance,
                        lambda s: s.run == run_id and int(s.cursors.get(P.RESULTS, 0)) <= results.head)
    options = dict(save_data=save_data, flush_every=cfg.record.flush_every, views=tuple(cfg.camera.views),
                   shadow=bool(cfg.shadow.checkpoint))
    if plan.resume is not None:
        writer = SessionWriter.resume(plan.resume, **options)
        rt.log.info("continuing this run's session %s from results record %d", writer.path,
                    plan.cursors.get(P.RESULTS, 0))
    else:
        writer = SessionWriter(out_dir, state=SessionState(cfg.instance, run_id, cursors=plan.cursors),
                               group=cfg.record.group, **options)
    writer.write_config(session_config(cfg))
    return writer, plan.cursors, plan.finalise


def session_config(cfg) -> dict:
    """What the session is recorded with: the whole configuration (the model settings a
    replay needs: steps, solver, horizon, dtype, device, threads, seed, windows) and the
    identity of the checkpoint file (path, size, modification time)."""
    ckpt = {"path": cfg.model.checkpoint}
    try:
        st = os.stat(cfg.model.checkpoint)
        ckpt.update(size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    except OSError as exc:
        ckpt["error"] = str(exc)
    return {"config": configmod.to_dict(cfg), "checkpoint_file": ckpt}


def finalise_in_background(rt: Runtime, sessions: list, reserve_bytes: int = 0) -> threading.Thread | None:
    """recover() each cut-off session in a thread: a long session takes seconds to finalise,
    which the rings of this run may not hold. A stop before it ends leaves the rest for the
    next start (recover is idempotent)."""
    if not sessions:
        return None

    def finalise() -> None:
        for root in sessions:
            try:
                report = recover(root, reserve_bytes)      # never into the live session's reserve
            except SessionBusy as exc:
                rt.log.info("not finalised: %s", exc)
            except (OSError, ValueError) as exc:
                rt.log.warning("could not finalise the cut-off session %s: %s", root, exc)
            else:
                if report["unfinished"]:
                    rt.log.warning("the cut-off session %s is not finalised yet: %s", Path(root).name,
                                   "; ".join(report["unfinished"]))
                else:
                    rt.log.info("finalised the cut-off session %s (%d results)", Path(root).name, report["results"])

    thread = threading.Thread(target=finalise, name="finalise", daemon=True)
    thread.start()
    return thread


def run(rt: Runtime, out_dir: str, save_data: bool) -> int:
    configmod.check_member("record.group", rt.cfg.record.group)
    os.umask(SESSION_UMASK)
    streams = Streams(rt.cfg)
    results = attach_when_ready(rt, streams.attach_results, "the results ring")
    if results is None:
        return 0
    vl = attach_when_ready(rt, lambda: Ring.attach(rt.cfg.instance, P.VL_FEATURE, prefix=rt.cfg.shm.prefix),
                           "the VL feature ring")
    data = _attach_data_rings(rt, streams) if save_data else {}
    if data is None:
        return 0
    for name, ring in [(P.RESULTS, results), (P.VL_FEATURE, vl)] + list(data.items()):
        rt.watch_reads(ring, name)
    writer, cursors, cut_off = open_session(rt, out_dir, save_data, results)
    recorder = Recorder(rt, writer, results, vl, data, cursors)
    finalise_in_background(rt, cut_off, int(rt.cfg.record.reserve_mb * 1e6))
    rt.ready(f"recording to {writer.path}")
    rt.log.info("session directory %s", writer.path)
    # An exception leaves the session cut off, as a crash would: the restarted recorder
    # continues it from the checkpoint (closing it here would split the run in two).
    recorder.loop()
    summary = writer.close(recorder.positions())
    rt.log.info("session closed: %s (%d actions, %d results, %d lost)", writer.path, summary["total_actions"],
                summary["recorder"]["results_written"], summary["recorder"]["lost"])
    for why in writer.unfinished:
        rt.log.warning("%s", why)
    return 0


def _arguments(parser) -> None:
    parser.add_argument("--out", default=None, help="directory for session folders (default record.out_dir)")
    parser.add_argument("--save-data", action="store_true", default=None,
                        help="also save frames, robot and sensor data (default record.save_data)")


def main(argv: list[str]) -> int:
    def body(rt, args):
        save = rt.cfg.record.save_data if args.save_data is None else args.save_data
        return run(rt, args.out or rt.cfg.record.out_dir, save)
    return run_process("shm-vla record", P.RECORD, argv, body, extra=_arguments,
                       config_errors=(configmod.ConfigError,))
