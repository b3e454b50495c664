"""`shm-vla shm ls|clean --instance NAME`: list segments, remove stale ones."""
from __future__ import annotations

import argparse
import json

from .. import config
from . import segment as segmod


def _describe(layout: dict | None) -> str:
    if not layout:
        return "-"
    if layout.get("kind") == "ring":
        return f"ring {layout['depth']} x {layout['dtype']}{tuple(layout['shape'])}"
    return layout.get("kind", "?")


def _ls(instance: str, prefix: str, as_json: bool) -> int:
    infos = [segmod.inspect(n) for n in segmod.instance_segments(instance, prefix)]
    if as_json:
        print(json.dumps([{"name": i.name, "size_bytes": i.size_bytes, "layout": i.layout,
                           "writer_pid": i.writer_pid, "alive": i.alive, "error": i.error} for i in infos], indent=1))
        return 0
    if not infos:
        print(f"no segments for instance {instance!r}")
        return 0
    print(f"{'segment':<44} {'size':>12} {'writer':>8} {'state':<6} layout")
    for i in infos:
        state = "live" if i.alive else ("stale" if not i.error else "bad")
        print(f"{i.name:<44} {i.size_bytes:>12} {i.writer_pid:>8} {state:<6} {_describe(i.layout) if not i.error else i.error}")
    return 0


def _clean(instance: str, prefix: str) -> int:
    removed = kept = 0
    for name in segmod.instance_segments(instance, prefix):
        if segmod.remove_stale(name):
            removed += 1
            print(f"removed {name}")
        else:
            kept += 1
    print(f"{removed} stale segment(s) removed, {kept} live kept")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shm-vla shm", description=__doc__)
    parser.add_argument("action", choices=("ls", "clean"))
    config.add_arguments(parser)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cfg = config.from_args(args)          # the segment prefix is shm.prefix
    if args.action == "ls":
        return _ls(cfg.instance, cfg.shm.prefix, args.json)
    return _clean(cfg.instance, cfg.shm.prefix)
