"""Child process for the shared-memory stress tests (run as a script, prints one JSON line).

writer INSTANCE RECORD_BYTES DEPTH SECONDS [--die-mid-write]
reader INSTANCE RECORD_BYTES SECONDS WINDOW
Each record is uint8; bytes 0..7 hold the counter, every other byte (counter % 251).
"""
import json
import os
import signal
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from shm_vla.shm.ring import Ring, ReadTimeout  # noqa: E402


def fill(view, counter):
    view[8:] = counter % 251
    view[:8] = np.frombuffer(np.uint64(counter).tobytes(), np.uint8)


def check(rec):
    counter = int(rec[:8].view(np.uint64)[0])
    return counter, bool((rec[8:] == counter % 251).all())


def writer(instance, nbytes, depth, seconds, die_mid_write=False):
    ring = Ring.create(instance, "stress", np.uint8, (nbytes,), depth)
    start = ring.head
    print(json.dumps({"ready": True, "start": start}), flush=True)
    end = time.monotonic() + seconds
    counter = start
    while time.monotonic() < end:
        with ring.loan(src_ts=float(counter)) as view:
            if die_mid_write and counter - start == 20:
                view[8: nbytes // 2] = 7          # half a record, then a hard death
                os.kill(os.getpid(), signal.SIGKILL)
            fill(view, counter)
        counter += 1
    print(json.dumps({"written": counter - start, "head": ring.head}), flush=True)


def reader(instance, nbytes, seconds, window):
    deadline = time.monotonic() + 5
    while True:
        try:
            ring = Ring.attach(instance, "stress", np.uint8, (nbytes,))
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    out = np.zeros((window, nbytes), np.uint8)
    meta = np.zeros(window, ring.meta.dtype)
    reads = torn = gaps = timeouts = 0
    end = time.monotonic() + seconds
    last = ring.head
    while time.monotonic() < end:
        ring.wait(last, 0.05)
        try:
            k = ring.window(window, out, meta)
        except ReadTimeout:
            timeouts += 1
            continue
        if k == 0:
            continue
        counters = []
        for row in out[window - k:]:
            c, ok = check(row)
            torn += not ok
            counters.append(c)
        gaps += sum(b - a != 1 for a, b in zip(counters, counters[1:]))
        gaps += sum(int(m) != c for m, c in zip(meta["record"][window - k:], counters))
        last = counters[-1] + 1
        reads += 1
    print(json.dumps({"reads": reads, "torn": torn, "gaps": gaps, "retries": ring.retries,
                      "timeouts": timeouts}), flush=True)


if __name__ == "__main__":
    mode, instance, nbytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "writer":
        writer(instance, nbytes, int(sys.argv[4]), float(sys.argv[5]), "--die-mid-write" in sys.argv)
    else:
        reader(instance, nbytes, float(sys.argv[4]), int(sys.argv[5]))
