"""Per-stage times of the action tick (issue 11 item 5), on the CPU.

The CUDA stream/graph path runs here through a fake of the hardware boundary
(``TickRunner(cuda_ops=FakeCudaOps())``): CPU tensors, a "graph" that re-runs the Python
body captured once (as torch runs it once at capture), events that read a clock when
recorded. The real CUDA path is covered by tests/gpu/test_stage_timing_gpu.py.

Stage mapping: a fake clock (the runner's host clock and the fake events') that only forward
hooks advance, by a different amount in each stage: every stage's time is exact, so a time
reported in the wrong field is caught, whatever the machine's load.
"""
from __future__ import annotations

import contextlib
import math
import types

import numpy as np
import pytest

from shm_vla.model import TickRunner, load_checkpoint
from shm_vla.model import runner as runner_module
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.model.runner import capture_plan, check_stage_times

STAGE_MS = {"sensor": 2, "robot": 30, "action": 500}


class FakeClock:
    """Nanoseconds that move only when told to."""

    def __init__(self):
        self.ns = 1_000_000_000

    def perf_counter_ns(self) -> int:
        return self.ns

    def advance(self, ms: float) -> None:
        self.ns += int(ms * 1e6)


class FakeEvent:
    def __init__(self, clock: FakeClock, records: bool = True):
        self.clock, self.records, self.ns = clock, records, None

    def record(self, stream=None) -> None:
        if self.records:
            self.ns = self.clock.perf_counter_ns()

    def elapsed_time(self, end: "FakeEvent") -> float:
        if self.ns is None or end.ns is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return (end.ns - self.ns) / 1e6


class FakeGraph:
    def __init__(self, body):
        self.body, self.replays = body, 0

    def replay(self) -> None:
        self.replays += 1
        self.body()


class FakeStream:
    def synchronize(self) -> None:
        pass


class FakeCudaOps:
    """CudaOps on the CPU. ``graph_events``: "ok", "refused" (a torch without external events:
    TypeError) or "silent" (captured events that never record, so no time can be read)."""

    def __init__(self, graph_events: str = "ok", clock: FakeClock | None = None):
        self.graph_events = graph_events
        self.clock = clock or FakeClock()
        self.captures = 0

    def stream(self, priority):
        return FakeStream()

    def use(self, stream):
        return contextlib.nullcontext()

    def event(self, in_graph: bool = False):
        if in_graph and self.graph_events == "refused":
            raise TypeError("__new__() got an unexpected keyword argument 'external'")
        return FakeEvent(self.clock, records=not (in_graph and self.graph_events == "silent"))

    def graph_pool(self):
        return None

    def capture(self, body, stream, pool):
        self.captures += 1
        body()                        # torch runs the Python body once, while capturing
        return FakeGraph(body)

    def synchronize(self) -> None:
        pass


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"flow": load_checkpoint(make_checkpoint(d / "flow.pt", "tiny", "flow", seed=1)),
            "regression": load_checkpoint(make_checkpoint(d / "reg.pt", "tiny", "regression", seed=2))}


def _fill(runner, seed=0):
    rng = np.random.default_rng(seed)
    runner.vl_in[:] = rng.standard_normal(runner.vl_in.shape)
    runner.sensor_in[:] = rng.standard_normal(runner.sensor_in.shape)
    runner.robot_in[:] = rng.standard_normal(runner.robot_in.shape)


@pytest.fixture
def clock(monkeypatch):
    """The runner's host clock replaced by a FakeClock (the fake events read it too)."""
    fake = FakeClock()
    monkeypatch.setattr(runner_module, "time", types.SimpleNamespace(perf_counter_ns=fake.perf_counter_ns))
    return fake


@contextlib.contextmanager
def _timed_stages(heads, clock: FakeClock):
    """Each stage advances the clock by STAGE_MS in a forward hook of a module only it runs."""
    def advance(ms):
        return lambda *_: clock.advance(ms)
    handles = [heads.sensor_encoder.register_forward_hook(advance(STAGE_MS["sensor"])),
               heads.robot_state_encoder.register_forward_hook(advance(STAGE_MS["robot"])),
               heads.action_expert.fusion_proj.register_forward_hook(advance(STAGE_MS["action"]))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _runner(models, name, path, timing="events", ops="ok", clock=None):
    """path: "cpu", "eager" (fake CUDA, no graph) or "graph" (fake CUDA graph)."""
    kw = {} if path == "cpu" else {"cuda_ops": FakeCudaOps(ops, clock), "use_cuda_graph": path == "graph"}
    return TickRunner(models[name], stage_timing=timing, **kw)


@pytest.mark.parametrize("name", ["flow", "regression"])
@pytest.mark.parametrize("path,timing", [("cpu", "events"), ("eager", "events"), ("graph", "events"),
                                         ("graph", "graphs")])
def test_each_stage_time_lands_in_its_field(models, clock, name, path, timing):
    runner = _runner(models, name, path, timing, clock=clock)
    assert runner.stage_timing == timing and runner.capture_refused == []
    if path == "graph":
        assert len(runner.graphs) == (3 if timing == "graphs" else 1) and runner.graph_copies == "h2d+d2h"
    _fill(runner)
    with _timed_stages(runner.heads, clock):
        res = runner.run(noise_seed=1)
    assert res.timing_split
    assert (res.sensor_encoding_ms, res.robot_encoding_ms, res.action_prediction_ms) == \
        (STAGE_MS["sensor"], STAGE_MS["robot"], STAGE_MS["action"])
    assert res.total_ms == sum(STAGE_MS.values())


@pytest.mark.parametrize("path", ["cpu", "eager", "graph"])
def test_off_reports_not_measured_never_zero(models, path):
    runner = _runner(models, "flow", path, "off")
    _fill(runner)
    res = runner.run(noise_seed=1)
    assert not res.timing_split and res.total_ms > 0
    assert all(math.isnan(t) for t in (res.sensor_encoding_ms, res.robot_encoding_ms, res.action_prediction_ms))


@pytest.mark.parametrize("timing", ["events", "graphs", "off"])
@pytest.mark.parametrize("name", ["flow", "regression"])
def test_graph_path_gives_the_cpu_actions(models, name, timing):
    """The copies in and out, the per-stage graphs and their static intermediates: same actions."""
    cpu, graph = _runner(models, name, "cpu"), _runner(models, name, "graph", timing)
    for seed in range(3):
        _fill(cpu, seed)
        _fill(graph, seed)
        np.testing.assert_array_equal(graph.run(noise_seed=seed).actions, cpu.run(noise_seed=seed).actions)
    graph.robot_in[-1] += 1.0                        # inputs written after capture reach the graph
    cpu.robot_in[-1] += 1.0
    np.testing.assert_array_equal(graph.run(noise_seed=0).actions, cpu.run(noise_seed=0).actions)


@pytest.mark.parametrize("ops", ["refused", "silent"])
def test_graph_without_usable_events_falls_back_to_off(models, ops):
    runner = _runner(models, "flow", "graph", "events", ops)
    assert runner.stage_timing == "off" and runner.graph_copies == "h2d+d2h"
    assert len(runner.capture_refused) == 3 and all(r.startswith("events with copies") for r in runner.capture_refused)
    assert ("TypeError" if ops == "refused" else "Both events must be recorded") in runner.capture_refused[0]
    _fill(runner)
    res = runner.run(noise_seed=1)
    assert not res.timing_split and math.isnan(res.sensor_encoding_ms) and np.isfinite(res.actions).all()


def test_capture_plan_order_and_refusals():
    plans = ((True, True), (True, False), (False, False))
    tried = []

    def no_d2h(timing, h2d, d2h):
        tried.append((timing, h2d, d2h))
        if d2h:
            raise RuntimeError("d2h copy not capturable")
    assert capture_plan("events", no_d2h, plans)[:3] == ("events", True, False)
    assert tried == [("events", True, True), ("events", True, False)]

    def no_events(timing, h2d, d2h):
        if timing == "events":
            raise TypeError("no external events")
    timing, h2d, d2h, refused = capture_plan("events", no_events, plans)
    assert (timing, h2d, d2h, len(refused)) == ("off", True, True, 3)

    def nothing(timing, h2d, d2h):
        raise RuntimeError("capture unsupported")
    with pytest.raises(RuntimeError, match="could not be captured.*off with copies none"):
        capture_plan("graphs", nothing, plans)


def test_check_stage_times_refuses_what_is_not_a_time():
    clock = FakeClock()
    ev = [FakeEvent(clock) for _ in range(4)]
    for e in ev:
        clock.advance(1.0)
        e.record()
    check_stage_times(ev)
    ev[2].ns = ev[1].ns - 1_000_000                  # negative: events out of order
    with pytest.raises(RuntimeError, match="no usable times"):
        check_stage_times(ev)


def test_unknown_stage_timing_is_refused(models):
    with pytest.raises(ValueError, match="stage_timing"):
        TickRunner(models["flow"], stage_timing="sometimes")
