"""Frames from the view rings to the VL device: staged (host copy) vs direct (from the ring slots).

Five real view rings (640x360 RGB, depth 16, read-only readers as in the VL process) hold a
new set before every measured call; each path then takes the newest frame of each view to
the device, in turn, call by call (fair on a noisy machine):

* staged: copy each frame out of its slot under the seqlock into one host buffer (page-locked
  on CUDA), then one upload; what vl.frame_upload = "staged" does.
* staged-pageable (CUDA only): the same into an ordinary buffer: what a plain .to() costs.
* direct: each view's frame from its ring slot (registered as page-locked) on its own stream,
  then the slots' sequences checked; what vl.frame_upload = "direct" does.

Timed: from the choice of the records to the frames being on the device (synchronised),
p50/p99/max. With --encode the compact backbone's encode is included (the whole VL step
apart from the choice of the set). Usage: python bench/frame_upload.py [--device cuda] [--json]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from shm_vla.shm.ring import Ring                                          # noqa: E402
from shm_vla.workers.frame_upload import DirectFrames, StagedFrames       # noqa: E402

N_VIEWS, SHAPE, DEPTH = 5, (360, 640, 3), 16


def _stats(ms: list) -> dict:
    a = np.asarray(ms)
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


class UploadPath:
    """One way to the device: read(rings, records, meta) then to_device() -> frames."""

    def __init__(self, name: str, source, device: str, torch):
        self.name, self.source, self.device, self.torch = name, source, device, torch
        self.ms: list[float] = []
        self.torn = 0

    def step(self, rings, meta, encode) -> None:
        torch = self.torch
        t0 = time.perf_counter()
        for i, ring in enumerate(rings):
            assert self.source.read(i, ring, ring.head - 1, meta)
        frames = self.source.frames_for_encode()
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames).to(self.device, non_blocking=True)
        if encode:
            encode(frames)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        if not self.source.intact():
            self.torn += 1
        self.ms.append((time.perf_counter() - t0) * 1e3)


def _rings(instance: str):
    writers = [Ring.create(instance, f"view{i}", np.uint8, SHAPE, DEPTH) for i in range(N_VIEWS)]
    readers = [Ring.attach(instance, f"view{i}") for i in range(N_VIEWS)]
    return writers, readers


def _publish(writers, k: int, images: np.ndarray) -> None:
    for i, ring in enumerate(writers):
        with ring.loan(src_ts=float(k)) as slot:
            slot[...] = images[(k + i) % len(images)]


def _paths(args, readers, torch) -> list[UploadPath]:
    cuda = args.device.startswith("cuda")
    paths = [UploadPath("staged", StagedFrames(N_VIEWS, SHAPE, pin=cuda), args.device, torch)]
    if cuda:
        paths.append(UploadPath("staged-pageable", StagedFrames(N_VIEWS, SHAPE, pin=False), args.device, torch))
    paths.append(UploadPath("direct", DirectFrames(readers, args.device), args.device, torch))
    return paths


def measure(args) -> dict:
    import torch
    torch.set_num_threads(1)
    instance = C.unique_instance("fu")
    writers, readers = _rings(instance)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8,) + SHAPE, dtype=np.uint8)
    encode = None
    if args.encode:
        from shm_vla.config import ModelConfig
        from shm_vla.model import make_backbone
        encoder = make_backbone(ModelConfig(backbone="compact", vl_device=args.device), 2048, device=args.device)
        encode = encoder.encode
    paths = _paths(args, readers, torch)
    meta = readers[0].new_meta(N_VIEWS)
    try:
        end = time.monotonic() + args.max_seconds
        for k in range(args.warmup + args.iters):
            if time.monotonic() > end:
                break
            for path in paths:
                _publish(writers, k * len(paths), images)      # a new set before every call
                path.step(readers, meta, encode)
                if k < args.warmup:
                    path.ms.clear()
        results = [{"path": p.name, "torn": p.torn, **_stats(p.ms)} for p in paths if p.ms]
    finally:
        for path in paths:
            path.source.close()
        for ring in readers + writers:
            ring.close()
        for ring in writers:
            ring.unlink()
    by = {r["path"]: r for r in results}
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    return {**C.report_header("frame-upload", sys.argv[1:]), "device": args.device, "gpu": gpu,
            "encode": bool(args.encode), "frames": [N_VIEWS, *SHAPE], "results": results,
            "direct_over_staged_p50": C.ratio(by.get("direct", {}).get("p50_ms"), by.get("staged", {}).get("p50_ms"))}


def render(report: dict) -> str:
    lines = [report["command"], f"device {report['device']} {report['gpu'] or ''} encode {report['encode']}"]
    for r in report["results"]:
        lines.append(f"{r['path']:<16} p50 {r['p50_ms']:7.3f}  p99 {r['p99_ms']:7.3f}  max {r['max_ms']:7.3f} ms"
                     f"  (n {r['n']}, torn {r['torn']})")
    lines.append(f"direct / staged p50: {C.fmt(report['direct_over_staged_p50'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=30.0, help="bound on the measuring loop")
    ap.add_argument("--encode", action="store_true", help="include the compact backbone's encode")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    C.emit(measure(args), args.json, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
