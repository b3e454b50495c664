"""`shm-vla vl --instance NAME`: encode a 5-view set, publish the VL feature.

Policy: a fresh feature is wanted at least every `act.vl_reuse` action ticks. The worker
sleeps on the view rings' futex; when the reuse budget (vl_reuse / tick_hz seconds since
the previous encode began) is spent and every view holds a frame newer than the set used
last time, it copies one frame of each view, encodes, and publishes one vl_feature
record. Which frames (vl.view_policy):

* "same_trigger": the frames of the newest trigger every view holds (capture times within
  half a camera period of each other; viewsets.py). If some views already hold a newer
  trigger whose other frames are still arriving (the encoder processes of the camera PC
  send a trigger's frames over tens of ms), it waits for them, on their rings' futex, for
  at most half a camera period after the budget was spent, then takes the newest complete
  trigger (counted: incomplete_trigger_timeouts). Only the metadata of the last frames is
  read to choose; then one frame per view is copied.
* "newest": the newest frame of each view, whatever its trigger.
* "max_skew": the newest frames, and with vl.reject_over_skew a set whose capture times
  span more than vl.max_skew_ms is not encoded (rejected_sets); the worker waits for a newer one.

Under every policy a set whose capture stamps span more than half a camera period is
counted as mixing two triggers (mixed_trigger_sets), and one over vl.max_skew_ms as
over_skew_sets. The same frame set is never encoded twice, and a set the action gate
would refuse (a frame with no capture time yet, or older than act.max_frame_age_ms by
capture time) is not encoded at all.
"""
from __future__ import annotations

import time

import numpy as np

from .. import pipeline as P
from ..process import Runtime, attach_when_ready, run_process
from ..shm.ring import CAPTURE_UNKNOWN_NS, META_DTYPE
from ..shm.segment import ShmError
from ..streams import N_VIEWS, Streams
from .frame_upload import make_frame_source
from .rolling import RollingGauges
from .viewsets import TriggerSets

WAIT_SLICE_S = 0.05


class FrameSet:
    """The metadata of one 5-view set and the records it used (the frames: frame_upload.py)."""

    def __init__(self, meta_dtype=META_DTYPE):
        self.meta = np.zeros(N_VIEWS, meta_dtype)       # the view rings' (clock_offset_s named)
        self.used_records = np.full(N_VIEWS, -1, np.int64)

    @property
    def skew_ms(self) -> float:
        ts = self.meta["src_ts"]
        return float(ts.max() - ts.min()) * 1e3


class VlWorker:
    def __init__(self, rt: Runtime, views, vl_ring, backbone, frames=None):
        self.rt = rt
        self.cfg = rt.cfg
        self.views = views
        self.vl_ring = vl_ring
        self.backbone = backbone
        self.set = FrameSet(meta_dtype=views[0].meta_dtype)
        self.frames = frames or make_frame_source(rt.cfg.vl.frame_upload, views, rt.cfg.model.vl_device, rt.log)
        self.min_interval_ns = int(rt.cfg.act.vl_reuse / rt.cfg.act.tick_hz * 1e9)
        self.last_start_ns = -self.min_interval_ns
        half_period_ns = int(0.5e9 / rt.cfg.camera.rate_hz)
        self.trigger_tolerance_ms = half_period_ns / 1e6     # one trigger's frames lie closer together
        self.trigger_wait_ns = half_period_ns                # longest wait for the rest of a trigger
        self.wait_deadline_ns: int | None = None
        self.triggers = (TriggerSets(N_VIEWS, views[0].depth - 1, half_period_ns)
                         if rt.cfg.vl.view_policy == "same_trigger" else None)
        self.chosen = False                                  # triggers.chosen holds this attempt's set
        s = rt.stats
        self.updates = s.counter("updates")
        self.over_skew = s.counter("over_skew_sets")
        self.mixed = s.counter("mixed_trigger_sets")
        self.rejected = s.counter("rejected_sets")
        self.incomplete = s.counter("incomplete_trigger_timeouts")
        self.read_errors = s.counter("read_errors")
        self.torn_sets = s.counter("torn_sets")
        self.unsynced_sets = s.counter("unsynced_sets")
        self.stale_sets = s.counter("stale_sets")
        self.max_frame_age_ns = int(rt.cfg.act.max_frame_age_ms * 1e6)
        self.encode_ms = s.gauge("encode_ms")
        self.skew_ms = s.gauge("view_skew_ms")
        self.encode_roll = RollingGauges(s, "encode_ms", size=100, every=5)

    def new_set_available(self) -> bool:
        heads = [ring.head for ring in self.views]
        # a view's newest record is heads[i] - 1; new if it differs from the one used last
        return all(h > 0 and h - 1 != used for h, used in zip(heads, self.set.used_records))

    def read_set(self) -> bool:
        fs = self.set
        try:
            if not (self._read_chosen() if self.chosen else self._read_newest()):
                return False
        except ShmError as exc:
            self.read_errors.inc()
            self.rt.rlog.warning("read", "frame read failed: %s", exc)
            return False
        if not self._fresh_enough():
            fs.used_records[:] = fs.meta["record"]   # never encode it: wait for newer frames
            return False
        skew = fs.skew_ms
        self.skew_ms.set(skew)
        if skew > self.trigger_tolerance_ms:
            self.mixed.inc()
        if skew > self.cfg.vl.max_skew_ms:
            self.over_skew.inc()
            if self.cfg.vl.view_policy == "max_skew" and self.cfg.vl.reject_over_skew:
                self.rejected.inc()
                fs.used_records[:] = fs.meta["record"]   # wait for a newer set
                return False
        return True

    def _read_newest(self) -> bool:
        for i, ring in enumerate(self.views):
            if not self.frames.read(i, ring, ring.head - 1, self.set.meta):
                return False
        return True

    def _read_chosen(self) -> bool:
        """Copy the frames ``triggers`` chose (same_trigger), if they are a newer set."""
        fs, triggers = self.set, self.triggers
        for i in range(N_VIEWS):
            if triggers.record(i) <= fs.used_records[i]:
                # no newer complete trigger among the new frames (e.g. frames without a capture
                # time): consider the new frames used and wait for more
                for j, ring in enumerate(self.views):
                    fs.used_records[j] = ring.head - 1
                return False
        for i, ring in enumerate(self.views):
            if not self.frames.read(i, ring, triggers.record(i), fs.meta):
                return False                         # overwritten meanwhile: choose again
        return True

    def _wait_for_trigger(self, now_ns: int) -> bool:
        """same_trigger: choose a set; True while the newest trigger is still arriving and the
        wait for it is not over (the worker then waited on a view that lacks it)."""
        if self.wait_deadline_ns is None:
            self.wait_deadline_ns = now_ns + self.trigger_wait_ns
        triggers = self.triggers
        self.chosen = False
        for i, ring in enumerate(self.views):
            triggers.count[i] = ring.window(triggers.depth, None, triggers.meta[i])
        if not triggers.choose():
            return False                             # a view without capture times: read the newest
        self.chosen = True
        if not triggers.newer_partial:
            return False
        left_ns = self.wait_deadline_ns - now_ns
        if left_ns <= 0:
            self.incomplete.inc()
            return False
        ring = self.views[triggers.lagging_view()]
        ring.wait(ring.head, min(left_ns / 1e9, WAIT_SLICE_S))
        return True

    def _fresh_enough(self) -> bool:
        """A set the action gate would refuse anyway (a frame with no capture time on our
        clock yet, or captured longer ago than act.max_frame_age_ms) is not worth encoding."""
        capture = self.set.meta["capture_mono_ns"]
        if (capture == CAPTURE_UNKNOWN_NS).any():
            self.unsynced_sets.inc()
            return False
        if time.monotonic_ns() - int(capture.min()) > self.max_frame_age_ns:
            self.stale_sets.inc()
            self.rt.rlog.warning("stale_set", "frames older than %.0f ms by capture time: set not encoded",
                                 self.max_frame_age_ns / 1e6)
            return False
        return True

    def encode_and_publish(self) -> None:
        fs = self.set
        t0 = time.monotonic_ns()
        feature = self.backbone.encode(self.frames.frames_for_encode())
        encode_ms = (time.monotonic_ns() - t0) / 1e6
        if not self.frames.intact():
            self.torn_sets.inc()
            self.rt.rlog.warning("torn", "a frame was overwritten while it was encoded: feature discarded")
            return
        if not np.all(np.isfinite(feature)):
            self.rt.error("nonfinite_feature", "the backbone produced NaN/Inf: not published")
            return
        fs.used_records[:] = fs.meta["record"]
        with self.vl_ring.loan(src_ts=float(fs.meta["src_ts"].min())) as slot:
            slot["feature"] = feature
            slot["update"] = self.vl_ring.head + 1     # monotonic across restarts of this process
            slot["encode_ms"] = encode_ms
            slot["capture_ts"] = fs.meta["src_ts"]
            slot["capture_local_ts"] = fs.meta["src_ts"] + fs.meta["clock_offset_s"]
            slot["capture_mono_ns"] = fs.meta["capture_mono_ns"]
            slot["frame_recv_mono_ns"] = fs.meta["recv_mono_ns"]
            slot["frame_record"] = fs.meta["record"]
            slot["skew_ms"] = fs.skew_ms
        self.updates.inc()
        self.encode_ms.set(encode_ms)
        self.encode_roll.add(encode_ms)

    def step(self) -> None:
        """One wake-up: encode if the budget is spent and a new set exists, else wait."""
        now = time.monotonic_ns()
        budget_left_s = (self.last_start_ns + self.min_interval_ns - now) / 1e9
        if budget_left_s > 0:
            time.sleep(min(budget_left_s, WAIT_SLICE_S))
            return
        if not self.new_set_available():
            # sleep on the view that is missing a new frame; any frame wakes us soon enough
            waiting = next(i for i, r in enumerate(self.views) if r.head - 1 == self.set.used_records[i]
                           or r.head == 0)
            self.views[waiting].wait(int(self.set.used_records[waiting]) + 1, WAIT_SLICE_S)
            return
        try:
            if self.triggers is not None and self._wait_for_trigger(now):
                return
        except ShmError as exc:
            self.read_errors.inc()
            self.rt.rlog.warning("read", "frame metadata read failed: %s", exc)
            return
        self.last_start_ns = now
        self.wait_deadline_ns = None
        if self.read_set():
            self.encode_and_publish()


def run(rt: Runtime) -> int:
    import torch
    from ..model import load_checkpoint, make_backbone
    cfg = rt.cfg
    torch.set_num_threads(cfg.model.vl_threads)
    streams = Streams(cfg)
    loaded = load_checkpoint(cfg.model.checkpoint, cfg.model, sensor_window=cfg.sensor.window,
                             sensor_channels=cfg.sensor_channels)
    vl_dim = loaded.info.vl_dim
    backbone = make_backbone(cfg.model, vl_dim, device=cfg.model.vl_device,
                             vl_state_dict=loaded.vl_state_dict)
    del loaded
    backbone.warmup()
    vl_ring = streams.create_vl(vl_dim)
    views = []
    for i in range(N_VIEWS):
        ring = attach_when_ready(rt, lambda i=i: streams.attach_view(i), f"camera view {i + 1}")
        if ring is None:
            return 0
        views.append(ring)
        rt.watch_reads(ring, P.VIEWS[i])
    worker = VlWorker(rt, views, vl_ring, backbone)
    rt.ready(f"vl {cfg.model.backbone} on {cfg.model.vl_device}, dim {vl_dim}, frames {worker.frames.name}")
    try:
        while rt.running:
            rt.housekeeping()
            worker.step()
    finally:
        worker.frames.close()                       # before the rings it reads are unmapped
        vl_ring.close()
        for ring in views:
            ring.close()
    return 0


def main(argv: list[str]) -> int:
    from ..model import CheckpointError
    return run_process("shm-vla vl", P.VL, argv, lambda rt, args: run(rt), config_errors=(CheckpointError,))
