#!/usr/bin/env python3
"""Fault drills, measured (docs/FAULTS.md): what a user's drills do to a running pipeline.

    bench/faults.py [--json] [--stop-s S] [--hang-timeout-s S] [--shadow]
    shm-vla bench faults ...          (the same script)

One `shm-vla run flow` (tiny checkpoint, CPU) beside `shm-vla sim all` (sender clocks offset
by a known amount, the sensor's real wire format of 10 records per datagram), on loopback.
In order:

  1. kill -9 of each stage in turn: seconds until its replacement reports up, and for act
     the gap in the commands the robot receives;
  2. SIGSTOP of ingest sensor for --stop-s, then SIGCONT: commands that used a sensor
     window older than the gate's bound by the sender's own clock (must be 0), the delay
     from SIGCONT to the next command, records counted as stale backlog;
  3. SIGSTOP of act (a hang): seconds until the supervisor has it restarted and up;
  4. SIGKILL of the supervisor: seconds until every stage has exited, commands received
     after the supervisor's death.

--shadow runs a shadow beside act (shadow.checkpoint: another tiny flow checkpoint) and
adds it to drills 1 and 4, plus: SIGSTOP of the shadow for --stop-s (ticks it skipped and
missed, the delay from SIGCONT to its next tick) and past --hang-timeout-s (seconds until it
is restarted and up); for each shadow drill, the largest gap between the commands the robot
receives (act must not notice).

Benchmarks report; they assert nothing. Every wait is bounded.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from shm_vla import config  # noqa: E402
from shm_vla import pipeline as P  # noqa: E402
from shm_vla.model.make_checkpoint import make_checkpoint  # noqa: E402
from shm_vla.shm import stats as statsmod  # noqa: E402
from shm_vla.shm.ring import META_DTYPE  # noqa: E402
from shm_vla.streams import Streams  # noqa: E402

STAGES = tuple(name for name in P.STAGES if name != P.SHADOW)      # the stages of a run without a shadow
SENDER_OFFSET_S = 3.7
START_TIMEOUT_S = 120.0
STEP_TIMEOUT_S = 60.0


def _snap(instance: str, process: str) -> dict | None:
    try:
        return statsmod.read_snapshot(instance, process)
    except Exception:
        return None


def _up(instance: str, process: str, not_pid: int | None = None) -> bool:
    s = _snap(instance, process)
    return s is not None and s["state"] == "up" and s["pid"] != not_pid


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


class Commands:
    """The command sink's JSONL log, read incrementally: receive times (monotonic ns)."""

    def __init__(self, path: Path):
        self.path, self.times, self._pos = path, [], 0

    def refresh(self) -> list[int]:
        if self.path.exists():
            with open(self.path) as f:
                f.seek(self._pos)
                for line in f:
                    if line.endswith("\n"):
                        entry = json.loads(line)
                        if entry.get("valid") and entry["command"].get("cmd") == "dpose":
                            self.times.append(entry["recv_monotonic_ns"])
                self._pos = f.tell()
        return self.times

    def max_gap_ms(self, t0_ns: int, t1_ns: int) -> float | None:
        """The largest gap between consecutive commands received in [t0_ns, t1_ns]."""
        times = [t for t in self.refresh() if t0_ns <= t <= t1_ns]
        return round(max(np.diff(times)) / 1e6, 1) if len(times) > 1 else None

    def first_after(self, t_ns: int, timeout_s: float) -> float | None:
        """Seconds from t_ns to the first command received after it."""
        got = C.wait_for(lambda: [t for t in self.refresh() if t > t_ns], timeout_s, 0.01)
        return (got[0] - t_ns) / 1e9 if got else None


def _results(cfg) -> np.ndarray:
    ring = Streams(cfg).attach_results()
    try:
        out = np.zeros(ring.depth - 1, ring.dtype)
        k = ring.window(ring.depth - 1, out, np.zeros(ring.depth - 1, META_DTYPE))
        return out[len(out) - k:].copy()
    finally:
        ring.close()


def drill_kill9(instance: str, commands: Commands, stages=STAGES) -> dict:
    out = {}
    for name in stages:
        old = _snap(instance, name)["pid"]
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic_ns()
        back = C.wait_for(lambda: _up(instance, name, not_pid=old), STEP_TIMEOUT_S, 0.01)
        entry = {"restart_s": round((time.monotonic_ns() - t0) / 1e9, 3) if back else None}
        if name == P.ACT:
            entry["command_gap_s"] = commands.first_after(t0, STEP_TIMEOUT_S)
        out[name] = entry
        time.sleep(1.0)
        if name == "shadow":
            entry["skipped"] = _snap(instance, "shadow")["values"].get("skipped")
            entry["max_command_gap_ms"] = commands.max_gap_ms(t0, time.monotonic_ns())
    return out


def drill_sigstop_sensor(instance: str, cfg, commands: Commands, stop_s: float) -> dict:
    pid = _snap(instance, P.INGEST_SENSOR)["pid"]
    backlog_before = _snap(instance, P.INGEST_SENSOR)["values"].get("stale_backlog", 0)
    os.kill(pid, signal.SIGSTOP)
    t_stop = time.time()
    time.sleep(stop_s)
    os.kill(pid, signal.SIGCONT)
    t_cont = time.monotonic_ns()
    next_command_s = commands.first_after(t_cont, STEP_TIMEOUT_S)
    time.sleep(2.0)
    results = _results(cfg)
    sent = results[(results["sent"] == 1) & (results["timestamp"] > t_stop)]
    span_ms = (cfg.sensor.window - 1) / cfg.sensor.rate_hz * 1e3
    oldest_ms = (sent["timestamp"] - (sent["sensor_window_ts"][:, 0] - SENDER_OFFSET_S)) * 1e3
    bound_ms = cfg.act.max_sensor_age_ms + span_ms
    return {"stop_s": stop_s, "commands_after": int(len(sent)),
            "stale_commanded": int((oldest_ms > bound_ms).sum()),
            "oldest_sample_used_ms_max": round(float(oldest_ms.max()), 1) if len(sent) else None,
            "bound_ms": round(bound_ms, 1), "next_command_after_sigcont_s": next_command_s,
            "stale_backlog_records": _snap(instance, P.INGEST_SENSOR)["values"].get("stale_backlog", 0)
            - backlog_before}


def drill_hang(instance: str, commands: Commands, hang_timeout_s: float) -> dict:
    old = _snap(instance, P.ACT)["pid"]
    os.kill(old, signal.SIGSTOP)
    t0 = time.monotonic_ns()
    back = C.wait_for(lambda: _up(instance, P.ACT, not_pid=old), STEP_TIMEOUT_S, 0.05)
    restart_s = (time.monotonic_ns() - t0) / 1e9
    if _pid_alive(old):
        os.kill(old, signal.SIGKILL)
    return {"hang_timeout_s": hang_timeout_s, "restart_s": round(restart_s, 3) if back else None,
            "commands_while_hung": sum(1 for t in commands.refresh() if t0 < t < t0 + int(hang_timeout_s * 1e9)),
            "command_gap_s": commands.first_after(t0, STEP_TIMEOUT_S)}


def drill_shadow(instance: str, commands: Commands, stop_s: float, hang_timeout_s: float) -> dict:
    """SIGSTOP of the shadow for stop_s, then past the hang timeout: act must not notice."""
    before = _snap(instance, "shadow")
    pid, values = before["pid"], before["values"]
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic_ns()
    time.sleep(stop_s)
    os.kill(pid, signal.SIGCONT)
    t_cont = time.monotonic_ns()
    C.wait_for(lambda: _snap(instance, "shadow")["values"]["ticks"] > values["ticks"], STEP_TIMEOUT_S, 0.01)
    next_tick_s = (time.monotonic_ns() - t_cont) / 1e9
    time.sleep(1.0)
    after = _snap(instance, "shadow")["values"]
    stall = {"stop_s": stop_s, "skipped": after["skipped"] - values["skipped"],
             "missed": after["missed"] - values["missed"], "next_tick_after_sigcont_s": round(next_tick_s, 3),
             "max_command_gap_ms": commands.max_gap_ms(t0, time.monotonic_ns())}
    os.kill(pid, signal.SIGSTOP)                 # now a hang: killed and restarted by the supervisor
    t0 = time.monotonic_ns()
    back = C.wait_for(lambda: _up(instance, "shadow", not_pid=pid), STEP_TIMEOUT_S, 0.05)
    hang = {"hang_timeout_s": hang_timeout_s,
            "restart_s": round((time.monotonic_ns() - t0) / 1e9, 3) if back else None,
            "max_command_gap_ms": commands.max_gap_ms(t0, time.monotonic_ns())}
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return {"stall": stall, "hang": hang}


def drill_supervisor_sigkill(instance: str, sup_pid: int, commands: Commands, stages=STAGES) -> dict:
    pids = {name: _snap(instance, name)["pid"] for name in stages}
    os.kill(sup_pid, signal.SIGKILL)
    t0 = time.monotonic_ns()
    gone = {}
    deadline = time.monotonic() + 10.0
    while len(gone) < len(pids) and time.monotonic() < deadline:
        for name, pid in pids.items():
            if name not in gone and not _pid_alive(pid):
                gone[name] = round((time.monotonic_ns() - t0) / 1e9, 3)
        time.sleep(0.005)
    for pid in pids.values():
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    return {"stopped_s": gone, "all_stopped_s": max(gone.values()) if len(gone) == len(pids) else None,
            # a command act had sent before the signal reached it may still arrive just after
            "commands_after_death_ms": [round((t - t0) / 1e6, 1) for t in commands.refresh() if t > t0]}


def run(args) -> dict:
    report = C.report_header("faults", sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="shm-vla-faults-") as tmp:
        tmp = Path(tmp)
        instance = C.unique_instance("faults")
        C.write_loopback_config(tmp / "cfg.toml", f"[supervise]\nhang_timeout_s = {args.hang_timeout_s}\n")
        cfg = config.load(instance, tmp / "cfg.toml")
        ckpt = make_checkpoint(tmp / "flow.pt", "tiny", "flow")
        stages, shadow = STAGES, []
        if args.shadow:
            stages = STAGES + (P.SHADOW,)
            shadow = ["--set", f'shadow.checkpoint="{make_checkpoint(tmp / "shadow.pt", "tiny", "flow", seed=1)}"']
        commands = Commands(tmp / "commands.jsonl")
        with C.Procs(tmp) as procs:
            sup = procs.start("run", C.cli_argv("run", "flow", "--instance", instance, "--config",
                                                str(tmp / "cfg.toml"), "--checkpoint", str(ckpt),
                                                "--out", str(tmp / "out"), *shadow))
            procs.start("sim", C.cli_argv("sim", "all", "--instance", instance, "--config", str(tmp / "cfg.toml"),
                                          "--clock-offset-s", str(SENDER_OFFSET_S), "--records-per-datagram",
                                          "10", "--log", str(commands.path)))
            if not C.wait_for(lambda: len(commands.refresh()) > 10, START_TIMEOUT_S):
                raise SystemExit(f"faults: the pipeline never commanded; see {tmp}/run.log")
            drills = report["drills"] = {}
            drills["kill9"] = drill_kill9(instance, commands, stages)
            drills["sigstop_sensor"] = drill_sigstop_sensor(instance, cfg, commands, args.stop_s)
            drills["hang_act"] = drill_hang(instance, commands, args.hang_timeout_s)
            if args.shadow:
                C.wait_for(lambda: _up(instance, "shadow"), STEP_TIMEOUT_S)
                drills["shadow"] = drill_shadow(instance, commands, args.stop_s, args.hang_timeout_s)
            time.sleep(2.0)
            drills["supervisor_sigkill"] = drill_supervisor_sigkill(instance, sup.pid, commands, stages)
        C.remove_instance(instance)
    return report


def render(r: dict) -> str:
    d = r["drills"]
    lines = [f"fault drills ({r['date']}, {r['machine']['cpu_model']}, {r['machine']['nproc']} cores)", "",
             "kill -9, seconds until the replacement is up:"]
    lines += [f"  {name:<14} {C.fmt(v['restart_s'])}" + (f"   (commands resumed after {C.fmt(v['command_gap_s'])} s)"
                                                          if "command_gap_s" in v else "") for name, v in d["kill9"].items()]
    s = d["sigstop_sensor"]
    lines += ["", f"SIGSTOP ingest sensor {s['stop_s']:g} s: {s['stale_commanded']} stale commands of "
              f"{s['commands_after']} (oldest sample used {C.fmt(s['oldest_sample_used_ms_max'], 1)} ms, bound "
              f"{s['bound_ms']} ms); next command {C.fmt(s['next_command_after_sigcont_s'], 3)} s after SIGCONT; "
              f"{s['stale_backlog_records']} backlog records counted"]
    h = d["hang_act"]
    lines += [f"SIGSTOP act (hang_timeout_s {h['hang_timeout_s']:g}): restarted and up after {C.fmt(h['restart_s'])} s; "
              f"{h['commands_while_hung']} commands while hung"]
    if "shadow" in d:
        st, hg, k9 = d["shadow"]["stall"], d["shadow"]["hang"], d["kill9"]["shadow"]
        lines += [f"shadow: kill -9 -> up after {C.fmt(k9['restart_s'])} s, {k9['skipped']} ticks skipped, largest "
                  f"command gap {C.fmt(k9['max_command_gap_ms'], 1)} ms; SIGSTOP {st['stop_s']:g} s -> "
                  f"{st['skipped']} skipped, {st['missed']} missed, next tick {C.fmt(st['next_tick_after_sigcont_s'], 3)}"
                  f" s after SIGCONT, largest command gap {C.fmt(st['max_command_gap_ms'], 1)} ms; hang -> up after "
                  f"{C.fmt(hg['restart_s'])} s, largest command gap {C.fmt(hg['max_command_gap_ms'], 1)} ms"]
    k = d["supervisor_sigkill"]
    lines += [f"SIGKILL of the supervisor: every stage gone after {C.fmt(k['all_stopped_s'], 3)} s; "
              f"commands received after its death: {len(k['commands_after_death_ms'])} "
              f"(at {k['commands_after_death_ms']} ms)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="shm-vla bench faults", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--stop-s", type=float, default=5.0, help="how long ingest sensor is stopped")
    p.add_argument("--hang-timeout-s", type=float, default=10.0,
                   help="supervise.hang_timeout_s for the run (more than --stop-s)")
    p.add_argument("--shadow", action="store_true", help="run a shadow beside act and drill it too")
    args = p.parse_args(argv)
    if args.hang_timeout_s <= args.stop_s:
        p.error("--hang-timeout-s must exceed --stop-s (else the stopped ingest is restarted as hung)")
    C.terminate_as_interrupt()
    C.emit(run(args), args.json, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
