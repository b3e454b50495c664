#!/usr/bin/env python3
"""Ingest benchmark (issue 4 item 5): CPU of the ingest processes, and the sensor rate limit.

    bench/ingest.py [--duration S] [--quick] [--json] [--rates R,R,...] [--step-duration S]
                    [--records-per-datagram N]
    shm-vla bench ingest ...            (the same script, run from a checkout)

Part 1, nominal rates: ``shm-vla ingest camera|robot|sensor`` against ``shm-vla sim
camera|robot|sensor`` (5 cameras at 5 Hz, robot at 100 Hz, sensor at 650 records/s) on
loopback ports. After a warm-up, over ``--duration`` seconds: CPU% of each ingest process
(CPU time / wall time, 100 % = one core) and of each simulator, records/s, drops and errors
from each ingest's stats segment. Target: the three ingest processes together < 50 % of
one core.

Part 2, sensor rate steps: one ``shm-vla ingest sensor``; for each rate R (records/s) a
``shm-vla sim sensor --rate-hz R`` runs ``--step-duration`` seconds. Records sent (the
simulator's JSON summary at exit) are compared with records stored (the ingest's ``records``
counter; ``drops``, ``kernel_drops`` and errors too). A step whose simulator could not keep
its rate (skipped sends, or under 97 % of R achieved) is marked sender-limited: it proves
nothing about the ingest. The sustained rate is the highest R with zero loss that was
not sender-limited. Target: >= 6,500 records/s (10x nominal) with zero loss.

Benchmarks report; they assert nothing. Exit code 0 unless a part failed to run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from shm_vla.shm import stats as statsmod  # noqa: E402
from shm_vla.shm.segment import ShmError  # noqa: E402

KINDS = ("camera", "robot", "sensor")
DEFAULT_DURATION_S, QUICK_DURATION_S = 20.0, 4.0
DEFAULT_STEP_S, QUICK_STEP_S = 5.0, 1.5
WARMUP_S, QUICK_WARMUP_S = 2.0, 1.0
DEFAULT_RATES = (650, 3250, 6500, 13000, 26000, 52000)
QUICK_RATES = (650, 6500)
READY_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 20.0
SENDER_OK_FRACTION = 0.97
CPU_WINDOW_FRACTION = 0.8     # of a step, measured from its first stored record
TARGETS = {"ingest_cpu_total_pct_max": 50.0, "sensor_rate_min": 6500}


# --------------------------------------------------------------------------- stats helpers
def snapshot(instance: str, process: str) -> dict | None:
    try:
        return statsmod.read_snapshot(instance, process)
    except (ShmError, OSError, ValueError):
        return None


def is_up(instance: str, process: str) -> bool:
    snap = snapshot(instance, process)
    return bool(snap and snap["alive"] and snap["state"] == "up")


def counters(snap: dict | None) -> dict:
    values = (snap or {}).get("values", {})
    errors = sum(v for k, v in values.items() if k.startswith("errors."))
    return {"records": values.get("records", 0), "messages": values.get("messages", 0),
            "drops": values.get("drops", 0), "kernel_drops": values.get("kernel_drops", 0), "errors": errors}


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def start_ingest(procs: C.Procs, kind: str, instance: str, config: Path) -> psutil.Process:
    proc = procs.start(f"ingest-{kind}", C.cli_argv("ingest", kind, "--instance", instance, "--config", str(config)))
    if not C.wait_for(lambda: is_up(instance, f"ingest-{kind}"), READY_TIMEOUT_S, alive=lambda: proc.poll() is None):
        raise RuntimeError(f"ingest {kind} did not come up within {READY_TIMEOUT_S:.0f} s")
    return psutil.Process(proc.pid)


def sim_argv(kind: str, instance: str, config: Path, duration_s: float, *extra: str) -> list[str]:
    return C.cli_argv("sim", kind, "--instance", instance, "--config", str(config),
                      "--duration", f"{duration_s:g}", *extra)


def sim_summary(proc: subprocess.Popen, kind: str, timeout_s: float) -> dict:
    """Wait for a bounded simulator to exit; its JSON summary line for ``kind``."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
    summary = C.last_json_line(out.decode(errors="replace") if out else "") or {}
    return summary.get(kind, {})


# --------------------------------------------------------------------------- part 1
def nominal(args, work: Path) -> dict:
    instance = C.unique_instance("ing")
    config = work / "nominal.toml"
    C.write_loopback_config(config)
    procs = C.Procs(work)
    try:
        ingests = {f"ingest-{k}": start_ingest(procs, k, instance, config) for k in KINDS}
        sim_s = args.warmup + args.duration + 3.0
        sims = {f"sim-{k}": procs.start(f"sim-{k}", sim_argv(k, instance, config, sim_s), capture_stdout=True)
                for k in KINDS}
        time.sleep(args.warmup)
        before = {name: counters(snapshot(instance, name)) for name in ingests}
        with C.LoadSampler() as load:
            cpu = C.CpuWindow({**ingests, **{n: psutil.Process(p.pid) for n, p in sims.items()}})
            start = time.monotonic()
            time.sleep(args.duration)
            cpu_pct = cpu.finish()
            wall = time.monotonic() - start
        after = {name: counters(snapshot(instance, name)) for name in ingests}
        sent = {name: sim_summary(p, name.split("-", 1)[1], sim_s + 30) for name, p in sims.items()}
    finally:
        procs.stop_all(STOP_TIMEOUT_S)
        C.remove_instance(instance)
    return nominal_result(ingests, before, after, wall, cpu_pct, sent, load.summary())


def nominal_result(ingests, before, after, wall, cpu_pct, sent, load) -> dict:
    per = {}
    for name in ingests:
        d = delta(after[name], before[name])
        per[name] = {"cpu_pct": cpu_pct[name], "records_per_s": d["records"] / wall,
                     "messages_per_s": d["messages"] / wall, "drops": d["drops"], "errors": d["errors"]}
    total = C.total_pct({name: cpu_pct[name] for name in ingests})
    return {"window_s": wall, "ingest": per, "ingest_cpu_total_pct": total,
            "sims": {name: {"cpu_pct": cpu_pct[name], "summary": summary} for name, summary in sent.items()},
            "load": load}


# --------------------------------------------------------------------------- part 2
def sensor_steps(args, work: Path) -> dict:
    instance = C.unique_instance("ings")
    config = work / "steps.toml"
    C.write_loopback_config(config)
    procs = C.Procs(work)
    steps = []
    try:
        ingest = start_ingest(procs, "sensor", instance, config)
        with C.LoadSampler() as load:
            for rate in args.rates:
                steps.append(sensor_step(procs, ingest, instance, config, rate, args))
                if len(steps) >= 2 and all(not s["zero_loss"] for s in steps[-2:]):
                    break               # two lossy steps in a row: higher rates only lose more
    finally:
        procs.stop_all(STOP_TIMEOUT_S)
        C.remove_instance(instance)
    ok = [s["rate_hz"] for s in steps if s["zero_loss"] and not s["sender_limited"]]
    return {"records_per_datagram": args.records_per_datagram, "step_s": args.step_duration, "steps": steps,
            "sustained_rate_hz": max(ok) if ok else None, "load": load.summary()}


def sensor_step(procs: C.Procs, ingest: psutil.Process, instance: str, config: Path, rate: float, args) -> dict:
    before = counters(snapshot(instance, "ingest-sensor"))
    name = f"sim-sensor-{int(rate)}"
    sim = procs.start(name, sim_argv("sensor", instance, config, args.step_duration, "--rate-hz", f"{rate:g}",
                                     "--records-per-datagram", str(args.records_per_datagram)), capture_stdout=True)
    C.wait_for(lambda: counters(snapshot(instance, "ingest-sensor"))["records"] > before["records"],
               READY_TIMEOUT_S, interval_s=0.02, alive=lambda: sim.poll() is None)
    cpu = C.CpuWindow({"ingest-sensor": ingest, "sim": psutil.Process(sim.pid)})
    time.sleep(args.step_duration * CPU_WINDOW_FRACTION)      # inside the sending period
    cpu_pct = cpu.finish()
    summary = sim_summary(sim, "sensor", args.step_duration + 30)
    sent = int(summary.get("records_sent", 0))
    C.wait_for(lambda: counters(snapshot(instance, "ingest-sensor"))["records"] - before["records"] >= sent,
               SETTLE_TIMEOUT_S, interval_s=0.05)
    d = delta(counters(snapshot(instance, "ingest-sensor")), before)
    achieved = sent / args.step_duration
    limited = bool(summary.get("skipped", 0) or summary.get("dropped", 0)) or achieved < SENDER_OK_FRACTION * rate
    lost = sent - d["records"]
    return {"rate_hz": rate, "records_sent": sent, "records_stored": d["records"], "lost": lost,
            "drops": d["drops"], "kernel_drops": d["kernel_drops"], "errors": d["errors"],
            "sender_achieved_hz": achieved, "sender_skipped": summary.get("skipped"),
            "sender_dropped": summary.get("dropped"), "sender_limited": limited,
            "zero_loss": sent > 0 and lost == 0 and d["drops"] == 0 and d["errors"] == 0,
            "ingest_cpu_pct": cpu_pct["ingest-sensor"], "sim_cpu_pct": cpu_pct["sim"]}


# --------------------------------------------------------------------------- report
def targets(report: dict) -> dict:
    total = report.get("nominal", {}).get("ingest_cpu_total_pct")
    rate = report.get("sensor_steps", {}).get("sustained_rate_hz")
    return {
        "ingest_cpu_total_pct": {"target": f"< {TARGETS['ingest_cpu_total_pct_max']:g}", "value": total,
                                 "met": total is not None and total < TARGETS["ingest_cpu_total_pct_max"]},
        "sensor_sustained_rate_hz": {"target": f">= {TARGETS['sensor_rate_min']}", "value": rate,
                                     "met": rate is not None and rate >= TARGETS["sensor_rate_min"]},
    }


def render(report: dict) -> str:
    m = report["machine"]
    lines = [f"{report['command']}   ({report['date']})", f"machine: {m['nproc']} CPUs, {m['cpu_model']}", ""]
    nom = report.get("nominal")
    if nom:
        lines.append(f"nominal rates, {nom['window_s']:.1f} s (load1 max {C.fmt(nom['load']['load1_max'])}):")
        lines.append(f"  {'process':<16}{'CPU %':>8}{'records/s':>12}{'msgs/s':>10}{'drops':>8}{'errors':>8}")
        for name, r in nom["ingest"].items():
            lines.append(f"  {name:<16}{C.fmt(r['cpu_pct'], 1):>8}{r['records_per_s']:>12.1f}"
                         f"{r['messages_per_s']:>10.1f}{r['drops']:>8}{r['errors']:>8}")
        lines.append(f"  {'ingest total':<16}{C.fmt(nom['ingest_cpu_total_pct'], 1):>8}")
        lines.append("  simulators: " + ", ".join(f"{n} {C.fmt(s['cpu_pct'], 1)} %" for n, s in nom["sims"].items()))
    st = report.get("sensor_steps")
    if st:
        lines += ["", f"sensor rate steps ({st['records_per_datagram']} records/datagram, {st['step_s']:g} s each):",
                  f"  {'rate':>8}{'sent':>10}{'stored':>10}{'lost':>7}{'drops':>7}{'kdrops':>7}{'sender/s':>10}"
                  f"{'limited':>9}{'ingest %':>10}"]
        for s in st["steps"]:
            lines.append(f"  {s['rate_hz']:>8g}{s['records_sent']:>10}{s['records_stored']:>10}{s['lost']:>7}"
                         f"{s['drops']:>7}{s['kernel_drops']:>7}{s['sender_achieved_hz']:>10.0f}"
                         f"{'yes' if s['sender_limited'] else 'no':>9}{C.fmt(s['ingest_cpu_pct'], 1):>10}")
        rate = st["sustained_rate_hz"]
        lines.append(f"  sustained without loss: {'-' if rate is None else f'{rate:g}'} records/s")
    for name, t in report.get("targets", {}).items():
        lines.append(f"target {name} {t['target']}: {C.fmt(t['value'])} -> {'met' if t['met'] else 'NOT met'}")
    lines += [f"error: {e}" for e in report.get("errors", [])]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="shm-vla bench ingest", description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help=f"nominal-rate window (default {DEFAULT_DURATION_S:g}; --quick {QUICK_DURATION_S:g})")
    p.add_argument("--step-duration", type=float, default=None, metavar="S",
                   help=f"seconds per sensor rate step (default {DEFAULT_STEP_S:g}; --quick {QUICK_STEP_S:g})")
    p.add_argument("--rates", default=None, help="sensor rates in records/s, comma separated "
                   f"(default {','.join(map(str, DEFAULT_RATES))}; --quick {','.join(map(str, QUICK_RATES))})")
    p.add_argument("--records-per-datagram", type=int, default=5)
    p.add_argument("--warmup", type=float, default=None, metavar="S")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", choices=("nominal", "sensor-steps"), default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    args.duration = args.duration or (QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S)
    args.step_duration = args.step_duration or (QUICK_STEP_S if args.quick else DEFAULT_STEP_S)
    args.warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP_S if args.quick else WARMUP_S)
    rates = args.rates.split(",") if args.rates else (QUICK_RATES if args.quick else DEFAULT_RATES)
    args.rates = [float(r) for r in rates]
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    C.terminate_as_interrupt()
    report = C.report_header("ingest", argv)
    report["errors"] = []
    parts = {"nominal": nominal, "sensor_steps": sensor_steps}
    with tempfile.TemporaryDirectory(prefix="shm-vla-ingest-") as tmp:
        try:
            for name, part in parts.items():
                if args.only in (None, name.replace("_", "-")):
                    try:
                        report[name] = part(args, Path(tmp))
                    except RuntimeError as exc:
                        report["errors"].append(f"{name}: {exc}")
        except KeyboardInterrupt:
            print("shm-vla bench ingest: interrupted; every process stopped", file=sys.stderr)
            return 130
    report["targets"] = targets(report)
    C.emit(report, args.json, render)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
