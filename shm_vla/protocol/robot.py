"""Robot state (ZeroMQ PUB on the robot PC, 100 Hz), little-endian.

A message is two frames ``[topic, payload]`` with topic ``b"robot_state"``; the payload
is struct ``'<ddf12f'`` (68 bytes): origin timestamp, send timestamp, a force
placeholder, 6 joint angles (deg), 6 pose values (x, y, z in mm; a, b, r in deg).
The model sees 12 floats per sample: the joints then the pose.
"""
from __future__ import annotations

import struct

import numpy as np

from .errors import ProtocolError

ROBOT_TOPIC = b"robot_state"
ROBOT_PAYLOAD = struct.Struct("<ddf12f")
ROBOT_PAYLOAD_BYTES = ROBOT_PAYLOAD.size  # 68
ROBOT_DIMS = 12       # the values of a record the model sees (6 joints, 6 pose): the robot ring's width
ROBOT_STATE_DTYPE = np.dtype([("timestamp", "<f8"), ("send_timestamp", "<f8"), ("force", "<f4"),
                              ("joints", "<f4", (6,)), ("pose", "<f4", (6,))])
assert ROBOT_STATE_DTYPE.itemsize == ROBOT_PAYLOAD_BYTES


def _frame_view(frame) -> memoryview:
    """bytes, bytearray, memoryview or zmq.Frame as a flat byte view (no copy)."""
    view = memoryview(frame)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def parse_robot(frames, out: np.ndarray | None = None, *, topic: bytes = ROBOT_TOPIC) -> np.ndarray:
    """Validate a ``[topic, payload]`` message and copy it into ``out``.

    ``out`` is a caller-provided ROBOT_STATE_DTYPE array of shape () or (1,) (reused per
    message: nothing is allocated but two small views); without it a new record is
    returned. ``out`` is written only when the whole message is valid. Raises
    ProtocolError 'frames', 'topic', 'length' or 'nonfinite' (a NaN/Inf timestamp,
    joint or pose; the force placeholder is not checked because nothing reads it).
    """
    if len(frames) != 2:
        raise ProtocolError("frames", f"{len(frames)} frames, expected [topic, payload]")
    if _frame_view(frames[0]) != topic:
        raise ProtocolError("topic", "unexpected topic")
    payload = _frame_view(frames[1])
    if payload.nbytes != ROBOT_PAYLOAD_BYTES:
        raise ProtocolError("length", f"payload of {payload.nbytes} bytes, expected {ROBOT_PAYLOAD_BYTES}")
    record = np.frombuffer(payload, dtype=ROBOT_STATE_DTYPE, count=1)[0]
    if not (np.isfinite(record["joints"]).all() and np.isfinite(record["pose"]).all()
            and np.isfinite(record["timestamp"]) and np.isfinite(record["send_timestamp"])):
        raise ProtocolError("nonfinite", "NaN or Inf in timestamps, joints or pose")
    if out is None:
        return np.array(record, dtype=ROBOT_STATE_DTYPE)
    out[...] = record
    return out


def model_values(record: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The 12 model floats of a record (joints then pose) into ``out``."""
    out[..., :6] = record["joints"]
    out[..., 6:] = record["pose"]
    return out


def encode_robot(timestamp: float, send_timestamp: float, force: float, joints, pose) -> bytes:
    """The 68-byte payload (send it as ``[ROBOT_TOPIC, payload]``)."""
    if len(joints) != 6 or len(pose) != 6:
        raise ProtocolError("count", "6 joints and 6 pose values are required")
    return ROBOT_PAYLOAD.pack(timestamp, send_timestamp, force, *joints, *pose)
