"""VL backbones behind one small interface.

``make_backbone(model_cfg, vl_dim, device) -> Backbone``; ``backbone.encode(views)`` takes the
five uint8 RGB views ``(5, H, W, 3)`` and returns the VL feature ``(vl_dim,)`` float32: per view
the mean over all tokens of the last hidden state, then the mean over the views (as deployed).

* ``compact``: a small built-in ViT-style encoder with a learned prompt embedding, seeded random
  weights (no files), sized to the checkpoint's VL dim. The default for demos, tests and CPUs.
* ``qwen2.5-vl``: Qwen2.5-VL through ``transformers`` (optional extra ``.[qwen]``), loaded from
  ``model.backbone_dir`` offline; ``vl_model.*`` checkpoint tensors override its weights.
"""
from __future__ import annotations

from typing import Any

import numpy as np

PROMPT_TEMPLATE = (
    "You are an expert robot operator for a delicate insertion task. Your goal is to guide the robot to insert "
    "its tool into the '{task}' target. Analyze the image and determine the next action. Output your analysis "
    "in this format: 1) Target Analysis: [FULLY_VISIBLE/PARTIALLY_VISIBLE/NOT_VISIBLE], [FAR/MID/NEAR/TOUCHING]. "
    "2) Current State: [Briefly describe the tool-target relationship]. 3) Next Action: [Choose ONE: "
    "MOVE_FORWARD, MOVE_BACKWARD, MOVE_LEFT, MOVE_RIGHT, MOVE_UP, MOVE_DOWN, ROTATE_CW, ROTATE_CCW, "
    "ALIGN_TARGET, INSERT, STOP]. 4) Confidence: [HIGH/MEDIUM/LOW]."
)


def format_prompt(task: str) -> str:
    """The deployed prompt for a task name."""
    return PROMPT_TEMPLATE.format(task=task)


class Backbone:
    """Interface: ``encode(views) -> (vl_dim,) float32`` and ``warmup()``."""

    name = "backbone"
    vl_dim: int

    def encode(self, views: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def warmup(self, iterations: int = 2) -> None:
        views = np.zeros((5, 360, 640, 3), np.uint8)
        for _ in range(iterations):
            self.encode(views)

    @staticmethod
    def check_views(views):
        """``views`` as a torch tensor (no copy): a uint8 (N, H, W, 3) numpy array on the host, or
        a uint8 tensor of that shape on any device (frames uploaded from the rings directly)."""
        import torch
        if isinstance(views, np.ndarray) and views.dtype == np.uint8:
            views = torch.from_numpy(views)
        if not isinstance(views, torch.Tensor) or views.dtype != torch.uint8 or views.ndim != 4 \
                or views.shape[-1] != 3:
            raise ValueError(f"views must be uint8 (N, H, W, 3), got "
                             f"{getattr(views, 'dtype', type(views))} {tuple(getattr(views, 'shape', ()))}")
        return views


def make_backbone(model_cfg: Any, vl_dim: int, device: str = "cpu", *, vl_state_dict: dict | None = None,
                  **kwargs) -> Backbone:
    """The backbone named by ``model_cfg.backbone``, producing ``vl_dim``-wide features.

    ``vl_state_dict``: the checkpoint's ``vl_model.*`` tensors (qwen2.5-vl only).
    """
    kind = getattr(model_cfg, "backbone", "compact")
    prompt = format_prompt(getattr(model_cfg, "task", "eye_trocar"))
    if kind == "compact":
        from .compact import CompactBackbone
        return CompactBackbone(vl_dim, seed=int(getattr(model_cfg, "seed", 0)), prompt=prompt, device=device,
                               **kwargs)
    if kind == "qwen2.5-vl":
        from .qwen import QwenBackbone
        return QwenBackbone(getattr(model_cfg, "backbone_dir", ""), vl_dim, prompt=prompt, device=device,
                            vl_state_dict=vl_state_dict, **kwargs)
    raise ValueError(f"unknown backbone {kind!r} (choose compact or qwen2.5-vl)")
