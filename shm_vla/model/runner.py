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
  device-to-host copy are captured in one CUDA graph over static buffers; a tick is one
  ``replay()`` plus one stream synchronisation. If the torch build refuses to capture a copy,
  that copy is issued around the replay instead: first the device-to-host copy (the one older
  builds refuse), then both (``graph_copies`` says which stayed inside: "h2d+d2h", "h2d" or
  "none"; None without a graph).
"""
from __future__ import annotations

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

    Timings are milliseconds. With a CUDA graph the whole device work is one replay, so the
    split is unavailable: ``sensor_encoding_ms`` and ``robot_encoding_ms`` are then 0.0,
    ``action_prediction_ms`` holds the whole replay and ``timing_split`` is False.
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


def _ms(ns: int) -> float:
    return ns / 1e6


class TickRunner:
    """Runs one action tick from the caller-filled input buffers.

    ``horizon`` is the flow-matching horizon; a regression head's horizon comes from the
    checkpoint (``pos_embed``) and ``horizon`` is then ignored. ``seed`` seeds the noise stream
    used when :meth:`run` gets no ``noise_seed`` (None: from the OS). ``stream_priority`` (CUDA)
    is the priority of the runner's stream (lower is higher, e.g. -1). ``compile=True`` runs the
    velocity and the encoders through ``torch.compile`` first (start-up takes longer; off by
    default; benchmarked by ``bench/action_head.py --compile``).
    """

    def __init__(self, loaded, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 flow_steps: int = 10, solver: str = "euler", horizon: int = 8, use_cuda_graph: bool = True,
                 seed: int | None = None, stream_priority: int = 0, warmup: int = 3, compile: bool = False):
        heads: Heads = getattr(loaded, "heads", loaded)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if solver not in SOLVERS:
            raise ValueError(f"unknown flow solver {solver!r} (choose {', '.join(SOLVERS)})")
        if flow_steps < 1:
            raise ValueError(f"flow_steps must be >= 1, got {flow_steps}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda and not torch.cuda.is_available():
            raise RuntimeError(f"TickRunner: device {self.device} requested but CUDA is not available")
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
        pin = self.is_cuda
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

        # ---- CUDA: stream, events, graph
        self.graph = None
        self._h2d_in_graph = self._d2h_in_graph = False
        if self.is_cuda:
            self._stream = torch.cuda.Stream(device=self.device, priority=stream_priority)
            self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            if use_cuda_graph:
                self._capture(warmup)

    # ------------------------------------------------------------------ device work
    def _encode(self):
        h = self.heads
        sf = h.sensor_encoder(self._sensor_d)
        rf = h.robot_state_encoder(self._robot_d)
        return sf, rf

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

    def _body(self, h2d: bool, d2h: bool) -> None:
        if h2d:
            self._h2d()
        sf, rf = self._encode()
        self._predict(sf, rf)
        if d2h:
            self._d2h()

    # Which copies go inside the graph, in order of preference: capturing a copy saves its
    # launch, but some torch builds refuse a device-to-host copy (or any copy) in capture.
    _COPY_PLANS = ((True, True), (True, False), (False, False))

    def _capture(self, warmup: int) -> None:
        """Warm up on the runner's stream, then capture the tick with as many copies as allowed."""
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            for _ in range(max(1, warmup)):
                self._body(True, True)
            self._stream.synchronize()
        for h2d, d2h in self._COPY_PLANS:
            try:
                with torch.inference_mode(), torch.cuda.stream(self._stream):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self._stream):
                        self._body(h2d, d2h)
                    self._stream.synchronize()
            except RuntimeError:
                torch.cuda.synchronize(self.device)
                if h2d or d2h:
                    continue
                raise
            self.graph, self._h2d_in_graph, self._d2h_in_graph = graph, h2d, d2h
            return

    @property
    def graph_copies(self) -> str | None:
        """Which copies the CUDA graph holds: "h2d+d2h", "h2d" or "none"; None without a graph."""
        if self.graph is None:
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
        if not self.is_cuda:
            with torch.inference_mode():
                sf = self.heads.sensor_encoder(self._sensor_d)
                t1 = time.perf_counter_ns()
                rf = self.heads.robot_state_encoder(self._robot_d)
                t2 = time.perf_counter_ns()
                self._predict(sf, rf)
            t3 = time.perf_counter_ns()
            return TickResult(self._actions_view, self._delta_view, _ms(t1 - t0), _ms(t2 - t1), _ms(t3 - t2),
                              _ms(t3 - t0), True, noise_seed)
        return self._run_cuda(t0, noise_seed)

    def _run_cuda(self, t0: int, noise_seed) -> TickResult:
        ev = self._events
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            if self.graph is not None:
                if not self._h2d_in_graph:
                    self._h2d()
                ev[0].record(self._stream)
                self.graph.replay()
                ev[3].record(self._stream)
                if not self._d2h_in_graph:
                    self._d2h()
                self._stream.synchronize()
                total = _ms(time.perf_counter_ns() - t0)
                return TickResult(self._actions_view, self._delta_view, 0.0, 0.0, ev[0].elapsed_time(ev[3]),
                                  total, False, noise_seed)
            self._h2d()
            ev[0].record(self._stream)
            sf = self.heads.sensor_encoder(self._sensor_d)
            ev[1].record(self._stream)
            rf = self.heads.robot_state_encoder(self._robot_d)
            ev[2].record(self._stream)
            self._predict(sf, rf)
            ev[3].record(self._stream)
            self._d2h()
            self._stream.synchronize()
        total = _ms(time.perf_counter_ns() - t0)
        return TickResult(self._actions_view, self._delta_view, ev[0].elapsed_time(ev[1]),
                          ev[1].elapsed_time(ev[2]), ev[2].elapsed_time(ev[3]), total, True, noise_seed)
