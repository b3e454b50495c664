"""The pipeline, declared once: its stages (processes) and streams (shared-memory rings).

This is shm-vla's counterpart of a dataflow file. Every process name (its stats segment,
supervisor child, systemd unit and log name), every stream name (its segment), who writes
and who reads each stream, how often records arrive and the order in which stages stop are
written here and nowhere else; streams.py, the supervisor, shm-vla-stat, the recorder and
the tests derive them from this module, so a rename here is the whole rename.

    camera senders --> ingest-camera --> view1..5, jpeg1..5 --+
    robot PC       --> ingest-robot  --> robot ---------------+--> vl --> vl_feature --+
    sensor         --> ingest-sensor --> sensor --------------+                        |
                                                              +--> act <---------------+
                                                                    |--> robot command socket
                                                                    +--> results --> record
                     the same records, by number  --> shadow (optional, never commands)
                                                          +--> shadow_results --> record

Each stream has exactly one writer. The record types and depths live in streams.py (they
depend on the configuration and the checkpoint); the fields of the results ring, one per
tick, are declared in tick.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

N_VIEWS = 5


@dataclass(frozen=True)
class Stream:
    """One ring of an instance."""
    name: str                                  # segment /<prefix>.<instance>.<name>
    writer: str                                # the stage that creates it
    rate_hz: Callable[[object], float]         # nominal records per second, from the config
    aux_field: str = "aux"                     # the name of its per-stream metadata value ...
    aux: str = ""                              # ... and what that value is
    what: str = ""                             # the record, for people (docs/SHM.md)


@dataclass(frozen=True)
class Stage:
    """One process of an instance."""
    name: str                                  # stats segment, supervisor child, log name
    command: tuple                             # `shm-vla` arguments that run it
    writes: tuple = ()                         # streams it creates
    reads: tuple = ()                          # streams it attaches (waiting for their writers)
    reads_with_save_data: tuple = ()           # ... also, when recording data (record --save-data)
    stop_rank: int = 0                         # `shm-vla run` stops stages in ascending rank
    reads_optional: tuple = ()                 # ... also, once their (optional) writer runs; never waited for
    enabled: Callable[[object], bool] | None = None   # optional stage: runs only when enabled(cfg); None: always

    def runs(self, cfg) -> bool:
        """Whether this configuration runs the stage (every stage but an optional one that is off)."""
        return self.enabled is None or bool(self.enabled(cfg))

    @property
    def unit(self) -> str:
        """Its systemd unit template: shm-vla-<name>@.service."""
        return f"shm-vla-{self.name}@.service"


# --------------------------------------------------------------------------- process names
INGEST_CAMERA, INGEST_ROBOT, INGEST_SENSOR = "ingest-camera", "ingest-robot", "ingest-sensor"
VL, ACT, RECORD = "vl", "act", "record"
SHADOW = "shadow"                              # optional: a candidate checkpoint beside act (shadow.checkpoint)
SUPERVISOR = "supervisor"                      # `shm-vla run` (has a stats segment, no unit)
SIM = "sim"                                    # `shm-vla run --sim`'s simulated peers (neither)

# --------------------------------------------------------------------------- stream names
VIEWS = tuple(f"view{i + 1}" for i in range(N_VIEWS))
JPEGS = tuple(f"jpeg{i + 1}" for i in range(N_VIEWS))
ROBOT, SENSOR, VL_FEATURE, RESULTS = "robot", "sensor", "vl_feature", "results"
SHADOW_RESULTS = "shadow_results"


def _camera_hz(cfg) -> float:
    return cfg.camera.rate_hz


STREAMS = {s.name: s for s in (
    *(Stream(v, INGEST_CAMERA, _camera_hz, "clock_offset_s", "the camera's wall-clock offset estimate (s)",
             what="uint8 HxWx3 decoded frame (channel order in the header)") for v in VIEWS),
    *(Stream(j, INGEST_CAMERA, _camera_hz, "jpeg_bytes", "JPEG length (bytes)", what="the received JPEG bytes")
      for j in JPEGS),
    Stream(ROBOT, INGEST_ROBOT, lambda cfg: cfg.robot.rate_hz, "force", "the robot's force placeholder",
           what="float32 12: joints, pose"),
    Stream(SENSOR, INGEST_SENSOR, lambda cfg: cfg.sensor.rate_hz, "capture_wall_s", "capture time on our wall clock (s)",
           what="float32 ascan_len + 1 in model order (force position in the header)"),
    Stream(VL_FEATURE, VL, lambda cfg: cfg.act.tick_hz / cfg.act.vl_reuse,
           what="feature, update no., encode time, capture times, skew"),
    Stream(RESULTS, ACT, lambda cfg: cfg.act.tick_hz,
           what="one tick: action chunk, command, hold reason, timings, input ages (tick.py)"),
    Stream(SHADOW_RESULTS, SHADOW, lambda cfg: cfg.act.tick_hz,
           what="one shadowed tick: the shadow's chunk, divergence from the live one (shadow_tick.py)"),
)}

STAGES = {s.name: s for s in (
    Stage(INGEST_CAMERA, ("ingest", "camera"), writes=VIEWS + JPEGS, stop_rank=3),
    Stage(INGEST_ROBOT, ("ingest", "robot"), writes=(ROBOT,), stop_rank=3),
    Stage(INGEST_SENSOR, ("ingest", "sensor"), writes=(SENSOR,), stop_rank=3),
    Stage(VL, ("vl",), writes=(VL_FEATURE,), reads=VIEWS, stop_rank=2),
    # act stops first (no new results), then the recorder drains and finalises its files
    Stage(ACT, ("act",), writes=(RESULTS,), reads=(VL_FEATURE, SENSOR, ROBOT), stop_rank=0),
    # after act, the shadow (same rank, declared after it: stopped next), before the recorder
    Stage(SHADOW, ("shadow",), writes=(SHADOW_RESULTS,), reads=(RESULTS, VL_FEATURE, SENSOR, ROBOT), stop_rank=0,
          enabled=lambda cfg: bool(cfg.shadow.checkpoint)),
    Stage(RECORD, ("record",), reads=(RESULTS, VL_FEATURE), reads_with_save_data=JPEGS + (ROBOT, SENSOR),
          stop_rank=1, reads_optional=(SHADOW_RESULTS,)),
)}
SIM_STOP_RANK = 4                              # the simulated peers stop last

# The ingest stage of each input kind (`shm-vla ingest KIND`).
INGEST_STAGES = {stage.command[1]: stage for stage in STAGES.values() if stage.command[0] == "ingest"}


def stop_order(names) -> list[str]:
    """The given process names in the order `shm-vla run` stops them."""
    def rank(name):
        return STAGES[name].stop_rank if name in STAGES else SIM_STOP_RANK
    return sorted(names, key=rank)


def writers_of(stage: Stage, save_data: bool = True) -> set[str]:
    """The stages whose streams this one reads (it starts after them)."""
    reads = stage.reads + (stage.reads_with_save_data if save_data else ()) + stage.reads_optional
    return {STREAMS[s].writer for s in reads}


def stages(cfg) -> list[Stage]:
    """The stages this configuration runs, in declaration order."""
    return [stage for stage in STAGES.values() if stage.runs(cfg)]


def _check() -> None:
    for stream in STREAMS.values():
        assert stream.name in STAGES[stream.writer].writes, stream
    for stage in STAGES.values():
        for s in stage.writes:
            assert STREAMS[s].writer == stage.name, (stage.name, s)
        for s in stage.reads + stage.reads_with_save_data + stage.reads_optional:
            assert s in STREAMS, (stage.name, s)
        for s in stage.reads_optional:          # only an optional stage's stream may be missing
            assert STAGES[STREAMS[s].writer].enabled is not None, (stage.name, s)


_check()
