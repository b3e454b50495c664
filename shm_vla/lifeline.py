"""A supervised process never outlives its supervisor.

`shm-vla run` starts every stage as a child. If the supervisor dies (SIGKILL, OOM, a
crash), nobody would stop the children, restart them, or clean up, and act would keep
commanding the robot. Two mechanisms, because each alone has a gap:

  * the parent-death signal (Linux prctl PR_SET_PDEATHSIG), armed in the child between
    fork and exec: the kernel sends SIGTERM when the supervisor dies, even while the
    child is still importing torch or loading a model (before any handler exists, SIGTERM
    just ends it). It survives exec. Gap: a supervisor that died before it was armed.
  * a liveness check in every main loop (Runtime.housekeeping, every 50 ms): the
    supervisor's pid is passed in SHM_VLA_SUPERVISOR_PID, and a parent pid that is no
    longer that one means the supervisor is gone (we were re-parented): stop in order.

Under systemd the variable is not set (systemd is the parent and does the supervising:
BindsTo= and the watchdog), so nothing here is active.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

SUPERVISOR_PID_ENV = "SHM_VLA_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def child_env(supervisor_pid: int | None = None) -> dict:
    """The environment of a supervised child: ours plus the supervisor's pid."""
    return dict(os.environ, **{SUPERVISOR_PID_ENV: str(supervisor_pid or os.getpid())})


def parent_death_preexec(sig: int = signal.SIGTERM):
    """A Popen preexec_fn for a child of this process: the kernel sends `sig` to the child
    when we die; if we already have (between fork and this call), the child exits at once.
    libc is looked up here, before the fork: the preexec_fn itself only makes two syscalls."""
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return preexec


class ParentWatch:
    """alive() is False once the supervisor named in the environment is gone."""

    def __init__(self, environ=os.environ):
        raw = environ.get(SUPERVISOR_PID_ENV, "")
        self.supervisor_pid = int(raw) if raw.isdigit() else None

    @property
    def supervised(self) -> bool:
        return self.supervisor_pid is not None

    def alive(self) -> bool:
        return self.supervisor_pid is None or os.getppid() == self.supervisor_pid
