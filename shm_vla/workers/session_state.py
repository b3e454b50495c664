"""Which session a recorder writes: the recorder's checkpoint, the session lock, and the
rule that picks the session to continue after a restart and the ones to finalise.

A *run* is the life of the instance's results ring: `shm-vla run` (or `shm clean` under
systemd) removes the instance's segments before it starts, so act creates the ring
afresh, while an act or recorder restarted within the run takes over or re-attaches the
same ring. The recorder names its run by that ring (see ``record.run_identity``) and keeps,
in each session directory, a checkpoint (``recorder_state.json``) holding:

    instance, run          whose session this is
    phase                  recording | closing (finalising) | closed (finalised)
    cursors                the next record of each ring the recorder reads
    sizes                  the bytes of each streamed file that go with those cursors
    results_written, lost, frames_written   the counters the summary needs

The writer flushes its files *before* it replaces the checkpoint (write tmp + rename),
so after a SIGKILL at any moment every file holds at least the bytes the checkpoint
names. What lies beyond was written after it: a continuing recorder cuts it off and reads
those records again from the rings, so nothing is duplicated and nothing lost while the
rings still hold them (records overwritten meanwhile are counted as lost).

The lock: the writer holds an ``flock`` on the session directory for its whole life (the
kernel drops it when the process dies); finalising (``recover``) takes it too, so a
session being written is never finalised under its writer.

Library code: no processes, no shared memory (the recorder supplies run and cursors).
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

STATE_FILE = "recorder_state.json"
STATE_VERSION = 1
PHASES = ("recording", "closing", "closed")
SESSION_GLOB = "async_inference_*"


class SessionBusy(OSError):
    """Another process holds the session (a live recorder, or a recover in progress).
    An OSError, so a process that meets it ends with one line and exit 1 (process.py)."""


@dataclass
class SessionState:
    instance: str
    run: dict
    cursors: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    phase: str = "recording"
    results_written: int = 0
    lost: int = 0
    frames_written: int = 0
    pid: int = 0
    created_wall_ns: int = 0
    version: int = STATE_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "SessionState":
        known = {name: raw[name] for name in cls.__dataclass_fields__ if name in raw}
        state = cls(**known)
        if state.phase not in PHASES or not isinstance(state.cursors, dict) or not isinstance(state.sizes, dict):
            raise ValueError(f"bad recorder state (phase {state.phase!r})")
        return state


def read_state(session_dir: str | os.PathLike) -> SessionState | None:
    """The checkpoint of a session, or None where there is none or it is unreadable."""
    try:
        return SessionState.from_dict(json.loads((Path(session_dir) / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


class SessionLock:
    """An exclusive flock on a session directory; SessionBusy if another process holds it."""

    def __init__(self, session_dir: str | os.PathLike) -> None:
        self.fd = os.open(session_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            state = read_state(session_dir)
            who = f" (recorder pid {state.pid})" if state and state.pid else ""
            raise SessionBusy(f"{session_dir} is in use by another process{who}") from None

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)        # closing the descriptor drops the lock
            self.fd = -1

    def __enter__(self) -> "SessionLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def find_sessions(out_dir: str | os.PathLike, instance: str) -> list[tuple[Path, SessionState]]:
    """The checkpointed sessions of an instance in out_dir, oldest first."""
    found = []
    for root in Path(out_dir).glob(SESSION_GLOB):
        state = read_state(root)
        if state is not None and state.instance == instance:
            found.append((root, state))
    return sorted(found, key=lambda item: (item[1].created_wall_ns, item[0].name))


def on_disk(root: Path, state: SessionState) -> bool:
    """Every streamed file holds at least the bytes the checkpoint names (always so after a
    process crash; a machine crash may have lost unwritten pages)."""
    for rel, size in state.sizes.items():
        path = root / rel
        if not path.exists() or path.stat().st_size < int(size):
            return False
    return True


@dataclass
class Plan:
    resume: Path | None      # this run's cut-off session, to continue
    cursors: dict            # where the recorder's cursors start
    finalise: list           # cut-off sessions (other runs', or this run's that cannot go on)


def plan_session(out_dir: str | os.PathLike, instance: str,
                 same_run: Callable[[SessionState], bool]) -> Plan:
    """Continue this run's newest session if it was cut off while recording; else start a
    new one where this run's last session ended (a recorder stopped and started again
    within a run) or, for a new run, at the start of its rings. Every other session of the
    instance that was not finalised is to be finalised."""
    sessions = find_sessions(out_dir, instance)
    mine = [(root, state) for root, state in sessions if same_run(state)]
    resume, cursors = None, {}
    if mine:
        root, state = mine[-1]
        cursors = dict(state.cursors)
        if state.phase == "recording" and on_disk(root, state):
            resume = root
    finalise = [root for root, state in sessions if state.phase != "closed" and root != resume]
    return Plan(resume, cursors, finalise)
