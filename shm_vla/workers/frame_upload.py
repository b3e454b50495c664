"""How the VL worker gets the chosen frames from the view rings to the backbone (vl.frame_upload).

* "staged" (the default until it is measured on a GPU): each frame is copied out of its ring
  slot under the seqlock into one host buffer (5, H, W, 3), page-locked when the backbone runs
  on CUDA; the backbone then uploads that buffer.
* "direct": no host copy. On CUDA each view ring's whole mapping is registered once as
  page-locked, read-only host memory (cudaHostRegister), so the copy engine reads each frame
  straight from its ring slot, on the view's own stream, into one preallocated device buffer.
  On CPU each slot is copied into a preallocated tensor: the same cost as staged, so that the
  path (its reads, its checks, its fallbacks) runs and is tested on every machine.

The direct copy runs outside the seqlock's own copy, so the frames are checked after use:
`intact()` after the encode (whose result comes back to the host, so every copy has
completed) re-reads each slot's sequence. A frame the camera writer overwrote meanwhile (that
takes ring_depth - 1 newer frames of that camera, 3 s at the defaults: in practice a VL
process stopped mid-encode) makes the worker discard the feature and choose a newer set.

If the mapping cannot be registered (a driver without read-only registration, a locked-memory
limit), `make_frame_source` says why in one line and the staged path is used.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np

CUDA_HOST_REGISTER_PORTABLE = 0x01
CUDA_HOST_REGISTER_READ_ONLY = 0x08      # the readers map the rings read-only
REGISTER_TIMEOUT_S = 10.0


class DirectUnavailable(RuntimeError):
    """The direct path cannot run here (the reason is the message)."""


class StagedFrames:
    """Today's path: one host copy per frame, under the seqlock."""

    name = "staged"

    def __init__(self, n_views: int, frame_shape: tuple, pin: bool = False):
        self.frames = np.zeros((n_views,) + tuple(frame_shape), np.uint8)
        if pin:
            import torch
            self.frames = torch.from_numpy(self.frames).pin_memory().numpy()

    def read(self, i: int, ring, record: int, meta: np.ndarray) -> bool:
        """Copy record `record` of view i and its metadata (meta[i]); False if not held."""
        got = ring.since(record, self.frames[i:i + 1], meta[i:i + 1], max_n=1)
        return got.count == 1 and int(meta["record"][i]) == record

    def frames_for_encode(self) -> np.ndarray:
        return self.frames

    def intact(self) -> bool:
        return True          # the copies were validated as they were made

    def close(self) -> None:
        pass


class DirectFrames:
    """Frames read in place from the ring slots; see the module text."""

    name = "direct"

    def __init__(self, rings: list, device: str):
        import torch
        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.rings = rings
        self._registered: list[int] = []
        self.streams = self.slots = self.peeks = None     # (close() may run before they exist)
        if self.cuda:
            try:
                for ring in rings:
                    self._register(ring.seg)
            except DirectUnavailable:
                self.close()
                raise
        with warnings.catch_warnings():
            # the readers' maps are read-only, and torch says so; nothing here writes to them
            warnings.simplefilter("ignore", UserWarning)
            self.slots = [torch.from_numpy(ring.payload) for ring in rings]   # (depth, H, W, 3) views
        shape = (len(rings),) + tuple(rings[0].shape)
        self.frames = torch.empty(shape, dtype=torch.uint8, device=self.device)
        self.streams = [torch.cuda.Stream(device=self.device) for _ in rings] if self.cuda else None
        self.peeks: list = [None] * len(rings)

    def read(self, i: int, ring, record: int, meta: np.ndarray) -> bool:
        """Hold record `record` of view i in place and copy its metadata; False if not held."""
        peek = ring.peek(record)
        if peek is None:
            return False
        meta[i] = peek.meta
        if not peek.valid():
            return False
        self.peeks[i] = peek
        return True

    def frames_for_encode(self):
        """The held frames on the backbone's device, (N, H, W, 3) uint8; ordered before any
        work later queued on the current stream."""
        if not self.cuda:
            for i, peek in enumerate(self.peeks):
                self.frames[i].copy_(self.slots[i][peek.slot])
            return self.frames
        torch = self.torch
        main = torch.cuda.current_stream(self.device)
        for i, peek in enumerate(self.peeks):
            stream = self.streams[i]
            stream.wait_stream(main)                 # the previous encode is done with frames[i]
            with torch.cuda.stream(stream):
                self.frames[i].copy_(self.slots[i][peek.slot], non_blocking=True)
        for stream in self.streams:
            main.wait_stream(stream)
        return self.frames

    def intact(self) -> bool:
        """After the frames were used: did every slot keep its frame throughout?"""
        return all(peek.valid() for peek in self.peeks)

    def close(self) -> None:
        """Before the rings are closed: a registered range must be unregistered before unmapping."""
        self.slots, self.peeks = [], []
        if self._registered:
            # copies still queued (an exception between the upload and the encode's sync) must
            # not read a range that is no longer registered
            for stream in self.streams or ():
                try:
                    stream.synchronize()
                except RuntimeError:
                    pass                                 # a failed device: unregister all the same
            cudart = self.torch.cuda.cudart()
            for address in self._registered:
                cudart.cudaHostUnregister(address)
            self._registered = []

    def _register(self, seg) -> None:
        address, size = seg.address, len(seg.mm)
        torch = self.torch

        def register() -> int:
            torch.cuda.set_device(self.device)    # a new thread starts on device 0: no stray context there
            return int(torch.cuda.cudart().cudaHostRegister(
                address, size, CUDA_HOST_REGISTER_PORTABLE | CUDA_HOST_REGISTER_READ_ONLY))
        err = _in_own_thread(register, lambda: torch.cuda.cudart().cudaHostUnregister(address))
        if err != 0:
            raise DirectUnavailable(f"cudaHostRegister of {seg.name} ({size} bytes, read-only) "
                                    f"failed with CUDA error {err}")
        self._registered.append(address)


def _in_own_thread(call, undo):
    """call() (0: success) on a short-lived thread: a failed CUDA runtime call leaves the
    thread's 'last error' set, which torch's next kernel-launch check on that thread would
    report as its own. Given up after REGISTER_TIMEOUT_S; a success after that is undone by
    the thread itself (undo()), so nothing stays registered that nobody would unregister."""
    lock = threading.Lock()
    state = {"result": None, "abandoned": False, "error": ""}

    def run() -> None:
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - reported to the caller as the reason
            state["error"] = f"{type(exc).__name__}: {exc}"
            return
        with lock:
            state["result"] = result
            late = state["abandoned"]
        if late and result == 0:
            undo()

    thread = threading.Thread(target=run, name="cuda-host-register", daemon=True)
    thread.start()
    thread.join(REGISTER_TIMEOUT_S)
    with lock:
        if state["result"] is None:
            state["abandoned"] = True
            raise DirectUnavailable(f"cudaHostRegister did not return within {REGISTER_TIMEOUT_S:.0f} s"
                                    if thread.is_alive() else f"cudaHostRegister raised {state['error']}")
        return state["result"]


def make_frame_source(mode: str, rings: list, device: str, log):
    """The configured frame source; "direct" falls back to "staged" with one line saying why."""
    if mode == "direct":
        try:
            return DirectFrames(rings, device)
        except DirectUnavailable as exc:
            log.warning("vl.frame_upload='direct' unavailable (%s): frames are staged through a host copy", exc)
    return StagedFrames(len(rings), rings[0].shape, pin=device.startswith("cuda"))
