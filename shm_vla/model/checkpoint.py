"""Load a deployed checkpoint as it is: infer sizes, check them against the config, report.

A checkpoint is either a training checkpoint (a dict with ``model_state_dict``, plus
``epoch``, ``val_loss`` ... which are ignored) or a bare state dict. Files are read with
``torch.load(..., weights_only=True)`` only: nothing is ever unpickled.
"""
from __future__ import annotations

import collections
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .heads import Heads, HeadSizes, load_heads, split_state_dict


@dataclass
class ModelInfo:
    """What the loader inferred from a checkpoint (and the config values it used)."""

    path: str
    model_type: str                  # 'flow_matching' | 'regression'
    sensor_encoder_variant: str      # 'default' | 'force_aware'
    vl_dim: int
    sensor_channels: int
    sensor_hidden: int
    sensor_out: int
    sensor_dist_out: int | None
    force_hidden: int | None
    sensor_window: int               # Ts, from config
    robot_window: int                # Tr, from pos_encoder
    robot_width: int
    hidden_dim: int
    action_dim: int
    horizon: int
    horizon_source: str              # 'checkpoint' (regression pos_embed) | 'config' (flow)
    time_embed_dim: int | None
    fusion_width: int
    sensor_conv_layers: int
    sensor_transformer_layers: int
    robot_layers: int
    expert_layers: int
    num_heads: int
    parameter_count: int
    dtypes: dict                     # head tensors per dtype name, e.g. {'torch.bfloat16': 180, ...}
    ignored_keys: list               # every non-head key (vl_model.* included)
    ignored_summary: dict            # top-level prefix -> count of ignored keys
    vl_key_count: int
    extra: dict = field(default_factory=dict)   # non-tensor entries of a training checkpoint (epoch, val_loss)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    heads: Heads                     # float32 on CPU, eval; TickRunner makes its own device/dtype copy
    info: ModelInfo
    vl_state_dict: dict              # 'vl_model.*' tensors (prefix kept); may be empty
    sizes: HeadSizes


def load_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` (memory-mapped when the format allows); every
    failure is a one-line CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        try:     # mmap: a multi-GB vl_model.* part is not read unless used
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)     # legacy (non-zip) format
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is one clear line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"checkpoint {path}: cannot be read with weights_only=True: "
                              f"{type(exc).__name__}: {first}") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """-> (state dict, other top-level entries). Accepts a training checkpoint or a bare state dict."""
    obj = load_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, got {type(obj).__name__}")
    if "model_state_dict" in obj:
        sd = obj["model_state_dict"]
        extra = {k: v for k, v in obj.items() if k != "model_state_dict"}
    else:
        sd, extra = obj, {}
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint {path}: model_state_dict is not a dict of tensors")
    return sd, extra


def _plain_extra(extra: dict) -> dict:
    """Scalars and strings of a training checkpoint, for reports (state dicts etc. left out)."""
    out = {}
    for k, v in extra.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = v.item()
    return out


def load_state_dict_model(sd: dict, *, path: str = "<state dict>", sensor_window: int = 65,
                          flow_horizon: int = 8, robot_window: int | None = None,
                          sensor_channels: int | None = None, vl_dim: int | None = None,
                          robot_dims: int | None = None, extra: dict | None = None) -> LoadedModel:
    """The work of :func:`load_checkpoint` on an in-memory state dict."""
    head_sd, vl_sd, other = split_state_dict(sd)
    try:
        heads = load_heads(head_sd, sensor_temporal_length=sensor_window, horizon=flow_horizon)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    s = heads.sizes
    checks = [
        (robot_window, s.robot_window, "robot_state_encoder.pos_encoder", "robot window (rows)"),
        (sensor_channels, s.sensor_channels,
         "sensor_encoder.dist_encoder.conv_backbone.0.conv1.weight" if s.sensor_encoder_variant == "force_aware"
         else "sensor_encoder.conv_backbone.0.conv1.weight", "sensor channels"),
        (vl_dim, s.vl_dim, "action_expert.fusion_proj.weight", "VL feature width"),
        (robot_dims, s.robot_input_dim, "robot_state_encoder.input_proj.weight", "robot values per row"),
    ]
    for configured, found, key, what in checks:
        if configured is not None and configured != found:
            raise CheckpointError(f"checkpoint {path}: key {key} gives {what} {found}, but the configuration "
                                  f"says {configured}")
    dtypes = collections.Counter(str(t.dtype) for t in head_sd.values())
    ignored = sorted(list(vl_sd) + other)
    summary = collections.Counter(k.split(".", 1)[0] for k in ignored)
    info = ModelInfo(
        path=str(path), model_type=s.model_type, sensor_encoder_variant=s.sensor_encoder_variant, vl_dim=s.vl_dim,
        sensor_channels=s.sensor_channels, sensor_hidden=s.sensor_hidden, sensor_out=s.sensor_out,
        sensor_dist_out=s.sensor_dist_out, force_hidden=s.force_hidden, sensor_window=sensor_window,
        robot_window=s.robot_window, robot_width=s.robot_width, hidden_dim=s.hidden_dim, action_dim=s.action_dim,
        horizon=heads.horizon, horizon_source="config" if s.model_type == "flow_matching" else "checkpoint",
        time_embed_dim=s.time_embed_dim, fusion_width=s.fusion_width, sensor_conv_layers=s.sensor_conv_layers,
        sensor_transformer_layers=s.sensor_transformer_layers, robot_layers=s.robot_layers,
        expert_layers=s.expert_layers, num_heads=s.num_heads, parameter_count=heads.parameter_count(),
        dtypes=dict(sorted(dtypes.items())), ignored_keys=ignored, ignored_summary=dict(sorted(summary.items())),
        vl_key_count=len(vl_sd), extra=_plain_extra(extra or {}))
    return LoadedModel(heads=heads, info=info, vl_state_dict=vl_sd, sizes=s)


def load_checkpoint(path: str | os.PathLike, model_cfg: Any = None, sensor_window: int = 65,
                    robot_window: int | None = None, *, sensor_channels: int | None = None,
                    vl_dim: int | None = None, robot_dims: int | None = None) -> LoadedModel:
    """Load ``path`` for inference; every contradiction with the config is one CheckpointError.

    ``model_cfg`` (a :class:`shm_vla.config.ModelConfig`, optional) supplies the flow horizon.
    ``robot_window`` / ``sensor_channels`` / ``vl_dim`` / ``robot_dims``, when given, must equal what the
    checkpoint's tensors say; the message names the file, the key and both values.
    """
    if not str(path):
        raise CheckpointError("no checkpoint configured (model.checkpoint is empty; make one with "
                              "`shm-vla make-checkpoint --type flow|regression PATH`)")
    sd, extra = read_checkpoint(path)
    flow_horizon = int(getattr(model_cfg, "flow_horizon", 8)) if model_cfg is not None else 8
    return load_state_dict_model(sd, path=str(path), sensor_window=sensor_window, flow_horizon=flow_horizon,
                                 robot_window=robot_window, sensor_channels=sensor_channels, vl_dim=vl_dim,
                                 robot_dims=robot_dims, extra=extra)
