"""Issue 11 item 3 against the realistic camera sender: the real camera ingest process,
the realistic simulated sender (one trigger, per-camera stamps, 4 encoder processes that
reorder the frames), and the VL worker in this process. The truth of every set encoded
is in its pixels: each frame carries its trigger number.

A VL budget of 444 ms (4 ticks at 9 Hz) is not a multiple of the 200 ms camera period,
so the moments sets are taken sweep every phase of the trigger cycle, including the tens
of ms in which a trigger's frames are arriving.
"""
from __future__ import annotations


import numpy as np
import pytest

from procs import spawn, stop, wait_for, write_config
from shm_vla import config
from shm_vla.model import make_backbone
from shm_vla.process import Runtime
from shm_vla.shm import stats as statsmod
from shm_vla.sim import camera, content
from shm_vla.sim.base import loopback
from shm_vla.streams import N_VIEWS, Streams
from shm_vla.workers.vl import VlWorker

pytestmark = pytest.mark.slow
VL_DIM = 32
RUN_S = 9.0


class TruthBackbone:
    """The compact backbone, noting the trigger numbers (pixels) of every set it encodes."""

    def __init__(self, backbone):
        self.backbone, self.sets = backbone, []

    def encode(self, frames):
        self.sets.append([content.frame_counter(frames[i])[1] for i in range(N_VIEWS)])
        return self.backbone.encode(frames)


def _up(instance):
    try:
        return statsmod.read_snapshot(instance, "ingest-camera")["state"] == "up"
    except Exception:
        return False


def _run(tmp_path, instance, policy, profile):
    """The VL worker's sets against the simulated sender for RUN_S: (worker counters, truth)."""
    cfg_path, _ = write_config(tmp_path / "cfg.toml")
    cfg = config.load(instance, cfg_path, ["act.tick_hz=9", f"vl.view_policy='{policy}'"])
    ingest = spawn("ingest", "camera", "--instance", instance, "--config", str(cfg_path), log=tmp_path / "cam.log")
    rt = None
    try:
        assert wait_for(lambda: _up(instance), 30), (tmp_path / "cam.log").read_text()
        streams = Streams(cfg)
        views = [streams.attach_view(i) for i in range(N_VIEWS)]
        rt = Runtime(cfg, "vl")
        backbone = TruthBackbone(make_backbone(cfg.model, VL_DIM))
        worker = VlWorker(rt, views, streams.create_vl(VL_DIM), backbone)
        sim = camera.CameraSim(loopback(cfg.camera.bind), camera.camera_names(cfg.camera), cfg.camera.rate_hz,
                               duration_s=RUN_S, profile=profile)
        with sim:
            while sim.running:
                worker.step()
        counted = {name: getattr(worker, name).value for name in ("mixed", "updates", "incomplete")}
    finally:
        assert stop(ingest) == 0
        if rt is not None:
            rt.close()
    assert sim.error is None
    return sim, counted, backbone.sets


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["newest", "same_trigger"])
def test_sets_from_one_trigger_against_the_realistic_sender(tmp_path, instance, policy):
    sim, counted, sets = _run(tmp_path, instance, policy, "realistic")
    assert sim.out_of_order > 0
    mixed = [s for s in sets if len(set(s)) > 1]
    assert len(sets) >= 12, sets
    assert counted["mixed"] == len(mixed), (counted, sets)                  # counted under every policy
    assert counted["updates"] == len(sets)
    if policy == "same_trigger":
        assert mixed == []
        # each set is the newest trigger complete when it was taken: consecutive sets 2-3 triggers apart
        triggers = np.array([s[0] for s in sets])
        assert (np.diff(triggers) >= 1).all()
    else:
        assert mixed, sets                                     # the problem exists with this sender
    print(f"{policy}: {len(mixed)} of {len(sets)} sets mixed two triggers; "
          f"incomplete-trigger timeouts {counted['incomplete']}")


@pytest.mark.timeout(120)
def test_same_trigger_still_encodes_unsynchronised_cameras(tmp_path, instance):
    """The ideal profile's cameras are phase-shifted across the whole period: there is no
    set of one trigger, so the frames nearest each other are taken (and counted as mixed)."""
    _, counted, sets = _run(tmp_path, instance, "same_trigger", "ideal")
    assert len(sets) >= 12 and counted["updates"] == len(sets) and counted["incomplete"] == 0
    assert counted["mixed"] == len(sets)                    # their stamps span 160 ms of the 200
