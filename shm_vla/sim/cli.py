"""`shm-vla sim camera|robot|sensor|commands|all --instance NAME [--duration S] ...`

Runs simulated peers on loopback until --duration has passed or SIGTERM/SIGINT (exit 0).
Addresses come from the instance config (the sim binds what the ingest connects to and
connects to what the ingest binds, with 0.0.0.0 replaced by 127.0.0.1); --address
overrides it for a single simulator.

The peers behave like the cell's (--profile realistic, the default): cameras triggered
together, stamped per camera, encoded by 4 encoder processes (reordered, tens of ms
late; see sim/camera.py), sensor datagrams of 10 records. --profile ideal: unsynchronised
cameras sent in order the moment they are stamped. Robot stalls are opt-in
(--robot-stall-every): they hold every command while they last.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

import zmq

from .. import config as config_mod
from .base import loopback
from .camera import PROFILES, CameraSim, camera_names
from .commands import CommandSink
from .replay import ReplayError, build_replay
from .robot import RobotSim
from .sensor import SensorSim, parse_host_port

SIMS = ("camera", "robot", "sensor", "commands", "all")
JOIN_POLL_S = 0.2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shm-vla sim", description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=SIMS)
    config_mod.add_arguments(parser)
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="run S seconds (default: until SIGTERM)")
    parser.add_argument("--address", default=None, help="override the address of a single simulator")
    parser.add_argument("--rate-hz", type=float, default=None,
                        help="override the rate (camera: per camera; sensor: records/s)")
    parser.add_argument("--clock-offset-s", type=float, default=0.0,
                        help="add this to every timestamp sent (a sender clock offset)")
    parser.add_argument("--profile", choices=PROFILES, default="realistic",
                        help="cameras: the cell's triggered, reordering sender (default) or ideal ones")
    parser.add_argument("--seed", type=int, default=0, help="realistic cameras: seed of the timing model")
    parser.add_argument("--records-per-datagram", type=int, default=10,
                        help="sensor records per UDP datagram (default 10, as the real sensor)")
    parser.add_argument("--robot-stall-every", type=float, default=0.0, metavar="S",
                        help="robot: stall after every S seconds of publishing (default: never)")
    parser.add_argument("--robot-stall-s", type=float, default=3.0, metavar="S", help="robot: length of a stall")
    parser.add_argument("--quality", type=int, default=75, help="camera JPEG quality")
    parser.add_argument("--right", action="store_true", help="cameras: also send ZED right images")
    parser.add_argument("--log", default=None, metavar="PATH", help="commands: append received commands as JSONL")
    parser.add_argument("--replay", default=None, metavar="DIR", help="replay a session recorded with --save-data")
    parser.add_argument("--keep-timestamps", action="store_true", help="replay: send the recorded timestamps unshifted")
    return parser


def _addresses(cfg, args) -> dict:
    addresses = {
        "camera": loopback(cfg.camera.bind),
        "robot": cfg.address(cfg.robot.connect),
        "sensor": loopback(cfg.sensor.bind),
        "commands": cfg.address(cfg.command.connect),
    }
    if args.which == "all" and (args.address or args.rate_hz):
        raise config_mod.ConfigError("--address and --rate-hz need a single simulator, not 'all'")
    if args.address:
        addresses[args.which] = args.address
    return addresses


def build_sims(cfg, args) -> list:
    """The simulators named by ``args.which`` (not started)."""
    addresses = _addresses(cfg, args)
    wanted = ("camera", "robot", "sensor", "commands") if args.which == "all" else (args.which,)
    sims = []
    if args.replay:
        senders = build_replay(args.replay, addresses["camera"], addresses["robot"],
                               parse_host_port(addresses["sensor"]), args.keep_timestamps)
        sims += [sender for sender in senders if sender.name in wanted]
    if "camera" in wanted and not args.replay:
        sims.append(CameraSim(addresses["camera"], camera_names(cfg.camera, args.right),
                              args.rate_hz or cfg.camera.rate_hz, args.quality, cfg.camera.width,
                              cfg.camera.height, args.clock_offset_s, args.duration, profile=args.profile,
                              seed=args.seed))
    if "robot" in wanted and not args.replay:
        sims.append(RobotSim(addresses["robot"], args.rate_hz or cfg.robot.rate_hz, args.clock_offset_s,
                             cfg.robot.topic.encode(), args.duration, stall_every_s=args.robot_stall_every,
                             stall_s=args.robot_stall_s))
    if "sensor" in wanted and not args.replay:
        sims.append(SensorSim(parse_host_port(addresses["sensor"]), args.rate_hz or cfg.sensor.rate_hz,
                              args.records_per_datagram, cfg.sensor.ascan_len, args.clock_offset_s, args.duration))
    if "commands" in wanted:
        sims.append(CommandSink(addresses["commands"], args.log, args.duration))
    if args.replay:
        for sim in sims:
            sim.duration_s = args.duration
    return sims


def run(sims: list, stop: threading.Event) -> None:
    """Start every sim, wait until all finished or ``stop`` is set, then stop them."""
    started = []
    try:
        for sim in sims:
            sim.start()
            started.append(sim)
        while not stop.is_set() and any(sim.running for sim in started):
            stop.wait(JOIN_POLL_S)
    finally:
        for sim in started:
            sim.stop()


def _summary(sims: list) -> dict:
    return {sim.name: (sim.summary() if hasattr(sim, "summary") else sim.counters()) for sim in sims}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    cfg = config_mod.from_args(args)
    try:
        sims = build_sims(cfg, args)
    except (config_mod.ConfigError, ReplayError, ValueError) as exc:
        print(f"shm-vla sim: {exc}", file=sys.stderr)
        return config_mod.EXIT_CONFIG_ERROR
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        run(sims, stop)
    except (OSError, zmq.ZMQError) as exc:  # e.g. the address is in use
        print(f"shm-vla sim: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(_summary(sims)), flush=True)
    return 1 if any(sim.error is not None for sim in sims) else 0
