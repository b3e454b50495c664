"""One attention call per vision block for the Qwen2.5-VL fast path (same math as transformers').

transformers' non-flash path of ``Qwen2_5_VLVisionAttention`` splits the packed sequence at
``cu_seqlens`` with ``lengths.tolist()`` (a device-to-host synchronisation) and runs one attention
call per window. At the deployed size (616x336, 18 windows of at most 64 patches per view) that
is 90 calls in each of the 28 windowed blocks of a 5-view forward, plus a synchronisation per
block: the vision tower becomes launch-bound and CUDA streams cannot overlap.

:func:`install` replaces the forward of every vision attention module with one that treats each
view as a batch row and expresses the windows as a block-diagonal mask, built on the device from
``cu_seqlens`` (no synchronisation): one ``scaled_dot_product_attention`` per block. Windows never
cross views and every view of a call has the same size, which :class:`ViewCount` tells the
modules (the backbone sets it before each forward); anything else falls back to the original
forward. Masked keys get a softmax weight of exactly 0, so the result equals the per-window calls
up to float rounding (tested against transformers on a tiny model).

Flash-attention configurations are left alone: their varlen kernel already takes ``cu_seqlens``.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F


class ViewCount:
    """What the next vision forward holds: ``views`` views of ``patches`` patches each (set by the
    backbone before each forward; a sequence of another length runs the original forward)."""

    def __init__(self):
        self.views = 0
        self.patches = 0
        self._cu = None              # the last window boundaries seen and their mask (one per forward)
        self._mask = None

    def window_mask(self, cu_seqlens: torch.Tensor, views: int, length: int) -> torch.Tensor:
        """(views, 1, L, L) bool: True where query and key share a window (windows within a view)."""
        if self._cu is not cu_seqlens:
            positions = torch.arange(views * length, dtype=cu_seqlens.dtype, device=cu_seqlens.device)
            window = torch.searchsorted(cu_seqlens, positions, right=True).view(views, length)
            self._mask = (window[:, :, None] == window[:, None, :]).unsqueeze(1)
            self._cu = cu_seqlens
        return self._mask


def _batched_forward(attn, original, count: ViewCount, rotary):
    def forward(hidden_states, cu_seqlens, *args, position_embeddings=None, **kwargs):
        seq, n, length = hidden_states.shape[0], count.views, count.patches
        if args or position_embeddings is None or n < 1 or seq != n * length:
            return original(hidden_states, cu_seqlens, *args, position_embeddings=position_embeddings, **kwargs)
        heads = attn.num_heads
        q, k, v = attn.qkv(hidden_states).reshape(seq, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = rotary(q, k, cos, sin)
        q, k, v = (t.reshape(n, length, heads, -1).transpose(1, 2) for t in (q, k, v))      # n, H, L, d
        # n + 1 boundaries: one segment per view (full-attention blocks) -> no mask at all
        mask = None if cu_seqlens.shape[0] == n + 1 else count.window_mask(cu_seqlens, n, length)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
        return attn.proj(out.transpose(1, 2).reshape(seq, -1))
    return forward


def install(model: torch.nn.Module) -> ViewCount | None:
    """Patch the vision attention modules of ``model`` (a Qwen2.5-VL); None, and nothing patched,
    where it does not apply (flash attention configured, or a transformers layout it does not know)."""
    modules = [m for m in model.modules() if type(m).__name__ == "Qwen2_5_VLVisionAttention"]
    if not modules:
        return None
    rotary = getattr(sys.modules[type(modules[0]).__module__], "apply_rotary_pos_emb_vision", None)
    for m in modules:
        impl = getattr(getattr(m, "config", None), "_attn_implementation", None) or "sdpa"
        if "flash" in impl or rotary is None or not all(hasattr(m, a) for a in ("qkv", "proj", "num_heads", "scaling")):
            return None
    installed = getattr(modules[0], "_shm_vla_view_count", None)
    if installed is not None:           # a second backbone over the same model: share the patch
        return installed
    count = ViewCount()
    for m in modules:      # an instance attribute: nn.Module.__call__ finds it before the class's forward
        m.forward = _batched_forward(m, m.forward, count, rotary)
        m._shm_vla_view_count = count
    return count
