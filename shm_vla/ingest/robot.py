"""`shm-vla ingest robot`: ZeroMQ SUB to the robot PC's PUB -> the `robot` ring.

ZeroMQ reconnects by itself when the publisher restarts (reconnect interval below); a
stalled publisher shows as a growing age of the newest record, which the action process
gates on and `shm-vla-stat` shows.
"""
from __future__ import annotations

import time

import numpy as np
import zmq

from ..protocol import robot as proto
from ..protocol.errors import ProtocolError
from ..process import Runtime
from ..shm.ring import CAPTURE_UNKNOWN_NS
from ..streams import Streams
from .clock import ClockOffset
from .meter import IngestMeter

POLL_TIMEOUT_MS = 100
DRAIN_MAX = 256
RCVHWM = 1000            # 10 s at 100 Hz: bounded
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000


class RobotIngest:
    """The library part: message frames -> ring records. Testable without sockets."""

    def __init__(self, rt: Runtime, ring):
        self.rt = rt
        self.ring = ring
        self.topic = rt.cfg.robot.topic.encode()
        self.record = np.zeros((), proto.ROBOT_STATE_DTYPE)
        self.clock = ClockOffset()
        self.stale_after_ns = int(rt.cfg.act.max_robot_age_ms * 1e6)
        self.meter = IngestMeter(rt.stats)
        self.sender_restarts = rt.stats.counter("sender_restarts")

    def handle(self, frames, recv_mono_ns: int, recv_wall_ns: int) -> bool:
        self.meter.message(sum(len(f) for f in frames))
        try:
            rec = proto.parse_robot(frames, self.record, topic=self.topic)
        except ProtocolError as exc:
            self.rt.error(exc.kind, str(exc))
            return False
        src, send = float(rec["timestamp"]), float(rec["send_timestamp"])
        recv_s = recv_mono_ns * 1e-9
        if not self.clock.update(recv_s, send):
            self.sender_restarts.inc()
            self.rt.rlog.warning("restart", "robot timestamps jumped back: publisher restart?")
        capture = self.clock.capture_mono_ns(src)
        if capture != CAPTURE_UNKNOWN_NS and recv_mono_ns - capture > self.stale_after_ns:
            # a backlog (ZeroMQ kept it while we were stopped): stored, never commanded from
            self.meter.stale_backlog.inc()
            self.rt.rlog.warning("stale_backlog", "robot states older than %.0f ms by capture time (a backlog): "
                                 "stored, never used for a command", self.stale_after_ns / 1e6)
        with self.ring.loan(src_ts=src, send_ts=send, recv_mono_ns=recv_mono_ns, recv_wall_ns=recv_wall_ns,
                            aux=float(rec["force"]), capture_mono_ns=capture) as slot:
            proto.model_values(rec, slot)
        self.meter.stored(1, src, self.clock.latency_s(recv_s, send))
        return True


def open_socket(ctx: zmq.Context, address: str, topic: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, RCVHWM)
    sub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sub.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
    sub.connect(address)
    return sub


def run(rt: Runtime) -> int:
    cfg = rt.cfg
    ring = Streams(cfg).create_robot()
    ingest = RobotIngest(rt, ring)
    ctx = zmq.Context.instance()
    address = cfg.address(cfg.robot.connect)
    sub = open_socket(ctx, address, cfg.robot.topic)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    rt.ready(f"robot SUB {address}")
    try:
        while rt.running:
            rt.housekeeping()
            ingest.meter.periodic(time.monotonic_ns(), ingest.clock.published_offset_s)
            if not poller.poll(POLL_TIMEOUT_MS):
                continue
            for _ in range(DRAIN_MAX):
                try:
                    frames = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                ingest.handle(frames, time.monotonic_ns(), time.time_ns())
    finally:
        sub.close(0)
        ring.close()
    return 0
