"""Per-stage times on the CUDA graph path (issue 11 item 5; marker `gpu`, run by bench/gpu_suite.sh).

* "events" (the default): the timing events are nodes of the one graph; every stage has a time
  after the tick's own synchronisation, the sum within the tick;
* "graphs" (one graph per stage) gives the same actions and a split of the same size;
* "off" and a torch that refuses graph events: no split, NaN (never 0), the same actions.

What the timing costs per tick is measured, not asserted: `bench/action_head.py
--compare-stage-timing events,graphs,off` (gpu_suite.sh core, step ah_stage_timing).
The same logic runs on the CPU with a fake CUDA boundary: tests/unit/test_runner_stage_timing.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shm_vla.model import TickRunner, load_checkpoint
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.model.runner import STAGE_TIMINGS

pytestmark = pytest.mark.gpu
TICKS = 30


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {p: load_checkpoint(make_checkpoint(d / f"{p}.pt", p, "flow")) for p in ("tiny", "seed-size")}


def _fill(r, seed=0):
    rng = np.random.default_rng(seed)
    r.vl_in[:] = rng.standard_normal(r.vl_in.shape)
    r.sensor_in[:] = rng.standard_normal(r.sensor_in.shape)
    r.robot_in[:] = rng.standard_normal(r.robot_in.shape)


def _splits(runner, ticks=TICKS):
    """(actions of the last tick, array of (sensor, robot, action, total) ms per tick)."""
    _fill(runner, 3)
    rows = []
    for i in range(ticks):
        res = runner.run(noise_seed=i)
        rows.append((res.sensor_encoding_ms, res.robot_encoding_ms, res.action_prediction_ms, res.total_ms))
    return res.actions.copy(), np.array(rows)


def test_events_in_the_graph_give_every_stage_a_time(models):
    runner = TickRunner(models["seed-size"], device="cuda", dtype=torch.bfloat16)
    assert runner.stage_timing == "events", runner.capture_refused
    assert len(runner.graphs) == 1
    _, rows = _splits(runner)
    assert (rows[:, :3] > 0).all(), rows[:5]
    assert (rows[:, :3].sum(axis=1) <= rows[:, 3]).all(), rows[:5]


def test_every_stage_timing_gives_the_same_actions(models):
    runners = {t: TickRunner(models["seed-size"], device="cuda", dtype=torch.bfloat16, stage_timing=t)
               for t in STAGE_TIMINGS}
    assert [r.stage_timing for r in runners.values()] == list(STAGE_TIMINGS), \
        {t: r.capture_refused for t, r in runners.items()}
    assert len(runners["graphs"].graphs) == 3
    out = {t: _splits(r) for t, r in runners.items()}
    for t in ("graphs", "off"):
        np.testing.assert_allclose(out[t][0], out["events"][0], atol=1e-3, rtol=0)
    assert np.isnan(out["off"][1][:, :3]).all()
    # both splits time the same kernels: medians of the same size (a loose bound: not a benchmark)
    ev, gr = np.median(out["events"][1][:, :3], axis=0), np.median(out["graphs"][1][:, :3], axis=0)
    assert ((ev < 3 * gr + 0.05) & (gr < 3 * ev + 0.05)).all(), (ev, gr)


def test_a_torch_without_graph_events_falls_back_to_no_split(models, monkeypatch):
    real_event = torch.cuda.Event

    def event(*args, external=False, **kwargs):
        if external:
            raise TypeError("__new__() got an unexpected keyword argument 'external'")
        return real_event(*args, **kwargs)
    monkeypatch.setattr(torch.cuda, "Event", event)
    runner = TickRunner(models["tiny"], device="cuda", dtype=torch.bfloat16)
    assert runner.stage_timing == "off" and runner.graph is not None, runner.capture_refused
    assert "TypeError" in runner.capture_refused[0]
    res = runner.run(noise_seed=0)
    assert not res.timing_split and math.isnan(res.sensor_encoding_ms) and np.isfinite(res.actions).all()
