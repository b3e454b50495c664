"""Building blocks of the heads, written from SEED_CHECKPOINT_FORMAT.md (sections 4-8).

Parameter names and shapes follow the deployed checkpoints exactly, so that a head's
``state_dict()`` has the same keys as the training code's modules (``self_attn.in_proj_weight``,
``linear1``, ``norm1`` ...). Every module here is inference-only: dropout is dropped (it is inert
in eval mode and has no parameters), BatchNorm always uses its running statistics.

dtype policy: weights may be float32 or bfloat16; BatchNorm tensors stay float32 (the format
requires it) and :class:`BatchNorm1d` computes in float32 and returns the input's dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_HEADS = 8          # every attention block of the format (not inferable from a checkpoint)
FF_MULT = 4            # feed-forward width = 4 x model width
EPS = 1e-5             # LayerNorm and BatchNorm epsilon


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU."""
    return F.gelu(x)


ACTIVATIONS = {"relu": F.relu, "gelu": gelu}


class MultiheadAttention(nn.Module):
    """Batch-first attention with a packed q/k/v projection (rows q, k, v) and 8 heads.

    Matches the parameter layout of the format (section 6): ``in_proj_weight (3d, d)``,
    ``in_proj_bias (3d,)``, ``out_proj`` Linear(d, d). No mask is ever applied.
    """

    def __init__(self, dim: int, num_heads: int = NUM_HEADS):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention if ``key_value`` is None, else cross-attention over ``key_value``."""
        d = self.dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if key_value is None:
            q, k, v = F.linear(query, w, b).split(d, dim=-1)
        else:
            if key_value.shape[1] == 1:
                # One key: the softmax weight is exactly 1, every query gets the value.
                v = F.linear(key_value, w[2 * d:], b[2 * d:])
                return self.out_proj(v).expand(-1, query.shape[1], -1)
            q = F.linear(query, w[:d], b[:d])
            k, v = F.linear(key_value, w[d:], b[d:]).split(d, dim=-1)
        bsz, n, _ = query.shape
        out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        return self.out_proj(out.transpose(1, 2).reshape(bsz, n, d))


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + SA(norm1(x)); x + FF(norm2(x))."""

    def __init__(self, dim: int, activation: str = "relu", num_heads: int = NUM_HEADS):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, FF_MULT * dim)
        self.linear2 = nn.Linear(FF_MULT * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        return x + self.linear2(self.act(self.linear1(self.norm2(x))))


class DecoderLayer(nn.Module):
    """Post-norm transformer decoder layer with exact GELU (regression expert, section 8)."""

    def __init__(self, dim: int):
        super().__init__()
        self.self_attn = MultiheadAttention(dim)
        self.multihead_attn = MultiheadAttention(dim)
        self.linear1 = nn.Linear(dim, FF_MULT * dim)
        self.linear2 = nn.Linear(FF_MULT * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.norm3 = nn.LayerNorm(dim, eps=EPS)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x))
        x = self.norm2(x + self.multihead_attn(x, memory))
        return self.norm3(x + self.linear2(gelu(self.linear1(x))))


class LayerStack(nn.Module):
    """Holds ``layers.0 .. layers.{n-1}`` (the key layout of nn.TransformerEncoder/Decoder)."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, *args)
        return x


class BatchNorm1d(nn.Module):
    """Eval-mode BatchNorm over channels of (B, C, L); statistics and affine kept in float32."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x.float(), self.running_mean, self.running_var, self.weight, self.bias,
                         False, 0.0, EPS)
        return y.to(x.dtype)


class ConvBlock(nn.Module):
    """Residual down-sampler: main = conv-bn-gelu-conv-bn-gelu (stride 2), skip = 1x1 stride-2 conv."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = BatchNorm1d(c_out)
        self.skip = nn.Conv1d(c_in, c_out, 1, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = gelu(self.bn1(self.conv1(x)))
        h = gelu(self.bn2(self.conv2(h)))
        return h + self.skip(x)


def projection(c_in: int, c_out: int) -> nn.Sequential:
    """Indices 0 Linear, 1 LayerNorm, 2 GELU, 3 (dropout, inert), 4 Linear."""
    return nn.Sequential(nn.Linear(c_in, c_out), nn.LayerNorm(c_out, eps=EPS), nn.GELU(),
                         nn.Identity(), nn.Linear(c_out, c_out))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of raw flow time t (B,) in float32: [sin(t*f_k), cos(t*f_k)]."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(k * (-math.log(10000.0) / (half - 1)))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
