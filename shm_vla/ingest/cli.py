"""`shm-vla ingest camera|robot|sensor --instance NAME`: one ingest process."""
from __future__ import annotations

import importlib
import sys

from ..config import ConfigError
from ..pipeline import INGEST_STAGES
from ..process import run_process

KINDS = tuple(INGEST_STAGES)
USAGE = (f"usage: shm-vla ingest {{{'|'.join(KINDS)}}} --instance NAME [--config PATH] [--set K=V]\n"
         f"  (shm-vla ingest KIND --help: the options of one)")


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.splitlines()[0] + "\n\n" + USAGE)
        return 0
    if not argv or argv[0] not in KINDS:
        print((f"shm-vla ingest: unknown input {argv[0]!r}\n" if argv else "") + USAGE, file=sys.stderr)
        return 2
    kind = argv[0]
    module = importlib.import_module(f"shm_vla.ingest.{kind}")
    # ConfigError from a run: a listening port that another program holds (exit 2, not restarted)
    return run_process(f"shm-vla ingest {kind}", INGEST_STAGES[kind].name, argv[1:], lambda rt, args: module.run(rt),
                       config_errors=(ConfigError,))
