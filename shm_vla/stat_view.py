"""`shm-vla-stat [--instance NAME] [--interval 1] [--once] [--json] [--config PATH]`

A live view of one pipeline instance, like top, built only from shared memory (read-only:
see stat_model). Ctrl+C exits with code 0. `--once` prints one view and exits; `--json`
prints the snapshot (schema: docs/STAT.md), once with `--once`, else one line per interval.
`--prometheus HOST:PORT` serves the same snapshots as Prometheus metrics instead, of every
`--instance` given (repeatable) or of every instance on the host (metrics.py).
`--rerun TARGET` streams the instance's counters to a Rerun viewer (or an .rrd file) instead
(rerun_live.py).
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import config as configmod
from . import logutil
from .finite import to_jsonable
from .sdnotify import Notifier
from .stat_model import ProcessSampler, build_snapshot

STYLES = {"ok": "green", "warn": "yellow", "bad": "bold red", "none": ""}
ONCE_CPU_WINDOW_S = 0.25    # --once measures CPU% over this long


# --------------------------------------------------------------------------- formatting
def fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and spec == "":
        spec = ".1f"
    return format(value, spec)


def cell(value, level: str = "none", spec: str = "") -> Text:
    return Text(fmt(value, spec), style=STYLES.get(level, ""))


def lv(section: dict, key: str) -> str:
    return section.get("levels", {}).get(key, "none")


def field(section: dict, key: str, spec: str = "") -> Text:
    return cell(section.get(key), lv(section, key), spec)


def mib(n) -> str:
    return "-" if n is None else f"{n / (1 << 20):.0f}"


def by_kind(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "-"


def _table(title: str, *columns: str, wrap_last: bool = False) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, c in enumerate(columns):
        last = wrap_last and i == len(columns) - 1
        t.add_column(c, justify="left" if i == 0 or last else "right", no_wrap=not last,
                     overflow="fold" if last else "ellipsis")
    return t


def seen(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1e3:.1f} s" if ms < 600e3 else f"{ms / 60e3:.0f} min"


# --------------------------------------------------------------------------- sections
def header(snap: dict) -> Text:
    stamp = time.strftime("%H:%M:%S", time.localtime(snap["wall_time_ns"] / 1e9))
    text = Text(f"shm-vla-stat  instance {snap['instance']}  {stamp}  ", style="bold")
    text.append(f"{snap['processes_up']}/{snap['processes_total']} processes up",
                style="green" if 0 < snap["processes_up"] == snap["processes_total"] else "yellow")
    return text


def processes_table(snap: dict) -> Table:
    t = _table("processes", "process", "state", "pid", "heartbeat", "CPU%", "RSS MiB", "restarts", "retry")
    for name, p in snap["processes"].items():
        style = STYLES[p["level"]]
        beat = seen(p["heartbeat_age_ms"]) + ("" if p["alive"] else " ago")
        t.add_row(name, Text(p["state"], style=style), Text(str(p["pid"]), style="" if p["alive"] else "dim"),
                  Text(beat, style=style if not p["alive"] else ""), fmt(p["cpu_percent"]), mib(p["rss_bytes"]),
                  fmt(p["restarts"]), fmt(p["read_retries"]))
    return t


def inputs_table(snap: dict) -> Table:
    t = _table("inputs", "stream", "Hz", "age ms", "lat ms", "max ms", "records", "drops", "errors", wrap_last=True)
    t.columns[-1].min_width = 16
    for kind, s in snap["inputs"].items():
        name = Text(kind, style="" if s["state"] == "up" else STYLES["warn"])
        t.add_row(name, field(s, "rate_hz"), field(s, "age_ms", ".0f"), field(s, "latency_ms", ".2f"),
                  field(s, "latency_max_ms", ".2f"), fmt(s["records"]), field(s, "drops"),
                  Text(by_kind(s["errors"]), style=STYLES[lv(s, "errors_total")]))
        if kind == "camera":
            for view, r in snap["streams"].items():
                if view.startswith("view"):
                    t.add_row(Text(f" {view}", style="dim"), field(r, "rate_hz"), field(r, "age_ms", ".0f"),
                              "", "", fmt(r["records"]), "", "")
    return t


def pipeline_table(snap: dict) -> Table:
    vl, act, rec = snap["vl"], snap["act"], snap["record"]
    t = _table("pipeline", "stage", "state", "values", wrap_last=True)
    t.add_row("vl", vl["state"], _line(vl, [("updates", "updates", ""), ("encode ms p50", "encode_ms_p50", ".1f"),
                                            ("p99", "encode_ms_p99", ".1f"), ("feature age ms", "feature_age_ms", ".0f"),
                                            ("skew ms", "view_skew_ms", ".1f"), ("mixed", "mixed_trigger_sets", ""),
                                            ("rejected", "rejected_sets", ""),
                                            ("read errors", "read_errors", ""), ("torn", "torn_sets", "")]))
    held = _line(act, [("sent", "commands_sent", ""), ("failed", "commands_failed", ""), ("withheld", "held_total", "")])
    held.append(by_kind(act["held"]) if act["held_total"] else "", style=STYLES[lv(act, "held_total")])
    t.add_row("act", act["state"], _line(act, [("ticks", "ticks", ""), ("Hz", "rate_hz", ".2f"),
                                               ("latency ms p50", "latency_ms_p50", ".1f"),
                                               ("p99", "latency_ms_p99", ".1f"),
                                               ("lateness ms p99", "lateness_ms_p99", ".1f"),
                                               ("missed", "missed_ticks", ""), ("clamped", "clamped_ticks", ""),
                                               ("result age ms", "result_age_ms", ".0f")]))
    t.add_row("", "", held)
    t.add_row("record", rec["state"], _line(rec, [("written", "records_written", ""),
                                                  ("vl updates", "vl_updates_written", ""),
                                                  ("lag", "lag_records", ".0f"), ("lost", "lost", ""),
                                                  ("data lost", "data_lost", ""), ("vl lost", "vl_lost", ""),
                                                  ("disk free MB", "disk_free_mb", ".0f"),
                                                  ("paused for disk", "disk_paused", "")]))
    shadow = snap["shadow"]
    if shadow["configured"] or shadow["state"] != "absent":
        _shadow_rows(t, shadow)
    return t


def _shadow_rows(t: Table, shadow: dict) -> None:
    """The shadow: rate, its own latency, how far behind live, misses; per-axis divergence."""
    t.add_row("shadow", shadow["state"], _line(shadow, [("ticks", "ticks", ""), ("Hz", "rate_hz", ".2f"),
                                                        ("latency ms p50", "latency_ms_p50", ".1f"),
                                                        ("p99", "latency_ms_p99", ".1f"),
                                                        ("behind live ms p99", "delay_ms_p99", ".1f"),
                                                        ("missed", "missed", ""), ("skipped", "skipped", ""),
                                                        ("live held", "live_held", "")]))
    divergence = Text("divergence |shadow - live| first action, per axis  ", style="dim")
    for label, key in (("p50", "divergence_p50"), ("p99", "divergence_p99")):
        divergence.append(f"{label} ", style="dim")
        divergence.append(" ".join(fmt(x, ".4f") for x in shadow[key]) or "-")
        divergence.append("  ")
    t.add_row("", "", divergence)


def _line(section: dict, items: list) -> Text:
    text = Text()
    for label, key, spec in items:
        text.append(f"{label} ", style="dim")
        text.append_text(field(section, key, spec))
        text.append("  ")
    return text


def gpu_line(snap: dict) -> Text | None:
    gpu = snap["gpu"]
    if gpu is None:
        return None
    if gpu["error"]:
        return Text(f"GPU: {gpu['error']}", style="yellow")
    parts = [f"{d['device']} {mib(d['used_bytes'])}/{mib(d['total_bytes'])} MiB" for d in gpu["devices"]]
    return Text("GPU memory: " + ", ".join(parts))


def render(snap: dict):
    """The whole view as one rich renderable."""
    parts = [header(snap)]
    if not snap["processes"]:
        parts.append(Text(f"no processes of instance {snap['instance']} (prefix {snap['prefix']}): "
                          "nothing has written a stats segment yet", style="yellow"))
        if not any(s["present"] for s in snap["streams"].values()):
            return Group(*parts)
    else:
        parts.append(processes_table(snap))
    parts += [inputs_table(snap), pipeline_table(snap)]
    gpu = gpu_line(snap)
    if gpu is not None:
        parts.append(gpu)
    return Group(*parts)


# --------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    # "resolve": the --instance below replaces the common one (repeatable here, for --prometheus)
    p = argparse.ArgumentParser(prog="shm-vla-stat", description=__doc__.splitlines()[0], conflict_handler="resolve")
    configmod.add_arguments(p)
    p.add_argument("--instance", action="append", metavar="NAME",
                   help="instance name (default 'default'); with --prometheus repeatable, and without it every "
                        "instance on this host")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh period in seconds (default 1)")
    p.add_argument("--once", action="store_true", help="print one view (or one JSON snapshot) and exit")
    p.add_argument("--json", action="store_true", help="JSON snapshot (docs/STAT.md) instead of the table")
    p.add_argument("--prometheus", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics until stopped (docs/STAT.md, "
                        "needs pip install shm-vla[metrics])")
    p.add_argument("--rerun", metavar="URL|OUT.rrd",
                   help="stream the counters to a Rerun viewer (rerun+http://HOST:9876/proxy) or an .rrd file, "
                        "every --interval, until stopped (or once with --once; needs pip install shm-vla[rerun])")
    return p


def _once(cfg, as_json: bool, console: Console) -> None:
    sampler = ProcessSampler()
    build_snapshot(cfg, sampler, with_gpu=False)       # primes CPU% counters
    time.sleep(ONCE_CPU_WINDOW_S)
    snap = build_snapshot(cfg, sampler)
    if as_json:
        print(json.dumps(to_jsonable(snap), indent=1), flush=True)
    else:
        console.print(render(snap))


def _live(cfg, interval: float, as_json: bool, console: Console) -> None:
    sampler = ProcessSampler()
    if as_json:
        while True:
            print(json.dumps(to_jsonable(build_snapshot(cfg, sampler))), flush=True)
            time.sleep(interval)
    with Live(render(build_snapshot(cfg, sampler)), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(interval)
            live.update(render(build_snapshot(cfg, sampler)), refresh=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _usage_error(args) -> str | None:
    if not args.interval > 0:
        return "--interval must be > 0"
    if args.prometheus is None and len(args.instance or ()) > 1:
        return "one --instance for the view (several only with --prometheus)"
    if args.prometheus is not None and (args.once or args.json):
        return "--prometheus serves until stopped: no --once or --json with it"
    if args.prometheus is not None and args.config and len(args.instance or ()) != 1:
        return "--config is one instance's file: give exactly one --instance with it"
    if args.rerun is not None and (args.prometheus is not None or args.json):
        return "--rerun streams to Rerun: no --prometheus or --json with it"
    return None


# flag -> (module of ours, the packages it imports, their distribution, the extra that has it)
EXTRAS = {"--rerun": ("rerun_live", ("rerun", "rerun_bindings"), "rerun-sdk", "rerun"),
          "--prometheus": ("metrics", ("prometheus_client",), "prometheus-client", "metrics")}


def _with_extra(flag: str):
    """Our module behind `flag`, or None after one line naming the extra to install."""
    module, packages, dist, extra = EXTRAS[flag]
    try:
        return importlib.import_module(f"{__package__}.{module}")
    except ImportError as exc:
        if exc.name not in packages:
            raise
        print(f"shm-vla-stat: {flag} needs {dist}: pip install shm-vla[{extra}]", file=sys.stderr)
        return None


def _rerun(cfg, args) -> int:
    rerun_live = _with_extra("--rerun")
    if rerun_live is None:
        return 2
    return rerun_live.stream(cfg, args.rerun, args.interval, once=args.once)


def _prometheus(args) -> int:
    """Serve /metrics until SIGINT/SIGTERM (KeyboardInterrupt)."""
    metrics = _with_extra("--prometheus")
    if metrics is None:
        return 2
    try:
        listen = metrics.parse_listen(args.prometheus)
    except ValueError as exc:
        print(f"shm-vla-stat: {exc}", file=sys.stderr)
        return 2
    log = logutil.setup("exporter")
    try:
        cells = metrics.Cells(args.instance or [], args.config, args.overrides, log)
    except configmod.ConfigError as exc:
        print(f"shm-vla: configuration error: {exc}", file=sys.stderr)
        return configmod.EXIT_CONFIG_ERROR
    try:
        server = metrics.start(listen, cells, log)
    except OSError as exc:        # address in use or not ours: systemd retries
        print(f"shm-vla-stat: cannot listen on {args.prometheus}: {exc}", file=sys.stderr)
        return 1
    log.info("serving http://%s:%d/metrics: %s", listen[0], server.server_port, cells.describe())
    notifier = Notifier()
    notifier.ready(status=f"serving /metrics on port {server.server_port}")
    try:
        while True:
            time.sleep(3600)
    finally:
        notifier.stopping()
        server.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    error = _usage_error(args)
    if error:
        print(f"shm-vla-stat: {error}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)           # stop like Ctrl+C: exit 0, terminal restored
    if args.prometheus is not None:
        try:
            return _prometheus(args)
        except KeyboardInterrupt:
            return 0
    args.instance = (args.instance or ["default"])[0]
    cfg = configmod.from_args(args)
    console = Console()
    try:
        if args.rerun is not None:
            return _rerun(cfg, args)
        if args.once:
            _once(cfg, args.json, console)
        else:
            _live(cfg, args.interval, args.json, console)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:      # `shm-vla-stat --json | head`
        sys.stderr.close()
        return 0
    return 0
