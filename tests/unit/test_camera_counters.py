"""The camera ingest's counters under its threads (issue 12, item 4).

The camera ingest is the one process with several threads: the receive thread (also the
main loop), one decoder thread per group of views, and the ZAP handler. `Counter.inc` is a
read-modify-write of shared memory, so a counter that two threads increment must be
incremented under the ingest's lock; every other counter has one owner thread. These tests
drive the real CameraIngest (real rings, real JPEGs, no sockets) from as many threads as
the process has, with a tiny switch interval so that the threads interleave finely.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
import simplejpeg

from shm_vla import config
from shm_vla.ingest.camera import CameraIngest, PendingFrame
from shm_vla.process import Runtime
from shm_vla.shm.stats import Counter, read_snapshot
from shm_vla.streams import N_VIEWS, Streams

FRAMES_PER_VIEW = 60
BAD_PER_VIEW = 10
ZAP_REJECTS = 200


@pytest.fixture
def ingest(instance):
    # small frames that arrive twice as large, so every good frame is decoded and resized
    cfg = config.load(instance, None, ["camera.width=32", "camera.height=24", f"camera.decode_workers={N_VIEWS}"])
    streams = Streams(cfg)
    views = [streams.create_view(i) for i in range(N_VIEWS)]
    jpegs = [streams.create_jpeg(i) for i in range(N_VIEWS)]
    rt = Runtime(cfg, "ingest-camera")
    yield CameraIngest(rt, views, jpegs)
    for ring in views + jpegs:
        ring.close()
    rt.close()


def _frame(view: int, jpeg: bytes, i: int) -> PendingFrame:
    now = time.monotonic_ns()
    return PendingFrame(f"cam{view}", 100.0 + i * 0.2, jpeg, now, time.time_ns(), now, 0.0, 0.001)


def _hammer(ingest: CameraIngest) -> None:
    """What the process does, all at once: one thread per view decodes (a decoder thread owns
    its views), the ZAP thread counts rejected senders, the main thread meters."""
    good = simplejpeg.encode_jpeg(np.full((48, 64, 3), 128, np.uint8), quality=80)
    bad = b"\xff\xd8 not a jpeg"
    stop = threading.Event()

    def decoder(view: int) -> None:
        for i in range(FRAMES_PER_VIEW + BAD_PER_VIEW):
            ingest.decode(view, _frame(view, bad if i % 7 == 3 and i // 7 < BAD_PER_VIEW else good, i))

    def zap() -> None:
        for i in range(ZAP_REJECTS):
            ingest._error("rejected_sender", f"connection from 10.0.0.{i % 250}")

    def main_loop() -> None:
        while not stop.is_set():
            with ingest.lock:
                ingest.meter.periodic(time.monotonic_ns() + 2_000_000_000, ingest.published_offset_s)

    threads = [threading.Thread(target=decoder, args=(v,)) for v in range(N_VIEWS)]
    threads += [threading.Thread(target=zap)]
    meter = threading.Thread(target=main_loop)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        meter.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        meter.join(10)
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads + [meter])


def test_counters_shared_by_threads_add_up_under_a_hammering(ingest):
    _hammer(ingest)
    values = read_snapshot(ingest.rt.cfg.instance, "ingest-camera")["values"]     # what shm-vla-stat shows
    stored = N_VIEWS * FRAMES_PER_VIEW
    assert values["records"] == values["resized_frames"] == stored
    assert [values[f"frames.view{v + 1}"] for v in range(N_VIEWS)] == [FRAMES_PER_VIEW] * N_VIEWS
    assert values["errors.jpeg"] == N_VIEWS * BAD_PER_VIEW
    assert values["errors.rejected_sender"] == ZAP_REJECTS
    assert [ring.head for ring in ingest.view_rings] == [FRAMES_PER_VIEW] * N_VIEWS


class _OwnedLock:
    """The ingest's lock, remembering which thread holds it."""

    def __init__(self):
        self._lock = threading.Lock()
        self.owner = None

    def __enter__(self):
        self._lock.acquire()
        self.owner = threading.get_ident()
        return self

    def __exit__(self, *exc):
        self.owner = None
        self._lock.release()


def test_a_counter_two_threads_increment_is_incremented_under_the_lock(ingest, monkeypatch):
    """The rule itself, checked on every increment: a counter has one owner thread, or
    every increment of it holds the lock. (Under CPython's GIL an unguarded `inc` rarely
    loses a count, so the totals above can pass by luck; this cannot.)"""
    lock = ingest.lock = _OwnedLock()
    threads_of = defaultdict(set)
    unguarded = defaultdict(set)
    inc = Counter.inc

    def checked_inc(counter, n=1):
        me = threading.get_ident()
        threads_of[counter._i].add(me)
        if lock.owner != me:
            unguarded[counter._i].add(me)
        inc(counter, n)

    monkeypatch.setattr(Counter, "inc", checked_inc)
    _hammer(ingest)
    names = {i: name for name, i in ingest.rt.stats._index.items()}
    shared = {names[i] for i, threads in threads_of.items() if len(threads) > 1}
    assert {"records", "resized_frames", "errors.jpeg"} <= shared      # the hammer did share them
    assert {name for name in shared if unguarded[ingest.rt.stats._index[name]]} == set()


def test_a_failed_decoder_thread_ends_the_process_instead_of_silently_losing_its_views(ingest):
    """A bug in a decoder thread (not a bad JPEG, which is counted) must not leave the
    process up with some views frozen: the main loop's check raises (exit 1, restarted)."""
    def broken(view, frame):
        raise ZeroDivisionError("a bug")
    ingest.decode = broken
    ingest.start()
    try:
        ingest.check_workers()                           # nothing failed yet
        ingest.workers[0].offer(0, _frame(0, b"x", 0))
        deadline = time.monotonic() + 5
        while ingest.workers[0].failure is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match="decoder thread .* failed: ZeroDivisionError"):
            ingest.check_workers()
    finally:
        ingest.stop()
