"""`shm-vla ingest sensor`: UDP force + OCT datagrams -> the `sensor` ring.

One wake-up drains up to `batch_max_datagrams` datagrams. Each datagram is parsed as a
zero-copy structured view of the receive buffer, checked for NaN/Inf (vectorised), and
each record is written into its ring slot in model order (force first or last).
Kernel-side drops (receive buffer overflow) are read from SO_RXQ_OVFL. With `sensor.allow`
set, a datagram from another source address is counted (`rejected_sender`) and dropped
before it is parsed (senders.py).
"""
from __future__ import annotations

import math
import select
import socket
import struct
import time

import numpy as np

from .. import config as configmod
from ..protocol import sensor as proto
from ..protocol.errors import ProtocolError
from ..process import Runtime
from ..shm.ring import CAPTURE_UNKNOWN_NS
from ..streams import Streams
from .clock import ClockOffset
from .listen import in_use
from .meter import IngestMeter
from .senders import allowlist

SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
POLL_TIMEOUT_MS = 100
_ANC_BYTES = socket.CMSG_SPACE(4)


def open_socket(bind: str, rcvbuf_bytes: int, log=None) -> socket.socket:
    """The UDP socket; a port already in use is a ConfigError."""
    host, port = configmod.udp_bind_address("sensor.bind", bind)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
    # Linux caps the request at net.core.rmem_max (and reports double the usable size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
    if granted < rcvbuf_bytes and log is not None:
        log.warning("UDP receive buffer is %d bytes, not the %d configured: raise net.core.rmem_max "
                    "(sysctl -w net.core.rmem_max=%d) so bursts are not dropped", granted, rcvbuf_bytes,
                    rcvbuf_bytes)
    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise in_use("sensor.bind", bind, port, exc) from None
    sock.setblocking(False)
    return sock


class SensorIngest:
    """The library part: datagram bytes -> ring records. Testable without sockets."""

    def __init__(self, rt: Runtime, ring):
        cfg = rt.cfg.sensor
        self.rt = rt
        self.ring = ring
        self.dtype = proto.record_dtype(cfg.ascan_len)
        self.keep_nonfinite = cfg.nonfinite_policy == "keep"
        width = cfg.ascan_len + 1
        self.force_col = proto.force_column(cfg.force_position, width)
        self.ascan_cols = proto.ascan_columns(cfg.force_position, width)
        self.clock = ClockOffset(cfg.clock_offset_warmup)
        self.stale_after_ns = int(rt.cfg.act.max_sensor_age_ms * 1e6)
        self.meter = IngestMeter(rt.stats)

        self.nonfinite = rt.stats.counter("nonfinite_records")
        self.sender_restarts = rt.stats.counter("sender_restarts")
        self.kernel_drops = rt.stats.counter("kernel_drops")
        self._mask = np.empty(proto.max_records(self.dtype), bool)
        self._kernel_drops_seen = 0

    def handle(self, buf, nbytes: int, recv_mono_ns: int, recv_wall_ns: int) -> int:
        """Parse one datagram and store its records; returns records stored."""
        self.meter.message(nbytes)
        try:
            records = proto.parse_datagram(buf, nbytes, self.dtype)
        except ProtocolError as exc:
            self.rt.error(exc.kind, str(exc))
            return 0
        n = len(records)
        mask = proto.finite_mask(records, out=self._mask[:n])
        bad = n - int(mask.sum())
        if bad:
            self.nonfinite.inc(bad)
            self.rt.error("nonfinite", f"{bad} record(s) with NaN/Inf ({'kept' if self.keep_nonfinite else 'dropped'})")
            if not self.keep_nonfinite:
                self.meter.drops.inc(bad)
        recv_s = recv_mono_ns * 1e-9
        send_last = float(records["send_timestamp"][-1])
        if np.isfinite(send_last) and not self.clock.update(recv_s, send_last):
            self.sender_restarts.inc()
            self.rt.rlog.warning("restart", "sensor timestamps jumped back: sender restart? re-estimating clock offset")
        stored = stale = 0
        ts, sts = records["timestamp"], records["send_timestamp"]
        force, ascan = records["force"], records["ascan"]
        wall_offset = self.clock.wall_offset_s()
        for i in range(n):
            if not (mask[i] or self.keep_nonfinite):
                continue
            t = float(ts[i])
            capture = self.clock.capture_mono_ns(t) if math.isfinite(t) else CAPTURE_UNKNOWN_NS
            # a record from a backlog (we were stopped, the kernel kept it) is stored, since it
            # is real data for the record, and counted; its capture time keeps it from the model
            stale += capture != CAPTURE_UNKNOWN_NS and recv_mono_ns - capture > self.stale_after_ns
            # a loan per record: it costs ~0.3 us over a bare begin/commit (docs/SHM.md)
            with self.ring.loan(src_ts=t, send_ts=float(sts[i]), recv_mono_ns=recv_mono_ns,
                                recv_wall_ns=recv_wall_ns, aux=t + wall_offset, capture_mono_ns=capture) as slot:
                slot[self.force_col] = force[i]
                slot[self.ascan_cols] = ascan[i]
            stored += 1
        if stale:
            self.meter.stale_backlog.inc(stale)
            self.rt.rlog.warning("stale_backlog", "%d sensor record(s) older than %.0f ms by capture time "
                                 "(a backlog): stored, never used for a command", stale, self.stale_after_ns / 1e6)
        if stored:
            self.meter.stored(stored, float(ts[n - 1]), self.clock.latency_s(recv_s, send_last))
        return stored

    def note_kernel_drops(self, ancdata) -> None:
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
                total = struct.unpack_from("I", data)[0]
                if total > self._kernel_drops_seen:
                    self.kernel_drops.inc(total - self._kernel_drops_seen)
                    self.meter.drops.inc(total - self._kernel_drops_seen)
                    self._kernel_drops_seen = total


def run(rt: Runtime) -> int:
    cfg = rt.cfg.sensor
    ring = Streams(rt.cfg).create_sensor()
    ingest = SensorIngest(rt, ring)
    host = configmod.udp_bind_address("sensor.bind", cfg.bind)[0]
    senders = allowlist(rt.log, "sensor.allow", cfg.allow, cfg.bind, host)   # None: no check per datagram
    sock = open_socket(cfg.bind, cfg.rcvbuf_bytes, rt.log)
    buf = bytearray(proto.DATAGRAM_MAX_BYTES + 1)   # one spare byte tells an oversized datagram
    bufs = [buf]
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    rt.ready(f"sensor UDP on {cfg.bind}")
    try:
        while rt.running:
            rt.housekeeping()
            now = time.monotonic_ns()
            ingest.meter.periodic(now, ingest.clock.published_offset_s)
            if not poller.poll(POLL_TIMEOUT_MS):
                continue
            for _ in range(cfg.batch_max_datagrams):
                try:
                    nbytes, ancdata, flags, sender = sock.recvmsg_into(bufs, _ANC_BYTES)
                except (BlockingIOError, InterruptedError):
                    break
                recv_mono, recv_wall = time.monotonic_ns(), time.time_ns()
                ingest.note_kernel_drops(ancdata)
                if senders is not None and not senders.admits(sender[0]):
                    rt.error("rejected_sender", f"datagram from {sender[0]}")
                    continue
                if flags & socket.MSG_TRUNC or nbytes > proto.DATAGRAM_MAX_BYTES:
                    rt.error("length", "oversized datagram")
                    continue
                ingest.handle(buf, nbytes, recv_mono, recv_wall)
    finally:
        sock.close()
        ring.close()
    return 0
