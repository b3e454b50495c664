#!/usr/bin/env python3
"""Action-tick benchmark: our TickRunner against a faithful seed-style tick, in one run.

  shm-vla bench action-head [--presets tiny,seed-size] [--type flow|regression]
                            [--device cpu|cuda] [--iters N] [--quick] [--json]
                            [--stage-timing events|graphs|off] [--compare-stage-timing events,graphs,off]
                            [--compare-noise-seed]

Both paths get the same random-init checkpoint (``shm-vla make-checkpoint``) and the same host
windows. The two are interleaved tick by tick so that machine noise hits both alike.

* ours: :class:`shm_vla.model.TickRunner`: float32 on CPU; on CUDA bf16 weights (BatchNorm
  fp32), condition once per tick, the whole tick in one CUDA graph unless --no-graph.
* seed-style: :class:`SeedStyleTick` (bench/_seed_style.py): bf16 weights with BatchNorm fp32
  under bf16 autocast, fusion and time MLP recomputed at every ODE step, fresh host-to-device
  copies, ``.cpu()`` per call.

Reported per path: p50 / p99 / max / mean wall time of one tick (ms, host clock, including
the copies and the final synchronisation) and the seed/ours ratio of the p50s.
``--vl-load`` runs bench/vl.py on the same device in a child process meanwhile (the
"while the VL process runs" case; meaningful on a GPU).

``--compare-stage-timing events,graphs,off`` measures instead what the per-stage times cost
(issue 11 item 5): one TickRunner per ``stage_timing``, ticked in turn on the same inputs; per
mode the tick's wall time, the split (p50 per stage, null where not measured), the mode in
effect (a graph may refuse events) and the cost against "off" (p50 and mean difference, us).
On a CPU the modes differ only in reading the host clock; on CUDA they are the graph variants.

``--compare-noise-seed`` measures what the per-tick noise seed costs (issue 14: act seeds every
flow tick so that ``shm-vla replay`` redraws its noise): one TickRunner ticked alternately from
its own noise stream and with ``run(noise_seed)`` (``tick.tick_noise_seed``), the cost as the
p50 and mean difference (us), and whether a seed gives the same chunk twice (``reproducible``)
and the CUDA memory allocated grew over the seeded ticks (``allocated_growth_bytes``, CUDA).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shm_vla.model import TickRunner, load_checkpoint                   # noqa: E402
from shm_vla.tick import tick_noise_seed                               # noqa: E402
from shm_vla.model.runner import STAGE_TIMINGS                         # noqa: E402
from shm_vla.model.make_checkpoint import make_checkpoint              # noqa: E402
from _seed_style import SeedStyleTick                                  # noqa: E402

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
                      compile=args.compile, stage_timing=args.stage_timing)
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
    return {
        "preset": preset, "model_type": lm.info.model_type, "parameters": lm.info.parameter_count,
        "device": args.device, "ours_dtype": str(dtype).replace("torch.", ""), "cuda_graph": ours.graph is not None,
        "graph_copies": ours.graph_copies, "stream_priority": stream_priority, "compiled": args.compile, "flow_steps": args.steps, "solver": args.solver,
        "ours": o, "seed_style": s, "ratio_p50": s["p50_ms"] / o["p50_ms"], "ratio_p99": s["p99_ms"] / o["p99_ms"],
        "stage_timing": ours.stage_timing, "ours_split_p50_ms": _split_p50(parts), "ours_setup_s": setup_s,
    }


def _split_p50(parts: list) -> dict | None:
    """Median (sensor, robot, action) ms; None where the split was not measured (NaN)."""
    p = np.median(np.asarray(parts), axis=0)
    return None if np.isnan(p).any() else {"sensor": float(p[0]), "robot": float(p[1]), "action": float(p[2])}


def _model_and_dtype(preset: str, model_type: str, args, workdir: Path):
    """The preset's checkpoint (made once in workdir), loaded, and the runner dtype asked for."""
    path = workdir / f"{preset}-{model_type}.pt"
    if not path.exists():
        make_checkpoint(path, preset, model_type, seed=0)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda")
                                                           else torch.float32)
    return load_checkpoint(path), dtype


def compare_stage_timing(preset: str, model_type: str, modes: list[str], stream_priority: int, args,
                         workdir: Path) -> dict:
    """The cost of the per-stage times: one runner per mode, ticked in turn (noise hits all alike)."""
    lm, dtype = _model_and_dtype(preset, model_type, args, workdir)
    runners = {m: TickRunner(lm, device=args.device, dtype=dtype, flow_steps=args.steps, solver=args.solver,
                             horizon=8, use_cuda_graph=not args.no_graph, seed=0, stream_priority=stream_priority,
                             compile=args.compile, stage_timing=m) for m in modes}
    rng = np.random.default_rng(0)
    first = runners[modes[0]]
    vl, sensor, robot = (rng.standard_normal(buf.shape).astype(np.float32)
                         for buf in (first.vl_in, first.sensor_in, first.robot_in))
    iters = args.iters or (QUICK_ITERS if args.quick else ITERS)[preset]
    warm = max(2, iters // 10)
    wall = {m: [] for m in modes}
    parts = {m: [] for m in modes}
    deadline = time.monotonic() + args.max_seconds
    for i in range(warm + iters):
        for m, runner in runners.items():
            t = time.perf_counter_ns()
            runner.vl_in[:] = vl                # as in bench_preset: the fill counts to the tick
            runner.sensor_in[:] = sensor
            runner.robot_in[:] = robot
            res = runner.run()
            if i >= warm:
                wall[m].append((time.perf_counter_ns() - t) / 1e6)
                parts[m].append((res.sensor_encoding_ms, res.robot_encoding_ms, res.action_prediction_ms))
        if time.monotonic() > deadline and len(wall[modes[0]]) >= 3:
            break
    rows = [{"requested": m, "stage_timing": r.stage_timing, "capture_refused": r.capture_refused,
             "graphs": len(r.graphs), "graph_copies": r.graph_copies, "tick": _stats(wall[m]),
             "split_p50_ms": _split_p50(parts[m])} for m, r in runners.items()]
    cost = {}
    if "off" in wall:
        off = np.asarray(wall["off"])
        cost = {m: {"p50_us": float((np.median(wall[m]) - np.median(off)) * 1e3),
                    "mean_us": float((np.mean(wall[m]) - off.mean()) * 1e3)} for m in modes if m != "off"}
    return {"preset": preset, "model_type": lm.info.model_type, "device": args.device,
            "dtype": str(dtype).replace("torch.", ""), "stream_priority": stream_priority,
            "n": len(wall[modes[0]]), "modes": rows,
            "cost_vs_off": cost}


def compare_noise_seed(preset: str, model_type: str, stream_priority: int, args, workdir: Path) -> dict:
    """The cost of seeding each tick's noise: run() and run(noise_seed) alternately, one runner."""
    lm, dtype = _model_and_dtype(preset, model_type, args, workdir)
    runner = TickRunner(lm, device=args.device, dtype=dtype, flow_steps=args.steps, solver=args.solver, horizon=8,
                        use_cuda_graph=not args.no_graph, seed=0, stream_priority=stream_priority,
                        compile=args.compile, stage_timing=args.stage_timing)
    rng = np.random.default_rng(0)
    for buf in (runner.vl_in, runner.sensor_in, runner.robot_in):
        buf[...] = rng.standard_normal(buf.shape)
    iters = args.iters or (QUICK_ITERS if args.quick else ITERS)[preset]
    warm = max(2, iters // 10)
    wall = {"stream": [], "seeded": []}
    cuda = args.device.startswith("cuda")
    allocated = None
    deadline = time.monotonic() + args.max_seconds
    for i in range(warm + iters):
        if i == warm and cuda:
            allocated = torch.cuda.memory_allocated()
        for kind in (("stream", "seeded") if i % 2 else ("seeded", "stream")):      # alternate the order
            t = time.perf_counter_ns()
            runner.run(tick_noise_seed(0, i) if kind == "seeded" else None)
            if i >= warm:
                wall[kind].append((time.perf_counter_ns() - t) / 1e6)
        if time.monotonic() > deadline and len(wall["seeded"]) >= 3:
            break
    growth = torch.cuda.memory_allocated() - allocated if allocated is not None else None
    first = runner.run(12345).actions.copy()
    reproducible = bool(np.array_equal(runner.run(12345).actions, first))
    stream, seeded = np.asarray(wall["stream"]), np.asarray(wall["seeded"])
    return {"preset": preset, "model_type": lm.info.model_type, "device": args.device,
            "dtype": str(dtype).replace("torch.", ""), "cuda_graph": runner.graph is not None, "n": len(seeded),
            "stream": _stats(wall["stream"]), "seeded": _stats(wall["seeded"]),
            "cost_us": {"p50": float((np.median(seeded) - np.median(stream)) * 1e3),
                        "mean": float((seeded.mean() - stream.mean()) * 1e3)},
            "reproducible": reproducible, "allocated_growth_bytes": growth}


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
    ap.add_argument("--stage-timing", choices=STAGE_TIMINGS, default="events",
                    help="how our runner times its stages (shm_vla/model/runner.py)")
    ap.add_argument("--compare-stage-timing", default="", metavar="MODES",
                    help="instead of the seed comparison: the cost of each stage timing (e.g. events,graphs,off)")
    ap.add_argument("--compare-noise-seed", action="store_true",
                    help="instead of the seed comparison: the cost of seeding each tick's noise (replay)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--vl-load", action="store_true", help="run bench/vl.py on the same device meanwhile")
    ap.add_argument("--vl-load-backbone", default="compact", choices=("compact", "tiny-qwen", "random-qwen-3b"),
                    help="what the --vl-load process encodes with")
    ap.add_argument("--vl-load-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the --vl-load process only (e.g. CUDA_MPS_CLIENT_PRIORITY=1); repeatable")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    priorities = [int(p) for p in str(args.stream_priority).split(",") if p.strip()]
    compare = [m.strip() for m in args.compare_stage_timing.split(",") if m.strip()]
    if any(m not in STAGE_TIMINGS for m in compare):
        ap.error(f"--compare-stage-timing takes {', '.join(STAGE_TIMINGS)}, got {args.compare_stage_timing!r}")
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
            if compare:
                results = [compare_stage_timing(p.strip(), args.model_type, compare, priorities[0], args, Path(d))
                           for p in args.presets.split(",") if p]
            elif args.compare_noise_seed:
                results = [compare_noise_seed(p.strip(), args.model_type, priorities[0], args, Path(d))
                           for p in args.presets.split(",") if p]
            else:
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
        for r in (results if compare else []):
            for m in r["modes"]:
                print(f"{r['preset']:<10} stage timing {m['requested']:<7} (in effect {m['stage_timing']}) tick p50 "
                      f"{m['tick']['p50_ms']:8.3f} ms, split p50 {m['split_p50_ms']}, "
                      f"cost vs off {r['cost_vs_off'].get(m['requested'])}")
        for r in (results if args.compare_noise_seed else []):
            print(f"{r['preset']:<10} noise seed per tick: p50 {r['seeded']['p50_ms']:8.3f} ms vs own stream "
                  f"{r['stream']['p50_ms']:8.3f} ms, cost {r['cost_us']} us, reproducible {r['reproducible']}")
        for r in ([] if compare or args.compare_noise_seed else results):
            o, s = r["ours"], r["seed_style"]
            print(f"{r['preset']:<10} {r['model_type']:<14} {r['device']:<6} ours p50 {o['p50_ms']:8.2f} p99 "
                  f"{o['p99_ms']:8.2f} max {o['max_ms']:8.2f} | seed-style p50 {s['p50_ms']:8.2f} p99 "
                  f"{s['p99_ms']:8.2f} max {s['max_ms']:8.2f} | ratio p50 {r['ratio_p50']:.2f}x  "
                  f"(graph {r['cuda_graph']}, prio {r['stream_priority']}, n {o['n']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
