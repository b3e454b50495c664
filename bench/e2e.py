#!/usr/bin/env python3
"""End-to-end benchmark (issue 5 item 7): shm-vla against a seed-style threaded receiver.

    bench/e2e.py [--duration S] [--quick] [--json] [--model flow|regression] [--warmup S] [--shadow]
    shm-vla bench e2e ...            (the same script, run from a checkout)

In one run, sequentially, with the same simulators (``shm-vla sim all``: 5 cameras at 5 Hz,
robot at 100 Hz, sensor at 650 records/s, the command sink), the same loopback ports, the
same tiny checkpoint (generated into a temporary directory) and the same measured duration:

a. shm-vla: ``shm-vla run MODEL --sim`` (supervisor, 3 ingest processes, vl, act, record);
b. baseline: bench/baseline_threaded.py (one process: threads, locks, deques, 10 ms poll)
   beside ``shm-vla sim all``.

Each side is measured over a window of ``--duration`` seconds that starts ``--warmup``
seconds after its first action record. From its timing records (analysed with
shm_vla.analyze, restricted to the window): tick jitter (p99 of |tick_lateness_ms|), the
interval error (|time between tick starts - period|, a definition that does not depend on
either runtime's idea of its schedule), input freshness at inference (p50/p99 sensor, robot,
frame and VL age), action latency (total_time p50/p99), achieved rate; commands the sink
received in the window; CPU% per process (CPU time / wall time over the window, 100 % = one
core; the simulators separately so that they can be excluded); machine load. Ratios are
baseline / shm-vla. Targets: shm-vla jitter p99 <= 2 ms, sensor age p99 <= 10 ms, and a
baseline/shm-vla jitter p99 ratio >= 5.

``--shadow`` adds a side ``shm_vla_shadow`` (run after ``shm_vla``, also with ``--only
shm_vla``): the same pipeline with a shadow (``shadow.checkpoint``: another random tiny
checkpoint of the same type, seed 1) beside act. It reports the shadow's own figures in the
window (ticks, misses, skips, head time, how far behind the live tick) and act's tick jitter,
interval error and latency with and without the shadow (``shadow_effect``: with / without).

Benchmarks report; they assert nothing. Exit code 0 unless a side failed to run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from shm_vla import analyze  # noqa: E402
from shm_vla.shm import stats as statsmod  # noqa: E402

DEFAULT_DURATION_S = 30.0
QUICK_DURATION_S = 8.0
DEFAULT_WARMUP_S = 3.0
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 45.0
TICK_HZ = 10.0
TARGETS = {"shm_vla_jitter_p99_ms": 2.0, "shm_vla_sensor_age_p99_ms": 10.0, "jitter_p99_ratio_min": 5.0}
SIM_PREFIX = "sim"
# the VL process's counters of the sets it took (docs/STAT.md), compared over the window
VL_SET_COUNTERS = ("updates", "mixed_trigger_sets", "over_skew_sets", "rejected_sets", "incomplete_trigger_timeouts")


# --------------------------------------------------------------------------- one side
class Side:
    """One measured run: its processes, its session directory, its command log."""

    def __init__(self, name: str, workdir: Path, ctx: argparse.Namespace):
        self.name, self.ctx = name, ctx
        self.dir = workdir / name
        self.out = self.dir / "out"
        self.out.mkdir(parents=True)
        self.instance = C.unique_instance("e2e")
        self.command_log = self.out / f"commands_{self.instance}.jsonl"
        self.procs = C.Procs(self.dir)
        self.window: tuple[float, float] | None = None
        self.cpu: dict = {}
        self.load: dict = {}
        self.exit_codes: dict = {}
        self.vl_sets: dict | None = None      # VL set counters over the window (shm-vla side)

    def common_args(self) -> list[str]:
        return ["--instance", self.instance, "--config", str(self.ctx.config)]

    def start(self):
        """Start the side's processes; returns the Popen of the one that must stay alive."""
        raise NotImplementedError

    def processes(self) -> dict[str, psutil.Process]:
        raise NotImplementedError

    def stop(self) -> None:
        self.procs.stop_all(STOP_TIMEOUT_S)
        self.exit_codes = {name: p.returncode for name, p in self.procs.procs.items()}

    def log_tail(self, lines: int = 5) -> str:
        tails = []
        for log in sorted(self.dir.glob("*.log")):
            text = log.read_text(errors="replace").strip().splitlines()[-lines:]
            tails.append(f"[{log.stem}] " + " | ".join(text))
        return " ".join(tails)

    def timings_file(self) -> Path | None:
        found = sorted(self.out.glob("async_inference_*/performance_timings_*.jsonl"))
        return found[-1] if found else None

    def vl_counters(self) -> dict | None:
        """The VL process's set counters (None: the side has none)."""
        return None

    def first_action_seen(self) -> bool:
        path = self.timings_file()
        return path is not None and '"action_id"' in path.read_text(errors="replace")

    def measure(self) -> None:
        """Wait for the first action, warm up, then measure one window."""
        main = self.start()
        if not C.wait_for(self.first_action_seen, START_TIMEOUT_S, alive=lambda: main.poll() is None):
            raise RuntimeError(f"{self.name}: no action record within {START_TIMEOUT_S:.0f} s; "
                               f"log tail: {self.log_tail()}")
        time.sleep(self.ctx.warmup)
        self.procs.remember_descendants()
        with C.LoadSampler() as load:
            cpu = C.CpuWindow(self.processes())
            sets_before = self.vl_counters()
            start = time.time()
            time.sleep(self.ctx.duration)
            self.window = (start, time.time())
            self.cpu = cpu.finish()
            sets_after = self.vl_counters()
        self.load = load.summary()
        if sets_before is not None and sets_after is not None:
            self.vl_sets = {k: sets_after[k] - sets_before[k] for k in VL_SET_COUNTERS}


class ShmVlaSide(Side):
    def start(self):
        sets = [a for o in self.ctx.overrides + self.extra_overrides() for a in ("--set", o)]
        argv = C.cli_argv("run", self.ctx.model, *self.common_args(), *sets, "--sim", "--checkpoint",
                          str(self.ctx.checkpoint), "--out", str(self.out))
        return self.procs.start("supervisor", argv)

    def extra_overrides(self) -> list[str]:
        return []

    def vl_counters(self) -> dict | None:
        try:
            values = statsmod.read_snapshot(self.instance, "vl")["values"]
        except Exception:            # the VL process is restarting: no figure rather than a wrong one
            return None
        return {k: int(values.get(k, 0)) for k in VL_SET_COUNTERS}

    def processes(self) -> dict[str, psutil.Process]:
        sup = psutil.Process(self.procs.procs["supervisor"].pid)
        found = {"supervisor": sup}
        for child in sup.children(recursive=True):
            found[role_of(child)] = child
        return found

    def stop(self) -> None:
        super().stop()
        C.remove_instance(self.instance)


class ShmVlaShadowSide(ShmVlaSide):
    """shm-vla with a shadow checkpoint beside act (--shadow)."""

    def extra_overrides(self) -> list[str]:
        return [f'shadow.checkpoint="{self.ctx.shadow_checkpoint}"']


def shadow_in_window(side: Side) -> dict | None:
    """The shadow's lines whose live tick falls in the window: statuses, skips, head time, delay."""
    timings = side.timings_file()
    found = sorted(timings.parent.glob("shadow_results_*.jsonl")) if timings else []
    if not found or side.window is None:
        return None
    lines = [json.loads(line) for line in found[-1].read_text().splitlines() if line.strip()]
    lines = [line for line in lines if side.window[0] <= line["timestamp"] <= side.window[1]]
    ms = lambda key: _short(analyze.describe(np.array([x[key] for x in lines if x[key] is not None], float)))  # noqa: E731
    return {"lines": len(lines), "ok": sum(x["status"] == "ok" for x in lines),
            "missed": sum(x["status"] != "ok" for x in lines), "skipped": sum(x["skipped"] for x in lines),
            "inference_ms": ms("inference_ms"), "delay_ms": ms("delay_ms")}


class BaselineSide(Side):
    def start(self):
        self.procs.start(SIM_PREFIX, C.cli_argv("sim", "all", *self.common_args(), "--log", str(self.command_log)),
                         capture_stdout=True)
        script = Path(__file__).with_name("baseline_threaded.py")
        argv = [sys.executable, str(script), *self.common_args(), "--checkpoint", str(self.ctx.checkpoint),
                "--out", str(self.out), "--head", self.ctx.head]
        return self.procs.start("baseline", argv)

    def processes(self) -> dict[str, psutil.Process]:
        return {name: psutil.Process(self.procs.procs[name].pid) for name in ("baseline", SIM_PREFIX)}

    def stop(self) -> None:
        self.procs.stop_all(STOP_TIMEOUT_S, order=["baseline", SIM_PREFIX])
        self.exit_codes = {name: p.returncode for name, p in self.procs.procs.items()}


def role_of(p: psutil.Process) -> str:
    """'ingest-camera', 'vl', 'act', 'record', 'sim' ... from a child's command line."""
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return f"pid{p.pid}"
    if "shm_vla.cli" in cmd:
        args = cmd[cmd.index("shm_vla.cli") + 1:]
        if args and args[0] == "ingest" and len(args) > 1:
            return f"ingest-{args[1]}"
        if args:
            return SIM_PREFIX if args[0] == "sim" else args[0]
    return f"pid{p.pid}"


# --------------------------------------------------------------------------- analysis
def window_file(timings: Path, window: tuple[float, float], dest: Path) -> Path:
    """The records whose timestamp falls in the window, as a timings file of their own."""
    lo, hi = window
    with open(timings, encoding="utf-8", errors="replace") as src, open(dest, "w", encoding="utf-8") as out:
        for line in src:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            ts = record.get("timestamp") if isinstance(record, dict) else None
            if isinstance(ts, (int, float)) and lo <= ts <= hi:
                out.write(line)
    return dest


def interval_error(timings_window: Path) -> dict | None:
    stamps = []
    with open(timings_window, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if analyze.is_action_record(record):
                stamps.append(record["timestamp"])
    if len(stamps) < 3:
        return None
    intervals_ms = np.diff(np.sort(np.asarray(stamps))) * 1e3
    return analyze.describe(np.abs(intervals_ms - 1e3 / TICK_HZ))


def commands_in_window(log: Path, window: tuple[float, float]) -> dict:
    counts = {"valid": 0, "invalid": 0}
    if not log.is_file():
        return counts
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if window[0] <= entry.get("recv_wall_s", -1) <= window[1]:
            counts["valid" if entry.get("valid") else "invalid"] += 1
    return counts


def pick(stats: dict | None, key: str):
    return None if stats is None else stats.get(key)


def side_result(side: Side) -> dict:
    timings = side.timings_file()
    if timings is None or side.window is None:
        raise RuntimeError(f"{side.name}: no timings file")
    windowed = window_file(timings, side.window, side.dir / "performance_timings_window.jsonl")
    held = analyze.held_file_of(timings)      # shm-vla keeps held ticks apart: window them too
    if held is not None:
        window_file(held, side.window, side.dir / "held_ticks_window.jsonl")
    report = analyze.analyze(analyze.load_session(windowed))
    fresh = report["freshness"]
    duration = side.window[1] - side.window[0]
    return {
        "session_dir": str(timings.parent),
        "window_s": duration,
        "ticks": report["records"]["actions"] + report["records"]["held"],
        "expected_ticks": int(round(duration * TICK_HZ)),
        "rate_hz": report["rate_hz"],
        "jitter_ms": _short(report["jitter"]),
        "interval_error_ms": _short(interval_error(windowed)),
        "freshness_ms": {name: _short(fresh[name]) for name in ("sensor_age", "robot_age", "frame_age", "vl_age")},
        "view_skew_ms": _short(fresh.get("view_skew")),          # of the set each tick used
        "vl_sets": side.vl_sets,
        "latency_ms": _short(report["stages"]["total"]),
        "action_prediction_ms": _short(report["stages"]["action_prediction"]),
        "vl_encoding_ms": _short(report["stages"]["vl_encoding"]),
        "holds": report["holds"]["by_reason"],
        "commands_in_window": commands_in_window(side.command_log, side.window),
        "cpu_pct": side.cpu,
        "cpu_total_pct": C.total_pct(side.cpu, exclude=(SIM_PREFIX,)),
        "cpu_sims_pct": C.total_pct({k: v for k, v in side.cpu.items() if k.startswith(SIM_PREFIX)}),
        "load": side.load,
        "exit_codes": side.exit_codes,
        "warnings": report["warnings"],
        "shadow": shadow_in_window(side),
    }


def _short(stats: dict | None) -> dict | None:
    if stats is None:
        return None
    return {k: stats[k] for k in ("count", "p50_ms", "p99_ms", "max_ms", "mean_ms")}


def run_side(side: Side) -> dict:
    try:
        side.measure()
    finally:
        side.stop()
    return side_result(side)


# --------------------------------------------------------------------------- comparison
def p99(run: dict, *path: str):
    node = run
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return pick(node, "p99_ms")


def ratios(shm: dict, base: dict) -> dict:
    r = {"jitter_p99": C.ratio(p99(base, "jitter_ms"), p99(shm, "jitter_ms")),
         "interval_error_p99": C.ratio(p99(base, "interval_error_ms"), p99(shm, "interval_error_ms")),
         "latency_p50": C.ratio(pick(base["latency_ms"], "p50_ms"), pick(shm["latency_ms"], "p50_ms")),
         "latency_p99": C.ratio(p99(base, "latency_ms"), p99(shm, "latency_ms")),
         "cpu_total": C.ratio(base["cpu_total_pct"], shm["cpu_total_pct"])}
    for name in ("sensor_age", "robot_age", "frame_age"):
        r[f"{name}_p99"] = C.ratio(p99(base, "freshness_ms", name), p99(shm, "freshness_ms", name))
    return r


def targets(shm: dict, r: dict) -> dict:
    jitter, sensor, ratio = p99(shm, "jitter_ms"), p99(shm, "freshness_ms", "sensor_age"), r["jitter_p99"]
    return {
        "shm_vla_jitter_p99_ms": {"target": f"<= {TARGETS['shm_vla_jitter_p99_ms']}", "value": jitter,
                                  "met": jitter is not None and jitter <= TARGETS["shm_vla_jitter_p99_ms"]},
        "shm_vla_sensor_age_p99_ms": {"target": f"<= {TARGETS['shm_vla_sensor_age_p99_ms']}", "value": sensor,
                                      "met": sensor is not None and sensor <= TARGETS["shm_vla_sensor_age_p99_ms"]},
        "jitter_p99_ratio": {"target": f">= {TARGETS['jitter_p99_ratio_min']}", "value": ratio,
                             "met": ratio is not None and ratio >= TARGETS["jitter_p99_ratio_min"]},
    }


def shadow_effect(plain: dict, shadowed: dict) -> dict:
    """act's figures without and with a shadow beside it, and with / without."""
    out = {}
    for name, key in (("jitter", "jitter_ms"), ("interval_error", "interval_error_ms"), ("latency", "latency_ms")):
        for stat in ("p50_ms", "p99_ms", "max_ms"):
            without, with_ = pick(plain[key], stat), pick(shadowed[key], stat)
            out[f"{name}_{stat}"] = {"without": without, "with": with_, "ratio": C.ratio(with_, without)}
    return out


# --------------------------------------------------------------------------- text
def render(report: dict) -> str:
    runs = report["runs"]
    lines = [f"{report['command']}   ({report['date']})",
             f"machine: {report['machine']['nproc']} CPUs, {report['machine']['cpu_model']}; model "
             f"{report['model']} (tiny), {report['duration_s']:g} s measured per side after "
             f"{report['warmup_s']:g} s warm-up", ""]
    rows = [("ticks / expected", lambda r: f"{r['ticks']} / {r['expected_ticks']}"),
            ("rate Hz", lambda r: C.fmt(r["rate_hz"])),
            ("jitter p50 / p99 ms", lambda r: _pair(r["jitter_ms"])),
            ("interval err p50/p99", lambda r: _pair(r["interval_error_ms"])),
            ("sensor age p50/p99", lambda r: _pair(r["freshness_ms"]["sensor_age"])),
            ("robot age p50/p99", lambda r: _pair(r["freshness_ms"]["robot_age"])),
            ("frame age p50/p99", lambda r: _pair(r["freshness_ms"]["frame_age"])),
            ("view skew p50/p99/max", lambda r: _triple(r.get("view_skew_ms"))),
            ("sets mixed / all", lambda r: "-" if not r.get("vl_sets") else
             f"{r['vl_sets']['mixed_trigger_sets']} / {r['vl_sets']['updates']}"),
            ("latency p50/p99 ms", lambda r: _pair(r["latency_ms"])),
            ("commands (window)", lambda r: str(r["commands_in_window"]["valid"])),
            ("CPU % (excl. sims)", lambda r: C.fmt(r["cpu_total_pct"], 1)),
            ("CPU % sims", lambda r: C.fmt(r["cpu_sims_pct"], 1)),
            ("load1 max", lambda r: C.fmt(r["load"].get("load1_max")))]
    names = [n for n in ("shm_vla", "shm_vla_shadow", "baseline") if n in runs]
    lines.append(f"{'':<22}" + "".join(f"{n:>22}" for n in names))
    for label, get in rows:
        lines.append(f"{label:<22}" + "".join(f"{get(runs[n]):>22}" for n in names))
    for n in names:
        lines.append(f"CPU % per process ({n}): " + ", ".join(
            f"{k} {C.fmt(v, 1)}" for k, v in runs[n]["cpu_pct"].items()))
    shadow = runs.get("shm_vla_shadow", {}).get("shadow")
    if shadow:
        lines.append(f"shadow (window): {shadow['lines']} ticks, {shadow['missed']} missed, {shadow['skipped']} "
                     f"skipped; head ms p50/p99 {_pair(shadow['inference_ms'])}; behind live ms p50/p99 "
                     f"{_pair(shadow['delay_ms'])}")
    if report.get("shadow_effect"):
        lines.append("act with / without a shadow: " + ", ".join(
            f"{k} {C.fmt(v['without'])} -> {C.fmt(v['with'])}" for k, v in report["shadow_effect"].items()))
    if report.get("ratios"):
        lines.append("ratios baseline / shm-vla: " + ", ".join(
            f"{k} {C.fmt(v)}" for k, v in report["ratios"].items()))
    for name, t in report.get("targets", {}).items():
        lines.append(f"target {name} {t['target']}: {C.fmt(t['value'])} -> {'met' if t['met'] else 'NOT met'}")
    lines += [f"error: {e}" for e in report.get("errors", [])]
    return "\n".join(lines)


def _pair(stats: dict | None) -> str:
    return "-" if stats is None else f"{stats['p50_ms']:.2f} / {stats['p99_ms']:.2f}"


def _triple(stats: dict | None) -> str:
    return "-" if stats is None else f"{stats['p50_ms']:.0f} / {stats['p99_ms']:.0f} / {stats['max_ms']:.0f}"


# --------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="shm-vla bench e2e", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help=f"measured seconds per side (default {DEFAULT_DURATION_S:g}; --quick {QUICK_DURATION_S:g})")
    p.add_argument("--warmup", type=float, default=DEFAULT_WARMUP_S, metavar="S",
                   help="seconds after the first action before measuring")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S:g} s per side")
    p.add_argument("--model", choices=("flow", "regression"), default="flow")
    p.add_argument("--head", choices=("seed", "runner"), default="seed",
                   help="baseline head: the seed's tick strategy (default) or shm-vla's TickRunner")
    p.add_argument("--only", choices=("shm_vla", "baseline"), default=None,
                   help="run one side only (shm_vla: with --shadow, both shm-vla sides)")
    p.add_argument("--shadow", action="store_true",
                   help="also run shm-vla with a shadow checkpoint beside act and compare act's jitter")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for the shm-vla side only, e.g. act.rt_priority=20")
    p.add_argument("--cpu-hogs", type=int, default=0, metavar="N",
                   help="run N busy-looping processes during both sides (a saturated machine)")
    args = p.parse_args(argv)
    args.duration = args.duration or (QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S)
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    C.terminate_as_interrupt()
    report = C.report_header("e2e", argv)
    report.update(model=args.model, duration_s=args.duration, warmup_s=args.warmup, baseline_head=args.head,
                  overrides=args.overrides, cpu_hogs=args.cpu_hogs, shadow=args.shadow, runs={}, errors=[])
    with tempfile.TemporaryDirectory(prefix="shm-vla-e2e-") as tmp:
        work = Path(tmp)
        from shm_vla.model.make_checkpoint import make_checkpoint
        args.checkpoint = make_checkpoint(work / f"tiny-{args.model}.pt", "tiny", args.model)
        if args.shadow:
            args.shadow_checkpoint = make_checkpoint(work / f"tiny-{args.model}-shadow.pt", "tiny", args.model, seed=1)
        args.config = work / "loopback.toml"
        report["ports"] = C.write_loopback_config(args.config)
        sides = {"shm_vla": ShmVlaSide, "shm_vla_shadow": ShmVlaShadowSide, "baseline": BaselineSide}
        if not args.shadow:
            del sides["shm_vla_shadow"]
        hogs = C.start_cpu_hogs(args.cpu_hogs)
        try:
            for name, cls in sides.items():
                if args.only in (None, name) or (args.only == "shm_vla" and name == "shm_vla_shadow"):
                    try:
                        report["runs"][name] = run_side(cls(name, work, args))
                    except RuntimeError as exc:
                        report["errors"].append(str(exc))
        except KeyboardInterrupt:
            print("shm-vla bench e2e: interrupted; every process stopped", file=sys.stderr)
            return 130
        finally:
            C.stop_cpu_hogs(hogs)
    runs = report["runs"]
    if "shm_vla" in runs and "shm_vla_shadow" in runs:
        report["shadow_effect"] = shadow_effect(runs["shm_vla"], runs["shm_vla_shadow"])
    if "shm_vla" in runs and "baseline" in runs:
        report["ratios"] = ratios(runs["shm_vla"], runs["baseline"])
        report["targets"] = targets(runs["shm_vla"], report["ratios"])
    C.emit(report, args.json, render)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
