"""Single-process tests of the ring: arithmetic, layout, ownership, permissions, errors."""
import errno
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shm_vla.shm import segment as segmod
from shm_vla.shm.ring import META_DTYPE, Ring


def _fill(ring, n, start=0):
    for i in range(start, start + n):
        ring.write(np.full(ring.shape, i, ring.dtype), src_ts=float(i))


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(2, 9), written=st.integers(0, 40), n=st.integers(1, 8))
def test_window_is_newest_records_right_aligned(depth, written, n):
    name = f"hw{os.getpid()}"
    ring = Ring.create(name, "w", np.int32, (3,), depth)
    try:
        _fill(ring, written)
        n = min(n, depth - 1)
        out = np.full((n, 3), -7, np.int32)
        meta = np.zeros(n, META_DTYPE)
        k = ring.window(n, out, meta)
        assert k == min(n, written)
        expect = np.arange(written - k, written)
        assert (out[n - k:, 0] == expect).all()
        assert (meta["record"][n - k:] == expect).all()
        assert (meta["src_ts"][n - k:] == expect).all()
        assert (out[: n - k] == -7).all()        # the front is left for the caller to pad
        meta_only = np.zeros(n, META_DTYPE)
        assert ring.window(n, None, meta_only) == k          # metadata only: the same records
        assert (meta_only[n - k:] == meta[n - k:]).all()
    finally:
        ring.close()
        ring.unlink()


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(2, 9), batches=st.lists(st.integers(0, 12), min_size=1, max_size=6),
       max_n=st.integers(1, 10))
def test_since_sees_every_record_or_counts_it_lost(depth, batches, max_n):
    name = f"hs{os.getpid()}"
    ring = Ring.create(name, "s", np.int64, (), depth)
    try:
        out = np.zeros(10, np.int64)
        meta = np.zeros(10, META_DTYPE)
        cursor = seen = lost = 0
        written = 0
        for b in batches:
            _fill(ring, b, written)
            written += b
            while True:
                res = ring.since(cursor, out, meta, max_n)
                lost += res.lost
                if res.count:
                    assert (out[: res.count] == np.arange(res.next_record - res.count, res.next_record)).all()
                seen += res.count
                cursor = res.next_record
                if res.count == 0:
                    break
        assert seen + lost == written
        assert cursor == written
    finally:
        ring.close()
        ring.unlink()


def test_latest_and_empty(instance):
    ring = Ring.create(instance, "l", np.float32, (4,), 4)
    out = np.zeros((1, 4), np.float32)
    assert ring.latest(out) == -1
    assert ring.age_ns() is None
    _fill(ring, 6)
    assert ring.latest(out) == 5 and out[0, 0] == 5
    assert ring.age_ns() >= 0
    ring.close()


def test_window_larger_than_depth_is_refused(instance):
    ring = Ring.create(instance, "d", np.float32, (4,), 4)
    with pytest.raises(ValueError, match="exceeds ring depth"):
        ring.window(4, np.zeros((4, 4), np.float32))
    ring.close()


def test_peek_latest_is_validated_in_place(instance):
    ring = Ring.create(instance, "p", np.uint8, (16,), 3)
    assert ring.peek_latest() is None
    _fill(ring, 2)
    peek = ring.peek_latest()
    assert peek.record == 1 and peek.payload[0] == 1 and peek.valid()
    _fill(ring, 3, 2)                       # the writer laps the slot
    assert not peek.valid()
    ring.close()


def test_peek_reads_a_given_record_in_place_and_refuses_one_not_held(instance):
    ring = Ring.create(instance, "pk", np.uint8, (16,), 4)
    assert ring.peek(0) is None                      # not written yet
    _fill(ring, 5)                                   # records 0..4; the ring holds 2..4 (depth - 1)
    assert ring.peek(1) is None and ring.peek(5) is None and ring.peek(-1) is None
    peek = ring.peek(2)
    assert peek.record == 2 and (peek.payload == 2).all() and peek.meta["src_ts"] == 2.0 and peek.valid()
    assert np.shares_memory(peek.payload, ring.payload)      # in place, not a copy
    _fill(ring, 1, 5)                                # record 5: another slot, record 2 still valid
    assert peek.valid()
    _fill(ring, 1, 6)                                # record 6 overwrites record 2's slot
    assert not peek.valid()
    reader = Ring.attach(instance, "pk")             # a read-only reader peeks the same way
    assert reader.peek(4).valid() and reader.peek(2) is None
    assert segmod.Segment.address.fget(reader.seg) % os.sysconf("SC_PAGE_SIZE") == 0
    reader.close()
    ring.close()


def _open_slots(ring) -> int:
    """Slots whose sequence is odd: being written (a reader can never read them)."""
    return int((ring.seqs & 1).sum())


def test_loan_commits_with_its_metadata(instance):
    ring = Ring.create(instance, "ln", np.float32, (4,), 4)
    with ring.loan(src_ts=1.5, send_ts=2.5, recv_mono_ns=7, recv_wall_ns=8, aux=3.5, label=b"cam",
                   capture_mono_ns=6) as slot:
        slot[:] = 9.0
    assert ring.head == 1 and ring._loan.record == 0 and _open_slots(ring) == 0
    out, meta = np.zeros((1, 4), np.float32), np.zeros(1, META_DTYPE)
    assert ring.latest(out, meta) == 0 and (out == 9.0).all()
    assert meta[0].tolist() == (0, 1.5, 2.5, 7, 8, 3.5, 6, b"cam")
    assert ring.write(np.ones(4, np.float32)) == 1
    ring.close()


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_loan_aborts_on_any_exception_and_publishes_nothing(instance, error):
    """An error mid-write (a KeyboardInterrupt too) gives the slot back: nothing is
    published, no slot is left odd, and the next loan writes the same record number."""
    ring = Ring.create(instance, "la", np.float32, (4,), 4)
    _fill(ring, 5)                          # the slot to be written holds an old record (1)
    with pytest.raises(error):
        with ring.loan(src_ts=1.0) as slot:
            slot[:] = -1.0                  # half written
            raise error("mid-write")
    assert ring.head == 5 and _open_slots(ring) == 0
    assert ring.meta["record"][5 % 4] == -1   # the half-overwritten old record is invalidated
    out = np.zeros((3, 4), np.float32)
    assert ring.window(3, out) == 3 and (out[:, 0] == [2, 3, 4]).all()
    with ring.loan() as slot:
        slot[:] = 5.0
    assert ring._loan.record == 5 and ring.latest(out[:1]) == 5 and out[0, 0] == 5.0
    ring.close()


def test_a_failed_write_or_commit_leaves_no_slot_open(instance):
    ring = Ring.create(instance, "lf", np.float32, (4,), 4)
    with pytest.raises(ValueError):
        ring.write(np.zeros(5, np.float32))                 # wrong shape: copy fails in the slot
    with pytest.raises((TypeError, ValueError)):
        ring.write(np.zeros(4, np.float32), src_ts="late")  # a bad metadata value: commit fails
    assert ring.head == 0 and _open_slots(ring) == 0
    assert ring.write(np.zeros(4, np.float32)) == 0
    ring.close()


def test_nested_loans_and_unpaired_calls_are_refused(instance):
    ring = Ring.create(instance, "lx", np.float32, (4,), 4)
    with ring.loan():
        with pytest.raises(RuntimeError, match="already open"):
            ring.loan()
        with pytest.raises(RuntimeError, match="already open"):
            ring.begin()
    assert ring.head == 1
    with pytest.raises(RuntimeError, match="without begin"):
        ring.commit()
    with pytest.raises(RuntimeError, match="without begin"):
        ring.abort()
    assert ring.head == 1 and _open_slots(ring) == 0
    ring.close()


def test_reader_sees_writer_data_and_layout_mismatch_is_clear(instance):
    w = Ring.create(instance, "x", np.float32, (1026,), 8, extras={"channel_order": "RGB"})
    _fill(w, 3)
    r = Ring.attach(instance, "x", np.float32, (1026,))
    out = np.zeros((2, 1026), np.float32)
    assert r.window(2, out) == 2 and out[1, 0] == 2
    assert r.layout["extras"]["channel_order"] == "RGB"
    with pytest.raises(segmod.LayoutMismatch, match="shape"):
        Ring.attach(instance, "x", np.float32, (1025,))
    with pytest.raises(segmod.LayoutMismatch, match="dtype"):
        Ring.attach(instance, "x", np.float64, (1026,))
    r.close()
    w.close()


def test_missing_segment_and_bad_instance_are_clear(instance):
    with pytest.raises(segmod.SegmentMissing, match="does not exist"):
        Ring.attach(instance, "nothing")
    with pytest.raises(segmod.ShmError, match="invalid instance"):
        Ring.attach("bad/name", "x")


def test_second_writer_is_refused_naming_the_first(instance):
    w = Ring.create(instance, "o", np.float32, (4,), 4)
    code = ("import numpy as np; from shm_vla.shm.ring import Ring\n"
            f"Ring.create('{instance}', 'o', np.float32, (4,), 4)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert f"live writer (pid {os.getpid()})" in proc.stderr
    w.close()


def test_stale_segment_is_taken_over_and_data_kept(instance):
    code = ("import numpy as np; from shm_vla.shm.ring import Ring\n"
            f"r = Ring.create('{instance}', 'st', np.float32, (4,), 4)\n"
            "[r.write(np.full(4, i, np.float32)) for i in range(5)]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    info = segmod.inspect(segmod.segment_name(instance, "st"))
    assert not info.alive and info.writer_pid > 0
    ring = Ring.create(instance, "st", np.float32, (4,), 4)    # same layout: reused
    assert ring.seg.reused and ring.head == 5
    assert int(ring.seg.header["writer_pid"]) == os.getpid()
    ring.close()
    # a different layout replaces the stale segment
    ring = Ring.create(instance, "st", np.float32, (8,), 4)
    assert not ring.seg.reused and ring.head == 0
    ring.close()


def test_liveness_is_the_writers_lock_and_testing_it_leaves_the_lock_alone(instance):
    ring = Ring.create(instance, "live", np.float32, (4,), 4)
    reader = Ring.attach(instance, "live")
    assert ring.seg.writer_alive() and reader.seg.writer_alive() and reader.health() == "ok"
    assert not segmod.remove_stale(ring.name)         # clean agrees: a live writer's segment stays
    assert segmod.inspect(ring.name).alive
    ring.close()                      # the writer lets go: stale, even though its pid lives on
    assert not reader.seg.writer_alive() and reader.health() == "no writer"
    assert not segmod.inspect(reader.name).alive
    reader.close()


def test_permissions_are_0600_by_default(instance):
    ring = Ring.create(instance, "perm", np.float32, (4,), 4)
    mode = stat.S_IMODE(os.stat(f"/dev/shm/shm-vla.{instance}.perm").st_mode)
    assert mode == 0o600
    ring.close()


def test_group_permissions(instance):
    import grp
    group = grp.getgrgid(os.getgid()).gr_name
    ring = Ring.create(instance, "grp", np.float32, (4,), 4, group=group)
    st_ = os.stat(f"/dev/shm/shm-vla.{instance}.grp")
    assert stat.S_IMODE(st_.st_mode) == 0o660 and st_.st_gid == os.getgid()
    ring.close()
    with pytest.raises(segmod.ShmError, match="group"):
        Ring.create(instance, "grp2", np.float32, (4,), 4, group="no-such-group-xyz")


def test_full_dev_shm_is_a_clear_error(instance, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(segmod.ShmFull, match="/dev/shm is full"):
        Ring.create(instance, "big", np.uint8, (1 << 20,), 4)


def test_shm_ls_and_clean_cli(instance):
    ring = Ring.create(instance, "cli", np.float32, (4,), 4)
    run = [sys.executable, "-m", "shm_vla.cli", "shm"]
    out = subprocess.run(run + ["ls", "--instance", instance], capture_output=True, text=True, timeout=30).stdout
    assert "cli" in out and "live" in out
    out = subprocess.run(run + ["clean", "--instance", instance], capture_output=True, text=True, timeout=30).stdout
    assert "0 stale segment(s) removed, 1 live kept" in out
    ring.close()
    out = subprocess.run(run + ["clean", "--instance", instance], capture_output=True, text=True, timeout=30).stdout
    assert "1 stale segment(s) removed" in out


def test_reader_maps_read_only_and_futex_wait_works_there(instance):
    import threading
    w = Ring.create(instance, "ro", np.float32, (4,), 4)
    r = Ring.attach(instance, "ro", np.float32, (4,))
    with pytest.raises(ValueError, match="read-only"):
        r.payload[0, 0] = 1.0                        # a reader cannot write shared memory
    with pytest.raises(TypeError):
        r.seg.mm[0] = 0                              # not even through the map itself
    timer = threading.Timer(0.2, lambda: w.write(np.ones(4, np.float32)))
    timer.start()
    assert r.wait(0, timeout_s=10.0)                 # FUTEX_WAIT on a PROT_READ mapping
    timer.join()
    out = np.zeros((1, 4), np.float32)
    assert r.latest(out) == 0 and out[0, 0] == 1.0
    r.close()
    w.close()


def test_footprint_is_what_the_writers_allocate(instance):
    """The sizes `shm-vla run` checks before starting are the pages the rings really take."""
    from shm_vla import config
    from shm_vla.shm.stats import Stats, stats_footprint
    from shm_vla.streams import N_VIEWS, Streams
    cfg = config.load(instance, None, ["camera.width=64", "camera.height=36", "camera.ring_depth=4",
                                       "camera.jpeg_max_bytes=8192", "sensor.ring_depth=256",
                                       "robot.ring_depth=128", "shm.results_depth=32"])
    streams = Streams(cfg)
    rings = ([streams.create_view(i) for i in range(N_VIEWS)] + [streams.create_jpeg(i) for i in range(N_VIEWS)]
             + [streams.create_robot(), streams.create_sensor(), streams.create_vl(48), streams.create_results(8, 7)])
    stats = Stats.create(instance, "act")
    try:
        specs = streams.ring_specs(48, 8, 7)
        assert sorted(s.stream for s in specs) == sorted(r.name.rsplit(".", 1)[1] for r in rings)
        def allocated(stream):
            return os.stat(f"/dev/shm/shm-vla.{instance}.{stream}").st_blocks * 512
        for spec in specs:
            assert allocated(spec.stream) == spec.footprint(), spec.stream
        assert allocated("stats.act") == stats_footprint()
        total, count = streams.footprint(48, 8, 7, stats_processes=1)
        assert count == len(rings) + 1
        assert total == sum(allocated(s.stream) for s in specs) + allocated("stats.act")
    finally:
        stats.close()
        for ring in rings:
            ring.close()
