"""`shm-vla ingest camera`: ZeroMQ PULL of [JSON meta, JPEG] -> view1..5 and jpeg1..5 rings.

Receipt never waits for decoding. The receive thread parses the small metadata frame,
maps the camera to a view and hands the message to that view's decoder as its *pending*
frame; a newer frame for the same view replaces a pending one (the older is dropped and
counted), so a burst or flood never queues stale frames and memory stays bounded.
Decoder threads (libjpeg-turbo releases the GIL) own fixed views, so each ring keeps a
single writer, and decode straight into the ring slot. The received JPEG bytes go to the
view's jpeg ring (for recording without re-encoding) after a successful decode.
With `camera.allow` set, a ZAP handler (senders.py) admits only the listed senders.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from .. import config as configmod
from ..protocol import camera as proto
from ..protocol.errors import ProtocolError
from ..process import Runtime
from ..shm.ring import CAPTURE_UNKNOWN_NS, LABEL_BYTES
from ..streams import N_VIEWS, Streams
from .clock import ClockOffset
from .listen import in_use
from .meter import IngestMeter
from .senders import ZAP_DOMAIN, ZapHandler, allowlist

POLL_TIMEOUT_MS = 100
DRAIN_MAX = 64
WORKER_WAIT_S = 0.1
CLOCK_WARMUP_FRAMES = 5      # 1 s at 5 Hz: frames of a camera before its capture times are trusted


class PendingFrame:
    __slots__ = ("camera", "capture_ts", "jpeg", "recv_mono_ns", "recv_wall_ns", "capture_mono_ns",
                 "wall_offset_s", "latency_s")

    def __init__(self, camera, capture_ts, jpeg, recv_mono_ns, recv_wall_ns, capture_mono_ns, wall_offset_s,
                 latency_s):
        self.camera, self.capture_ts, self.jpeg = camera, capture_ts, jpeg
        self.recv_mono_ns, self.recv_wall_ns = recv_mono_ns, recv_wall_ns
        self.capture_mono_ns, self.wall_offset_s, self.latency_s = capture_mono_ns, wall_offset_s, latency_s


class DecodeWorker(threading.Thread):
    """Decodes the newest pending frame of each of its views into that view's rings."""

    def __init__(self, ingest: "CameraIngest", views: list[int]):
        super().__init__(name=f"decode-{views}", daemon=True)
        self.ingest = ingest
        self.views = views
        self.cond = threading.Condition()
        self.pending: dict[int, PendingFrame] = {}
        self.running = True
        self.failure: BaseException | None = None   # why the thread ended, if it failed

    def offer(self, view: int, frame: PendingFrame) -> bool:
        """Hand a frame over; returns True if it replaced an undecoded one (a drop)."""
        with self.cond:
            replaced = view in self.pending
            self.pending[view] = frame
            self.cond.notify()
        return replaced

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:          # a bug: the process must not run on without these views
            self.failure = exc

    def _run(self) -> None:
        while True:
            with self.cond:
                if not self.pending and self.running:
                    self.cond.wait(WORKER_WAIT_S)
                if not self.running:
                    return
                work = list(self.pending.items())
                self.pending.clear()
            for view, frame in work:
                self.ingest.decode(view, frame)


class CameraIngest:
    def __init__(self, rt: Runtime, view_rings, jpeg_rings):
        cam = rt.cfg.camera
        self.rt = rt
        self.view_rings = view_rings
        self.jpeg_rings = jpeg_rings
        self.mapper = proto.CameraMapper(cam)
        self.decoder_cfg = cam
        # one clock per view: each camera is stamped by its own capture loop (possibly on
        # another PC), and frames of different cameras arrive reordered
        self.clocks = [ClockOffset(warmup=CLOCK_WARMUP_FRAMES) for _ in range(N_VIEWS)]
        self.sender_restarts = rt.stats.counter("sender_restarts")    # a camera's stamps jumped back
        self.stale_after_ns = int(rt.cfg.act.max_frame_age_ms * 1e6)
        self.meter = IngestMeter(rt.stats)
        self.ignored = rt.stats.counter("ignored_right_images")
        self.superseded = rt.stats.counter("superseded_frames")
        self.resized = rt.stats.counter("resized_frames")
        self.view_frames = [rt.stats.counter(f"frames.view{i + 1}") for i in range(N_VIEWS)]
        # Counter.inc is a read-modify-write: a counter has one owner thread, or every update
        # of it holds this lock. Owned by the receive thread: sender_restarts, ignored,
        # superseded and the clocks; by a view's decoder thread: frames.view<n>. Under the lock:
        # the meter (decoders store, the main loop publishes the rate), resized_frames (every
        # decoder) and the error counters (decoders, receive thread, ZAP handler).
        self.lock = threading.Lock()
        n_workers = max(1, min(cam.decode_workers, N_VIEWS))
        self.workers = [DecodeWorker(self, [v for v in range(N_VIEWS) if v % n_workers == w])
                        for w in range(n_workers)]
        self.decoders = {v: proto.JpegDecoder.from_config(cam) for v in range(N_VIEWS)}

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def check_workers(self) -> None:
        """A decoder thread that failed ends the process (exit 1, restarted), rather than
        leaving its views without frames while the process looks healthy."""
        for w in self.workers:
            if w.failure is not None:
                raise RuntimeError(f"decoder thread {w.name} failed: {w.failure!r}") from w.failure

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join(timeout=2.0)

    def _error(self, kind: str, detail: str) -> None:
        with self.lock:
            self.rt.error(kind, detail)

    def receive(self, frames, recv_mono_ns: int, recv_wall_ns: int) -> None:
        """Receive thread: validate the metadata, route the frame to its view's decoder."""
        with self.lock:
            self.meter.message(sum(len(f) for f in frames))
        try:
            camera, capture_ts, jpeg = proto.parse_camera(frames)
            view = self.mapper.view_index(camera)
        except ProtocolError as exc:
            self._error(exc.kind, str(exc))
            return
        if view is None:
            self.ignored.inc()
            return
        if len(jpeg) > self.decoder_cfg.jpeg_max_bytes:
            self._error("jpeg_size", f"{len(jpeg)} bytes from {camera[:32]}")
            return
        frame = self._stamp(view, camera, capture_ts, jpeg, recv_mono_ns, recv_wall_ns)
        if self.workers[view % len(self.workers)].offer(view, frame):
            self.superseded.inc()
            with self.lock:
                self.meter.drops.inc()

    def _stamp(self, view, camera, capture_ts, jpeg, recv_mono_ns, recv_wall_ns) -> PendingFrame:
        """Receive thread (the only user of the clocks): the frame's capture time on our clock."""
        clock = self.clocks[view]
        recv_s = recv_mono_ns * 1e-9
        if not clock.update(recv_s, capture_ts):
            self.sender_restarts.inc()
            self.rt.rlog.warning("restart", "camera %s timestamps jumped back: sender restart? "
                                 "re-estimating its clock offset", camera[:32])
        capture = clock.capture_mono_ns(capture_ts)
        if capture != CAPTURE_UNKNOWN_NS and recv_mono_ns - capture > self.stale_after_ns:
            with self.lock:
                self.meter.stale_backlog.inc()
            self.rt.rlog.warning("stale_backlog", "camera frames older than %.0f ms by capture time (a backlog): "
                                 "stored, never encoded for a command", self.stale_after_ns / 1e6)
        return PendingFrame(camera, capture_ts, jpeg, recv_mono_ns, recv_wall_ns, capture,
                            clock.wall_offset_s(), clock.latency_s(recv_s, capture_ts))

    def published_offset_s(self) -> float | None:
        """The median wall-clock offset of the cameras whose clocks are established."""
        offsets = [c.wall_offset_s() for c in self.clocks if c.ready]
        return float(np.median(offsets)) if offsets else None

    def decode(self, view: int, frame: PendingFrame) -> None:
        """Decoder thread: decode into the ring slot, publish frame and JPEG bytes."""
        ring, decoder = self.view_rings[view], self.decoders[view]
        resized_before = decoder.resized
        label = frame.camera.encode()[:LABEL_BYTES]
        try:
            # any exception aborts the slot; a bad JPEG (ProtocolError) is counted below
            with ring.loan(src_ts=frame.capture_ts, recv_mono_ns=frame.recv_mono_ns,
                           recv_wall_ns=frame.recv_wall_ns, aux=frame.wall_offset_s, label=label,
                           capture_mono_ns=frame.capture_mono_ns) as slot:
                decoder.decode_into(frame.jpeg, slot)
        except ProtocolError as exc:
            self._error(exc.kind, f"{exc} from {frame.camera[:32]}")
            return
        resized = decoder.resized != resized_before
        nbytes = len(frame.jpeg)
        with self.jpeg_rings[view].loan(src_ts=frame.capture_ts, recv_mono_ns=frame.recv_mono_ns,
                                        recv_wall_ns=frame.recv_wall_ns, aux=float(nbytes), label=label,
                                        capture_mono_ns=frame.capture_mono_ns) as slot:
            np.copyto(slot[:nbytes], np.frombuffer(frame.jpeg, np.uint8))
        self.view_frames[view].inc()
        with self.lock:
            self.meter.stored(1, frame.capture_ts, frame.latency_s)
            if resized:
                self.resized.inc()


def open_socket(ctx: zmq.Context, address: str, rcvhwm: int, authenticate: bool = False) -> zmq.Socket:
    """The PULL socket; `authenticate`: every connection is put to the context's ZAP handler.
    A port already in use is a ConfigError."""
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, rcvhwm)
    pull.setsockopt(zmq.LINGER, 0)
    if authenticate:
        pull.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    try:
        pull.bind(address)
    except zmq.ZMQError as exc:
        pull.close(0)
        raise in_use("camera.bind", address, configmod.zmq_bind_address("camera.bind", address)[1], exc) from None
    return pull


def open_input(ctx: zmq.Context, rt: Runtime, ingest: CameraIngest) -> tuple[zmq.Socket, ZapHandler | None]:
    """The PULL socket and, with camera.allow set, the ZAP handler that guards it (started
    before the socket binds, so that no connection escapes it)."""
    cam = rt.cfg.camera
    host = configmod.zmq_bind_address("camera.bind", cam.bind)[0]
    senders = allowlist(rt.log, "camera.allow", cam.allow, cam.bind, host)
    zap = None
    if senders is not None:
        zap = ZapHandler(ctx, senders, lambda peer: ingest._error("rejected_sender", f"connection from {peer}"))
        zap.start()
    try:
        return open_socket(ctx, cam.bind, cam.rcvhwm, authenticate=zap is not None), zap
    except BaseException:
        if zap is not None:
            zap.stop()
        raise


def run(rt: Runtime) -> int:
    cfg = rt.cfg
    streams = Streams(cfg)
    view_rings = [streams.create_view(i) for i in range(N_VIEWS)]
    jpeg_rings = [streams.create_jpeg(i) for i in range(N_VIEWS)]
    ingest = CameraIngest(rt, view_rings, jpeg_rings)
    pull, zap = open_input(zmq.Context.instance(), rt, ingest)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    ingest.start()
    rt.ready(f"camera PULL {cfg.camera.bind}")
    try:
        while rt.running:
            rt.housekeeping()
            ingest.check_workers()
            with ingest.lock:
                ingest.meter.periodic(time.monotonic_ns(), ingest.published_offset_s)
            if not poller.poll(POLL_TIMEOUT_MS):
                continue
            for _ in range(DRAIN_MAX):
                try:
                    frames = pull.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                ingest.receive([f.buffer for f in frames], time.monotonic_ns(), time.time_ns())
    finally:
        ingest.stop()
        pull.close(0)
        if zap is not None:
            zap.stop()
        for ring in view_rings + jpeg_rings:
            ring.close()
    return 0
