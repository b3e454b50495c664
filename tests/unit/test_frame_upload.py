"""frame_upload's registration thread (the CUDA call itself is the hardware boundary: stood in
for here; the real one: tests/gpu/test_frame_upload_gpu.py)."""
from __future__ import annotations

import threading
import time

import pytest

from shm_vla.workers import frame_upload
from shm_vla.workers.frame_upload import DirectUnavailable, _in_own_thread


def test_a_registration_runs_on_its_own_thread_and_returns_its_status():
    caller = threading.get_ident()
    seen = []
    assert _in_own_thread(lambda: seen.append(threading.get_ident()) or 0, undo=lambda: None) == 0
    assert seen and seen[0] != caller                     # a failure's 'last error' stays there
    assert _in_own_thread(lambda: 1, undo=lambda: None) == 1


def test_a_late_success_is_undone_by_the_thread_itself(monkeypatch):
    monkeypatch.setattr(frame_upload, "REGISTER_TIMEOUT_S", 0.05)
    undone = threading.Event()
    with pytest.raises(DirectUnavailable, match="did not return within"):
        _in_own_thread(lambda: time.sleep(0.3) or 0, undo=undone.set)
    assert undone.wait(5)                                  # nothing stays registered


def test_a_registration_that_raises_is_unavailable():
    def boom():
        raise RuntimeError("driver")
    with pytest.raises(DirectUnavailable, match="raised RuntimeError: driver"):
        _in_own_thread(boom, undo=lambda: None)
