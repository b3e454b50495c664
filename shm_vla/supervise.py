"""`shm-vla run flow|regression --instance NAME [--sim] [--duration S] [--checkpoint PATH] [--out DIR]`

A supervisor for machines without systemd: starts every stage as its own process, restarts
a crashed one with exponential backoff (counted in the supervisor's stats), kills and
restarts a hung one (heartbeat older than supervise.hang_timeout_s), makes sure no child
outlives it (lifeline.py), and on
SIGINT/SIGTERM or at the end of --duration stops them in order so that files are complete:
act first (no new results), then a shadow if one is configured, then the recorder (drains,
then finalises its files), then vl, the ingest processes, and last the simulators.

Before starting anything it checks that /dev/shm can hold every segment of the instance
(one line with what is needed and free, exit 2). A child that still cannot get its shared
memory exits with EXIT_SHM_FULL: it is retried with the longest back-off, and after
SHM_FULL_TRIES such exits the supervisor stops the pipeline and exits with that status.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from . import config as configmod
from . import lifeline
from . import pipeline as P
from . import preflight
from .preflight import MODEL_TYPES
from .shm import segment as segmod
from .shm.segment import EXIT_SHM_FULL, ShmError
from .shm.stats import Stats

POLL_S = 0.1
HEALTHY_AFTER_S = 30.0        # a child up this long gets its backoff reset
HANG_CHECK_PERIOD_S = 0.5     # heartbeats are read this often (each read maps a stats segment)
HANG_KILL_GRACE_S = 2.0       # after SIGABRT for a hang, SIGKILL if the child still runs
SHM_FULL_TRIES = 3            # starts of a child that end in EXIT_SHM_FULL before the run stops
START_UP_RESTARTS = 3         # restarts of one child after which --duration counts, all up or not
SIM_CHECKPOINT_DIR = ".sim-checkpoints"   # under --out: tiny checkpoints made for --sim without one


@dataclass
class Child:
    name: str
    argv: list
    restart: bool = True
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float | None = None
    restarts: int = 0
    shm_full_exits: int = 0
    counter: object = None       # stats: restarts.<name>
    pending: object = None       # stats: restart_pending.<name> (1 while waiting to restart)
    gave_up: object = None       # stats: gave_up.<name> (1 after a configuration error or /dev/shm full)
    hangs: object = None         # stats: hangs.<name> (killed for a heartbeat too old)
    kill_at: float | None = None  # SIGKILL then, if SIGABRT for a hang has not ended it
    exits: list = field(default_factory=list)


def _child_argv(args, cmd: list) -> list:
    argv = [sys.executable, "-m", "shm_vla.cli", *cmd, "--instance", args.instance]
    if args.config:
        argv += ["--config", args.config]
    for override in args.overrides:
        argv += ["--set", override]
    return argv


def _stage_argv(args, stage) -> list:
    """The command of a stage (pipeline.py), with what this run adds to it."""
    cmd = list(stage.command)
    if stage.name == P.RECORD:
        cmd += ["--out", args.out] + (["--save-data"] if args.save_data else [])
    return _child_argv(args, cmd)


def build_children(args, cfg) -> list[Child]:
    sims = []
    if args.sim:
        sim = ["sim", "all", "--log", os.path.join(args.out, f"commands_{args.instance}.jsonl")]
        sims.append(Child(P.SIM, _child_argv(args, sim)))
    return sims + [Child(stage.name, _stage_argv(args, stage)) for stage in P.stages(cfg)]


class Supervisor:
    def __init__(self, cfg, children: list[Child], stats: Stats, log=print):
        self.cfg = cfg
        self.children = {c.name: c for c in children}
        self.stats = stats
        self.log = log
        self.stopping = False
        self.failed = ""             # why the run must stop (a child could not get shared memory)
        for c in children:
            c.counter = stats.counter(f"restarts.{c.name}")
            c.pending = stats.gauge(f"restart_pending.{c.name}", 0.0)
            c.gave_up = stats.gauge(f"gave_up.{c.name}", 0.0)
            c.hangs = stats.counter(f"hangs.{c.name}")
        self.crashes = stats.counter("crashes")
        self._next_hang_check = 0.0

    def _start(self, child: Child) -> None:
        # a child must never outlive us (lifeline.py): parent-death signal + liveness check
        child.proc = subprocess.Popen(child.argv, start_new_session=True, env=lifeline.child_env(),
                                      preexec_fn=lifeline.parent_death_preexec())
        child.started_at = time.monotonic()
        child.restart_at = None

    def start_all(self) -> None:
        for child in self.children.values():
            self._start(child)

    def watch_once(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child)
            elif child.proc is not None and child.restart and child.proc.poll() is not None:
                self._schedule_restart(child, now)
            elif child.kill_at is not None and now >= child.kill_at:
                _kill_group(child.proc.pid, signal.SIGKILL)     # SIGABRT did not end it (e.g. stopped)
                child.kill_at = float("inf")                    # done; cleared at the restart
        if now >= self._next_hang_check:
            self._next_hang_check = now + HANG_CHECK_PERIOD_S
            self._kill_hung(now)

    def _kill_hung(self, now: float) -> None:
        """A child that reported up but whose heartbeat is older than supervise.hang_timeout_s
        (stopped, deadlocked, stuck in a call) is ended, then restarted like a crash: SIGABRT
        first (Python's faulthandler logs every thread's stack), SIGKILL if that does not work."""
        from .shm.stats import read_snapshot
        limit_ms = self.cfg.supervise.hang_timeout_s * 1e3
        for child in self.children.values():
            proc = child.proc
            if child.name == P.SIM or proc is None or proc.poll() is not None or child.kill_at is not None:
                continue
            try:
                snap = read_snapshot(self.cfg.instance, child.name, self.cfg.shm.prefix)
            except ShmError:
                continue
            if not (snap["pid"] == proc.pid and snap["alive"] and snap["last_state"] == "up"
                    and snap["heartbeat_age_ms"] > limit_ms):
                continue
            self.log(f"supervisor: {child.name} (pid {proc.pid}) is hung: heartbeat "
                     f"{snap['heartbeat_age_ms'] / 1e3:.1f} s old (supervise.hang_timeout_s "
                     f"{self.cfg.supervise.hang_timeout_s:g}); killing it for a restart")
            child.hangs.inc()
            _kill_group(proc.pid, signal.SIGABRT)
            child.kill_at = now + HANG_KILL_GRACE_S

    def _schedule_restart(self, child: Child, now: float) -> None:
        code = child.proc.returncode
        child.exits.append(code)
        self.crashes.inc()
        if code == configmod.EXIT_CONFIG_ERROR:      # a config error does not heal by restarting
            child.restart = False
            child.gave_up.set(1.0)
            self.log(f"supervisor: {child.name} exited with a configuration error; not restarting it")
            return
        sup = self.cfg.supervise
        if code == EXIT_SHM_FULL and self._shm_full(child):
            return
        if now - child.started_at > HEALTHY_AFTER_S:
            child.backoff_s = 0.0
        child.backoff_s = min(max(sup.restart_backoff_s, child.backoff_s * 2), sup.restart_backoff_max_s)
        if code == EXIT_SHM_FULL:                   # no room now: a quick retry would not find any
            child.backoff_s = sup.restart_backoff_max_s
        child.restart_at = now + child.backoff_s
        child.pending.set(1.0)
        self.stats.set_state("restarting")
        why = f" (/dev/shm full, try {child.shm_full_exits} of {SHM_FULL_TRIES})" if code == EXIT_SHM_FULL else ""
        self.log(f"supervisor: {child.name} exited with {code}{why}; restart in {child.backoff_s:.1f} s")

    def _shm_full(self, child: Child) -> bool:
        """Count a child's exit for want of shared memory; True once the run must stop."""
        child.shm_full_exits += 1
        if child.shm_full_exits < SHM_FULL_TRIES:
            return False
        child.restart = False
        child.gave_up.set(1.0)
        self.failed = (f"{child.name} could not get its shared memory {child.shm_full_exits} times "
                       "(/dev/shm full); stopping the pipeline")
        self.log(f"supervisor: {self.failed}")
        return True

    def start_up_over(self, cfg) -> bool:
        """Every stage is up, or one gave up or is crashing at every start (so they may never
        all be): --duration counts."""
        return any(not c.restart or c.restarts >= START_UP_RESTARTS for c in self.children.values()) \
            or self.all_up(cfg)

    def _restart(self, child: Child) -> None:
        child.kill_at = None
        child.restarts += 1
        child.counter.inc()
        child.pending.set(0.0)
        self._start(child)
        if not any(c.restart_at is not None for c in self.children.values()):
            self.stats.set_state("up")

    def all_up(self, cfg) -> bool:
        """Every child reports state up in its stats segment (sims have none: they are up when started)."""
        from .shm.stats import read_snapshot
        for name in self.children:
            if name == P.SIM:
                continue
            try:
                if read_snapshot(cfg.instance, name, cfg.shm.prefix)["state"] != "up":
                    return False
            except ShmError:
                return False
        return True

    def stop_all(self) -> None:
        self.stopping = True
        self.stats.set_state("stopping")
        timeout = self.cfg.supervise.stop_timeout_s
        names = P.stop_order(self.children)
        for name in names:
            proc = self.children[name].proc
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.log(f"supervisor: {name} did not stop in {timeout:.0f} s; killing it")
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.stats.set_state("stopped")


def _kill_group(pgid: int, sig: int) -> None:
    """Signal a child's process group (each child leads its own session); gone is fine."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class RunClock:
    """--duration counts from the moment every stage reports up (model loaded, warmed up),
    so `--duration 30` means 30 s of running pipeline; a stage that never comes up does not
    stretch the run beyond STARTUP_LIMIT_S more, nor at all once a stage gave up or has been
    restarted START_UP_RESTARTS times (a crash loop)."""

    STARTUP_LIMIT_S = 120.0

    def __init__(self, duration_s: float | None, all_up):
        self.duration_s = duration_s
        self.all_up = all_up
        self.started = time.monotonic()
        self.deadline = None

    def expired(self) -> bool:
        if self.duration_s is None:
            return False
        now = time.monotonic()
        if self.deadline is None and (self.all_up() or now - self.started > self.STARTUP_LIMIT_S):
            self.deadline = now + self.duration_s
        return self.deadline is not None and now >= self.deadline


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shm-vla run", description=__doc__.splitlines()[0])
    p.add_argument("model_type", choices=tuple(MODEL_TYPES))
    configmod.add_arguments(p)
    p.add_argument("--sim", action="store_true", help="also run simulated peers and the command sink")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--checkpoint", default=None, help="override model.checkpoint")
    p.add_argument("--out", default=None, help="session directory root (default record.out_dir)")
    p.add_argument("--save-data", action="store_true", help="record frames, robot and sensor data too")
    return p


def _checkpoint_override(path: str, key: str = "model.checkpoint") -> str:
    return f"{key}={os.path.abspath(path)!r}".replace("'", '"')


def _no_checkpoint(model_type: str) -> str:
    return (f"no checkpoint configured (model.checkpoint is empty): give --checkpoint PATH, make one with "
            f"`shm-vla make-checkpoint --type {model_type} PATH` (random weights, to try the pipeline), "
            f"or add --sim to run the simulated cell on a generated tiny one")


def _sim_checkpoint(out: str, model_type: str) -> str:
    """--sim without a checkpoint: a tiny random-init one of the asked type, made once under
    ``out`` (as `make demo` does; nothing is fetched)."""
    from .model.make_checkpoint import make_checkpoint
    path = os.path.join(out, SIM_CHECKPOINT_DIR, f"tiny_{model_type}.pt")
    if os.path.exists(path):
        what = "using the tiny checkpoint generated earlier"
    else:
        make_checkpoint(path, "tiny", model_type)         # written to a temporary name, then renamed
        what = "generated a tiny checkpoint"
    print(f"shm-vla run: --sim without a checkpoint: {what}: {path} (random weights, not a trained model)",
          file=sys.stderr, flush=True)
    return path


def _fresh_instance(cfg) -> None:
    """Refuse to start over a live pipeline; remove what a previous run left behind, so
    that no stale record of an old session can reach this one (recorder, act gate)."""
    preflight.check_not_running(cfg)
    segmod.remove_instance(cfg.instance, cfg.shm.prefix)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.checkpoint:
        args.overrides.append(_checkpoint_override(args.checkpoint))
    cfg = configmod.from_args(args)
    args.out = os.path.abspath(args.out or cfg.record.out_dir)
    if not cfg.model.checkpoint and not args.sim:
        print(f"shm-vla run: {_no_checkpoint(args.model_type)}", file=sys.stderr)
        return configmod.EXIT_CONFIG_ERROR
    os.makedirs(args.out, exist_ok=True)
    if not cfg.model.checkpoint:
        args.overrides.append(_checkpoint_override(_sim_checkpoint(args.out, args.model_type)))
        cfg = configmod.from_args(args)              # the children get it through the same override
    if cfg.shadow.checkpoint and not os.path.isabs(cfg.shadow.checkpoint):    # the same file for every child
        args.overrides.append(_checkpoint_override(cfg.shadow.checkpoint, "shadow.checkpoint"))
        cfg = configmod.from_args(args)
    from .model import CheckpointError
    children = build_children(args, cfg)
    stats_processes = len([c for c in children if c.name != P.SIM]) + 1     # + the supervisor's
    try:
        # one clear line now, not six crashing children; nothing is created or started before
        preflight.check_instance(cfg, args.model_type, stats_processes, claim=_fresh_instance)
        stats = Stats.create(cfg.instance, P.SUPERVISOR, prefix=cfg.shm.prefix, group=cfg.shm.group)
    except (CheckpointError, configmod.ConfigError, ShmError) as exc:
        # a /dev/shm too small for this configuration is a configuration error to `run` (exit 2)
        return preflight.refusal(exc, "shm-vla run", shm_full_status=configmod.EXIT_CONFIG_ERROR)
    sup = Supervisor(cfg, children, stats, log=lambda m: print(m, file=sys.stderr, flush=True))
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    clock = RunClock(args.duration, lambda: sup.start_up_over(cfg))
    sup.start_all()
    stats.set_state("up")
    print(f"shm-vla run {args.model_type}: instance {cfg.instance}, sessions in {args.out}", file=sys.stderr, flush=True)
    try:
        while not stop and not sup.failed and not clock.expired():
            sup.watch_once()
            stats.heartbeat()
            time.sleep(POLL_S)
    finally:
        sup.stop_all()
        stats.close()
        # every writer has exited: the segments are stale now; the session files hold the data
        segmod.remove_instance(cfg.instance, cfg.shm.prefix)
    return EXIT_SHM_FULL if sup.failed else 0
