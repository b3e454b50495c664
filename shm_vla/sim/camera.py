"""Simulated cameras: 5 ZED/OAK cameras on one PUSH socket that connects to the
ingest's PULL, sending [JSON metadata, JPEG] per frame at ``rate_hz`` each."""
from __future__ import annotations

import json
import time

import zmq

from ..protocol.camera import CameraMapper
from .base import CLOSE_LINGER_MS, NS_PER_S, ScheduledSender, zmq_context
from .content import frame_jpeg

SNDHWM = 50   # frames queued while no receiver is there (then counted as dropped)


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


class CameraSim(ScheduledSender):
    """Each camera sends at ``rate_hz``; cameras are phase-shifted evenly within a
    period (real cameras are not synchronised). Frame f of a camera carries (view, f)
    in its pixels and "frame": f in its metadata."""

    name = "camera"

    def __init__(self, address: str, cameras: list[tuple[str, int]], rate_hz: float = 5.0,
                 quality: int = 75, width: int = 640, height: int = 360, clock_offset_s: float = 0.0,
                 duration_s: float | None = None, start_ns: int | None = None) -> None:
        super().__init__(duration_s, start_ns)
        self.address, self.cameras = address, list(cameras)
        self.period_ns = int(NS_PER_S / rate_hz)
        self.quality, self.width, self.height = quality, width, height
        self.clock_offset_s = clock_offset_s
        self._socket: zmq.Socket | None = None

    def _open(self) -> None:
        self._socket = zmq_context().socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self._socket.connect(self.address)

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=CLOSE_LINGER_MS)

    def _due_ns(self, k: int) -> int:
        frame, camera = divmod(k, len(self.cameras))
        return frame * self.period_ns + camera * self.period_ns // len(self.cameras)

    def _emit(self, k: int) -> None:
        frame, camera = divmod(k, len(self.cameras))
        name, view = self.cameras[camera]
        jpeg = frame_jpeg(view, frame, self.quality, self.height, self.width)
        self.send_frame(name, time.time() + self.clock_offset_s, jpeg, frame)

    def send_frame(self, name: str, timestamp: float, jpeg: bytes, frame: int | None = None) -> None:
        meta = {"camera": name, "timestamp": timestamp}
        if frame is not None:
            meta["frame"] = frame      # an extra key: the ingest must ignore it
        try:
            self._socket.send_multipart([json.dumps(meta).encode(), jpeg], flags=zmq.NOBLOCK, copy=False)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1
