"""Transports and the writer/reader child processes of bench/ipc.py.

Every case runs in two fresh processes (multiprocessing "spawn"): a writer that sends
one payload size at its nominal rate on an absolute schedule, and an event-driven reader
(it blocks in the transport's own wait with a timeout; nothing spins).

Each payload starts with two little-endian int64: the writer's CLOCK_MONOTONIC stamp in
ns, taken just before the send call, and the message number. The reader takes its own
stamp once it holds the complete record (after a consistent copy-out for the ring, after
validation for the ring's in-place view, after receive() for the others) and reports
``t_read - t_sent`` per message. CLOCK_MONOTONIC is one clock for the whole machine, so
the two processes' stamps can be subtracted.

Transports:
  ring      shm_vla.shm.ring.Ring: writer ``write()`` (memcpy into the slot, commit, futex
            wake); reader ``wait()`` (futex) then ``since()`` (consistent copy-out).
  ring-view same writer; reader ``wait()`` then ``peek_latest()``: reads the stamp in
            place from shared memory and confirms ``valid()``; no payload copy.
  zmq       pyzmq PUSH (connect) / PULL (bind) over ipc:// in a temporary directory;
            reader blocks in recv() with RCVTIMEO.
  mpqueue   multiprocessing.Queue (pickled bytes through a pipe, feeder thread);
            reader blocks in get(timeout=...).
  iceoryx2  iceoryx2 publish/subscribe (fixed-size ctypes payload, loan + memmove +
            send) plus an event service: the writer notifies after each send, the
            reader blocks in ``Listener.timed_wait`` and then drains the subscriber.
            The reader uses the received sample in place (iceoryx2 is zero-copy).
"""
from __future__ import annotations

import ctypes
import os
import signal
import struct
import time

import numpy as np

TRANSPORTS = ("ring", "ring-view", "zmq", "mpqueue", "iceoryx2")
HEADER = struct.Struct("<qq")   # send stamp (CLOCK_MONOTONIC ns), message number
WAIT_S = 0.1                    # every blocking wait is bounded by this
READY_TIMEOUT_S = 30.0
ZMQ_ZEROCOPY_BYTES = 65536      # reader recv(copy=False) from this size on


def ring_depth(nbytes: int) -> int:
    return 64 if nbytes <= 65536 else 8


# ---------------------------------------------------------------------------- writers

def _delete_ports(owner, attrs) -> None:
    """Release iceoryx2 objects in order (ports before services before the node)."""
    for attr in attrs:
        obj = getattr(owner, attr, None)
        if obj is not None and hasattr(obj, "delete"):
            obj.delete()
        setattr(owner, attr, None)

class RingWriter:
    def __init__(self, spec):
        from shm_vla.shm.ring import Ring
        self.ring = Ring.create(spec["instance"], spec["stream"], np.uint8, (spec["nbytes"],),
                                ring_depth(spec["nbytes"]))

    def send(self, src: np.ndarray) -> None:
        self.ring.write(src)

    def close(self) -> None:
        ring, self.ring = self.ring, None
        if ring is not None:
            ring.unlink()
            ring.close()


class ZmqWriter:
    def __init__(self, spec):
        import zmq
        self.ctx = zmq.Context(1)
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, int(WAIT_S * 1000))
        self.sock.connect(spec["zmq_addr"])

    def send(self, src: np.ndarray) -> None:
        self.sock.send(src, copy=True)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class MpQueueWriter:
    def __init__(self, spec, queue):
        self.q = queue

    def send(self, src: np.ndarray) -> None:
        self.q.put(src.tobytes())   # a snapshot: the feeder thread pickles it later

    def close(self) -> None:
        # the reader has had everything by now (or gave up): never block on a full pipe
        self.q.cancel_join_thread()
        self.q.close()


def _iox_payload_type(nbytes: int):
    """A fixed-size ctypes payload; its class name is the iceoryx2 type name."""
    return type(f"ShmVlaBench{nbytes}", (ctypes.Structure,), {"_fields_": [("data", ctypes.c_uint8 * nbytes)]})


class _Iox:
    def __init__(self, spec):
        import iceoryx2 as iox2
        self.iox2 = iox2
        iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
        self.node = (iox2.NodeBuilder.new()
                     .signal_handling_mode(iox2.SignalHandlingMode.Disabled)
                     .create(iox2.ServiceType.Ipc))
        self.nbytes = spec["nbytes"]
        name = spec["iox_service"]
        self.pubsub = (self.node.service_builder(iox2.ServiceName.new(name))
                       .publish_subscribe(_iox_payload_type(self.nbytes))
                       .subscriber_max_buffer_size(8)
                       .history_size(0)
                       .open_or_create())
        self.event = self.node.service_builder(iox2.ServiceName.new(name + "/event")).event().open_or_create()


class Iceoryx2Writer(_Iox):
    def __init__(self, spec):
        super().__init__(spec)
        self.pub = self.pubsub.publisher_builder().create()
        self.notifier = self.event.notifier_builder().create()

    def send(self, src: np.ndarray) -> None:
        sample = self.pub.loan_uninit()
        ctypes.memmove(sample.payload_ptr, src.ctypes.data, self.nbytes)
        sample.assume_init().send()
        self.notifier.notify()

    def close(self) -> None:
        _delete_ports(self, ("notifier", "pub", "event", "pubsub", "node"))


def make_writer(spec, queue):
    t = spec["transport"]
    if t in ("ring", "ring-view"):
        return RingWriter(spec)
    if t == "zmq":
        return ZmqWriter(spec)
    if t == "mpqueue":
        return MpQueueWriter(spec, queue)
    if t == "iceoryx2":
        return Iceoryx2Writer(spec)
    raise ValueError(f"unknown transport {t!r}")


# ---------------------------------------------------------------------------- readers
# receive(timeout_s, sink) blocks at most timeout_s, hands every complete message to
# sink(sent_ns, number, read_ns) and returns how many it handed over.

class RingReader:
    """Event-driven (futex) consistent copy-out of every new record with since()."""

    def __init__(self, spec):
        from shm_vla.shm.ring import META_DTYPE, Ring
        n = spec["nbytes"]
        self.ring = Ring.attach(spec["instance"], spec["stream"], np.uint8, (n,))
        self.max_n = min(4, self.ring.depth - 1)
        self.out = np.empty((self.max_n, n), np.uint8)
        self.meta = np.empty(self.max_n, META_DTYPE)
        self.next = self.ring.head
        self.lost = 0

    def receive(self, timeout_s: float, sink) -> int:
        if not self.ring.wait(self.next, timeout_s):
            return 0
        res = self.ring.since(self.next, self.out, self.meta, self.max_n)
        t = time.monotonic_ns()
        self.lost += res.lost
        self.next = res.next_record
        for i in range(res.count):
            sent, num = HEADER.unpack_from(self.out[i])
            sink(sent, num, t)
        return res.count

    def extra(self) -> dict:
        return {"lost": self.lost, "retries": self.ring.retries}

    def close(self) -> None:
        self.ring.close()


class RingViewReader(RingReader):
    """Event-driven; uses the newest record in place and validates it (no copy)."""

    def __init__(self, spec):
        super().__init__(spec)
        self.invalid = 0

    def receive(self, timeout_s: float, sink) -> int:
        if not self.ring.wait(self.next, timeout_s):
            return 0
        peeked = self.ring.peek_latest()
        if peeked is None:
            self.invalid += 1
            return 0
        sent, num = HEADER.unpack_from(peeked.payload)   # in place, no payload copy
        ok = peeked.valid()
        t = time.monotonic_ns()
        if not ok:
            self.invalid += 1
            return 0
        self.lost += peeked.record - self.next   # skipped (a newer record was already there)
        self.next = peeked.record + 1
        sink(sent, num, t)
        return 1

    def extra(self) -> dict:
        return {"lost": self.lost, "invalid_views": self.invalid}


class ZmqReader:
    def __init__(self, spec):
        import zmq
        self.zmq = zmq
        self.ctx = zmq.Context(1)
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(spec["zmq_addr"])
        self.copy = spec["nbytes"] < ZMQ_ZEROCOPY_BYTES
        self._timeout_ms = None

    def receive(self, timeout_s: float, sink) -> int:
        ms = max(1, int(timeout_s * 1000))
        if ms != self._timeout_ms:
            self.sock.setsockopt(self.zmq.RCVTIMEO, ms)
            self._timeout_ms = ms
        try:
            msg = self.sock.recv(copy=self.copy)
        except self.zmq.Again:
            return 0
        t = time.monotonic_ns()
        sent, num = HEADER.unpack_from(msg if self.copy else msg.buffer)
        sink(sent, num, t)
        return 1

    def extra(self) -> dict:
        return {}

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class MpQueueReader:
    def __init__(self, spec, queue):
        import queue as queue_mod
        self.empty = queue_mod.Empty
        self.q = queue

    def receive(self, timeout_s: float, sink) -> int:
        try:
            data = self.q.get(timeout=timeout_s)
        except self.empty:
            return 0
        t = time.monotonic_ns()
        sent, num = HEADER.unpack_from(data)
        sink(sent, num, t)
        return 1

    def extra(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class Iceoryx2Reader(_Iox):
    def __init__(self, spec):
        super().__init__(spec)
        self.sub = self.pubsub.subscriber_builder().buffer_size(8).create()
        self.listener = self.event.listener_builder().create()
        self._durations = {}

    def receive(self, timeout_s: float, sink) -> int:
        d = self._durations.get(timeout_s)
        if d is None:
            d = self._durations[timeout_s] = self.iox2.Duration.from_secs_f64(timeout_s)
        n = self._drain(sink)         # what is there already, before sleeping
        if n:
            return n
        self.listener.timed_wait(d)   # event-driven: blocks until notified or timeout
        return self._drain(sink)

    def _drain(self, sink, limit: int = 64) -> int:
        n = 0
        for _ in range(limit):
            sample = self.sub.receive()
            if sample is None:
                break
            t = time.monotonic_ns()
            ptr = sample.payload_ptr
            sent, num = ctypes.c_int64.from_address(ptr).value, ctypes.c_int64.from_address(ptr + 8).value
            sample.delete()
            sink(sent, num, t)
            n += 1
        return n

    def extra(self) -> dict:
        return {}

    def close(self) -> None:
        _delete_ports(self, ("listener", "sub", "event", "pubsub", "node"))


def make_reader(spec, queue):
    t = spec["transport"]
    if t == "ring":
        return RingReader(spec)
    if t == "ring-view":
        return RingViewReader(spec)
    if t == "zmq":
        return ZmqReader(spec)
    if t == "mpqueue":
        return MpQueueReader(spec, queue)
    if t == "iceoryx2":
        return Iceoryx2Reader(spec)
    raise ValueError(f"unknown transport {t!r}")


# ---------------------------------------------------------------------------- processes
def _child_signals(spec=None) -> None:
    """Ctrl+C goes to the parent (it stops us); SIGTERM unwinds so that finally: runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec and spec.get("rt_priority"):
        # --rt: SCHED_FIFO for both processes of every transport alike (needs CAP_SYS_NICE)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(spec["rt_priority"])))

    def _term(signum, frame):
        raise SystemExit(143)
    signal.signal(signal.SIGTERM, _term)


def writer_main(spec, ev, results, queue=None) -> None:
    """Send n_warmup + n_measure messages at spec['rate_hz'] on an absolute schedule."""
    out = {"role": "writer", "ok": False}
    writer = None
    try:
        _child_signals(spec)
        writer = make_writer(spec, queue)
        ev["writer_ready"].set()
        if not ev["reader_ready"].wait(READY_TIMEOUT_S):
            raise RuntimeError("reader did not become ready")
        nbytes, rate = spec["nbytes"], spec["rate_hz"]
        n_warm, n_meas = spec["n_warmup"], spec["n_measure"]
        total = n_warm + n_meas
        src = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8)
        period_ns = 1e9 / rate
        costs = np.zeros(n_meas, np.int64)
        late = 0
        stop = ev["stop"]
        t0 = time.monotonic_ns() + 2_000_000
        wall0 = cpu0 = None
        sent = 0
        for i in range(total):
            target = t0 + int(i * period_ns)
            now = time.monotonic_ns()
            if target > now:
                time.sleep((target - now) * 1e-9)
            elif now - target > period_ns:
                late += 1
            if i == n_warm:
                wall0, cpu0 = time.monotonic_ns(), time.process_time_ns()
            HEADER.pack_into(src, 0, time.monotonic_ns(), i)
            c0 = time.perf_counter_ns()
            writer.send(src)
            if i >= n_warm:
                costs[i - n_warm] = time.perf_counter_ns() - c0
            sent += 1
            if stop.is_set():
                break
        wall1, cpu1 = time.monotonic_ns(), time.process_time_ns()
        if wall0 is not None:
            out["cpu_pct"] = 100.0 * (cpu1 - cpu0) / max(1, wall1 - wall0)
            out["wall_s"] = (wall1 - wall0) * 1e-9
        m = costs[: max(0, sent - n_warm)]
        out.update(sent=sent, late=late, send_cost_us_p50=float(np.percentile(m, 50)) / 1e3 if len(m) else None,
                   send_cost_us_p99=float(np.percentile(m, 99)) / 1e3 if len(m) else None, ok=True)
        ev["writer_done"].set()
        # keep the transport alive until the reader has everything (or gives up)
        ev["reader_done"].wait(READY_TIMEOUT_S)
    except BaseException as exc:   # report, then exit
        out["error"] = f"{type(exc).__name__}: {exc}"
        ev["writer_ready"].set()
        ev["writer_done"].set()
    finally:
        if writer is not None:
            try:
                writer.close()
            except Exception as exc:   # cleanup problems are reported, never hidden
                out.setdefault("error", f"close: {type(exc).__name__}: {exc}")
        results.put(out)


def reader_main(spec, ev, results, queue=None) -> None:
    out = {"role": "reader", "ok": False}
    reader = None
    try:
        _child_signals(spec)
        if not ev["writer_ready"].wait(READY_TIMEOUT_S):
            raise RuntimeError("writer did not become ready")
        reader = make_reader(spec, queue)
        n_warm, n_meas = spec["n_warmup"], spec["n_measure"]
        last = n_warm + n_meas - 1
        lat = np.zeros(n_meas, np.int64)
        seen = np.zeros(n_meas, bool)
        state = {"count": 0, "wall0": None, "cpu0": None, "last": -1, "dup": 0}

        def sink(sent_ns, num, read_ns):
            state["last"] = num
            if num < n_warm:
                return
            k = num - n_warm
            if k >= n_meas:
                return
            if state["wall0"] is None:
                state["wall0"], state["cpu0"] = read_ns, time.process_time_ns()
            if seen[k]:
                state["dup"] += 1
                return
            seen[k] = True
            lat[k] = read_ns - sent_ns
            state["count"] += 1

        ev["reader_ready"].set()
        hard_deadline = time.monotonic() + spec["max_wall_s"]
        wakes = timeouts = 0
        idle_after_done = 0
        while time.monotonic() < hard_deadline:
            got = reader.receive(WAIT_S, sink)
            if got:
                wakes += 1
                idle_after_done = 0
                if state["last"] >= last:
                    break
            else:
                timeouts += 1
                if ev["writer_done"].is_set() or ev["stop"].is_set():
                    idle_after_done += 1
                    if idle_after_done >= 3:
                        break
        wall1, cpu1 = time.monotonic_ns(), time.process_time_ns()
        if state["wall0"] is not None:
            out["cpu_pct"] = 100.0 * (cpu1 - state["cpu0"]) / max(1, wall1 - state["wall0"])
        out.update(samples=int(state["count"]), missing=int(n_meas - state["count"]),
                   duplicates=int(state["dup"]), wakes=wakes, timeouts=timeouts,
                   latency_ns=lat[seen].tolist(), ok=True, **reader.extra())
    except BaseException as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        ev["reader_ready"].set()
    finally:
        ev["reader_done"].set()
        if reader is not None:
            try:
                reader.close()
            except Exception as exc:
                out.setdefault("error", f"close: {type(exc).__name__}: {exc}")
        results.put(out)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def load_average() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
