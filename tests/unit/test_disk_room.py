"""DiskRoom: the recorder's pause/resume rule on its file system's free space (the free-space
reading is the hardware boundary here: injected; the real thing: test_disk_full.py)."""
from __future__ import annotations

import logging

from shm_vla.shm.stats import Stats
from shm_vla.workers.disk_room import CHECK_PERIOD_S, RESUME_FACTOR, DiskRoom, free_bytes

MB = 1_000_000


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _room(instance, free, reserve_mb=100.0):
    stats = Stats.create(instance, "record")
    clock = Clock()
    room = DiskRoom("/x", reserve_mb, stats, logging.getLogger("test"), free=lambda _: free[0], clock=clock)
    return room, clock, stats


def test_pauses_below_the_reserve_and_resumes_only_well_above_it(instance, caplog):
    free = [500 * MB]
    room, clock, stats = _room(instance, free)
    assert not room.low() and room.free_mb.value == 500.0
    free[0] = 99 * MB
    assert not room.low()                                   # not re-read within the check period
    clock.t += CHECK_PERIOD_S
    with caplog.at_level("WARNING"):
        assert room.low()
    assert "recording paused" in caplog.text and room.paused_gauge.value == 1.0
    free[0] = int(100 * RESUME_FACTOR * MB) - 1             # above the reserve, below the resume level
    clock.t += CHECK_PERIOD_S
    assert room.low()
    free[0] = int(100 * RESUME_FACTOR * MB)
    clock.t += CHECK_PERIOD_S
    assert not room.low() and room.paused_gauge.value == 0.0
    free[0] = 1
    clock.t += CHECK_PERIOD_S
    assert room.low() and room.pauses.value == 2
    stats.close()


def test_an_unreadable_file_system_keeps_the_last_state(instance, caplog):
    free = [500 * MB]
    room, clock, stats = _room(instance, free)

    def gone(_):
        raise FileNotFoundError("no such directory")
    room.free = gone
    with caplog.at_level("WARNING"):
        assert not room.low()
    assert "cannot read the free space" in caplog.text
    stats.close()


def test_free_bytes_reads_the_real_file_system(tmp_path):
    assert free_bytes(str(tmp_path)) > 0
