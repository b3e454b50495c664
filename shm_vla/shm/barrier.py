"""Memory ordering for the seqlock, and why this is enough.

The seqlock protocol needs two orderings:
  writer: store seq (odd) -> store payload -> store seq (even)     (store -> store)
  reader: load seq       -> load payload  -> load seq              (load -> load)

x86-64 (TSO): the hardware never reorders a store with an older store, nor a load with an
older load. The only compiler in the path is CPython's: every step above is a separate
call into C (numpy copy, scalar store) through opaque function pointers, which a C compiler
cannot move memory accesses across. So no fence instruction is needed: `fence()` is a no-op.

aarch64 (Jetson robot PCs) is weakly ordered: both orderings above can be violated
without barriers (needed: `dmb ishst` in the writer, `dmb ishld` in the reader; a full
`dmb ish` covers both). Python has no fence primitive, so `fence()` performs an
uncontended release-then-acquire of a private lock. On glibc/aarch64 the release is a
store-release (stlr/stlxr) and the acquire a load-acquire (ldaxr); ARMv8 orders a
store-release before a later load-acquire (RCsc), so the pair orders every earlier access
before every later one: a full barrier. It costs ~100 ns and is taken twice per write and
twice per read. A compiled `__atomic_thread_fence` would be cheaper; see docs/SHM.md.
"""
from __future__ import annotations

import platform
import threading

_STRONG_ORDER = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
_lock = threading.Lock()
_lock.acquire()


def _fence_lock() -> None:
    _lock.release()
    _lock.acquire()


def _fence_noop() -> None:
    return None


fence = _fence_noop if _STRONG_ORDER else _fence_lock
