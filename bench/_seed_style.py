"""A faithful re-enactment of the seed receiver's action tick: the baseline of the benchmarks
(bench/action_head.py, bench/baseline_threaded.py), not part of the installed package.

What the seed did per 100 ms tick (Real_Inference/Async_inference_receiver.py at 715ce6e, as
described in SEED_CHECKPOINT_FORMAT.md and issue 3): bf16 weights with BatchNorm in float32,
everything under ``torch.autocast(bfloat16)``; fresh tensors built from the host windows and
copied to the device on every call; the sensor and robot encoders; the flow sampler with the
fusion projection **and** the time MLP evaluated at every velocity call; noise from
``torch.randn`` on the device; a ``.cpu()`` synchronisation at the end. It uses this package's
modules (the same math), so only the execution strategy differs from :class:`TickRunner`.
"""
from __future__ import annotations

import numpy as np
import torch

from shm_vla.model.heads import Heads


class SeedStyleTick:
    def __init__(self, heads: Heads, *, device="cpu", flow_steps: int = 10, solver: str = "euler", horizon: int = 8,
                 dtype: torch.dtype = torch.bfloat16, autocast: bool = True):
        self.device = torch.device(device)
        self.heads = heads.converted(dtype, self.device)
        self.flow_steps, self.solver, self.horizon = flow_steps, solver, horizon
        self.autocast = autocast
        self.dtype = dtype

    def _sample(self, vl, sf, rf):
        e = self.heads.action_expert
        x = torch.randn(1, self.horizon, e.action_dim, device=self.device)
        dt = 1.0 / self.flow_steps

        def v(x, t):
            tt = torch.full((1,), t, device=self.device)
            return e.velocity(x, tt, e.condition(vl, sf, rf))        # fusion recomputed at every call
        for i in range(self.flow_steps):
            t = i * dt
            if self.solver == "euler":
                x = x + dt * v(x, t)
            else:
                k1 = v(x, t)
                k2 = v(x + dt / 2 * k1, t + dt / 2)
                k3 = v(x + dt / 2 * k2, t + dt / 2)
                k4 = v(x + dt * k3, t + dt)
                x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return x

    @torch.no_grad()
    def __call__(self, vl: np.ndarray, sensor: np.ndarray, robot: np.ndarray) -> np.ndarray:
        """Host arrays (V,), (Ts, C), (Tr, 12) -> actions (H, A) numpy."""
        vl_t = torch.tensor(vl, dtype=torch.float32).view(1, 1, -1).to(self.device)
        s_t = torch.tensor(sensor, dtype=torch.float32).unsqueeze(0).to(self.device)
        r_t = torch.tensor(robot, dtype=torch.float32).unsqueeze(0).to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
            sf = self.heads.sensor_encoder(s_t)
            rf = self.heads.robot_state_encoder(r_t)
            if self.heads.is_flow:
                out = self._sample(vl_t, sf, rf)
            else:
                z = torch.zeros(1, self.heads.horizon, self.heads.sizes.action_dim, device=self.device)
                out, _ = self.heads.action_expert(vl_t, z, sf, rf)
        return out.float().cpu().numpy()[0]
