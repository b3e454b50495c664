"""Few attention calls per vision block for the Qwen2.5-VL fast path (same math as transformers').

transformers' non-flash path of ``Qwen2_5_VLVisionAttention`` splits the packed sequence at
``cu_seqlens`` with ``lengths.tolist()`` (a device-to-host synchronisation) and runs one attention
call per window. At the deployed size (616x336: 18 windows per view, 15 of 64 patches and 3 of
32) that is 90 calls in each of the 28 windowed blocks of a 5-view forward, and a
synchronisation in each of the 32 blocks: the vision tower becomes launch-bound and CUDA streams
cannot overlap.

:func:`install` replaces the forward of every vision attention module with one that batches the
windows of equal length: one ``scaled_dot_product_attention`` per distinct window length (2 in
the windowed blocks at the deployed size, 1 in the full-attention blocks), each window attending
to its own keys only, as in transformers; no mask, no padding, no extra arithmetic. Which windows
those are is read from ``cu_seqlens`` once per layout (one synchronisation, at warm-up) and kept:
the layout is a function of the views' grid, which the backbone states before each forward
(:attr:`VisionShape.key`); without it the original forward runs.

Flash-attention configurations are left alone: their varlen kernel already takes ``cu_seqlens``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class _Group:
    index: torch.Tensor | None      # sequence positions of the group's windows, in order (None: all, as is)
    windows: int
    length: int


@dataclass
class _Layout:
    groups: list[_Group]
    inverse: torch.Tensor | None    # sequence position -> row of the concatenated group outputs (None: identity)


def _layout(cu_seqlens: torch.Tensor, seq: int) -> _Layout | None:
    bounds = cu_seqlens.tolist()                                  # the one synchronisation
    starts, lengths = bounds[:-1], [b - a for a, b in zip(bounds, bounds[1:])]
    if not bounds or bounds[0] != 0 or bounds[-1] != seq or min(lengths, default=0) < 0:
        return None
    by_length: dict[int, list[int]] = {}
    for start, n in zip(starts, lengths):
        if n:
            by_length.setdefault(n, []).append(start)
    dev = cu_seqlens.device
    if len(by_length) == 1:              # equal windows (or whole views): a reshape is enough
        (n, group_starts), = by_length.items()
        return _Layout([_Group(None, len(group_starts), n)], None)
    groups, order = [], []
    for n, group_starts in sorted(by_length.items(), reverse=True):
        idx = torch.cat([torch.arange(s, s + n) for s in group_starts])
        order.append(idx)
        groups.append(_Group(idx.to(dev), len(group_starts), n))
    return _Layout(groups, torch.argsort(torch.cat(order)).to(dev))


class VisionShape:
    """The grid of the next vision forward, ``key = (views, grid_h, grid_w)``, set by the backbone
    around each forward (None: run transformers' forward), and the window layouts seen so far."""

    def __init__(self):
        self.key: tuple | None = None
        self._layouts: dict = {}

    def layout(self, cu_seqlens: torch.Tensor, seq: int) -> _Layout | None:
        key = (self.key, int(cu_seqlens.shape[0]), seq)
        if key not in self._layouts:
            self._layouts[key] = _layout(cu_seqlens, seq)
        return self._layouts[key]


def _attend(q, k, v, layout: _Layout, scale: float) -> torch.Tensor:
    """q, k, v (seq, H, d) -> (seq, H*d), each window attending to its own positions."""
    heads, dim = q.shape[1], q.shape[2]
    outs = []
    for g in layout.groups:
        qg, kg, vg = ((t if g.index is None else t.index_select(0, g.index))
                      .view(g.windows, g.length, heads, dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qg, kg, vg, scale=scale)                # windows, H, L, d
        outs.append(out.transpose(1, 2).reshape(g.windows * g.length, heads * dim))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out if layout.inverse is None else out.index_select(0, layout.inverse)


def _grouped_forward(attn, original, shape: VisionShape, rotary):
    def forward(hidden_states, cu_seqlens, *args, position_embeddings=None, **kwargs):
        seq = hidden_states.shape[0]
        layout = None
        if shape.key is not None and not args and position_embeddings is not None:
            layout = shape.layout(cu_seqlens, seq)
        if layout is None:
            return original(hidden_states, cu_seqlens, *args, position_embeddings=position_embeddings, **kwargs)
        q, k, v = attn.qkv(hidden_states).reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = rotary(q, k, cos, sin)
        return attn.proj(_attend(q, k, v, layout, attn.scaling))
    return forward


def install(model: torch.nn.Module) -> VisionShape | None:
    """Patch the vision attention modules of ``model`` (a Qwen2.5-VL); None, and nothing patched,
    where it does not apply (flash attention configured, or a transformers layout it does not know).
    A second call on the same model returns the first one's :class:`VisionShape`."""
    modules = [m for m in model.modules() if type(m).__name__ == "Qwen2_5_VLVisionAttention"]
    if not modules:
        return None
    installed = getattr(modules[0], "_shm_vla_vision_shape", None)
    if installed is not None:
        return installed
    rotary = getattr(sys.modules[type(modules[0]).__module__], "apply_rotary_pos_emb_vision", None)
    for m in modules:
        impl = getattr(getattr(m, "config", None), "_attn_implementation", None) or "sdpa"
        if "flash" in impl or rotary is None or not all(hasattr(m, a) for a in ("qkv", "proj", "num_heads", "scaling")):
            return None
    shape = VisionShape()
    for m in modules:      # an instance attribute: nn.Module.__call__ finds it before the class's forward
        m.forward = _grouped_forward(m, m.forward, shape, rotary)
        m._shm_vla_vision_shape = shape
    return shape
