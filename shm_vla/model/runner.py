"""The action tick: fixed-shape host windows in, one action chunk out, every 100 ms.

:class:`TickRunner` owns preallocated input buffers that the action process fills in place
(``vl_in``, ``sensor_in``, ``robot_in``: numpy float32 views of torch host tensors, pinned on
CUDA), and output buffers that :meth:`TickRunner.run` returns views of.

Per tick it runs: sensor encoder, robot encoder, the condition (fusion of VL, sensor and robot
features) **once**, then the N-step flow sampler with time embeddings precomputed at start-up
(they depend only on the step count and the solver), or the regression decoder with
``z_chunk = 0`` (as deployed). Mathematically identical to the reference sampler, which is
tested.

Modes:

* CPU (tests, demo): eager float32, no copies (the device tensors *are* the host buffers).
* CUDA eager (``use_cuda_graph=False``): the same on a dedicated stream, non-blocking copies
  from pinned memory, timings from CUDA events.
* CUDA graph (default on CUDA): host-to-device copies, both encoders, the sampler and the
  device-to-host copy are captured over static buffers; a tick is replays plus one stream
  synchronisation. If the torch build refuses to capture a copy, that copy is issued around
  the replay instead: first the device-to-host copy (the one older builds refuse), then both
  (``graph_copies`` says which stayed inside: "h2d+d2h", "h2d" or "none"; None without a graph).

Per-stage times (``stage_timing``; ``TickResult`` fields in ms):

* "events" (default): four timing CUDA events are nodes of the one graph (torch's
  ``Event(external=True)``), before the copies in and after each stage; the times are read after
  the tick's own synchronisation (no extra sync, no extra launch).
* "graphs": one graph per stage (sensor, robot, action) replayed in turn, with plain events
  recorded between the replays: two more launches per tick, for builds without graph events.
* "off": no split; the three stage times are NaN ("not measured", never 0) and
  ``timing_split`` is False.

The CPU and CUDA-eager paths split the same stages (host clock / events) unless "off". If the
graph refuses the requested timing at start-up (capture error, or the events give no time after
a first replay), the runner falls back to "off": ``stage_timing`` says what is in effect and
``capture_refused`` why. The sensor stage includes the copies of the inputs to the device where
they are part of it (eager, or captured in the graph), the CPU one the noise draw.

The CUDA calls of the graph path go through :class:`CudaOps` (the hardware boundary): tests run
the same path on the CPU with a fake.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from .heads import Heads, SOLVERS


@dataclass
class TickResult:
    """One tick's output.

    ``actions`` (H, A) and ``delta`` (H, A; regression only, else None) are **views of the
    runner's output buffers**: valid until the next :meth:`TickRunner.run`; copy them to keep.

    Timings are milliseconds. ``sensor_encoding_ms``, ``robot_encoding_ms`` and
    ``action_prediction_ms`` are the stages (see the module docstring); where the split is not
    measured (``stage_timing`` "off") they are NaN and ``timing_split`` is False.
    ``total_ms`` covers the whole call (noise draw, copies, compute, synchronisation).
    """

    actions: np.ndarray
    delta: np.ndarray | None
    sensor_encoding_ms: float
    robot_encoding_ms: float
    action_prediction_ms: float
    total_ms: float
    timing_split: bool = True
    noise_seed: int | None = None


STAGE_TIMINGS = ("events", "graphs", "off")
NOT_MEASURED = float("nan")


def _ms(ns: int) -> float:
    return ns / 1e6


def stage_times(marks) -> tuple[float, float, float]:
    """(sensor, robot, action) ms between four completed timing events."""
    return marks[0].elapsed_time(marks[1]), marks[1].elapsed_time(marks[2]), marks[2].elapsed_time(marks[3])


def check_stage_times(marks) -> None:
    """RuntimeError unless the events give three finite, non-negative times (start-up check)."""
    times = stage_times(marks)
    if not all(np.isfinite(t) and t >= 0 for t in times):
        raise RuntimeError(f"stage events gave no usable times: {times}")


def capture_plan(requested: str, attempt, copy_plans) -> tuple[str, bool, bool, list[str]]:
    """The first (stage timing, h2d, d2h) that ``attempt(timing, h2d, d2h)`` accepts, trying the
    requested timing with each copy plan, then "off"; returns it with the refusals before it.
    RuntimeError (naming every refusal) when none is accepted."""
    refused: list[str] = []
    last_error = None
    for timing in dict.fromkeys((requested, "off")):
        for h2d, d2h in copy_plans:
            try:
                attempt(timing, h2d, d2h)
            except (RuntimeError, TypeError) as exc:
                copies = "+".join(n for n, held in (("h2d", h2d), ("d2h", d2h)) if held) or "none"
                refused.append(f"{timing} with copies {copies}: {type(exc).__name__}: {exc}"[:300])
                last_error = exc
                continue
            return timing, h2d, d2h, refused
    raise RuntimeError("TickRunner: the tick could not be captured in a CUDA graph: " + "; ".join(refused)) \
        from last_error


class CudaOps:
    """Every CUDA call of the stream/graph path, in one place (the hardware boundary)."""

    def __init__(self, device: torch.device):
        self.device = device

    def stream(self, priority: int):
        return torch.cuda.Stream(device=self.device, priority=priority)

    def use(self, stream):
        return torch.cuda.stream(stream)

    def event(self, in_graph: bool = False):
        """A timing event; ``in_graph``: one that becomes a node of a graph being captured."""
        if in_graph:
            return torch.cuda.Event(enable_timing=True, external=True)   # TypeError on torch < 2.8
        return torch.cuda.Event(enable_timing=True)

    def graph_pool(self):
        return torch.cuda.graph_pool_handle()

    def capture(self, body, stream, pool):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            body()
        return graph

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


class TickRunner:
    """Runs one action tick from the caller-filled input buffers.

    ``horizon`` is the flow-matching horizon; a regression head's horizon comes from the
    checkpoint (``pos_embed``) and ``horizon`` is then ignored. ``seed`` seeds the noise stream
    used when :meth:`run` gets no ``noise_seed`` (None: from the OS). ``stream_priority`` (CUDA)
    is the priority of the runner's stream (lower is higher, e.g. -1). ``compile=True`` runs the
    velocity and the encoders through ``torch.compile`` first (start-up takes longer; off by
    default; benchmarked by ``bench/action_head.py --compile``). ``stage_timing``: see the module
    docstring. ``cuda_ops`` (tests): a stand-in for :class:`CudaOps` that runs the CUDA path on
    the CPU.
    """

    def __init__(self, loaded, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 flow_steps: int = 10, solver: str = "euler", horizon: int = 8, use_cuda_graph: bool = True,
                 seed: int | None = None, stream_priority: int = 0, warmup: int = 3, compile: bool = False,
                 stage_timing: str = "events", cuda_ops=None):
        heads: Heads = getattr(loaded, "heads", loaded)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if solver not in SOLVERS:
            raise ValueError(f"unknown flow solver {solver!r} (choose {', '.join(SOLVERS)})")
        if flow_steps < 1:
            raise ValueError(f"flow_steps must be >= 1, got {flow_steps}")
        if stage_timing not in STAGE_TIMINGS:
            raise ValueError(f"unknown stage_timing {stage_timing!r} (choose {', '.join(STAGE_TIMINGS)})")
        self.device = torch.device(device)
        self.dtype = dtype
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"TickRunner: device {self.device} requested but CUDA is not available")
        self._ops = cuda_ops if cuda_ops is not None else CudaOps(self.device) if self.device.type == "cuda" else None
        self.is_cuda = self._ops is not None            # the stream / graph path (a fake one in tests)
        self.stage_timing = stage_timing                # what is in effect (a graph may refuse events)
        self.capture_refused: list[str] = []
        if (dtype == torch.float32 and self.device.type == "cpu" and not compile
                and next(heads.parameters()).dtype == torch.float32):
            self.heads = heads                       # share the loaded float32 CPU modules
        else:
            self.heads = heads.converted(dtype, self.device)
        self.heads.eval()
        self.compiled = bool(compile)
        if compile:
            # torch.compile (inductor, no CUDA graphs of its own) of the per-step velocity and of both
            # encoders: fewer, fused kernels. Shapes are fixed, so it compiles once, during warm-up,
            # and the result is then captured in the runner's own graph like eager code.
            h = self.heads
            h.action_expert.velocity_biased = torch.compile(h.action_expert.velocity_biased, dynamic=False)
            h.sensor_encoder.forward = torch.compile(h.sensor_encoder.forward, dynamic=False)
            h.robot_state_encoder.forward = torch.compile(h.robot_state_encoder.forward, dynamic=False)
        s = heads.sizes
        self.sizes = s
        self.model_type = heads.model_type
        self.is_flow = heads.is_flow
        self.flow_steps = int(flow_steps)
        self.solver = solver
        self.horizon = int(horizon) if self.is_flow else int(s.regression_horizon)
        self.action_dim = s.action_dim
        self.sensor_window = heads.sensor_temporal_length
        self.robot_window = s.robot_window
        self.vl_dim = s.vl_dim
        self.sensor_channels = s.sensor_channels

        H, A = self.horizon, self.action_dim
        pin = self.device.type == "cuda"
        host = lambda *shape: torch.zeros(*shape, dtype=torch.float32, pin_memory=pin)  # noqa: E731
        # ---- caller-facing host buffers (numpy views share memory with the torch tensors)
        self._vl_h = host(1, 1, self.vl_dim)
        self._sensor_h = host(1, self.sensor_window, self.sensor_channels)
        self._robot_h = host(1, self.robot_window, s.robot_input_dim)
        self._x0_h = host(1, H, A)
        self._out_h = host(1, H, A)
        self._delta_h = host(1, H, A) if not self.is_flow else None
        self.vl_in: np.ndarray = self._vl_h.numpy().reshape(self.vl_dim)
        self.sensor_in: np.ndarray = self._sensor_h.numpy()[0]
        self.robot_in: np.ndarray = self._robot_h.numpy()[0]
        self.x0_in: np.ndarray = self._x0_h.numpy()[0]
        self._actions_view = self._out_h.numpy()[0]
        self._delta_view = self._delta_h.numpy()[0] if self._delta_h is not None else None

        # ---- device-side static buffers (the same tensors on CPU)
        if self.is_cuda:
            dev = lambda t: torch.zeros_like(t, device=self.device)  # noqa: E731
            self._vl_d, self._sensor_d, self._robot_d = dev(self._vl_h), dev(self._sensor_h), dev(self._robot_h)
            self._x0_d, self._out_d = dev(self._x0_h), dev(self._out_h)
            self._delta_d = dev(self._delta_h) if self._delta_h is not None else None
        else:
            self._vl_d, self._sensor_d, self._robot_d = self._vl_h, self._sensor_h, self._robot_h
            self._x0_d, self._out_d, self._delta_d = self._x0_h, self._out_h, self._delta_h
        self._zero_chunk = torch.zeros(1, H, A, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            self._time_biases = (self.heads.action_expert.time_biases(self.flow_steps, solver, device=self.device)
                                 if self.is_flow else None)

        # ---- noise: drawn on the CPU (same numbers on every device for a seed)
        self._noise = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        self._seeded = torch.Generator()

        # ---- CUDA: stream, timing events ("marks": before the stages and after each), graphs
        self._stages = (self._encode_sensor, self._encode_robot, self._predict_stage)
        self._sf = self._rf = None                 # the encoders' outputs (static inside a graph)
        self.graphs: tuple = ()
        self._marks = None
        self._h2d_in_graph = self._d2h_in_graph = False
        if self.is_cuda:
            self._stream = self._ops.stream(stream_priority)
            if stage_timing != "off":
                self._marks = [self._ops.event() for _ in range(len(self._stages) + 1)]
            if use_cuda_graph:
                self._capture(warmup)

    # ------------------------------------------------------------------ device work
    def _encode_sensor(self) -> None:
        self._sf = self.heads.sensor_encoder(self._sensor_d)

    def _encode_robot(self) -> None:
        self._rf = self.heads.robot_state_encoder(self._robot_d)

    def _predict_stage(self) -> None:
        self._predict(self._sf, self._rf)

    def _predict(self, sf, rf) -> None:
        expert = self.heads.action_expert
        cond = expert.condition(self._vl_d, sf, rf)
        if self.is_flow:
            x = expert.integrate(self._x0_d, cond, self._time_biases, self.flow_steps, self.solver)
            self._out_d.copy_(x)
        else:
            delta = expert.delta_from_condition(cond)
            self._delta_d.copy_(delta)
            torch.add(self._zero_chunk, delta, out=self._out_d)

    def _h2d(self) -> None:
        for d, h in ((self._vl_d, self._vl_h), (self._sensor_d, self._sensor_h), (self._robot_d, self._robot_h),
                     (self._x0_d, self._x0_h)):
            d.copy_(h, non_blocking=True)

    def _d2h(self) -> None:
        self._out_h.copy_(self._out_d, non_blocking=True)
        if self._delta_h is not None:
            self._delta_h.copy_(self._delta_d, non_blocking=True)

    def _body(self, h2d: bool, d2h: bool, marks=None) -> None:
        """The whole tick on the stream; ``marks``: timing events recorded around the stages."""
        if marks is not None:
            marks[0].record(self._stream)
        if h2d:
            self._h2d()
        for i, stage in enumerate(self._stages, 1):
            stage()
            if marks is not None:
                marks[i].record(self._stream)
        if d2h:
            self._d2h()

    def _stage_body(self, index: int, h2d: bool, d2h: bool) -> None:
        """One stage as its own graph ("graphs"): the copies in go with the first, out with the last."""
        if h2d:
            self._h2d()
        self._stages[index]()
        if d2h:
            self._d2h()

    # Which copies go inside the graph, in order of preference: capturing a copy saves its
    # launch, but some torch builds refuse a device-to-host copy (or any copy) in capture.
    _COPY_PLANS = ((True, True), (True, False), (False, False))

    def _capture(self, warmup: int) -> None:
        """Warm up on the runner's stream, then capture the tick with the requested stage timing
        and as many copies as allowed (see :func:`capture_plan`)."""
        with torch.inference_mode(), self._ops.use(self._stream):
            for _ in range(max(1, warmup)):
                self._body(True, True)
            self._stream.synchronize()
        self.stage_timing, self._h2d_in_graph, self._d2h_in_graph, self.capture_refused = capture_plan(
            self.stage_timing, self._try_capture, self._COPY_PLANS)

    def _try_capture(self, timing: str, h2d: bool, d2h: bool) -> None:
        """Capture for one (timing, copies) plan and, with events, check them on a first replay."""
        ops, stream = self._ops, self._stream
        try:
            marks = None
            if timing != "off":
                marks = [ops.event(in_graph=timing == "events") for _ in range(len(self._stages) + 1)]
            pool = ops.graph_pool()
            last = len(self._stages) - 1
            with torch.inference_mode(), ops.use(stream):
                if timing == "graphs":
                    graphs = tuple(ops.capture(functools.partial(self._stage_body, i, h2d and i == 0, d2h and i == last),
                                               stream, pool) for i in range(last + 1))
                else:
                    graphs = (ops.capture(functools.partial(self._body, h2d, d2h, marks if timing == "events" else None),
                                          stream, pool),)
                stream.synchronize()
                self.graphs, self._marks, self.stage_timing = graphs, marks, timing
                if marks is not None:
                    self._replay()
                    stream.synchronize()
                    check_stage_times(marks)
        except (RuntimeError, TypeError):
            self.graphs, self._marks = (), None
            ops.synchronize()
            raise

    @property
    def graph(self):
        """The (first) CUDA graph, None without one."""
        return self.graphs[0] if self.graphs else None

    @property
    def graph_copies(self) -> str | None:
        """Which copies the CUDA graph holds: "h2d+d2h", "h2d" or "none"; None without a graph."""
        if not self.graphs:
            return None
        inside = [n for n, held in (("h2d", self._h2d_in_graph), ("d2h", self._d2h_in_graph)) if held]
        return "+".join(inside) or "none"

    # ------------------------------------------------------------------ the tick
    def _draw_noise(self, noise_seed: int | None, x0) -> None:
        if not self.is_flow:
            return
        if x0 is not None:
            self.x0_in[...] = np.asarray(x0, dtype=np.float32).reshape(self.x0_in.shape)
            return
        gen = self._seeded.manual_seed(int(noise_seed)) if noise_seed is not None else self._noise
        torch.randn(self._x0_h.shape, generator=gen, out=self._x0_h)

    def run(self, noise_seed: int | None = None, *, x0: np.ndarray | None = None) -> TickResult:
        """One tick from the current contents of ``vl_in``, ``sensor_in`` and ``robot_in``.

        Flow matching draws x0 from ``torch.randn`` on the CPU: with ``noise_seed`` from a
        generator seeded with it (``torch.manual_seed(s); torch.randn(1, H, A)`` gives the same
        numbers), otherwise from the runner's own stream; ``x0`` overrides both.
        """
        t0 = time.perf_counter_ns()
        self._draw_noise(noise_seed, x0)
        if self.is_cuda:
            return self._run_cuda(t0, noise_seed)
        with torch.inference_mode():
            self._encode_sensor()
            t1 = time.perf_counter_ns()
            self._encode_robot()
            t2 = time.perf_counter_ns()
            self._predict_stage()
        t3 = time.perf_counter_ns()
        if self.stage_timing == "off":
            return self._result(t0, noise_seed, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED)
        return self._result(t0, noise_seed, _ms(t1 - t0), _ms(t2 - t1), _ms(t3 - t2), t3)

    def _replay(self) -> None:
        """Replay the graph(s); with "graphs" the marks go between the replays."""
        between = self.stage_timing == "graphs"
        for i, graph in enumerate(self.graphs):
            if between:
                self._marks[i].record(self._stream)
            graph.replay()
        if between:
            self._marks[-1].record(self._stream)

    def _run_cuda(self, t0: int, noise_seed) -> TickResult:
        with torch.inference_mode(), self._ops.use(self._stream):
            if self.graphs:
                if not self._h2d_in_graph:
                    self._h2d()
                self._replay()
                if not self._d2h_in_graph:
                    self._d2h()
            else:
                self._body(True, True, self._marks)
            self._stream.synchronize()
        if self._marks is None:
            return self._result(t0, noise_seed, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED)
        return self._result(t0, noise_seed, *stage_times(self._marks))    # complete: after the sync

    def _result(self, t0: int, noise_seed, sensor_ms: float, robot_ms: float, action_ms: float,
                end_ns: int | None = None) -> TickResult:
        total = _ms((end_ns or time.perf_counter_ns()) - t0)
        split = self._marks is not None if self.is_cuda else self.stage_timing != "off"
        return TickResult(self._actions_view, self._delta_view, sensor_ms, robot_ms, action_ms, total, split,
                          noise_seed)
