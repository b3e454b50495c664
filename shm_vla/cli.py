"""`shm-vla <command> ...`: a thin dispatcher.

Each command lives in its own module with a ``main(argv) -> int`` that owns its argparse;
modules are imported lazily so that `shm-vla shm ls` never imports torch.
"""
from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

COMMANDS = {
    "shm": ("shm_vla.shm.cli", "shared-memory segments: ls, clean"),
    "ingest": ("shm_vla.ingest.cli", "run one ingest process: camera | robot | sensor"),
    "sim": ("shm_vla.sim.cli", "simulated peers: camera | robot | sensor | commands | all"),
    "vl": ("shm_vla.workers.vl", "the VL encoder process"),
    "act": ("shm_vla.workers.act", "the action process (10 Hz ticks)"),
    "record": ("shm_vla.workers.record", "the recorder process"),
    "run": ("shm_vla.supervise", "supervise a whole pipeline: run flow|regression"),
    "checkpoint": ("shm_vla.model.checkpoint_cli", "checkpoint info | verify"),
    "make-checkpoint": ("shm_vla.model.make_checkpoint", "write a random-init checkpoint"),
    "stat": ("shm_vla.stat_view", "live counters (same as shm-vla-stat)"),
    "analyze": ("shm_vla.analyze", "postmortem of a session directory or timings file"),
    "recover": ("shm_vla.workers.recover_cli", "finalise sessions cut off by a crash"),
    "bench": (None, "benchmarks from bench/: ipc | ingest | action-head | vl | vl-ops | e2e | faults"),
}

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def _usage() -> str:
    lines = ["usage: shm-vla <command> [args...]", "", "commands:"]
    lines += [f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def _bench(argv: list[str]) -> int:
    """Benchmarks live in the checkout's bench/ folder as plain scripts."""
    if not argv or argv[0] in ("-h", "--help"):
        names = sorted(p.stem.replace("_", "-") for p in BENCH_DIR.glob("[!_]*.py")) if BENCH_DIR.is_dir() else []
        print("usage: shm-vla bench <name> [args]\nbenchmarks: " + ", ".join(names))
        return 0 if argv else 2
    script = BENCH_DIR / (argv[0].replace("-", "_") + ".py")
    if not script.is_file():
        print(f"shm-vla bench: no benchmark {argv[0]!r} in {BENCH_DIR}", file=sys.stderr)
        return 2
    sys.argv = [str(script)] + argv[1:]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


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
