"""What every pipeline process shares: config, logging, stats segment, signals, sd_notify.

A process builds a Runtime, attaches/creates its segments, warms up, calls `ready()`, then
loops while `runtime.running`, calling `housekeeping()` once per iteration (heartbeat,
watchdog and, under `shm-vla run`, the supervisor's liveness: all cheap; see lifeline.py). SIGINT/SIGTERM only set a flag: the loop ends at its next wake-up
(every wait in a loop has a timeout) and the process closes its files in order.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from . import config as configmod
from . import logutil
from .lifeline import ParentWatch
from .sdnotify import Notifier
from .shm.stats import Stats

HEARTBEAT_PERIOD_NS = 50_000_000


class Runtime:
    def __init__(self, cfg: configmod.Config, process: str):
        self.cfg = cfg
        self.process = process
        self.log = logutil.setup(process)
        self.rlog = logutil.RateLimitedLog(self.log)
        self.stats = Stats.create(cfg.instance, process, prefix=cfg.shm.prefix, group=cfg.shm.group)
        self.notifier = Notifier()
        self.running = True
        self.parent = ParentWatch()
        self._last_beat_ns = 0
        self._errors: dict[str, object] = {}
        self._watched: list = []          # (ring, counter, last exported retries)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.running = False

    def error(self, kind: str, detail: str = "") -> None:
        """Count an input error by kind and log it at a bounded rate."""
        counter = self._errors.get(kind)
        if counter is None:
            counter = self._errors[kind] = self.stats.counter(f"errors.{kind}")
        counter.inc()
        self.rlog.warning(kind, "input error %s: %s", kind, detail)

    def watch_reads(self, ring, stream: str) -> None:
        """Export a reader's seqlock retries on `ring` as the counter read_retries.<stream>."""
        self._watched.append([ring, self.stats.counter(f"read_retries.{stream}"), 0])

    def _export_retries(self) -> None:
        for entry in self._watched:
            ring, counter, last = entry
            if ring.retries != last:
                counter.inc(ring.retries - last)
                entry[2] = ring.retries

    def raise_priority(self, rt_priority: int, nice: int) -> None:
        """SCHED_FIFO for this thread, or a nice value; without the privilege, one warning.

        Under systemd the unit sets these (CPUSchedulingPolicy=, Nice=); this is for
        `shm-vla run` on machines without systemd. On 2 cores it is what keeps the tick's
        jitter low when other work saturates the CPUs.
        """
        try:
            if rt_priority > 0:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt_priority))
                self.log.info("running at SCHED_FIFO priority %d", rt_priority)
            elif nice:
                os.nice(nice)
                self.log.info("running at nice %d", nice)
        except PermissionError:
            self.log.warning("cannot raise scheduling priority (rt_priority %d, nice %d): needs CAP_SYS_NICE; "
                             "running at normal priority", rt_priority, nice)

    def ready(self, status: str = "") -> None:
        self.stats.set_state("up")
        self.notifier.ready(status or f"{self.process} up")
        self.log.info("ready%s", f": {status}" if status else "")

    def housekeeping(self) -> None:
        now = time.monotonic_ns()
        if now - self._last_beat_ns >= HEARTBEAT_PERIOD_NS:
            self._last_beat_ns = now
            self.stats.heartbeat()
            self.notifier.watchdog()
            self._export_retries()
            if self.running and not self.parent.alive():
                self.log.error("the supervisor (pid %d) is gone: stopping", self.parent.supervisor_pid)
                self.running = False

    def close(self) -> None:
        self.notifier.stopping()
        self.stats.set_state("stopped")
        self.stats.close()
        self.notifier.close()


def parse_args(prog: str, argv: list[str], extra=None) -> tuple[argparse.Namespace, configmod.Config]:
    """Standard flags (--instance, --config, --set) plus a command's own."""
    parser = argparse.ArgumentParser(prog=prog)
    configmod.add_arguments(parser)
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    return args, configmod.from_args(args)


def run_process(prog: str, process: str, argv: list[str], body, extra=None, config_errors: tuple = ()) -> int:
    """The main() of every pipeline process: config, Runtime, body(rt, args), clean close.

    Shared-memory and OS errors end the process with code 1 (the supervisor or systemd
    restarts it); `config_errors` (e.g. a checkpoint that contradicts the config) and
    configuration errors end it with code 2, which is not restarted: it would not heal.

    A full /dev/shm is one line and EXIT_SHM_FULL (retried rarely, see supervise.py).

    Once the body has closed its files and segments, the process exits at once, without
    the interpreter's teardown: with torch loaded that takes ~0.6 s, and a stopping
    pipeline (SIGTERM, or its supervisor gone) should be gone well within a second.
    """
    code = _run_process(prog, process, argv, body, extra, config_errors)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_process(prog, process, argv, body, extra, config_errors) -> int:
    from .shm.segment import EXIT_SHM_FULL, ShmError, ShmFull
    args, cfg = parse_args(prog, argv, extra)
    try:
        rt = Runtime(cfg, process)
    except ShmError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_SHM_FULL if isinstance(exc, ShmFull) else 1
    try:
        return body(rt, args)
    except (configmod.ConfigError, *config_errors) as exc:
        rt.log.error("configuration error: %s", exc)
        return configmod.EXIT_CONFIG_ERROR
    except ShmFull as exc:
        rt.log.error("%s", exc)
        return EXIT_SHM_FULL
    except (ShmError, OSError) as exc:
        rt.log.error("%s", exc)
        return 1
    finally:
        rt.close()


def attach_when_ready(rt: Runtime, attach, what: str, timeout_s: float | None = None, poll_s: float = 0.1):
    """Attach to a segment that another process creates, waiting for it (bounded by
    shm.attach_timeout_s). Returns None if the process was asked to stop.

    Start order across processes is not guaranteed (systemd starts units in parallel), so
    readers wait for writers. They also wait out a ring they cannot use (LayoutMismatch: another
    record layout; IncompatibleStream: another configuration, e.g. camera.channel_order):
    its writer may be one that a restart is replacing (after an upgrade or a configuration
    change), or a dead one whose stale segment the next writer replaces. At the bound, a
    *live* writer still refused is a configuration conflict that restarting this process
    cannot heal: a ConfigError (one line, exit 2, not restarted). Anything else (no segment,
    a dead writer's) is a ShmError (exit 1, restarted).
    """
    from .shm.segment import LayoutMismatch, ShmError
    timeout_s = rt.cfg.shm.attach_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    logged = None
    while rt.running:
        try:
            return attach()
        except ShmError as exc:
            if time.monotonic() > deadline:
                if isinstance(exc, LayoutMismatch) and exc.writer_pid is not None:
                    raise configmod.ConfigError(
                        f"{what}: {exc}; its writer (pid {exc.writer_pid}) still disagrees after {timeout_s:g} s "
                        "(shm.attach_timeout_s): run both with one configuration and one shm-vla version") from None
                raise ShmError(f"gave up waiting for {what} after {timeout_s:.0f} s: {exc}") from None
            if type(exc) is not logged:          # once per kind of wait: missing, refused, ...
                if isinstance(exc, LayoutMismatch):
                    rt.log.warning("waiting up to %g s for a writer of %s that this process can use: %s",
                                   timeout_s, what, exc)
                else:
                    rt.log.info("waiting for %s (%s)", what, exc)
                logged = type(exc)
        rt.housekeeping()
        time.sleep(poll_s)
    return None
