"""The VLA model: heads (sensor/robot encoders, flow-matching and regression experts), the
checkpoint loader, the action-tick runner and the VL backbones.

Importing this package imports torch; the CLI imports it only for model commands.
"""
from .errors import CheckpointError
from .heads import Heads, HeadSizes, infer_sizes, load_heads
from .checkpoint import LoadedModel, ModelInfo, load_checkpoint
from .runner import TickResult, TickRunner

__all__ = ["CheckpointError", "Heads", "HeadSizes", "infer_sizes", "load_heads", "LoadedModel", "ModelInfo",
           "load_checkpoint", "TickResult", "TickRunner", "make_backbone"]


def make_backbone(*args, **kwargs):
    """See :func:`shm_vla.model.backbones.make_backbone` (imported lazily)."""
    from .backbones import make_backbone as _make
    return _make(*args, **kwargs)
