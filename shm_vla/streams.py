"""The rings of one pipeline instance: record types and depths, from config.

Names, writers and readers are declared in pipeline.py; this module gives each ring its
record type. Writers create, readers attach, both through these functions, so the two sides
can never disagree on a layout (and if an old segment does, attach fails with a clear error).

    view1..view5   uint8 (H, W, 3) decoded frames; meta src_ts = capture time (sender clock),
                   label = camera name, clock_offset_s = that camera's wall-clock offset (s)
    jpeg1..jpeg5   uint8 (jpeg_max_bytes,) the received JPEG bytes; jpeg_bytes = length
    robot          float32 (12,) joints then pose; force = the force placeholder
    sensor         float32 (ascan_len + 1,) in model order (force first or last);
                   capture_wall_s = src_ts corrected to our wall clock (s)

Each stream's per-stream metadata value has its own name (pipeline.Stream.aux_field; the
ring's meta_dtype); writers pass it as `aux=`.
    vl_feature     VL_DTYPE(vl_dim) one record per VL update
    results        tick.results_dtype(H, A) one record per action tick (fields: tick.py);
                   extras: the sensor and robot windows act reads (what a shadow must read too)
    shadow_results shadow_tick.shadow_dtype(H, A) one record per tick a shadow ran (optional)

Every ring record's meta holds capture_mono_ns: its capture time on our CLOCK_MONOTONIC
through the sender's estimated clock offset (-1 until the offset is established); the
action gate judges freshness by it (ingest/clock.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import pipeline as P
from . import shadow_tick
from . import tick
from .config import Config
from .protocol.robot import ROBOT_DIMS
from .shm.ring import Ring, ring_footprint, ring_layout
from .shm.stats import stats_footprint

N_VIEWS = P.N_VIEWS
# the tick record is declared in tick.py; these are re-exported for their many readers
HOLD_REASONS, DP_DIMS, results_dtype = tick.HOLD_REASONS, tick.DP_DIMS, tick.results_dtype


def view_stream(i: int) -> str:
    return P.VIEWS[i]


def jpeg_stream(i: int) -> str:
    return P.JPEGS[i]


def vl_dtype(vl_dim: int) -> np.dtype:
    return np.dtype([
        ("feature", "<f4", (vl_dim,)),
        ("update", "<i8"),                      # 1, 2, ... per VL process lifetime
        ("encode_ms", "<f8"),
        ("capture_ts", "<f8", (N_VIEWS,)),      # each view's capture time, sender clock (s)
        ("capture_local_ts", "<f8", (N_VIEWS,)),  # the same on our wall clock (estimated offset)
        ("capture_mono_ns", "<i8", (N_VIEWS,)),   # the same on our CLOCK_MONOTONIC (what ages use)
        ("frame_recv_mono_ns", "<i8", (N_VIEWS,)),
        ("frame_record", "<i8", (N_VIEWS,)),    # record numbers in view1..5: never encode a set twice
        ("skew_ms", "<f8"),                     # newest minus oldest capture time
    ])


@dataclass(frozen=True)
class RingSpec:
    """One ring of an instance: what its writer creates and how much /dev/shm it takes."""
    stream: str
    dtype: object
    shape: tuple
    depth: int
    extras: dict | None = None

    def footprint(self) -> int:
        return ring_footprint(ring_layout(self.dtype, self.shape, self.depth, self.extras,
                                          P.STREAMS[self.stream].aux_field))


class Streams:
    """Factory for an instance's rings."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.instance = cfg.instance
        self.prefix = cfg.shm.prefix
        self.group = cfg.shm.group

    def _create(self, spec: RingSpec) -> Ring:
        return Ring.create(self.instance, spec.stream, spec.dtype, spec.shape, spec.depth, prefix=self.prefix,
                           group=self.group, extras=spec.extras, aux_field=P.STREAMS[spec.stream].aux_field)

    def _attach(self, stream, dtype, shape, extras: dict | None = None) -> Ring:
        """A refused ring (another layout: LayoutMismatch; another configuration:
        IncompatibleStream) is closed before the error is raised."""
        return Ring.attach(self.instance, stream, dtype, shape, prefix=self.prefix, extras=extras)

    def ring_specs(self, vl_dim: int, horizon: int, action_dim: int, shadow: tuple | None = None) -> list[RingSpec]:
        """Every ring of the instance, as its writer creates it (the create_* methods below);
        shadow: the (horizon, action_dim) of a shadow's head, None without a shadow."""
        return ([self.view_spec(i) for i in range(N_VIEWS)] + [self.jpeg_spec(i) for i in range(N_VIEWS)]
                + [self.robot_spec(), self.sensor_spec(), self.vl_spec(vl_dim),
                   self.results_spec(horizon, action_dim)]
                + ([self.shadow_spec(*shadow)] if shadow else []))

    def footprint(self, vl_dim: int, horizon: int, action_dim: int, stats_processes: int,
                  shadow: tuple | None = None) -> tuple[int, int]:
        """(bytes of /dev/shm, segments) for every ring plus `stats_processes` stats segments."""
        specs = self.ring_specs(vl_dim, horizon, action_dim, shadow)
        return (sum(spec.footprint() for spec in specs) + stats_processes * stats_footprint(),
                len(specs) + stats_processes)

    # camera
    def frame_shape(self) -> tuple:
        return (self.cfg.camera.height, self.cfg.camera.width, 3)

    def view_spec(self, i: int) -> RingSpec:
        return RingSpec(view_stream(i), np.uint8, self.frame_shape(), self.cfg.camera.ring_depth,
                        {"channel_order": self.cfg.camera.channel_order, "view": self.cfg.camera.views[i]})

    def create_view(self, i: int) -> Ring:
        return self._create(self.view_spec(i))

    def attach_view(self, i: int) -> Ring:
        return self._attach(view_stream(i), np.uint8, self.frame_shape(),
                            {"channel_order": self.cfg.camera.channel_order})

    def jpeg_spec(self, i: int) -> RingSpec:
        return RingSpec(jpeg_stream(i), np.uint8, (self.cfg.camera.jpeg_max_bytes,), self.cfg.camera.ring_depth)

    def create_jpeg(self, i: int) -> Ring:
        return self._create(self.jpeg_spec(i))

    def attach_jpeg(self, i: int) -> Ring:
        return self._attach(jpeg_stream(i), np.uint8, (self.cfg.camera.jpeg_max_bytes,))

    # robot, sensor
    def robot_spec(self) -> RingSpec:
        return RingSpec(P.ROBOT, np.float32, (ROBOT_DIMS,), self.cfg.robot.ring_depth)

    def create_robot(self) -> Ring:
        return self._create(self.robot_spec())

    def attach_robot(self) -> Ring:
        return self._attach(P.ROBOT, np.float32, (ROBOT_DIMS,))

    def sensor_spec(self) -> RingSpec:
        return RingSpec(P.SENSOR, np.float32, (self.cfg.sensor_channels,), self.cfg.sensor.ring_depth,
                        {"force_position": self.cfg.sensor.force_position})

    def create_sensor(self) -> Ring:
        return self._create(self.sensor_spec())

    def attach_sensor(self) -> Ring:
        return self._attach(P.SENSOR, np.float32, (self.cfg.sensor_channels,),
                            {"force_position": self.cfg.sensor.force_position})

    # model outputs
    def vl_spec(self, vl_dim: int) -> RingSpec:
        return RingSpec(P.VL_FEATURE, vl_dtype(vl_dim), (), 64)

    def create_vl(self, vl_dim: int) -> Ring:
        return self._create(self.vl_spec(vl_dim))

    def attach_vl(self, vl_dim: int) -> Ring:
        return self._attach(P.VL_FEATURE, vl_dtype(vl_dim), ())

    def results_spec(self, horizon: int, action_dim: int, robot_window: int | None = None) -> RingSpec:
        windows = None if robot_window is None else self.windows(robot_window)
        return RingSpec(P.RESULTS, results_dtype(horizon, action_dim), (), self.cfg.shm.results_depth, windows)

    def windows(self, robot_window: int) -> dict:
        """The input windows (rows) act reads, recorded in the results ring: a shadow reads the same."""
        return {"sensor_window": self.cfg.sensor.window, "robot_window": int(robot_window)}

    def create_results(self, horizon: int, action_dim: int, robot_window: int | None = None) -> Ring:
        return self._create(self.results_spec(horizon, action_dim, robot_window))

    def attach_results(self) -> Ring:
        """The recorder does not know H and A: take them from the segment, checking the kind."""
        return Ring.attach(self.instance, P.RESULTS, prefix=self.prefix, fields=("actions",))

    # the shadow (optional)
    def shadow_spec(self, horizon: int, action_dim: int) -> RingSpec:
        return RingSpec(P.SHADOW_RESULTS, shadow_tick.shadow_dtype(horizon, action_dim), (),
                        self.cfg.shm.results_depth)

    def create_shadow_results(self, horizon: int, action_dim: int) -> Ring:
        return self._create(self.shadow_spec(horizon, action_dim))

    def attach_shadow_results(self) -> Ring:
        """The recorder does not know the shadow's H and A: take them from the segment."""
        return Ring.attach(self.instance, P.SHADOW_RESULTS, prefix=self.prefix,
                           fields=("action_id", "status", "divergence", "checkpoint_sha256"))
