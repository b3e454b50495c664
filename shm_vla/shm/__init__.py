"""The shared-memory layer: segments, seqlock rings, futex notification, stats."""
from .ring import META_DTYPE, ReadTimeout, Ring, SinceResult, WriterDied
from .segment import IncompatibleStream, LayoutMismatch, SegmentMissing, ShmError, ShmFull, WriterBusy
from .stats import Stats

__all__ = ["META_DTYPE", "ReadTimeout", "Ring", "SinceResult", "WriterDied", "LayoutMismatch",
           "IncompatibleStream", "SegmentMissing", "ShmError", "ShmFull", "WriterBusy", "Stats"]
