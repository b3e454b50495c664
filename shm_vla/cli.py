"""`shm-vla <command> ...`: a thin dispatcher.

Each command lives in its own module with a ``main(argv) -> int`` that owns its argparse;
modules are imported lazily so that `shm-vla shm ls` never imports torch.

`shm-vla bench NAME` is the exception: the benchmarks are scripts of a checkout (bench/,
beside the package), not part of the installed package. Where the package runs from a
checkout (an editable install, or `python -m shm_vla.cli` inside one) it runs
bench/NAME.py in place of this process; an installed wheel has no bench/, and says to run
them from a checkout.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

BENCHMARKS = ("action-head", "baseline-threaded", "e2e", "faults", "frame-upload", "ingest", "ipc", "vl",
              "vl-ops")  # bench/*.py

COMMANDS = {
    "shm": ("shm_vla.shm.cli", "shared-memory segments: ls, clean"),
    "ingest": ("shm_vla.ingest.cli", "run one ingest process: camera | robot | sensor"),
    "sim": ("shm_vla.sim.cli", "simulated peers: camera | robot | sensor | commands | all"),
    "vl": ("shm_vla.workers.vl", "the VL encoder process"),
    "act": ("shm_vla.workers.act", "the action process (10 Hz ticks)"),
    "record": ("shm_vla.workers.record", "the recorder process"),
    "shadow": ("shm_vla.workers.shadow", "a shadow checkpoint beside act (shadow.checkpoint), never commanding"),
    "run": ("shm_vla.supervise", "supervise a whole pipeline: run flow|regression"),
    "check": ("shm_vla.preflight", "check an instance can start (config, checkpoints, ports, /dev/shm room)"),
    "checkpoint": ("shm_vla.model.checkpoint_cli", "checkpoint info | verify"),
    "make-checkpoint": ("shm_vla.model.make_checkpoint", "write a random-init checkpoint"),
    "stat": ("shm_vla.stat_view", "live counters (same as shm-vla-stat)"),
    "analyze": ("shm_vla.analyze", "postmortem of a session directory or timings file"),
    "recover": ("shm_vla.workers.recover_cli", "finalise sessions cut off by a crash"),
    "replay": ("shm_vla.replay", "re-run a recorded session's ticks through a checkpoint, offline"),
    "bench": (None, "benchmarks, from a checkout: " + " | ".join(BENCHMARKS)),
}

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
BENCH_MARKER = "_common.py"      # what tells a checkout's bench/ from any folder of that name
FROM_A_CHECKOUT = ("the benchmarks are not part of the installed package; run them from a checkout of shm-vla: "
                   "python bench/NAME.py [args], NAME one of " + ", ".join(n.replace("-", "_") for n in BENCHMARKS))


def _usage() -> str:
    lines = ["usage: shm-vla <command> [args...]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def _bench(argv: list[str]) -> int:
    """Run bench/NAME.py of the checkout this package runs from, as `python bench/NAME.py` would."""
    wants_help = not argv or argv[0] in ("-h", "--help")
    if not (BENCH_DIR / BENCH_MARKER).is_file():       # an installed package: no checkout beside it
        if wants_help:
            print(f"usage: shm-vla bench <name> [args]   (from a checkout only)\n{FROM_A_CHECKOUT}")
            return 0 if argv else 2
        print(f"shm-vla bench: {FROM_A_CHECKOUT}", file=sys.stderr)
        return 2
    scripts = {p.stem.replace("_", "-"): p for p in sorted(BENCH_DIR.glob("[!_]*.py"))}
    if wants_help:
        print("usage: shm-vla bench <name> [args]\nbenchmarks: " + ", ".join(scripts))
        return 0 if argv else 2
    script = scripts.get(argv[0].replace("_", "-"))
    if script is None:
        print(f"shm-vla bench: no benchmark {argv[0]!r} in {BENCH_DIR}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, str(script), *argv[1:]])    # exit code and signals: the script's


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"shm-vla: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if name == "bench":
        return _bench(rest)
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
