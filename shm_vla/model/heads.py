"""The four inference heads of the deployed model and a loader that sizes them from a state dict.

Written from SEED_CHECKPOINT_FORMAT.md:

* :class:`SensorEncoder` (section 4) and :class:`ForceAwareSensorEncoder` (section 4A);
* :class:`RobotStateEncoder` (section 5);
* :class:`FlowMatchingExpert` (section 7): Euler / RK4 sampling with N left-end-point steps;
* :class:`RegressionExpert` (section 8).

:func:`load_heads` infers every size the tensors determine (section 10), checks the keys and
shapes itself so that a bad checkpoint gives one clear line, and loads strictly.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..protocol.robot import ROBOT_DIMS
from .errors import CheckpointError
from .layers import (BatchNorm1d, ConvBlock, DecoderLayer, EncoderLayer, LayerStack, NUM_HEADS,
                     projection, timestep_embedding)

HEAD_PREFIXES = ("sensor_encoder.", "robot_state_encoder.", "action_expert.")
ROBOT_INPUT_DIM = ROBOT_DIMS    # the robot encoder takes whole robot records (6 joints, 6 pose values)
SOLVERS = ("euler", "rk4")


# =========================================================================== encoders
class SensorEncoder(nn.Module):
    """Default sensor encoder: (B, T, C) -> (B, So). Resamples T to Ts (linear, half-pixel)."""

    def __init__(self, in_channels: int, temporal_length: int, hidden: int, out_dim: int,
                 num_conv: int = 4, num_layers: int = 2):
        super().__init__()
        self.in_channels = in_channels
        self.temporal_length = temporal_length
        widths = [in_channels, hidden] + [2 * hidden] * (num_conv - 1)
        self.conv_backbone = nn.ModuleList(ConvBlock(widths[i], widths[i + 1]) for i in range(num_conv))
        width = widths[-1]
        self.transformer = LayerStack([EncoderLayer(width, "relu") for _ in range(num_layers)])
        self.projection = projection(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.projection[0].weight.dtype).transpose(1, 2)          # (B, C, T)
        if x.shape[-1] != self.temporal_length:
            x = F.interpolate(x, size=self.temporal_length, mode="linear", align_corners=False)
        for block in self.conv_backbone:
            x = block(x)
        x = self.transformer(x.transpose(1, 2))                             # (B, L, Fs)
        return self.projection(x.mean(dim=1))


class ForceAwareSensorEncoder(nn.Module):
    """Force-aware variant: distance branch on channels [0, C-1), force MLP on the LAST channel.

    Output ``concat(dist (B, Sd), force (B, Fh))``; the force MLP runs per raw row (never
    resampled) and is averaged over the rows afterwards.
    """

    def __init__(self, in_channels: int, temporal_length: int, hidden: int, dist_out: int,
                 force_mlp: int = 64, force_hidden: int = 128, num_conv: int = 4, num_layers: int = 2):
        super().__init__()
        self.in_channels = in_channels
        self.temporal_length = temporal_length
        self.dist_encoder = SensorEncoder(in_channels - 1, temporal_length, hidden, dist_out, num_conv, num_layers)
        self.force_encoder = nn.Sequential(nn.Linear(1, force_mlp), nn.GELU(), nn.LayerNorm(force_mlp, eps=1e-5),
                                           nn.Linear(force_mlp, force_hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = self.dist_encoder(x[..., :-1])
        force = self.force_encoder(x[..., -1:].to(self.force_encoder[0].weight.dtype)).mean(dim=1)
        return torch.cat([dist, force.to(dist.dtype)], dim=-1)


class RobotStateEncoder(nn.Module):
    """(B, Tr, 12) -> (B, So). The window must be exactly Tr rows (no resampling)."""

    def __init__(self, window: int, width: int, out_dim: int, num_layers: int = 3,
                 in_dim: int = ROBOT_INPUT_DIM):
        super().__init__()
        self.window = window
        self.input_proj = nn.Linear(in_dim, width)
        self.pos_encoder = nn.Parameter(torch.zeros(1, window, width))
        self.transformer_encoder = LayerStack([EncoderLayer(width, "gelu") for _ in range(num_layers)])
        self.projection = projection(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.window:
            raise ValueError(f"robot window has {x.shape[1]} rows, the checkpoint's pos_encoder needs {self.window}")
        h = self.input_proj(x.to(self.input_proj.weight.dtype)) + self.pos_encoder
        return self.projection(self.transformer_encoder(h).mean(dim=1))


# =========================================================================== experts
def _fuse(fusion_proj: nn.Linear, vl: torch.Tensor, sf: torch.Tensor, rf: torch.Tensor) -> torch.Tensor:
    """cond = fusion_proj(concat(mean_tokens(vl), sensor, robot)) -> (B, D)."""
    if vl.dim() == 3:
        vl = vl.mean(dim=1)
    dtype = fusion_proj.weight.dtype
    fused = torch.cat([vl.to(dtype), sf.to(dtype), rf.to(dtype)], dim=-1)
    if fused.shape[-1] != fusion_proj.in_features:
        raise ValueError(
            f"fusion width mismatch: vl {vl.shape[-1]} + sensor {sf.shape[-1]} + robot {rf.shape[-1]} = "
            f"{fused.shape[-1]}, but action_expert.fusion_proj expects {fusion_proj.in_features}")
    return fusion_proj(fused)


class FlowMatchingExpert(nn.Module):
    """Velocity field v(x, t | cond) and its N-step sampler (section 7)."""

    def __init__(self, vl_dim: int, sensor_dim: int, hidden: int, action_dim: int,
                 time_dim: int = 256, num_layers: int = 4):
        super().__init__()
        self.action_dim = action_dim
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.fusion_proj = nn.Linear(vl_dim + 2 * sensor_dim, hidden)
        self.action_embed = nn.Linear(action_dim, hidden)
        self.velocity_net = LayerStack([EncoderLayer(hidden, "relu") for _ in range(num_layers)])
        self.output_head = nn.Sequential(nn.LayerNorm(hidden, eps=1e-5), nn.Linear(hidden, action_dim))

    # -- pieces -----------------------------------------------------------------------
    def condition(self, vl: torch.Tensor, sf: torch.Tensor, rf: torch.Tensor) -> torch.Tensor:
        """The fused condition (B, D); independent of x and t, so computed once per sampling call."""
        return _fuse(self.fusion_proj, vl, sf, rf)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """te (B, D) for raw flow times t (B,) in [0, 1]."""
        return self.time_mlp(timestep_embedding(t, self.time_dim).to(self.time_mlp[0].weight.dtype))

    def velocity_biased(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """v for x (B, H, A) given bias = cond + te (B, D); returns float32 (B, H, A)."""
        h = self.action_embed(x.to(self.action_embed.weight.dtype)) + bias[:, None, :]
        return self.output_head(self.velocity_net(h)).float()

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.velocity_biased(x, cond + self.time_embedding(t))

    def time_grid(self, num_steps: int, method: str, batch: int = 1, device=None) -> torch.Tensor:
        """Every flow time the sampler evaluates, in evaluation order: (steps * evals, batch) float32."""
        if method not in SOLVERS:
            raise ValueError(f"unknown flow solver {method!r} (choose {', '.join(SOLVERS)})")
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        dt = 1.0 / num_steps
        times: list[float] = []
        for i in range(num_steps):
            t = i * dt
            times += [t] if method == "euler" else [t, t + dt / 2, t + dt / 2, t + dt]
        return torch.tensor(times, dtype=torch.float32, device=device)[:, None].expand(-1, batch).contiguous()

    def time_biases(self, num_steps: int, method: str, device=None) -> torch.Tensor:
        """te for every evaluation of the sampler, (evals, D): constant for a fixed step count.

        Each row is computed on its own (batch 1), exactly as a per-step evaluation would.
        """
        grid = self.time_grid(num_steps, method, 1, device=device)
        return torch.cat([self.time_embedding(grid[i]) for i in range(grid.shape[0])])

    def integrate(self, x0: torch.Tensor, cond: torch.Tensor, time_biases: torch.Tensor,
                  num_steps: int, method: str) -> torch.Tensor:
        """Run the solver from x0 (float32, not modified) with the condition computed once and
        precomputed te rows (:meth:`time_biases`). Left end points: t = 1 is never evaluated."""
        dt = 1.0 / num_steps
        x = x0
        if method == "euler":
            for i in range(num_steps):
                x = x + dt * self.velocity_biased(x, cond + time_biases[i])
            return x
        for i in range(num_steps):
            b = time_biases[4 * i: 4 * i + 4]
            k1 = self.velocity_biased(x, cond + b[0])
            k2 = self.velocity_biased(x + dt / 2 * k1, cond + b[1])
            k3 = self.velocity_biased(x + dt / 2 * k2, cond + b[2])
            k4 = self.velocity_biased(x + dt * k3, cond + b[3])
            x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return x

    # -- the sampler -------------------------------------------------------------------
    def sample(self, vl: torch.Tensor, sf: torch.Tensor, rf: torch.Tensor, *, x0: torch.Tensor | None = None,
               num_steps: int = 10, method: str = "euler", horizon: int = 8,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions (B, H, A) float32 from x0 (given, or ``torch.randn`` with ``generator``).

        ``x0`` drawn here uses the generator's device (CPU by default) and is moved to the
        model's device, so a seed gives the same noise on every device. The condition is
        computed once per call (it depends on neither x nor t).
        """
        device = self.fusion_proj.weight.device
        if x0 is None:
            x0 = torch.randn(sf.shape[0], horizon, self.action_dim, generator=generator,
                             dtype=torch.float32, device=generator.device if generator is not None else "cpu")
        x0 = x0.to(device=device, dtype=torch.float32)
        cond = self.condition(vl, sf, rf)
        return self.integrate(x0, cond, self.time_biases(num_steps, method, device=device), num_steps, method)

    forward = sample


class RegressionExpert(nn.Module):
    """Post-norm decoder over the learned queries ``pos_embed`` with a 1-token memory (section 8)."""

    def __init__(self, vl_dim: int, sensor_dim: int, hidden: int, action_dim: int, horizon: int,
                 num_layers: int = 4):
        super().__init__()
        if action_dim != 7:
            raise ValueError(f"the regression expert's heads produce 3+3+1 = 7 values, not action_dim {action_dim}")
        self.action_dim = action_dim
        self.horizon = horizon
        self.fusion_proj = nn.Linear(vl_dim + 2 * sensor_dim, hidden)
        self.pos_embed = nn.Parameter(torch.zeros(1, horizon, hidden))
        self.temporal_decoder = LayerStack([DecoderLayer(hidden) for _ in range(num_layers)])
        self.output_head = nn.Sequential(nn.LayerNorm(hidden, eps=1e-5), nn.Linear(hidden, action_dim))  # unused
        self.trans_head = nn.Sequential(nn.LayerNorm(hidden, eps=1e-5), nn.Linear(hidden, 3))
        self.rot_head = nn.Sequential(nn.LayerNorm(hidden, eps=1e-5), nn.Linear(hidden, 3))
        self.grip_head = nn.Sequential(nn.LayerNorm(hidden, eps=1e-5), nn.Linear(hidden, 1))

    def condition(self, vl: torch.Tensor, sf: torch.Tensor, rf: torch.Tensor) -> torch.Tensor:
        return _fuse(self.fusion_proj, vl, sf, rf)

    def delta_from_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """delta (B, H, 7) float32; does not depend on z_chunk."""
        x = self.pos_embed.expand(cond.shape[0], -1, -1)
        x = self.temporal_decoder(x, cond[:, None, :])
        return torch.cat([self.trans_head(x), self.rot_head(x), self.grip_head(x)], dim=-1).float()

    def forward(self, vl: torch.Tensor, z_chunk: torch.Tensor, sf: torch.Tensor, rf: torch.Tensor):
        """Returns ``(actions, delta)`` with ``actions = z_chunk + delta``."""
        delta = self.delta_from_condition(self.condition(vl, sf, rf))
        return z_chunk.float() + delta, delta


# =========================================================================== sizes
@dataclass
class HeadSizes:
    """Everything a head state dict determines (section 10)."""

    model_type: str                 # 'flow_matching' | 'regression'
    sensor_encoder_variant: str     # 'default' | 'force_aware'
    vl_dim: int
    sensor_channels: int            # C, including the force channel
    sensor_hidden: int              # Hs (conv widths Hs, 2Hs, 2Hs, 2Hs)
    sensor_out: int                 # So
    sensor_dist_out: int | None     # Sd (force-aware only)
    force_mlp: int | None           # force MLP inner width (force-aware only)
    force_hidden: int | None        # force feature width (force-aware only)
    sensor_conv_layers: int
    sensor_transformer_layers: int
    robot_window: int               # Tr
    robot_width: int                # R
    robot_input_dim: int
    robot_layers: int
    hidden_dim: int                 # D
    action_dim: int                 # A
    expert_layers: int
    time_embed_dim: int | None      # E (flow only)
    regression_horizon: int | None  # H (regression only)
    fusion_width: int               # V + 2*So
    num_heads: int = NUM_HEADS


def _layer_count(keys, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
    if not idx:
        return 0
    if idx != set(range(max(idx) + 1)):
        raise CheckpointError(f"layer indices under {prefix}* are not contiguous: {sorted(idx)}")
    return max(idx) + 1


def _shape(sd: dict, key: str, ndim: int | None = None) -> tuple:
    if key not in sd:
        raise CheckpointError(f"missing key {key}")
    shape = tuple(sd[key].shape)
    if ndim is not None and len(shape) != ndim:
        raise CheckpointError(f"key {key}: expected a {ndim}-d tensor, got shape {shape}")
    return shape


def infer_sizes(sd: dict) -> HeadSizes:
    """Infer every size of the heads from the head entries of a state dict."""
    keys = list(sd)
    has = lambda p: any(k.startswith(p) for k in keys)  # noqa: E731
    if has("action_expert._dynamic_fusion_proj."):
        raise CheckpointError(
            "action_expert._dynamic_fusion_proj.* present: this checkpoint was trained with a fusion width that "
            "differs from action_expert.fusion_proj (the seed's lazy fallback); refusing to load it")
    for k in ("action_expert.vl_proj.weight", "action_expert.gate.0.weight", "action_expert.cross_attn.in_proj_weight"):
        if k in sd:
            raise CheckpointError(f"key {k}: only the 'concat' fusion strategy is supported")
    if not has("sensor_encoder.") or not has("robot_state_encoder."):
        raise CheckpointError("checkpoint lacks sensor_encoder.* or robot_state_encoder.* keys "
                              "(sensor/robot-disabled models are not supported)")
    if has("action_expert.velocity_net."):
        model_type = "flow_matching"
    elif has("action_expert.temporal_decoder."):
        model_type = "regression"
    else:
        raise CheckpointError("cannot tell the model type: neither action_expert.velocity_net.* (flow matching) "
                              "nor action_expert.temporal_decoder.* (regression) keys exist")

    if has("sensor_encoder.dist_encoder."):
        variant, sp = "force_aware", "sensor_encoder.dist_encoder."
    else:
        variant, sp = "default", "sensor_encoder."
    hs, c_in, _ = _shape(sd, sp + "conv_backbone.0.conv1.weight", 3)
    so_branch = _shape(sd, sp + "projection.4.weight", 2)[0]
    sensor_conv = _layer_count(keys, sp + "conv_backbone.")
    sensor_tf = _layer_count(keys, sp + "transformer.layers.")
    if variant == "force_aware":
        force_mlp = _shape(sd, "sensor_encoder.force_encoder.0.weight", 2)[0]
        force_hidden = _shape(sd, "sensor_encoder.force_encoder.3.weight", 2)[0]
        channels, sd_out, so = c_in + 1, so_branch, so_branch + force_hidden
    else:
        force_mlp = force_hidden = sd_out = None
        channels, so = c_in, so_branch

    _, tr, r = _shape(sd, "robot_state_encoder.pos_encoder", 3)
    robot_in = _shape(sd, "robot_state_encoder.input_proj.weight", 2)[1]
    robot_so = _shape(sd, "robot_state_encoder.projection.4.weight", 2)[0]
    if robot_so != so:
        raise CheckpointError(
            f"key robot_state_encoder.projection.4.weight: robot features are {robot_so} wide but the sensor "
            f"encoder gives {so}; the two must match")
    robot_layers = _layer_count(keys, "robot_state_encoder.transformer_encoder.layers.")

    d, fusion_in = _shape(sd, "action_expert.fusion_proj.weight", 2)
    vl_dim = fusion_in - 2 * so
    if vl_dim <= 0:
        raise CheckpointError(
            f"key action_expert.fusion_proj.weight: input width {fusion_in} leaves no room for VL features after "
            f"sensor {so} + robot {so} (fusion width mismatch)")
    a = _shape(sd, "action_expert.output_head.1.weight", 2)[0]
    if model_type == "flow_matching":
        te_dim = _shape(sd, "action_expert.time_mlp.0.weight", 2)[1]
        expert_layers = _layer_count(keys, "action_expert.velocity_net.layers.")
        reg_h = None
    else:
        te_dim = None
        expert_layers = _layer_count(keys, "action_expert.temporal_decoder.layers.")
        reg_h = _shape(sd, "action_expert.pos_embed", 3)[1]
    sensor_width = hs if sensor_conv == 1 else 2 * hs
    for name, width in (("sensor transformer", sensor_width), ("robot transformer", r), ("action expert", d)):
        if width % NUM_HEADS:
            raise CheckpointError(f"{name} width {width} is not divisible by {NUM_HEADS} attention heads")
    return HeadSizes(model_type=model_type, sensor_encoder_variant=variant, vl_dim=vl_dim, sensor_channels=channels,
                     sensor_hidden=hs, sensor_out=so, sensor_dist_out=sd_out, force_mlp=force_mlp,
                     force_hidden=force_hidden, sensor_conv_layers=sensor_conv, sensor_transformer_layers=sensor_tf,
                     robot_window=tr, robot_width=r, robot_input_dim=robot_in, robot_layers=robot_layers,
                     hidden_dim=d, action_dim=a, expert_layers=expert_layers, time_embed_dim=te_dim,
                     regression_horizon=reg_h, fusion_width=fusion_in)


# =========================================================================== composition
class Heads(nn.Module):
    """sensor_encoder + robot_state_encoder + action_expert, named as in the full model."""

    def __init__(self, sizes: HeadSizes, sensor_temporal_length: int = 65, horizon: int = 8):
        super().__init__()
        s = sizes
        self.sizes = s
        self.model_type = s.model_type
        self.sensor_temporal_length = sensor_temporal_length
        if s.sensor_encoder_variant == "force_aware":
            self.sensor_encoder = ForceAwareSensorEncoder(s.sensor_channels, sensor_temporal_length, s.sensor_hidden,
                                                          s.sensor_dist_out, s.force_mlp, s.force_hidden,
                                                          s.sensor_conv_layers, s.sensor_transformer_layers)
        else:
            self.sensor_encoder = SensorEncoder(s.sensor_channels, sensor_temporal_length, s.sensor_hidden,
                                                s.sensor_out, s.sensor_conv_layers, s.sensor_transformer_layers)
        self.robot_state_encoder = RobotStateEncoder(s.robot_window, s.robot_width, s.sensor_out, s.robot_layers,
                                                     s.robot_input_dim)
        if s.model_type == "flow_matching":
            self.horizon = horizon
            self.action_expert = FlowMatchingExpert(s.vl_dim, s.sensor_out, s.hidden_dim, s.action_dim,
                                                    s.time_embed_dim, s.expert_layers)
        else:
            self.horizon = s.regression_horizon
            self.action_expert = RegressionExpert(s.vl_dim, s.sensor_out, s.hidden_dim, s.action_dim,
                                                  s.regression_horizon, s.expert_layers)

    @property
    def is_flow(self) -> bool:
        return self.model_type == "flow_matching"

    def sample_from(self, vl: torch.Tensor, sf: torch.Tensor, rf: torch.Tensor, *, x0: torch.Tensor | None = None,
                    num_steps: int = 10, method: str = "euler", generator: torch.Generator | None = None,
                    horizon: int | None = None) -> torch.Tensor:
        """Flow matching: actions (B, H, A) from features (the reference sampler)."""
        if not self.is_flow:
            raise TypeError("sample_from is for flow-matching heads; call action_expert(vl, z_chunk, sf, rf)")
        return self.action_expert.sample(vl, sf, rf, x0=x0, num_steps=num_steps, method=method,
                                         horizon=horizon or self.horizon, generator=generator)

    @torch.no_grad()
    def predict(self, vl: torch.Tensor, sensor: torch.Tensor, robot: torch.Tensor, *, x0=None, z_chunk=None,
                num_steps: int = 10, method: str = "euler", generator=None):
        """Whole model from raw inputs: flow -> actions; regression -> (actions, delta)."""
        sf = self.sensor_encoder(sensor)
        rf = self.robot_state_encoder(robot)
        if self.is_flow:
            return self.sample_from(vl, sf, rf, x0=x0, num_steps=num_steps, method=method, generator=generator)
        if z_chunk is None:
            z_chunk = torch.zeros(sf.shape[0], self.horizon, self.sizes.action_dim, device=sf.device)
        return self.action_expert(vl, z_chunk, sf, rf)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def converted(self, dtype: torch.dtype = torch.float32, device="cpu") -> "Heads":
        """A copy on ``device`` with floating weights in ``dtype`` and BatchNorm kept in float32."""
        new = copy.deepcopy(self)
        for module in new.modules():
            keep = isinstance(module, BatchNorm1d)
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is None:
                        continue
                    target = dtype if (t.is_floating_point() and not keep) else t.dtype
                    new_t = t.detach().to(device=device, dtype=target)
                    store[name] = nn.Parameter(new_t, requires_grad=False) if isinstance(t, nn.Parameter) else new_t
        return new.eval()


def split_state_dict(sd: dict) -> tuple[dict, dict, list[str]]:
    """-> (head entries, vl_model.* entries with the prefix kept, every other key)."""
    heads, vl, other = {}, {}, []
    for k, v in sd.items():
        if k.startswith(HEAD_PREFIXES):
            heads[k] = v
        elif k.startswith("vl_model."):
            vl[k] = v
        else:
            other.append(k)
    return heads, vl, other


def check_state_dict(module: nn.Module, sd: dict) -> None:
    """Strict key and shape check with one clear message (before load_state_dict)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {', '.join(missing[:5])}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected key(s) {', '.join(unexpected[:5])}" + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""))
        raise CheckpointError("; ".join(parts))
    for k, t in expected.items():
        if tuple(sd[k].shape) != tuple(t.shape):
            raise CheckpointError(f"key {k}: shape {tuple(sd[k].shape)} does not fit the inferred model, "
                                  f"which needs {tuple(t.shape)}")


def load_heads(state_dict: dict, *, sensor_temporal_length: int = 65, horizon: int = 8,
               dtype: torch.dtype = torch.float32, device="cpu") -> Heads:
    """Build the heads sized from ``state_dict`` and load it strictly (head keys only).

    Non-head keys (``vl_model.*`` and the rest) are ignored and listed in
    ``heads.ignored_keys``. ``horizon`` is the flow-matching horizon (a regression head's comes from
    ``pos_embed``). Weights end in ``dtype`` on ``device``, BatchNorm in float32. Raises
    :class:`CheckpointError` for a missing key, a wrong shape or inconsistent widths.
    """
    head_sd, vl_sd, other = split_state_dict(state_dict)
    sizes = infer_sizes(head_sd)
    try:
        heads = Heads(sizes, sensor_temporal_length=sensor_temporal_length, horizon=horizon)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    check_state_dict(heads, head_sd)
    heads.load_state_dict(head_sd, strict=True)
    heads.eval().requires_grad_(False)
    if dtype != torch.float32 or str(device) != "cpu":
        heads = heads.converted(dtype, device)
    heads.ignored_keys = sorted(list(vl_sd) + other)
    return heads
