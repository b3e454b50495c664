"""What must hold before any stage of an instance starts, checked once with one clear line.

Used by `shm-vla run` before it starts its children, and by `shm-vla check --instance NAME`,
which the systemd instance unit runs before its process units start (so a configuration that
would make six processes fail one by one fails the instance, with one line, instead):

* the configuration loads and the checkpoint (and a shadow checkpoint) load and fit
  (exit 2 on error);
* the instance is not running already (exit 1);
* no input port is held by another program, and the configured groups are usable (exit 2);
* /dev/shm can hold every segment of the instance (exit 75, EXIT_SHM_FULL, as a stage that
  finds it full exits).
"""
from __future__ import annotations

import argparse
import os
import sys

from . import config as configmod
from . import pipeline as P
from .shm import segment as segmod
from .shm.segment import EXIT_SHM_FULL, ShmError, ShmFull

MODEL_TYPES = {"flow": "flow_matching", "regression": "regression"}


def check_checkpoint(cfg, model_type: str | None = None):
    """The checkpoint's info; ConfigError if it holds another model type than asked for."""
    from .model import load_checkpoint
    loaded = load_checkpoint(cfg.model.checkpoint, cfg.model, sensor_window=cfg.sensor.window,
                             sensor_channels=cfg.sensor_channels)
    if model_type is not None and loaded.info.model_type != MODEL_TYPES[model_type]:
        raise configmod.ConfigError(f"model.checkpoint {cfg.model.checkpoint} holds a {loaded.info.model_type} "
                                    f"model, but 'run {model_type}' was asked for")
    return loaded.info


def check_shadow(cfg, info) -> tuple | None:
    """The shadow checkpoint (shadow.checkpoint) loads and fits the live streams, checked like
    act's before anything starts; returns its (horizon, action_dim), None without a shadow."""
    if not cfg.shadow.checkpoint:
        return None
    from .workers.shadow import check_fits, load_shadow
    shadow = load_shadow(cfg).info
    check_fits(shadow, info.vl_dim, info.robot_window, info.action_dim)
    return shadow.horizon, shadow.action_dim


def check_room(cfg, info, stats_processes: int, shadow: tuple | None = None) -> None:
    """ShmFull unless /dev/shm can hold every ring and stats segment of the instance (sizes
    from the code that creates them: streams.py, ring.py, stats.py)."""
    from .streams import Streams
    needed, count = Streams(cfg).footprint(info.vl_dim, info.horizon, info.action_dim, stats_processes, shadow)
    segmod.check_room(needed, f"instance {cfg.instance!r} ({count} segments)")


def check_not_running(cfg) -> None:
    """ShmError if a process of the instance is alive (one of its segments has a live writer)."""
    for name in segmod.instance_segments(cfg.instance, cfg.shm.prefix):
        info = segmod.inspect(name)
        if info.alive:
            raise ShmError(f"instance {cfg.instance!r} is already running ({name} has live writer pid "
                           f"{info.writer_pid}); stop it or choose another --instance")


def check_ports_and_groups(cfg) -> None:
    """What would stop a child with a configuration error: an input port another program
    holds, a group this user cannot give files to."""
    from .ingest.listen import check_ports_free
    check_ports_free(cfg)
    configmod.check_member("shm.group", cfg.shm.group)
    configmod.check_member("record.group", cfg.record.group)


def check_instance(cfg, model_type: str | None, stats_processes: int, claim=check_not_running) -> tuple:
    """Every check, in order; returns (checkpoint info, shadow shape or None). `claim` refuses
    a running instance (`shm-vla run` also removes a previous run's leftovers there).
    Raises CheckpointError / ConfigError / ShmError (ShmFull for /dev/shm); see `refusal`."""
    info = check_checkpoint(cfg, model_type)
    shadow = check_shadow(cfg, info)
    claim(cfg)
    check_ports_and_groups(cfg)
    check_room(cfg, info, stats_processes, shadow)
    return info, shadow


def refusal(exc: Exception, prog: str, shm_full_status: int = EXIT_SHM_FULL) -> int:
    """Print a failed check's one line; its exit status: 2 configuration or checkpoint,
    `shm_full_status` too little /dev/shm, 1 any other shared-memory refusal."""
    from .model import CheckpointError
    print(f"{prog}: {exc}", file=sys.stderr)
    if isinstance(exc, ShmFull):
        return shm_full_status
    if isinstance(exc, (CheckpointError, configmod.ConfigError)):
        return configmod.EXIT_CONFIG_ERROR
    return 1


def main(argv: list[str]) -> int:
    """`shm-vla check --instance NAME [--config F] [--set K=V] [--model flow|regression]`."""
    parser = argparse.ArgumentParser(prog="shm-vla check", description=__doc__.split("\n\n")[0])
    configmod.add_arguments(parser)
    parser.add_argument("--model", choices=tuple(MODEL_TYPES), default=None,
                        help="also require the checkpoint to hold this model type")
    args = parser.parse_args(argv)
    from .model import CheckpointError
    cfg = configmod.from_args(args)
    stages = len(P.stages(cfg))
    try:
        _, shadow = check_instance(cfg, args.model, stages)    # stats segments: the stages' (no supervisor)
    except (CheckpointError, configmod.ConfigError, ShmError) as exc:
        return refusal(exc, "shm-vla check")
    print(f"shm-vla check: instance {cfg.instance} ready to start: {stages} stages"
          + (", a shadow among them" if shadow else ""))
    low = disk_below_reserve(cfg)
    if low:
        print(f"shm-vla check: warning: {low}", file=sys.stderr)
    return 0


def disk_below_reserve(cfg) -> str:
    """Why recording would pause at once (record.out_dir below record.reserve_mb free), or ''.
    Not a refusal: the recorder never holds up the control loop (workers/disk_room.py)."""
    from .workers.disk_room import free_bytes
    path = os.path.abspath(cfg.record.out_dir)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)             # the folder it will be made in
    free = free_bytes(path)
    if free >= cfg.record.reserve_mb * 1e6:
        return ""
    return (f"{path} has {free / 1e6:.0f} MB free, below record.reserve_mb ({cfg.record.reserve_mb:g}): "
            "the recorder will pause until there is room")
