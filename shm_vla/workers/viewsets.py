"""Which frame of each view goes into a VL set, under vl.view_policy = "same_trigger".

The cell's cameras are triggered together; each frame's capture time (on our clock,
``capture_mono_ns``) lies within a few ms of its trigger, triggers are a camera period
apart, and the frames of one trigger arrive reordered over tens of ms. The newest frame
of each view therefore mixes two triggers whenever a set is taken while a trigger is
arriving. This picks instead, from the metadata of the last frames of every view, the
newest trigger that every view holds: for each candidate capture time of the view whose
newest frame is the oldest (every complete trigger is among its frames), newest first,
the frame of each view nearest to it; the first candidate whose frames lie within
``tolerance_ns`` of each other is the set. If no such set is held (unsynchronised
cameras), the frames nearest to that view's newest are taken (``matched`` is False).

No allocation per choice: the caller fills ``meta`` (one row per view, right-aligned as
``Ring.window`` writes it, ``count`` valid entries per view) and reads ``chosen``.
"""
from __future__ import annotations

import numpy as np

from ..shm.ring import CAPTURE_UNKNOWN_NS, META_DTYPE

_NONE = np.int64(1) << 62       # capture time of an empty or unknown entry: never near anything


class TriggerSets:
    def __init__(self, n_views: int, depth: int, tolerance_ns: int):
        self.n_views, self.depth, self.tolerance_ns = n_views, depth, tolerance_ns
        self.meta = np.zeros((n_views, depth), META_DTYPE)
        self.count = np.zeros(n_views, np.int64)
        self.chosen = np.zeros(n_views, np.int64)     # index into meta[v] of each view's frame
        self.matched = False                          # the chosen frames are one trigger
        self.newer_partial = False                    # some views already hold a newer trigger
        # scratch (no allocation per choice)
        self._capture = np.zeros((n_views, depth), np.int64)
        self._distance = np.zeros((n_views, depth), np.int64)
        self._empty = np.zeros((n_views, depth), bool)
        self._unknown = np.zeros((n_views, depth), bool)
        self._slot = np.arange(depth)[None, :]
        self._first = np.zeros(n_views, np.int64)
        self._row_base = np.arange(n_views, dtype=np.int64) * depth
        self._flat = np.zeros(n_views, np.int64)
        self._newest = np.zeros(n_views, np.int64)
        self._picked = np.zeros(n_views, np.int64)

    def record(self, view: int) -> int:
        """Ring record number of view's chosen frame."""
        return int(self.meta["record"][view, self.chosen[view]])

    def choose(self) -> bool:
        """Fill ``chosen``; False if some view holds no frame with a capture time."""
        capture, empty = self._capture, self._empty
        np.copyto(capture, self.meta["capture_mono_ns"])
        np.subtract(self.depth, self.count, out=self._first)            # right-aligned: the front is empty
        np.less(self._slot, self._first[:, None], out=empty)
        np.equal(capture, CAPTURE_UNKNOWN_NS, out=self._unknown)
        np.logical_or(empty, self._unknown, out=empty)
        np.copyto(self._distance, capture)
        np.copyto(self._distance, -_NONE, where=empty)
        self._distance.max(axis=1, out=self._newest)
        np.copyto(capture, _NONE, where=empty)
        newest = self._newest
        if (newest == -_NONE).any():
            return False
        laggard = int(newest.argmin())
        self.matched = False
        for anchor in capture[laggard][::-1]:                        # its newest first
            if anchor != _NONE and self._nearest(anchor) <= self.tolerance_ns:
                self.matched = True
                break
        else:
            self._nearest(newest[laggard])
        self.newer_partial = bool(self.matched and (newest > self._picked.max() + self.tolerance_ns).any())
        return True

    def _nearest(self, anchor) -> int:
        """Each view's frame nearest to ``anchor`` into ``chosen``; returns their spread."""
        np.subtract(self._capture, anchor, out=self._distance)
        np.abs(self._distance, out=self._distance)
        np.argmin(self._distance, axis=1, out=self.chosen)
        np.add(self._row_base, self.chosen, out=self._flat)
        np.take(self._capture.reshape(-1), self._flat, out=self._picked)
        return int(self._picked.max() - self._picked.min())

    def lagging_view(self) -> int:
        """A view that does not hold the newer trigger yet (to wait on)."""
        limit = self._picked.max() + self.tolerance_ns
        return int(np.argmax(self._newest <= limit))
