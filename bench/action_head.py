#!/usr/bin/env python3
"""Action-tick benchmark: our TickRunner against a faithful seed-style tick, in one run.

  shm-vla bench action-head [--presets tiny,seed-size] [--type flow|regression]
                            [--device cpu|cuda] [--iters N] [--quick] [--json]

Both paths get the same random-init checkpoint (``shm-vla make-checkpoint``) and the same host
windows. The two are interleaved tick by tick so that machine noise hits both alike.

* ours: :class:`shm_vla.model.TickRunner`: float32 on CPU; on CUDA bf16 weights (BatchNorm
  fp32), condition once per tick, the whole tick in one CUDA graph unless --no-graph.
* seed-style: :class:`shm_vla.model.seed_style.SeedStyleTick`: bf16 weights with BatchNorm fp32
  under bf16 autocast, fusion and time MLP recomputed at every ODE step, fresh host-to-device
  copies, ``.cpu()`` per call.

Reported per path: p50 / p99 / max / mean wall time of one tick (ms, host clock, including
the copies and the final synchronisation) and the seed/ours ratio of the p50s.
``--vl-load`` runs bench/vl.py on the same device in a child process meanwhile (the
"while the VL process runs" case; meaningful on a GPU).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shm_vla.model import TickRunner, load_checkpoint                   # noqa: E402
from shm_vla.model.make_checkpoint import make_checkpoint              # noqa: E402
from shm_vla.model.seed_style import SeedStyleTick                     # noqa: E402

ITERS = {"tiny": 300, "seed-size": 40}
QUICK_ITERS = {"tiny": 40, "seed-size": 4}


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "mean_ms": float(a.mean()), "min_ms": float(a.min())}


def machine() -> dict:
    info = {"host_cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def bench_preset(preset: str, model_type: str, stream_priority: int, args, workdir: Path) -> dict:
    path = workdir / f"{preset}-{model_type}.pt"
    if not path.exists():                           # made once, shared by the stream priorities
        make_checkpoint(path, preset, model_type, seed=0)
    lm = load_checkpoint(path)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    if args.dtype:
        dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    ours = TickRunner(lm, device=args.device, dtype=dtype, flow_steps=args.steps, solver=args.solver,
                      horizon=8, use_cuda_graph=not args.no_graph, seed=0, stream_priority=stream_priority,
                      compile=args.compile)
    if not args.device.startswith("cuda"):
        ours.run()                                  # CPU: compile (if asked) before the timed loop
    setup_s = time.perf_counter() - t0
    seed = SeedStyleTick(lm.heads, device=args.device, flow_steps=args.steps, solver=args.solver, horizon=8)
    rng = np.random.default_rng(0)
    vl = rng.standard_normal(ours.vl_in.shape).astype(np.float32)
    sensor = rng.standard_normal(ours.sensor_in.shape).astype(np.float32)
    robot = rng.standard_normal(ours.robot_in.shape).astype(np.float32)
    iters = args.iters or (QUICK_ITERS if args.quick else ITERS)[preset]
    warm = max(2, iters // 10)
    ours_ms, seed_ms, parts = [], [], []
    deadline = time.monotonic() + args.max_seconds
    for i in range(warm + iters):
        t = time.perf_counter_ns()
        ours.vl_in[:] = vl                      # the action process fills the buffers in place
        ours.sensor_in[:] = sensor
        ours.robot_in[:] = robot
        res = ours.run()
        t_ours = (time.perf_counter_ns() - t) / 1e6
        t = time.perf_counter_ns()
        seed(vl, sensor, robot)
        t_seed = (time.perf_counter_ns() - t) / 1e6
        if i >= warm:
            ours_ms.append(t_ours)
            seed_ms.append(t_seed)
            parts.append((res.sensor_encoding_ms, res.robot_encoding_ms, res.action_prediction_ms))
        if time.monotonic() > deadline and len(ours_ms) >= 3:
            break
    o, s = _stats(ours_ms), _stats(seed_ms)
    p = np.median(np.asarray(parts), axis=0)
    return {
        "preset": preset, "model_type": lm.info.model_type, "parameters": lm.info.parameter_count,
        "device": args.device, "ours_dtype": str(dtype).replace("torch.", ""), "cuda_graph": ours.graph is not None,
        "graph_copies": ours.graph_copies, "stream_priority": stream_priority, "compiled": args.compile, "flow_steps": args.steps, "solver": args.solver,
        "ours": o, "seed_style": s, "ratio_p50": s["p50_ms"] / o["p50_ms"], "ratio_p99": s["p99_ms"] / o["p99_ms"],
        "ours_split_p50_ms": {"sensor": float(p[0]), "robot": float(p[1]), "action": float(p[2])},
        "ours_setup_s": setup_s,
    }


def _env_pairs(items: list[str]) -> dict:
    pairs = dict(item.split("=", 1) for item in items if "=" in item)
    if len(pairs) != len(items):
        raise SystemExit(f"--vl-load-env takes KEY=VALUE, got {items}")
    return pairs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,seed-size")
    ap.add_argument("--type", dest="model_type", choices=("flow", "regression"), default="flow")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                    help="our runner's dtype (default float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--solver", choices=("euler", "rk4"), default="euler")
    ap.add_argument("--iters", type=int, default=0, help="measured ticks per path (default per preset)")
    ap.add_argument("--quick", action="store_true", help="few iterations (smoke run)")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="per preset, bound on the measuring loop")
    ap.add_argument("--no-graph", action="store_true", help="CUDA: eager instead of one CUDA graph")
    ap.add_argument("--stream-priority", default="0",
                    help="CUDA: priority of the runner's stream (lower = higher priority, e.g. -1); a comma "
                         "list measures each in turn (e.g. 0,-1: next to the same --vl-load)")
    ap.add_argument("--compile", action="store_true", help="TickRunner(compile=True): torch.compile velocity/encoders")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--vl-load", action="store_true", help="run bench/vl.py on the same device meanwhile")
    ap.add_argument("--vl-load-backbone", default="compact", choices=("compact", "tiny-qwen", "random-qwen-3b"),
                    help="what the --vl-load process encodes with")
    ap.add_argument("--vl-load-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the --vl-load process only (e.g. CUDA_MPS_CLIENT_PRIORITY=1); repeatable")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    priorities = [int(p) for p in str(args.stream_priority).split(",") if p.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    child = None
    if args.vl_load:
        child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("vl.py")), "--device", args.device,
                                  "--backbone", args.vl_load_backbone, "--load-seconds", str(args.max_seconds * 4)],
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, **_env_pairs(args.vl_load_env)})
        line = child.stdout.readline()            # the child prints one line once it encodes in a loop
        if "ready" not in line:
            raise SystemExit(f"the VL load did not start: {line!r}")
    try:
        with tempfile.TemporaryDirectory() as d:
            results = [bench_preset(p.strip(), args.model_type, prio, args, Path(d))
                       for p in args.presets.split(",") if p for prio in priorities]
    finally:
        if child is not None:
            child.terminate()
            child.wait(timeout=30)
    report = {"benchmark": "action_head", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "shm-vla bench action-head " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "vl_load": args.vl_load and args.vl_load_backbone,
              "vl_load_env": _env_pairs(args.vl_load_env), "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['command']}  ({report['machine']})")
        for r in results:
            o, s = r["ours"], r["seed_style"]
            print(f"{r['preset']:<10} {r['model_type']:<14} {r['device']:<6} ours p50 {o['p50_ms']:8.2f} p99 "
                  f"{o['p99_ms']:8.2f} max {o['max_ms']:8.2f} | seed-style p50 {s['p50_ms']:8.2f} p99 "
                  f"{s['p99_ms']:8.2f} max {s['max_ms']:8.2f} | ratio p50 {r['ratio_p50']:.2f}x  "
                  f"(graph {r['cuda_graph']}, prio {r['stream_priority']}, n {o['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
