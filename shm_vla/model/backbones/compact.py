"""`compact`: a small ViT-style VL encoder with seeded random weights, for demos, tests and CPUs.

Per view: area-downsample the uint8 frame to a 72x128 grid (factor 5 for 640x360), cut 8x8
patches (9x16 = 144 image tokens), prepend 8 prompt tokens (learned tokens plus a vector derived
once from the prompt's bytes), run 2 pre-norm transformer layers of width ``min(vl_dim, 128)``,
final LayerNorm, project to ``vl_dim`` if narrower (applied after pooling: it is linear). The feature is the mean over all tokens of
that last hidden state, then the mean over views, exactly the deployed pooling. The five views
go through as one batch. No weights are read from anywhere: ``seed`` fixes them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import EncoderLayer
from . import Backbone

GRID = (72, 128)        # downsampled frame (rows, cols)
PATCH = 8
PROMPT_TOKENS = 8
MAX_WIDTH = 128
LAYERS = 2


class _CompactNet(nn.Module):
    def __init__(self, vl_dim: int, prompt: str):
        super().__init__()
        width = min(vl_dim, MAX_WIDTH)
        heads = next(h for h in (8, 4, 2, 1) if width % h == 0)
        n_img = (GRID[0] // PATCH) * (GRID[1] // PATCH)
        self.patch_embed = nn.Conv2d(3, width, PATCH, stride=PATCH)
        self.pos = nn.Parameter(0.02 * torch.randn(1, PROMPT_TOKENS + n_img, width))
        self.prompt_learned = nn.Parameter(0.02 * torch.randn(1, PROMPT_TOKENS, width))
        self.byte_embed = nn.Embedding(256, width)
        self.layers = nn.ModuleList(EncoderLayer(width, "gelu", num_heads=heads) for _ in range(LAYERS))
        self.norm = nn.LayerNorm(width)
        self.out_proj = nn.Linear(width, vl_dim) if width != vl_dim else nn.Identity()
        with torch.no_grad():
            ids = torch.tensor(list(prompt.encode("utf-8")), dtype=torch.long)
            prompt_vec = self.byte_embed(ids).mean(0) if len(ids) else torch.zeros(width)
        self.register_buffer("prompt_tokens", self.prompt_learned.detach() + prompt_vec)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, 72, 128) in [-1, 1] -> feature (vl_dim,)."""
        tokens = self.patch_embed(pixels).flatten(2).transpose(1, 2)           # (N, 144, w)
        x = torch.cat([self.prompt_tokens.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        # last hidden state = out_proj(norm(x)); the projection is linear, so pooling first is the same
        return self.out_proj(self.norm(x).mean(dim=1).mean(dim=0))


class CompactBackbone(Backbone):
    name = "compact"

    def __init__(self, vl_dim: int, *, seed: int = 0, prompt: str = "", device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if vl_dim < 1:
            raise ValueError(f"vl_dim must be positive, got {vl_dim}")
        self.vl_dim = int(vl_dim)
        self.device = torch.device(device)
        self.dtype = dtype
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _CompactNet(self.vl_dim, prompt)
        self.net = net.to(self.device, dtype).eval().requires_grad_(False)
        self._out = np.zeros(self.vl_dim, np.float32)

    def _pixels(self, views: torch.Tensor) -> torch.Tensor:
        x = views.to(self.device, non_blocking=True)                              # (N, H, W, 3) uint8
        x = x.permute(0, 3, 1, 2).to(self.dtype)
        if tuple(x.shape[-2:]) != GRID:
            h, w = x.shape[-2:]
            if h % GRID[0] == 0 and w % GRID[1] == 0:
                x = F.avg_pool2d(x, (h // GRID[0], w // GRID[1]))
            else:
                x = F.adaptive_avg_pool2d(x, GRID)
        return x.mul_(2.0 / 255.0).sub_(1.0)

    def encode(self, views: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (vl_dim,) float32 (``out`` if given, else a new array)."""
        views = self.check_views(views)
        with torch.inference_mode():
            feat = self.net(self._pixels(views)).float().cpu().numpy()
        if out is None:
            return feat.copy()
        out[...] = feat
        return out
