"""`shm-vla ingest camera|robot|sensor --instance NAME`: one ingest process."""
from __future__ import annotations

import importlib
import sys

from ..process import Runtime, parse_args
from ..shm.segment import ShmError

KINDS = ("camera", "robot", "sensor")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in KINDS:
        print(f"usage: shm-vla ingest {{{'|'.join(KINDS)}}} --instance NAME [--config PATH] [--set K=V]",
              file=sys.stderr)
        return 2
    kind = argv[0]
    _, cfg = parse_args(f"shm-vla ingest {kind}", argv[1:])
    module = importlib.import_module(f"shm_vla.ingest.{kind}")
    try:
        rt = Runtime(cfg, f"ingest-{kind}")
    except ShmError as exc:
        print(f"shm-vla ingest {kind}: {exc}", file=sys.stderr)
        return 1
    try:
        return module.run(rt)
    except (ShmError, OSError) as exc:
        rt.log.error("%s", exc)
        return 1
    finally:
        rt.close()
