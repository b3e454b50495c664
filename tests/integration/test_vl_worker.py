"""The VL worker in one process: real view rings, the compact backbone, real feature ring."""
from __future__ import annotations

import time

import numpy as np
import pytest

from shm_vla import config
from shm_vla.model import make_backbone
from shm_vla.process import Runtime
from shm_vla.sim import content
from shm_vla.streams import N_VIEWS, Streams
from shm_vla.workers.act import ActWorker
from shm_vla.workers.vl import VlWorker

VL_DIM = 32
# a fast tick (short VL budget, a fine schedule) within the clamps' 1 mm/s, 1 deg/s ceiling
FAST_TICK = ["act.tick_hz=100", "act.clamp_mm=0.01", "act.clamp_deg=0.01"]


UPLOADS = ("staged", "direct")      # vl.frame_upload: both paths run on CPU (workers/frame_upload.py)


def _worker(instance, overrides=(), upload="staged"):
    cfg = config.load(instance, None, ["act.vl_reuse=1", *FAST_TICK, *overrides, f"vl.frame_upload='{upload}'"])
    streams = Streams(cfg)
    writers = [streams.create_view(i) for i in range(N_VIEWS)]
    readers = [streams.attach_view(i) for i in range(N_VIEWS)]
    vl_ring = streams.create_vl(VL_DIM)
    rt = Runtime(cfg, "vl")
    worker = VlWorker(rt, readers, vl_ring, make_backbone(cfg.model, VL_DIM))
    return worker, writers, vl_ring, rt


def _publish_set(writers, counter, capture_ts, captured_ago_ms=5.0):
    """Frames stamped by their camera (capture_ts) and, through its clock, on ours
    (captured_ago_ms ago; None: no clock offset yet)."""
    now = time.monotonic_ns()
    capture_mono = -1 if captured_ago_ms is None else now - int(captured_ago_ms * 1e6)
    for i, ring in enumerate(writers):
        ring.write(content.frame_image(i, counter), src_ts=capture_ts[i], capture_mono_ns=capture_mono)


def _steps(worker, n=5):
    for _ in range(n):
        worker.step()


@pytest.mark.parametrize("upload", UPLOADS)
def test_encodes_each_new_set_once_with_metadata(instance, upload):
    worker, writers, vl_ring, rt = _worker(instance, upload=upload)
    assert worker.frames.name == upload
    _steps(worker)
    assert vl_ring.head == 0                                 # no frames: nothing encoded
    ts = [100.0, 100.01, 100.02, 100.03, 100.04]
    _publish_set(writers, 1, ts)
    _steps(worker)
    assert vl_ring.head == 1                                 # encoded once, not again for the same set
    rec = np.zeros(1, vl_ring.dtype)
    vl_ring.latest(rec)
    assert rec["update"][0] == 1 and rec["encode_ms"][0] > 0
    assert np.allclose(rec["capture_ts"][0], ts) and rec["skew_ms"][0] == pytest.approx(40.0)
    assert np.isfinite(rec["feature"][0]).all() and rec["feature"].shape == (1, VL_DIM)
    writers[0].write(content.frame_image(0, 2), src_ts=101.0, capture_mono_ns=time.monotonic_ns())  # not a complete set
    _steps(worker)
    assert vl_ring.head == 1
    _publish_set(writers, 3, [102.0] * 5)
    _steps(worker)
    assert vl_ring.head == 2
    rt.close()


def test_sets_the_gate_would_refuse_are_never_encoded(instance):
    """Frames with no capture time yet (camera clock not established), or captured longer
    ago than act.max_frame_age_ms (a backlog after a stall): counted, not encoded."""
    worker, writers, vl_ring, rt = _worker(instance, ["act.max_frame_age_ms=500"])
    _publish_set(writers, 1, [100.0] * 5, captured_ago_ms=None)
    _steps(worker)
    assert vl_ring.head == 0 and worker.unsynced_sets.value == 1
    _publish_set(writers, 2, [100.2] * 5, captured_ago_ms=800.0)
    _steps(worker)
    assert vl_ring.head == 0 and worker.stale_sets.value == 1
    _publish_set(writers, 3, [100.4] * 5)
    _steps(worker)
    assert vl_ring.head == 1
    rec = np.zeros(1, vl_ring.dtype)
    vl_ring.latest(rec)
    assert (time.monotonic_ns() - rec["capture_mono_ns"][0] < 1e9).all()
    rt.close()


def test_sets_over_the_skew_bound_are_counted_and_rejected(instance):
    worker, writers, vl_ring, rt = _worker(instance, ["vl.view_policy='max_skew'", "vl.max_skew_ms=50",
                                                      "vl.reject_over_skew=true"])
    _publish_set(writers, 1, [100.0, 100.0, 100.0, 100.0, 100.2])   # 200 ms skew
    _steps(worker)
    assert vl_ring.head == 0
    assert worker.rejected.value == 1 and worker.over_skew.value == 1
    _publish_set(writers, 2, [101.0] * 5)
    _steps(worker)
    assert vl_ring.head == 1
    rt.close()


def test_action_schedule_is_absolute_and_missed_ticks_are_skipped(instance):
    """Scheduler only (the tick itself is tested elsewhere): one slow tick is not caught up."""
    import time
    cfg = config.load(instance, None, ["act.tick_hz=50", "act.clamp_mm=0.02", "act.clamp_deg=0.02"])
    rt = Runtime(cfg, "act")
    worker = ActWorker.__new__(ActWorker)           # the schedule needs only these members
    worker.rt, worker.cfg = rt, cfg
    worker.missed = rt.stats.counter("missed_ticks")
    worker.action_id = 0
    worker.publish_rate = lambda now: None
    ticks = []

    def tick(scheduled_ns, lateness_ms):
        ticks.append((scheduled_ns, lateness_ms))
        if len(ticks) == 5:
            time.sleep(0.075)           # 3.75 periods: slots 6 and 7 are missed, slot 8 runs 15 ms late
        if len(ticks) == 15:
            rt.running = False
    worker.tick = tick
    worker.loop()
    sched = np.array([t for t, _ in ticks])
    gaps = np.diff(sched) / 20e6
    assert np.allclose(gaps, np.round(gaps))        # always on the absolute grid
    gaps = np.round(gaps).astype(int)
    assert (gaps > 1).sum() == 1                    # one hole where the slow tick was, no burst after it
    assert worker.missed.value == int((gaps - 1).sum()) >= 2      # every skipped slot counted
    assert all(lat < 20.0 for _, lat in ticks)      # a slot never runs later than its own period
    rt.close()


def _publish(writers, views, counter, trigger_ts, captured_ago_ms=5.0):
    """Trigger ``counter``'s frames of ``views`` only (a trigger still arriving)."""
    now = time.monotonic_ns()
    for i in views:
        writers[i].write(content.frame_image(i, counter), src_ts=trigger_ts + i * 0.001,
                         capture_mono_ns=now - int(captured_ago_ms * 1e6) + i * 1_000_000)


def _encoded_counters(worker):
    """The frame counters (pixels) of the set the worker encoded last."""
    return [content.frame_counter(np.asarray(worker.frames.frames[i]))[1] for i in range(N_VIEWS)]


@pytest.mark.parametrize("upload", UPLOADS)
def test_same_trigger_waits_for_the_rest_of_a_trigger_then_encodes_it_whole(instance, upload):
    worker, writers, vl_ring, rt = _worker(instance, ["vl.view_policy='same_trigger'"], upload)
    _publish(writers, range(N_VIEWS), 1, 100.0, captured_ago_ms=205.0)
    _publish(writers, (0, 1, 2), 2, 100.2)                     # trigger 2 arriving: views 3, 4 not yet
    worker.step()                                              # (one wait slice: 50 of the 100 ms)
    assert vl_ring.head == 0                                   # waiting for views 3 and 4 (bounded)
    _publish(writers, (3, 4), 2, 100.2)
    _steps(worker, 2)
    assert vl_ring.head == 1 and _encoded_counters(worker) == [2] * N_VIEWS
    assert worker.mixed.value == 0 and worker.incomplete.value == 0
    rt.close()


def test_same_trigger_takes_the_newest_complete_trigger_when_a_view_stays_behind(instance):
    worker, writers, vl_ring, rt = _worker(instance, ["vl.view_policy='same_trigger'"])
    _publish(writers, range(N_VIEWS), 1, 100.0, captured_ago_ms=205.0)
    _publish(writers, (0, 1, 2, 3), 2, 100.2)                  # view 5 lost this frame
    t0 = time.monotonic()
    while vl_ring.head == 0 and time.monotonic() - t0 < 2.0:
        worker.step()
    waited_s = time.monotonic() - t0
    assert vl_ring.head == 1 and _encoded_counters(worker) == [1] * N_VIEWS
    assert worker.incomplete.value == 1 and worker.mixed.value == 0
    assert 0.08 <= waited_s < 0.5                               # half a camera period, not longer
    _publish(writers, range(N_VIEWS), 3, 100.4)
    _steps(worker, 3)
    assert vl_ring.head == 2 and _encoded_counters(worker) == [3] * N_VIEWS
    rt.close()


@pytest.mark.parametrize("upload", UPLOADS)
def test_newest_mixes_triggers_and_it_is_counted(instance, upload):
    worker, writers, vl_ring, rt = _worker(instance, ["vl.view_policy='newest'", "vl.max_skew_ms=150"], upload)
    _publish(writers, range(N_VIEWS), 1, 100.0, captured_ago_ms=205.0)
    _publish(writers, (0, 1, 2), 2, 100.2)
    _steps(worker, 2)
    assert vl_ring.head == 1 and _encoded_counters(worker) == [2, 2, 2, 1, 1]
    assert worker.mixed.value == 1 and worker.over_skew.value == 1 and worker.rejected.value == 0
    rt.close()


def test_direct_frames_give_the_staged_feature_bit_for_bit(instance):
    from shm_vla.workers.frame_upload import DirectFrames
    worker, writers, vl_ring, rt = _worker(instance, upload="staged")
    _publish_set(writers, 7, [100.0] * 5)
    _steps(worker)
    worker.frames = DirectFrames(worker.views, "cpu")      # the same set again, read in place
    worker.set.used_records[:] = -1
    _steps(worker)
    recs = np.zeros(2, vl_ring.dtype)
    assert vl_ring.window(2, recs) == 2 and (recs["frame_record"][0] == recs["frame_record"][1]).all()
    assert np.array_equal(recs["feature"][0], recs["feature"][1])
    worker.frames.close()
    rt.close()


@pytest.mark.parametrize("upload", UPLOADS)
def test_a_frame_overwritten_while_it_is_encoded_never_reaches_a_feature(instance, upload):
    """The camera laps a chosen frame's slot between the choice and the encode (a VL process
    stopped that long): the direct path finds the slot changed after use and discards the
    feature; the staged path had copied it consistently and publishes it."""
    worker, writers, vl_ring, rt = _worker(instance, ["vl.view_policy='newest'"], upload)
    _publish_set(writers, 1, [100.0] * 5)
    assert worker.read_set()
    for k in range(writers[0].depth):                      # a full lap of view 1's ring
        writers[0].write(content.frame_image(0, 100 + k), src_ts=101.0 + k, capture_mono_ns=time.monotonic_ns())
    worker.encode_and_publish()
    if upload == "direct":
        assert vl_ring.head == 0 and worker.torn_sets.value == 1
        assert list(worker.set.used_records) == [-1] * N_VIEWS       # nothing marked used: a new set is read
        _publish_set(writers, 200, [102.0] * 5)
        _steps(worker)
        assert vl_ring.head == 1 and _encoded_counters(worker) == [200] * N_VIEWS
    else:
        assert vl_ring.head == 1 and worker.torn_sets.value == 0 and _encoded_counters(worker) == [1] * N_VIEWS
    rt.close()


def test_direct_unavailable_falls_back_to_staged_with_one_line(instance, monkeypatch, caplog):
    """E.g. a driver that cannot register read-only memory: the worker runs staged and says why."""
    from shm_vla.workers import frame_upload

    def refuse(*args, **kwargs):
        raise frame_upload.DirectUnavailable("cudaHostRegister failed with CUDA error 1")
    monkeypatch.setattr(frame_upload, "DirectFrames", refuse)
    with caplog.at_level("WARNING"):
        worker, writers, vl_ring, rt = _worker(instance, upload="direct")
    assert worker.frames.name == "staged"
    assert any("unavailable (cudaHostRegister failed" in r.getMessage() for r in caplog.records)
    _publish_set(writers, 1, [100.0] * 5)
    _steps(worker)
    assert vl_ring.head == 1
    rt.close()
