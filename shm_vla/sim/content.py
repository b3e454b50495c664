"""Deterministic, self-checking synthetic content for the simulators.

Each sample carries its counter, and every other value is a function of the counter,
so a consumer can decode the counter and at the same time prove the sample is intact:
a window of decoded counters that steps by exactly 1 is contiguous, ordered, and free
of gaps and duplicates. All values are exact in float32 (small dyadic fractions).

- sensor: A-scan[0..2] hold the counter in 12-bit pieces (/4096), A-scan[i >= 3] is
  ((k + i) mod 4096) / 4096, force is (k mod 256) / 256.
- robot: values12[0..2] hold the counter in 12-bit pieces (/16 deg), the rest is
  ((3k + 17i) mod 4096) / 16.
- camera: a 16 x 9 grid of blocks (40 x 40 px at 640 x 360): block 0 is pure red (proves
  the channel order), then 7 sync bits, 36 data bits (view: 4, counter: 32) and their 36
  complements, each block black or white; the bottom rows carry a fixed texture per
  view so that JPEG sizes and decode costs are realistic.
"""
from __future__ import annotations

import functools

import numpy as np
import simplejpeg

from ..protocol.robot import ROBOT_DIMS

_PIECE_BITS = 12
_PIECE = 1 << _PIECE_BITS
_MASK = _PIECE - 1
COUNTER_LIMIT = 1 << (3 * _PIECE_BITS)   # 2**36 samples: years at 650 Hz


class ContentError(ValueError):
    """Data that is not intact synthetic content (corrupted, reordered or foreign)."""


# --------------------------------------------------------------------------- sensor
def fill_sensor(records: np.ndarray, first_counter: int) -> None:
    """Fill force and A-scan of ``records`` with counters first_counter, first_counter+1, ..."""
    counters = np.arange(first_counter, first_counter + len(records), dtype=np.int64)
    records["ascan"][:] = _sensor_ascan(counters, records.dtype["ascan"].shape[0])
    records["force"] = (counters & 0xFF) / 256.0


def _sensor_ascan(counters: np.ndarray, ascan_len: int) -> np.ndarray:
    if (counters < 0).any() or (counters >= COUNTER_LIMIT).any():
        raise ValueError(f"sensor counters must be in [0, {COUNTER_LIMIT})")
    index = np.arange(ascan_len, dtype=np.int64)
    ascan = ((counters[:, None] + index[None, :]) & _MASK).astype(np.float32)
    for piece in range(min(3, ascan_len)):
        ascan[:, piece] = (counters >> (_PIECE_BITS * piece)) & _MASK
    return ascan / np.float32(_PIECE)


def sensor_counters(data: np.ndarray, force_position: str = "first") -> np.ndarray:
    """Counters of N records (structured) or N model samples (N x (ascan_len + 1)).

    Raises ContentError if any value is not what that counter produces.
    """
    if data.dtype.names:
        ascan, force = data["ascan"], data["force"]
    else:
        force_col = 0 if force_position == "first" else data.shape[-1] - 1
        ascan = data[:, 1:] if force_col == 0 else data[:, :-1]
        force = data[:, force_col]
    pieces = np.rint(np.asarray(ascan[:, :3], dtype=np.float64) * _PIECE).astype(np.int64)
    counters = pieces[:, 0] | (pieces[:, 1] << _PIECE_BITS) | (pieces[:, 2] << (2 * _PIECE_BITS))
    if not (np.array_equal(ascan, _sensor_ascan(counters, ascan.shape[1]))
            and np.array_equal(force, ((counters & 0xFF) / 256.0).astype(np.float32))):
        raise ContentError("sensor data is not intact synthetic content")
    return counters


def sensor_counter(record_or_sample, force_position: str = "first") -> int:
    """Counter of one structured record or one model sample (1-D, ascan_len + 1 floats)."""
    return int(sensor_counters(np.asarray(record_or_sample)[None], force_position)[0])


# --------------------------------------------------------------------------- robot
def robot_values(counter: int) -> np.ndarray:
    """The 12 model floats (6 joints then 6 pose) of robot sample ``counter``."""
    return _robot_values(np.array([counter], dtype=np.int64))[0]


def _robot_values(counters: np.ndarray) -> np.ndarray:
    if (counters < 0).any() or (counters >= COUNTER_LIMIT).any():
        raise ValueError(f"robot counters must be in [0, {COUNTER_LIMIT})")
    index = np.arange(ROBOT_DIMS, dtype=np.int64)
    values = ((3 * counters[:, None] + 17 * index[None, :]) & _MASK).astype(np.float32)
    for piece in range(3):
        values[:, piece] = (counters >> (_PIECE_BITS * piece)) & _MASK
    return values / np.float32(16.0)


def robot_counters(values: np.ndarray) -> np.ndarray:
    """Counters of N x 12 robot values; ContentError unless every value is intact."""
    values = np.asarray(values, dtype=np.float32).reshape(-1, ROBOT_DIMS)
    pieces = np.rint(values[:, :3].astype(np.float64) * 16).astype(np.int64)
    counters = pieces[:, 0] | (pieces[:, 1] << _PIECE_BITS) | (pieces[:, 2] << (2 * _PIECE_BITS))
    if not np.array_equal(values, _robot_values(counters)):
        raise ContentError("robot values are not intact synthetic content")
    return counters


def robot_counter(values12) -> int:
    return int(robot_counters(np.asarray(values12))[0])


# --------------------------------------------------------------------------- camera
GRID_COLS, GRID_ROWS = 16, 9
_SYNC_BITS = (1, 0, 1, 0, 0, 1, 1)
_VIEW_BITS, _COUNTER_BITS = 4, 32
_DATA_BITS = _VIEW_BITS + _COUNTER_BITS
_CODE_BLOCKS = 1 + len(_SYNC_BITS) + 2 * _DATA_BITS          # 80: the top 5 rows
_RED = (255, 0, 0)


def _code_bits(view: int, counter: int) -> np.ndarray:
    if not (0 <= view < (1 << _VIEW_BITS)) or not (0 <= counter < (1 << _COUNTER_BITS)):
        raise ValueError(f"view {view} or counter {counter} out of range")
    data = [(view >> b) & 1 for b in range(_VIEW_BITS)] + [(counter >> b) & 1 for b in range(_COUNTER_BITS)]
    return np.array(list(_SYNC_BITS) + data + [1 - bit for bit in data], dtype=np.uint8)


@functools.lru_cache(maxsize=16)
def _background(view: int, height: int, width: int) -> np.ndarray:
    """A fixed RGB texture per view: smooth colour blobs plus mild noise (read-only)."""
    rng = np.random.default_rng(1000 + view)
    coarse = rng.integers(40, 216, size=(height // 20 + 1, width // 20 + 1, 3)).astype(np.float32)
    smooth = np.repeat(np.repeat(coarse, 20, axis=0), 20, axis=1)[:height, :width]
    image = np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.uint8)
    image.flags.writeable = False
    return image


def frame_image(view: int, counter: int, height: int = 360, width: int = 640) -> np.ndarray:
    """The RGB image of frame ``counter`` of view index ``view``."""
    block_h, block_w = height // GRID_ROWS, width // GRID_COLS
    image = _background(view, height, width).copy()
    levels = np.zeros(GRID_ROWS * GRID_COLS, dtype=np.uint8)
    levels[1:_CODE_BLOCKS] = _code_bits(view, counter) * 255
    code_rows = _CODE_BLOCKS // GRID_COLS
    grid = levels[:code_rows * GRID_COLS].reshape(code_rows, GRID_COLS)
    image[:code_rows * block_h, :GRID_COLS * block_w] = np.repeat(
        np.repeat(grid, block_h, axis=0), block_w, axis=1)[:, :, None]
    image[:block_h, :block_w] = _RED
    return image


def frame_jpeg(view: int, counter: int, quality: int = 75, height: int = 360, width: int = 640) -> bytes:
    """The JPEG (4:2:0, like a camera) of :func:`frame_image`."""
    return simplejpeg.encode_jpeg(frame_image(view, counter, height, width), quality=quality,
                                  colorspace="RGB", colorsubsampling="420")


def _block_levels(image: np.ndarray) -> np.ndarray:
    """Mean of the central half of each code block, (blocks, 3) float."""
    height, width = image.shape[:2]
    block_h, block_w = height // GRID_ROWS, width // GRID_COLS
    code_rows = _CODE_BLOCKS // GRID_COLS
    blocks = image[:code_rows * block_h, :GRID_COLS * block_w].reshape(
        code_rows, block_h, GRID_COLS, block_w, 3)
    centre = blocks[:, block_h // 4:block_h - block_h // 4, :, block_w // 4:block_w - block_w // 4]
    return centre.mean(axis=(1, 3), dtype=np.float64).reshape(-1, 3)


def frame_counter(image: np.ndarray, channel_order: str = "RGB") -> tuple[int, int]:
    """``(view, counter)`` of a decoded frame in ``channel_order``; ContentError if the
    blocks are not a valid code (or the channel order is not the one stated)."""
    levels = _block_levels(image)
    red = levels[0] if channel_order == "RGB" else levels[0][::-1]
    if not (red[0] > 160 and red[1] < 96 and red[2] < 96):
        raise ContentError(f"marker block is not red in {channel_order} order: {np.round(red)}")
    luma = levels[1:_CODE_BLOCKS].mean(axis=1)
    if ((luma > 64) & (luma < 192)).any():
        raise ContentError("a code block is neither black nor white")
    bits = (luma >= 128).astype(np.uint8)
    sync, data, check = np.split(bits, [len(_SYNC_BITS), len(_SYNC_BITS) + _DATA_BITS])
    if tuple(sync) != _SYNC_BITS or not np.array_equal(data, 1 - check):
        raise ContentError("code blocks fail the sync/complement check")
    weights = 1 << np.arange(_DATA_BITS, dtype=np.int64)
    view = int((data[:_VIEW_BITS].astype(np.int64) * weights[:_VIEW_BITS]).sum())
    counter = int((data[_VIEW_BITS:].astype(np.int64) * weights[:_COUNTER_BITS]).sum())
    return view, counter
