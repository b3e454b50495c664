"""Camera frames (ZeroMQ PUSH from the board PC -> our PULL, 5 cameras at 5 Hz).

A message is two frames ``[UTF-8 JSON metadata, JPEG bytes]``. The metadata object has
"camera" (str) and "timestamp" (float: the sender's time.time() at capture); other keys
are ignored. Camera names map to views (:class:`CameraMapper`); JPEGs are decoded by
libjpeg-turbo (simplejpeg) straight into a caller buffer (:class:`JpegDecoder`).
"""
from __future__ import annotations

import json
import math

import numpy as np
import simplejpeg

from .errors import ProtocolError

META_MAX_BYTES = 64 * 1024          # real metadata is ~100 bytes; bound what json.loads sees
CHANNEL_ORDERS = ("RGB", "BGR")
# A JPEG may be at most this many times the target size per axis: libjpeg-turbo scales
# down by up to 8 while decoding, so a hostile header cannot make us allocate gigabytes.
MAX_SCALE = 8


def split_camera_message(frames) -> tuple:
    """``(metadata_frame, jpeg_frame)``; ProtocolError('frames') unless exactly 2 frames."""
    if len(frames) != 2:
        raise ProtocolError("frames", f"{len(frames)} frames, expected [metadata, jpeg]")
    return frames[0], frames[1]


def parse_camera_meta(frame, max_bytes: int = META_MAX_BYTES) -> tuple[str, float]:
    """``(camera, timestamp)`` from the metadata frame, or ProtocolError."""
    raw = memoryview(frame)
    if raw.nbytes > max_bytes:
        raise ProtocolError("meta_size", f"{raw.nbytes} bytes of metadata")
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("utf8", "metadata is not UTF-8") from None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("json", "metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise ProtocolError("not_object", f"metadata is a {type(meta).__name__}")
    camera = meta.get("camera")
    if not isinstance(camera, str):
        raise ProtocolError("no_camera", "metadata has no string 'camera'")
    return camera, _finite_timestamp(meta.get("timestamp"))


def _finite_timestamp(value) -> float:
    # bool is an int in Python, but true/false is no timestamp
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("timestamp", f"timestamp {value!r} is not a number")
    try:
        stamp = float(value)
    except OverflowError:
        raise ProtocolError("timestamp", "timestamp out of range") from None
    if not math.isfinite(stamp):
        raise ProtocolError("timestamp", "timestamp is not finite")
    return stamp


def parse_camera(frames, max_meta_bytes: int = META_MAX_BYTES) -> tuple[str, float, object]:
    """``(camera, timestamp, jpeg_frame)`` of a whole message (the JPEG is not decoded)."""
    meta, jpeg = split_camera_message(frames)
    camera, stamp = parse_camera_meta(meta, max_meta_bytes)
    return camera, stamp, jpeg


class CameraMapper:
    """Camera name -> view index in ``camera_cfg.views``.

    Rules, in order: a configured view name ("View1".."View5") maps to itself; a name
    containing "oak" (any case) maps to ``oak_view``; a name containing a configured ZED
    serial and "left" maps to that serial's view, and with "right" it is a right image:
    ``None`` (ignored and counted by the caller, not an error). Anything else raises
    ProtocolError('unknown_camera').
    """

    _CACHE_MAX = 64  # names repeat; unknown names are never cached, so this stays small

    def __init__(self, camera_cfg) -> None:
        self._views = list(camera_cfg.views)
        self._oak = self._index(camera_cfg.oak_view, "camera.oak_view")
        self._serials = {str(serial): self._index(view, f"camera.zed_serials.{serial}")
                         for serial, view in camera_cfg.zed_serials.items()}
        self._cache: dict[str, int | None] = {}

    def _index(self, view: str, key: str) -> int:
        if view not in self._views:
            from ..config import ConfigError
            raise ConfigError(f"config key {key}: {view!r} is not one of camera.views {self._views}")
        return self._views.index(view)

    def view_index(self, name: str) -> int | None:
        try:
            return self._cache[name]
        except KeyError:
            pass
        index = self._resolve(name)
        if len(self._cache) < self._CACHE_MAX:
            self._cache[name] = index
        return index

    def view_name(self, index: int) -> str:
        return self._views[index]

    def _resolve(self, name: str) -> int | None:
        if name in self._views:
            return self._views.index(name)
        lower = name.lower()
        if "oak" in lower:
            return self._oak
        matches = [index for serial, index in self._serials.items() if serial in name]
        if len(matches) == 1:
            if "left" in lower and "right" not in lower:
                return matches[0]
            if "right" in lower and "left" not in lower:
                return None
        raise ProtocolError("unknown_camera", f"camera {name[:64]!r} maps to no view")


class JpegDecoder:
    """Decode JPEG bytes into a caller's (height, width, 3) uint8 buffer.

    A JPEG of the target size is decoded in place by libjpeg-turbo (no allocation). Any
    other size is decoded (downscaled by libjpeg-turbo where it can) and then resized
    bilinearly with numpy. On ProtocolError the buffer's content is undefined: decode
    into a slot you only publish on success.
    """

    def __init__(self, width: int, height: int, channel_order: str = "RGB",
                 max_bytes: int = 1 << 20) -> None:
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
        self.width, self.height = width, height
        self.channel_order = channel_order
        self.max_bytes = max_bytes
        self.resized = 0  # frames of another size seen (the ingest may report it)

    @classmethod
    def from_config(cls, camera_cfg) -> "JpegDecoder":
        return cls(camera_cfg.width, camera_cfg.height, camera_cfg.channel_order, camera_cfg.jpeg_max_bytes)

    def decode_into(self, jpeg, out: np.ndarray) -> np.ndarray:
        if out.shape != (self.height, self.width, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {(self.height, self.width, 3)}")
        nbytes = memoryview(jpeg).nbytes
        if nbytes > self.max_bytes:
            raise ProtocolError("jpeg_size", f"{nbytes} bytes of JPEG")
        src_h, src_w = self._header(jpeg)
        try:
            if (src_h, src_w) == (self.height, self.width):
                simplejpeg.decode_jpeg(jpeg, self.channel_order, buffer=out)
                return out
            if src_h > MAX_SCALE * self.height or src_w > MAX_SCALE * self.width:
                raise ProtocolError("jpeg_size", f"{src_w}x{src_h} pixels")
            # libjpeg-turbo scales by 1/2..1/8 while decoding, never below the target
            image = simplejpeg.decode_jpeg(jpeg, self.channel_order, min_height=self.height,
                                           min_width=self.width)
        except ValueError as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError("jpeg", str(exc)[:80]) from None
        self.resized += 1
        resize_bilinear(image, out)
        return out

    @staticmethod
    def _header(jpeg) -> tuple[int, int]:
        try:
            src_h, src_w, _, _ = simplejpeg.decode_jpeg_header(jpeg)
        except ValueError as exc:
            raise ProtocolError("jpeg", str(exc)[:80]) from None
        if src_h <= 0 or src_w <= 0:
            raise ProtocolError("jpeg", f"{src_w}x{src_h} pixels")
        return src_h, src_w


def _axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weight along one axis, pixel centres aligned (as OpenCV)."""
    pos = (np.arange(dst, dtype=np.float32) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, src - 1)
    low = np.floor(pos).astype(np.intp)
    high = np.minimum(low + 1, src - 1)
    return low, high, (pos - low).astype(np.float32)


def resize_bilinear(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Bilinear resize of an (h, w, c) uint8 image into ``out`` (vectorised; off the
    normal path: only frames that arrive at another size come here)."""
    rows_lo, rows_hi, fy = _axis_weights(image.shape[0], out.shape[0])
    cols_lo, cols_hi, fx = _axis_weights(image.shape[1], out.shape[1])
    top = image[rows_lo].astype(np.float32)
    bottom = image[rows_hi].astype(np.float32)
    rows = top + (bottom - top) * fy[:, None, None]
    left, right = rows[:, cols_lo], rows[:, cols_hi]
    blended = left + (right - left) * fx[None, :, None]
    np.rint(blended, out=blended)
    out[...] = blended.astype(np.uint8, copy=False)
    return out
