"""The recorder's view of its disk: pause before it is full, resume when there is room again.

The session's file system is checked at most once a second (one statvfs). Below
`record.reserve_mb` free the recorder pauses: it checkpoints (files flushed, cursors saved),
then writes nothing and reads nothing, so the rings keep the records it has not written
(results 60 s, VL updates about 25 s at the defaults). The reserve is what finalising the
session at stop needs (the summary and inference_results.json, written whole at the end;
session_files.py writes such a file only where it fits), so a stop while paused still leaves
complete files. At `reserve_mb * RESUME_FACTOR` free (someone made room) it resumes where it
paused: nothing is lost if that was within the shortest ring's span; what was overwritten
meanwhile is counted as lost.

The control loop never waits for the recorder: act goes on commanding while it is paused.
"""
from __future__ import annotations

import os
import time

CHECK_PERIOD_S = 1.0
RESUME_FACTOR = 1.25          # hysteresis: resume only well above the pause threshold


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer can still allocate on the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskRoom:
    def __init__(self, path: str, reserve_mb: float, stats, log, free=free_bytes, clock=time.monotonic):
        self.path = str(path)
        self.reserve = int(reserve_mb * 1e6)
        self.log, self.free, self.clock = log, free, clock
        self.paused = False
        self._next_check = 0.0
        self.free_mb = stats.gauge("disk_free_mb")
        self.paused_gauge = stats.gauge("disk_paused", 0.0)
        self.pauses = stats.counter("disk_pauses")

    def low(self) -> bool:
        """True while the recorder must not write (checked at most once a second)."""
        now = self.clock()
        if now < self._next_check:
            return self.paused
        self._next_check = now + CHECK_PERIOD_S
        try:
            free = self.free(self.path)
        except OSError as exc:              # the directory vanished or the mount went away
            self.log.warning("cannot read the free space of %s: %s", self.path, exc)
            return self.paused
        self.free_mb.set(free / 1e6)
        if not self.paused and free < self.reserve:
            self._set(True)
            self.log.warning("disk nearly full: %.0f MB free on %s, below record.reserve_mb (%.0f): recording "
                             "paused (files complete up to here; act goes on); resumes at %.0f MB free",
                             free / 1e6, self.path, self.reserve / 1e6, self.reserve * RESUME_FACTOR / 1e6)
        elif self.paused and free >= self.reserve * RESUME_FACTOR:
            self._set(False)
            self.log.info("disk room again: %.0f MB free on %s: recording resumed", free / 1e6, self.path)
        return self.paused

    def _set(self, paused: bool) -> None:
        self.paused = paused
        self.paused_gauge.set(1.0 if paused else 0.0)
        if paused:
            self.pauses.inc()
