"""Force + OCT sensor datagrams (UDP, from the C++ sender), little-endian.

A datagram is ``uint32 N`` followed by N records; a record is ``'<ddf'`` (timestamp,
send timestamp, force) then ``ascan_len`` float32 A-scan values (4,120 bytes for the
deployed 1025). A datagram whose length is not ``4 + N * record size`` is invalid.

Parsing is zero-copy: :func:`parse_datagram` returns a structured view into the
caller's receive buffer, so the hot path creates no per-record Python objects.
"""
from __future__ import annotations

import struct

import numpy as np

from .errors import ProtocolError

DEFAULT_ASCAN_LEN = 1025
COUNT_BYTES = 4
_COUNT = struct.Struct("<I")
# The largest UDP payload over IPv4; a receive buffer this size never truncates.
DATAGRAM_MAX_BYTES = 65507
FORCE_POSITIONS = ("first", "last")


def record_dtype(ascan_len: int = DEFAULT_ASCAN_LEN) -> np.dtype:
    """The packed little-endian dtype of one record (itemsize 20 + 4 * ascan_len)."""
    if ascan_len <= 0:
        raise ValueError(f"ascan_len must be > 0, got {ascan_len}")
    return np.dtype([("timestamp", "<f8"), ("send_timestamp", "<f8"), ("force", "<f4"),
                     ("ascan", "<f4", (ascan_len,))])


SENSOR_RECORD_DTYPE = record_dtype(DEFAULT_ASCAN_LEN)


def max_records(dtype: np.dtype) -> int:
    """How many records fit in one UDP datagram."""
    return (DATAGRAM_MAX_BYTES - COUNT_BYTES) // dtype.itemsize


def parse_datagram(buf, nbytes: int, dtype: np.dtype = SENSOR_RECORD_DTYPE) -> np.ndarray:
    """Structured view of the N records in ``buf[:nbytes]`` (no copy).

    ``buf`` is the caller's writable receive buffer (bytearray, memoryview or uint8
    array), reused for the next datagram: copy what you keep before receiving again.
    Raises ProtocolError('length') for a truncated or oversized datagram and
    ProtocolError('count') for N == 0 or an N that disagrees with the length.
    """
    if nbytes < COUNT_BYTES or (nbytes - COUNT_BYTES) % dtype.itemsize:
        raise ProtocolError("length", f"{nbytes} bytes is not 4 + N x {dtype.itemsize}")
    (count,) = _COUNT.unpack_from(buf, 0)
    held = (nbytes - COUNT_BYTES) // dtype.itemsize
    if count == 0 or count != held:
        raise ProtocolError("count", f"header says {count} records, the length holds {held}")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=COUNT_BYTES)


def finite_mask(records: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """True for each record whose timestamps, force and A-scan are all finite."""
    mask = np.isfinite(records["ascan"]).all(axis=1, out=out)
    mask &= np.isfinite(records["force"])
    mask &= np.isfinite(records["timestamp"])
    mask &= np.isfinite(records["send_timestamp"])
    return mask


def encode_datagram(records: np.ndarray) -> bytes:
    """The datagram carrying ``records`` (for the simulator and tests)."""
    if len(records) == 0:
        raise ProtocolError("count", "a datagram needs at least one record")
    return _COUNT.pack(len(records)) + np.ascontiguousarray(records).tobytes()


def write_count(buf, count: int) -> None:
    """Write the record-count header into a preallocated datagram buffer."""
    _COUNT.pack_into(buf, 0, count)


def sample_width(ascan_len: int = DEFAULT_ASCAN_LEN) -> int:
    """Floats per model sample: force plus the A-scan."""
    return ascan_len + 1


def force_column(force_position: str, width: int) -> int:
    """Column of the force in a model sample of ``width`` floats."""
    if force_position not in FORCE_POSITIONS:
        raise ValueError(f"force_position must be one of {FORCE_POSITIONS}, got {force_position!r}")
    return 0 if force_position == "first" else width - 1


def ascan_columns(force_position: str, width: int) -> slice:
    """Columns of the A-scan in a model sample of ``width`` floats."""
    return slice(1, width) if force_column(force_position, width) == 0 else slice(0, width - 1)


def assemble_samples(records: np.ndarray, out: np.ndarray, force_position: str = "first") -> np.ndarray:
    """Write the model samples of ``records`` into ``out`` (N x (ascan_len + 1) float32).

    "first" gives [force, ascan...] (what the deployed receiver feeds the model);
    "last" gives [ascan..., force] (the force-aware sensor-encoder variant).
    """
    width = out.shape[-1]
    if out.shape[0] != len(records) or width != records.dtype["ascan"].shape[0] + 1:
        raise ValueError(f"out has shape {out.shape}, need ({len(records)}, {records.dtype['ascan'].shape[0] + 1})")
    out[:, force_column(force_position, width)] = records["force"]
    out[:, ascan_columns(force_position, width)] = records["ascan"]
    return out
