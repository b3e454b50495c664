"""`make demo`: the whole pipeline on this machine, simulated peers, tiny model, CPU.

1. generate a tiny random-init flow checkpoint in checkpoints/ if absent;
2. `shm-vla run flow --sim --duration S` (cameras, robot, sensor and the command sink
   simulated on loopback; every stage its own process);
3. print the postmortem of the session just recorded.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import analyze, supervise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shm_vla.demo", description=__doc__.splitlines()[0])
    p.add_argument("--instance", default="demo")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--checkpoint", default="checkpoints/tiny_flow.pt")
    p.add_argument("--out", default="sessions")
    args = p.parse_args(argv)
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        from .model.make_checkpoint import make_checkpoint
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        make_checkpoint(ckpt, "tiny", "flow")
        print(f"demo: generated {ckpt} (tiny preset, random weights)", flush=True)
    print(f"demo: running the pipeline for {args.duration:g} s (Ctrl+C stops it cleanly)", flush=True)
    code = supervise.main(["flow", "--instance", args.instance, "--sim", "--duration", str(args.duration),
                           "--checkpoint", str(ckpt), "--out", args.out])
    if code != 0:
        return code
    print("\ndemo: postmortem of the newest session (shm-vla analyze sessions)\n", flush=True)
    return analyze.main([args.out])


if __name__ == "__main__":
    sys.exit(main())
