"""Issue 11 item 2: the camera clock offset against the realistic camera sender.

The real ingest process and the realistic simulated sender (5 cameras on one trigger,
per-camera capture stamps, 4 encoder processes that reorder the frames, 6-120 ms from
stamp to send), with the sender's clock 4.2 s behind ours. The simulator stamps each
frame with its true capture time on its clock, so the truth of every capture time the
ingest writes (capture_mono_ns) is known here: (stamp - sender offset) on our wall clock,
moved to CLOCK_MONOTONIC.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from procs import spawn, stop, wait_for, write_config
from shm_vla import config, stat_model
from shm_vla.shm import stats as statsmod
from shm_vla.shm.ring import CAPTURE_UNKNOWN_NS, META_DTYPE
from shm_vla.sim import camera
from shm_vla.sim.base import loopback
from shm_vla.streams import N_VIEWS, Streams

# serial: the 2 s convergence is a property of the estimator on an unloaded machine; with
# another test process on both cores the first low-delay frames come later (2.6 s seen)
pytestmark = [pytest.mark.slow, pytest.mark.serial]
SENDER_OFFSET_S = -4.2          # the sender's clock minus ours
RUN_S = 6.0
CONVERGED_S = 2.0               # issue 11: within 2 s of the first frames
# No estimator can see a fixed delay: a capture time on our clock errs late by the
# smallest stamp-to-receipt delay seen (>= the sender's ENCODE_MIN_MS). Converged: within
# this much of the truth; never earlier than the truth (ages are never overestimated).
TOLERANCE_MS = camera.ENCODE_MIN_MS + 10.0
EARLY_SLACK_MS = 0.5            # clock reads in two processes


def _collect(views, records: dict, snapshots: list, cfg):
    meta = np.zeros(15, META_DTYPE)
    for view, ring in enumerate(views):
        k = ring.window(15, None, meta)
        for row in meta[15 - k:]:
            records[(view, int(row["record"]))] = row.copy()
    inputs = stat_model.build_snapshot(cfg, with_gpu=False)["inputs"]["camera"]
    snapshots.append((time.monotonic_ns(), inputs["clock_offset_ms"]))


def _errors_ms(records: dict, wall_minus_mono_ns: int) -> dict:
    """Per view: (receive time ns, error of capture_mono_ns against the truth in ms or nan), by receipt."""
    per_view = {v: [] for v in range(N_VIEWS)}
    for (view, _), row in sorted(records.items()):
        truth_ns = (float(row["src_ts"]) - SENDER_OFFSET_S) * 1e9 - wall_minus_mono_ns
        capture = int(row["capture_mono_ns"])
        error = math.nan if capture == CAPTURE_UNKNOWN_NS else (capture - truth_ns) / 1e6
        per_view[view].append((int(row["recv_mono_ns"]), error))
    return per_view


def _converged_at_ns(errors: list) -> int:
    """Receive time from which every capture time is known and within the tolerance."""
    bad = [i for i, (_, e) in enumerate(errors) if not (abs(e) <= TOLERANCE_MS)]
    return errors[bad[-1] + 1][0] if bad else errors[0][0]


@pytest.mark.timeout(90)
def test_camera_capture_times_converge_within_2_s_despite_reordering(tmp_path, instance):
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    cfg = config.load(instance, cfg_path)
    ingest = spawn("ingest", "camera", "--instance", instance, "--config", str(cfg_path), log=tmp_path / "cam.log")
    records, snapshots = {}, []
    try:
        assert wait_for(lambda: _up(instance), 30), (tmp_path / "cam.log").read_text()
        streams = Streams(cfg)
        views = [streams.attach_view(i) for i in range(N_VIEWS)]
        wall_minus_mono_ns = time.time_ns() - time.monotonic_ns()
        sim = camera.CameraSim(loopback(cfg.camera.bind), camera.camera_names(cfg.camera), cfg.camera.rate_hz,
                               clock_offset_s=SENDER_OFFSET_S, duration_s=RUN_S, profile="realistic")
        with sim:
            while sim.running:
                _collect(views, records, snapshots, cfg)
                time.sleep(0.25)
        time.sleep(0.5)
        _collect(views, records, snapshots, cfg)
        values = statsmod.read_snapshot(instance, "ingest-camera")["values"]
    finally:
        assert stop(ingest) == 0
    assert sim.error is None and sim.out_of_order > 0.25 * sim.sent      # the sender did reorder
    assert len(records) == sim.sent and values["drops"] == 0 and values["sender_restarts"] == 0
    per_view = _errors_ms(records, wall_minus_mono_ns)
    first_ns = min(recv for errors in per_view.values() for recv, _ in errors)
    converged_s = max(_converged_at_ns(errors) - first_ns for errors in per_view.values()) / 1e9
    known = np.array([e for errors in per_view.values() for _, e in errors if not math.isnan(e)])
    assert known.min() >= -EARLY_SLACK_MS, known.min()          # never earlier than the truth
    assert converged_s <= CONVERGED_S, (converged_s, {v: [round(e, 1) for _, e in errs[:12]]
                                                      for v, errs in per_view.items()})
    # the stat snapshot carries the offset once the cameras' clocks are established
    offsets = [(t, o) for t, o in snapshots if t >= first_ns + CONVERGED_S * 1e9]
    assert offsets and all(o is not None for _, o in offsets), snapshots
    true_wall_offset_ms = -SENDER_OFFSET_S * 1e3
    assert all(0 <= o - true_wall_offset_ms <= TOLERANCE_MS for _, o in offsets), offsets
    late = np.array([e for errors in per_view.values() for recv, e in errors if recv >= first_ns + 2e9])
    first_offset_s = min(t for t, o in snapshots if o is not None) / 1e9 - first_ns / 1e9
    print(f"camera clock: converged {converged_s:.2f} s after the first frame; capture-time error after "
          f"2 s p50 {np.median(late):.1f} ms, p99 {np.percentile(late, 99):.1f}, max {late.max():.1f}; "
          f"stat clock_offset_ms non-null in {sum(o is not None for _, o in snapshots)} of {len(snapshots)} "
          f"snapshots ({len(offsets)} of {len(offsets)} after 2 s, the first {first_offset_s:.2f} s after the "
          f"first frame); {sim.out_of_order} of {sim.sent} frames out of order")


def _up(instance):
    try:
        return statsmod.read_snapshot(instance, "ingest-camera")["state"] == "up"
    except Exception:
        return False
