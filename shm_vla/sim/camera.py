"""Simulated cameras: 5 ZED/OAK cameras on one PUSH socket that connects to the
ingest's PULL, sending [JSON metadata, JPEG] per frame at ``rate_hz`` each.

Two profiles:

* ``realistic`` (the default): the cell's camera sender. All cameras are triggered
  together at ``rate_hz``; each camera stamps its own capture time in its own capture
  loop, a few ms after the trigger (a fixed latency per camera plus jitter), and hands
  the frame to a pool of 4 JPEG encoder processes, which take the frames in capture
  order and send each when its encoding is done (6 ms plus an exponential tail of mean
  15 ms a frame). So a trigger's frames arrive reordered, tens of ms after their capture
  stamps; a frame never arrives before the frames of the previous trigger. With the defaults 34-36 % of the frames arrive
  with a capture stamp older than the frame before them (the real sender: 383-420 of
  ~1,100), the longest in-order run is 9-13 frames (real: 8-14), and frames arrive 6 to
  ~120 ms after their capture stamps (p50 18 ms).
* ``ideal``: unsynchronised cameras phase-shifted evenly within a period, each frame
  sent the moment it is stamped, in order.

Frame f of a camera carries (view, f) in its pixels and "frame": f in its metadata, and
its "timestamp" is its capture time on the sender's clock (our wall clock plus
``clock_offset_s``): the truth a test compares the ingest's estimates with.
"""
from __future__ import annotations

import json

import numpy as np
import zmq

from ..protocol.camera import CameraMapper
from .base import CLOSE_LINGER_MS, NS_PER_S, ScheduledSender, zmq_context
from .content import frame_jpeg

SNDHWM = 50   # frames queued while no receiver is there (then counted as dropped)
PROFILES = ("realistic", "ideal")
# the realistic sender (ms): capture stamp after the trigger, per camera and per frame;
# the time a JPEG encoder process takes for one frame
ENCODERS = 4
CAMERA_LATENCY_MS = (0.0, 3.0)
CAPTURE_JITTER_MS = (0.0, 2.0)
ENCODE_MIN_MS = 6.0             # then an exponential tail (CPU contention) of this mean,
ENCODE_TAIL_MS = 15.0           # bounded so that a frame never waits a whole period
ENCODE_MAX_MS = 120.0


def camera_names(camera_cfg, include_right: bool = False) -> list[tuple[str, int]]:
    """``(name, view index)`` of every simulated camera: a ZED per configured serial
    ("zed_<serial>_left", optionally "_right") and one "oak_d"."""
    mapper = CameraMapper(camera_cfg)
    cameras = []
    for serial in camera_cfg.zed_serials:
        view = mapper.view_index(f"zed_{serial}_left")
        cameras.append((f"zed_{serial}_left", view))
        if include_right:
            cameras.append((f"zed_{serial}_right", view))   # content of its left view
    cameras.append(("oak_d", mapper.view_index("oak_d")))
    return cameras


class TriggeredSender:
    """The send schedule of the realistic profile, one trigger at a time (deterministic
    for a seed). ``sends(f)``: trigger f's frames as (send, camera, capture) offsets in
    ns from the start, in send order."""

    def __init__(self, n_cameras: int, period_ns: int, seed: int = 0, encoders: int = ENCODERS):
        self.n, self.period_ns = n_cameras, period_ns
        self.rng = np.random.default_rng(seed)
        self.latency_ns = self._ms(CAMERA_LATENCY_MS, n_cameras)
        self.encoder_free_ns = np.zeros(encoders, np.int64)
        self.last_send_ns = 0
        self.trigger = -1
        self.plan: list[tuple[int, int, int]] = []

    def _ms(self, bounds, n):
        return (self.rng.uniform(*bounds, n) * 1e6).astype(np.int64)

    def sends(self, trigger: int) -> list[tuple[int, int, int]]:
        if trigger < self.trigger:
            raise ValueError(f"trigger {trigger} was planned already (the schedule only moves forward)")
        while self.trigger < trigger:
            self.trigger += 1
            self.plan = self._next_plan(self.trigger)
        return self.plan

    def _next_plan(self, trigger: int) -> list[tuple[int, int, int]]:
        capture = trigger * self.period_ns + self.latency_ns + self._ms(CAPTURE_JITTER_MS, self.n)
        tail_ms = np.minimum(self.rng.exponential(ENCODE_TAIL_MS, self.n), ENCODE_MAX_MS - ENCODE_MIN_MS)
        encode = ((ENCODE_MIN_MS + tail_ms) * 1e6).astype(np.int64)
        plan = []
        for camera in np.argsort(capture, kind="stable"):         # the encoders' queue: capture order
            encoder = int(np.argmin(self.encoder_free_ns))
            done = max(int(capture[camera]), int(self.encoder_free_ns[encoder])) + int(encode[camera])
            self.encoder_free_ns[encoder] = done
            plan.append((max(done, self.last_send_ns), int(camera), int(capture[camera])))
        plan.sort()
        self.last_send_ns = plan[-1][0]
        return plan


class CameraSim(ScheduledSender):
    name = "camera"

    def __init__(self, address: str, cameras: list[tuple[str, int]], rate_hz: float = 5.0,
                 quality: int = 75, width: int = 640, height: int = 360, clock_offset_s: float = 0.0,
                 duration_s: float | None = None, start_ns: int | None = None, profile: str = "realistic",
                 seed: int = 0) -> None:
        if profile not in PROFILES:
            raise ValueError(f"camera profile must be one of {', '.join(PROFILES)}")
        super().__init__(duration_s, start_ns)
        self.address, self.cameras = address, list(cameras)
        self.period_ns = int(NS_PER_S / rate_hz)
        self.quality, self.width, self.height = quality, width, height
        self.clock_offset_s = clock_offset_s
        self.profile = profile
        self._trigger = TriggeredSender(len(self.cameras), self.period_ns, seed) if profile == "realistic" else None
        self._socket: zmq.Socket | None = None
        self._start_wall_s = 0.0
        self.out_of_order = 0          # frames sent with a capture stamp older than the previous one's
        self.longest_in_order = 0      # the longest run of frames in capture order
        self._run_length = 0
        self._last_stamp = -np.inf
        self._next_jpeg: tuple[int, bytes] | None = None    # (k, JPEG) encoded ahead of its send

    def _open(self) -> None:
        self._socket = zmq_context().socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self._socket.connect(self.address)

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=CLOSE_LINGER_MS)

    def _frame(self, k: int) -> tuple[int, int, int, int]:
        """(send offset, frame number, camera index, capture offset) of the k-th send."""
        frame, i = divmod(k, len(self.cameras))
        if self._trigger is None:
            due = frame * self.period_ns + i * self.period_ns // len(self.cameras)
            return due, frame, i, due
        send, camera, capture = self._trigger.sends(frame)[i]
        return send, frame, camera, capture

    def _due_ns(self, k: int) -> int:
        return self._frame(k)[0]

    def _emit(self, k: int) -> None:
        if not self._start_wall_s:
            self._start_wall_s = self.schedule_start_wall_s()
        _, frame, camera, capture_ns = self._frame(k)
        name, _ = self.cameras[camera]
        stamp = self._start_wall_s + capture_ns / NS_PER_S + self.clock_offset_s
        self._count_order(stamp)
        self.send_frame(name, stamp, self._jpeg(k), frame)
        # encode the next frame while waiting for its send time, so that sends keep to the
        # schedule and the modelled delays are the delays
        self._next_jpeg = (k + 1, self._jpeg(k + 1))

    def _jpeg(self, k: int) -> bytes:
        if self._next_jpeg is not None and self._next_jpeg[0] == k:
            return self._next_jpeg[1]
        _, frame, camera, _ = self._frame(k)
        return frame_jpeg(self.cameras[camera][1], frame, self.quality, self.height, self.width)

    def _count_order(self, stamp: float) -> None:
        if stamp < self._last_stamp:
            self.out_of_order += 1
            self._run_length = 0
        self._run_length += 1
        self.longest_in_order = max(self.longest_in_order, self._run_length)
        self._last_stamp = stamp

    def send_frame(self, name: str, timestamp: float, jpeg: bytes, frame: int | None = None) -> None:
        meta = {"camera": name, "timestamp": timestamp}
        if frame is not None:
            meta["frame"] = frame      # an extra key: the ingest must ignore it
        try:
            self._socket.send_multipart([json.dumps(meta).encode(), jpeg], flags=zmq.NOBLOCK, copy=False)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1

    def counters(self) -> dict:
        return {**super().counters(), "out_of_order": self.out_of_order, "longest_in_order": self.longest_in_order}
