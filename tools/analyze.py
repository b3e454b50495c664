#!/usr/bin/env python3
"""Postmortem of a session from a checkout: `tools/analyze.py PATH [--plot F.png] [--compare OTHER] [--json]`.

Same as `shm-vla analyze`; works without installing the package.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shm_vla.analyze import main  # noqa: E402  (needs the path above)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
