"""The one exception every wire-format parser raises for bad input.

``kind`` is a short stable string that the ingest processes use as a counter name
("errors.<kind>"), so a new kind is a new counter: keep the set small and documented.
"""
from __future__ import annotations

# Every kind a parser in shm_vla.protocol can raise, with what it means.
KINDS = {
    "frames": "a ZeroMQ message with the wrong number of frames",
    "topic": "a robot-state message with the wrong topic frame",
    "length": "a payload or datagram whose byte length does not fit the format",
    "count": "a record count (or list length) that is zero or disagrees with the data",
    "nonfinite": "a NaN or Inf where a finite number is required",
    "utf8": "text that is not valid UTF-8",
    "json": "text that is not valid JSON",
    "not_object": "JSON that is not an object",
    "meta_size": "camera metadata larger than the accepted maximum",
    "no_camera": "camera metadata without a string 'camera'",
    "timestamp": "a missing, non-numeric or non-finite timestamp",
    "unknown_camera": "a camera name that maps to no view",
    "jpeg": "bytes that libjpeg-turbo cannot decode as a JPEG",
    "jpeg_size": "a JPEG too large (bytes or pixels) to accept",
    "cmd": "a command with a missing or unknown 'cmd'",
    "keys": "a command whose keys are not exactly those of its shape",
    "type": "a command value of the wrong JSON type",
}


class ProtocolError(ValueError):
    """Bad input on a wire; ``kind`` is one of KINDS."""

    def __init__(self, kind: str, detail: str = "") -> None:
        if kind not in KINDS:  # a programming error: a kind nobody counts
            raise AssertionError(f"unknown ProtocolError kind {kind!r}")
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
