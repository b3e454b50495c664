"""`shm-vla recover DIR [DIR ...] [--json]`: finalise sessions cut off by a crash.

DIR is a session directory, or a folder of sessions: then each one not finalised (no summary,
or a file left unwritten for want of disk).
The recorder finalises its instance's cut-off sessions by itself when it starts; this is
for the rest (a recorder that is not started again, sessions moved elsewhere). A session
that a live recorder holds is left alone. Exit 0 when every session was finalised (or
already was), 1 otherwise (data that still does not fit on the disk included).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .session_files import SessionPaths, recover
from .session_state import SESSION_GLOB, SessionBusy, read_state


def _sessions(path: Path) -> list[Path]:
    """The session itself, or the unfinished sessions of a folder of sessions."""
    try:
        SessionPaths.of_dir(path)
        return [path]
    except FileNotFoundError:
        pass
    found = [d for d in sorted(path.glob(SESSION_GLOB)) if d.is_dir()]
    if not found:
        raise FileNotFoundError(f"{path}: not a session directory, nor a folder of sessions")
    return [d for d in found if not any(d.glob("performance_summary_*.json")) or _closing(d)]


def _closing(session: Path) -> bool:
    """Finalising was cut short (e.g. an .npz that did not fit on the disk)."""
    state = read_state(session)
    return state is not None and state.phase != "closed"


def _line(report: dict) -> str:
    if report["unfinished"]:
        return f"not finalised {report['session']}: " + "; ".join(report["unfinished"])
    if not report["summary_written"] and not report["trimmed"] and not report["removed_tmp"] \
            and report["sensor_records"] is None and report.get("vl_features") is None:
        return f"{report['session']}: already complete ({report['results']} results)"
    done = [f"{report['results']} results"]
    if report["summary_written"]:
        done.append("summary written")
    if report["trimmed"]:
        done.append("torn last line cut in " + ", ".join(report["trimmed"]))
    if report["removed_tmp"]:
        done.append(f"{report['removed_tmp']} half-written file(s) removed")
    if report["sensor_records"] is not None:
        done.append(f"{report['sensor_records']} sensor records assembled")
    if report.get("vl_features") is not None:
        done.append(f"{report['vl_features']} VL features assembled")
    return f"finalised {report['session']}: " + "; ".join(done)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shm-vla recover", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="a session directory or a folder of sessions")
    parser.add_argument("--json", action="store_true", help="one JSON report per session, as a list")
    args = parser.parse_args(argv)
    reports, failed = [], False
    for arg in args.dirs:
        try:
            sessions = _sessions(Path(arg))
        except (FileNotFoundError, NotADirectoryError) as exc:
            print(f"shm-vla recover: {exc}", file=sys.stderr)
            failed = True
            continue
        for session in sessions:
            try:
                report = recover(session)
            except SessionBusy as exc:
                print(f"shm-vla recover: {exc}; not touched", file=sys.stderr)
                failed = True
                continue
            except (OSError, ValueError) as exc:
                print(f"shm-vla recover: {session}: {exc}", file=sys.stderr)
                failed = True
                continue
            reports.append(report)
            failed = failed or bool(report["unfinished"])
            if not args.json:
                print(_line(report))
    if args.json:
        print(json.dumps(reports, indent=1))
    return 1 if failed else 0
