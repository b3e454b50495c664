"""The sender clock-offset estimator the gate's capture ages rest on."""
from __future__ import annotations

import numpy as np

from shm_vla.ingest.clock import UNKNOWN_NS, ClockOffset

OFFSET_S = 1000.0           # our monotonic clock minus the sender's


def feed(clock, t0, n, rate_hz, delay_s=0.0005, jitter_s=0.002, seed=0):
    """n messages sent at rate_hz from sender time t0; returns the last receive time (ours)."""
    rng = np.random.default_rng(seed)
    recv = 0.0
    for i in range(n):
        send = t0 + i / rate_hz
        recv = send + OFFSET_S + delay_s + rng.uniform(0, jitter_s)
        assert clock.update(recv, send)
    return recv


def test_no_capture_time_before_the_warmup_then_an_upper_bound_of_the_offset():
    clock = ClockOffset(warmup=10)
    feed(clock, 0.0, 9, 100.0)
    assert not clock.ready and clock.capture_mono_ns(0.05) == UNKNOWN_NS
    feed(clock, 0.09, 200, 100.0)
    # never below the true offset (ages are never overestimated by the estimate) and close to it
    assert OFFSET_S + 0.0005 <= clock.offset_s < OFFSET_S + 0.0006
    assert clock.capture_mono_ns(5.0) >= int((5.0 + OFFSET_S) * 1e9)


def test_a_backlog_longer_than_the_window_cannot_make_old_records_look_fresh():
    """We were stopped for 10 s; then 1,000 queued messages arrive at once (a 500 window)."""
    clock = ClockOffset(warmup=50, window=500)
    recv = feed(clock, 0.0, 1000, 100.0)
    before = clock.offset_s
    resume = recv + 10.0
    for i in range(1000):                     # all sent during the stop, received just now
        send = 10.0 + i / 100.0
        clock.update(resume + i * 1e-5, send)
    assert clock.offset_s <= before + 1e-4 * 21     # at most drift-rate * elapsed, not the 10 s delay
    age_s = resume - (clock.capture_mono_ns(10.0) / 1e9)
    assert age_s > 9.9                              # the oldest of the backlog is seen as ~10 s old


def test_slow_drift_is_followed_and_faster_drops_at_once():
    clock = ClockOffset(warmup=10, window=100)
    rng = np.random.default_rng(1)
    for i in range(3000):                            # sender clock slower by 50 ppm, 30 s at 100 Hz
        send = i / 100.0
        clock.update(send * (1 + 50e-6) + OFFSET_S + 0.0005 + rng.uniform(0, 0.002), send)
    assert abs(clock.offset_s - (OFFSET_S + 30 * 50e-6 + 0.0005)) < 0.0005
    clock.update(40.0 + OFFSET_S - 0.5, 40.0)         # sender stepped forward by 0.5 s
    assert clock.offset_s < OFFSET_S - 0.49


def test_reordering_is_not_a_restart_but_a_large_jump_back_is():
    clock = ClockOffset(warmup=5)
    feed(clock, 100.0, 20, 5.0)
    assert clock.update(100.0 + 3.9 + OFFSET_S + 0.02, 100.0 + 3.6)     # 200 ms out of order
    assert clock.ready and clock.resets == 0
    assert not clock.update(OFFSET_S + 0.5, 0.5)                        # sender restarted from 0
    assert clock.resets == 1 and not clock.ready and clock.capture_mono_ns(0.5) == UNKNOWN_NS


def test_absurd_timestamps_give_no_capture_time_and_do_not_poison_the_estimate():
    clock = ClockOffset(warmup=5)
    feed(clock, 0.0, 20, 100.0)
    offset = clock.offset_s
    assert clock.update(1.0, float("nan"))
    assert clock.offset_s == offset
    assert clock.capture_mono_ns(1e300) == UNKNOWN_NS
    assert clock.capture_mono_ns(float("inf")) == UNKNOWN_NS
