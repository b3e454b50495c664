"""Wake event-driven readers without spinning: a futex on a 32-bit word in shared memory.

The writer bumps the word after publishing and issues FUTEX_WAKE for all waiters (one
syscall of about a microsecond, cheap next to a record copy; a shared waiter count would
need atomic read-modify-write across processes, which Python cannot do, and a lost
increment there would turn into a missed wake-up). A reader sleeps in FUTEX_WAIT with a timeout
until the word changes. Futexes on a shared (not PRIVATE) mapping work across processes.
Lost wake-ups cannot happen: FUTEX_WAIT atomically checks that the word still holds the
value the reader saw before sleeping. FUTEX_WAIT only reads the word, so it works on a
reader's read-only mapping (readers map segments PROT_READ); only post() writes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform

import numpy as np

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}[platform.machine().lower()]
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = 0x7FFFFFFF

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class Futex:
    """A futex word living in shared memory: ``word`` is a numpy uint32 array of shape (1,)."""

    def __init__(self, words: np.ndarray):
        assert words.dtype == np.uint32 and words.shape == (1,)
        self.words = words
        self.addr = words.ctypes.data
        self._ts = _Timespec()

    def value(self) -> int:
        return int(self.words[0])

    def post(self) -> None:
        """Writer side: signal an event and wake every waiting reader."""
        self.words[0] = (int(self.words[0]) + 1) & 0xFFFFFFFF
        _syscall(_SYS_FUTEX, ctypes.c_void_p(self.addr), _FUTEX_WAKE, _INT_MAX, None, None, 0)

    def wait(self, seen: int, timeout_s: float) -> bool:
        """Sleep until the counter differs from `seen` or the timeout passes.

        Returns True if the counter moved. Spurious wake-ups are allowed: callers
        re-check their condition.
        """
        if int(self.words[0]) != seen:
            return True
        timeout_s = max(0.0, timeout_s)
        self._ts.tv_sec = int(timeout_s)
        self._ts.tv_nsec = int((timeout_s - int(timeout_s)) * 1e9)
        res = _syscall(_SYS_FUTEX, ctypes.c_void_p(self.addr), _FUTEX_WAIT, seen & 0xFFFFFFFF,
                       ctypes.byref(self._ts), None, 0)
        if res == -1:
            err = ctypes.get_errno()
            if err not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
                raise OSError(err, os.strerror(err))
        return int(self.words[0]) != seen
