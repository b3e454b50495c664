"""Helpers shared by bench/e2e.py, bench/baseline_threaded.py and bench/ingest.py.

Process handling (every process a benchmark starts is stopped, SIGTERM then SIGKILL, on any
exit path, descendants included), loopback configs on fresh ports, CPU accounting with
psutil (CPU time over wall time in a measured window; 100 % = one core), machine load
sampling, machine description and report output.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:            # a checkout without the package installed
    sys.path.insert(0, str(REPO))

BENCH_DATE = "2026-11-27"                # the date the figures in docs/PERFORMANCE.md were taken


# --------------------------------------------------------------------------- names, ports, config
def unique_instance(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_loopback_config(path: Path, extra: str = "") -> dict:
    """A TOML config whose every address is a fresh loopback port; returns the ports."""
    ports = {"camera": free_port(), "robot": free_port(), "sensor": free_port(socket.SOCK_DGRAM),
             "command": free_port()}
    path.write_text(
        f'robot_ip = "127.0.0.1"\n'
        f'[camera]\nbind = "tcp://127.0.0.1:{ports["camera"]}"\n'
        f'[robot]\nconnect = "tcp://{{robot_ip}}:{ports["robot"]}"\n'
        f'[sensor]\nbind = "127.0.0.1:{ports["sensor"]}"\n'
        f'[command]\nconnect = "tcp://{{robot_ip}}:{ports["command"]}"\n' + extra)
    return ports


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "shm_vla.cli", *args]


def remove_instance(instance: str) -> None:
    from shm_vla.shm import segment
    segment.remove_instance(instance)


# --------------------------------------------------------------------------- processes
class Procs:
    """Processes started by a benchmark; :meth:`stop_all` (also on ``with`` exit) stops them
    in reverse start order (or the order given), then any descendant left behind."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self._known: dict[int, psutil.Process] = {}

    def start(self, name: str, argv: list[str], capture_stdout: bool = False) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        stdout = subprocess.PIPE if capture_stdout else log
        proc = subprocess.Popen(argv, stdout=stdout, stderr=log, cwd=REPO, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        self.procs[name] = proc
        self.remember_descendants()
        return proc

    def remember_descendants(self) -> None:
        """Note every descendant now, so that orphans can be found and stopped later."""
        for proc in self.procs.values():
            try:
                parent = psutil.Process(proc.pid)
                for p in [parent] + parent.children(recursive=True):
                    self._known.setdefault(p.pid, p)
            except psutil.Error:
                continue

    def stop(self, name: str, timeout_s: float = 20.0) -> int | None:
        proc = self.procs.get(name)
        if proc is None:
            return None
        self.remember_descendants()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait(5)
        return proc.returncode

    def stop_all(self, timeout_s: float = 20.0, order: list[str] | None = None) -> None:
        """Stop everything; a second Ctrl+C or SIGTERM meanwhile cannot cut the clean-up short."""
        names = order or list(reversed(list(self.procs)))
        with signals_deferred():
            for name in names + [n for n in self.procs if n not in names]:
                self.stop(name, timeout_s)
            self._stop_leftovers()

    def _stop_leftovers(self) -> None:
        alive = [p for p in self._known.values() if _still_running(p)]
        for p in alive:
            _signal(p, signal.SIGTERM)
        _, alive = psutil.wait_procs(alive, timeout=5)
        for p in alive:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)

    def __enter__(self) -> "Procs":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def _still_running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class signals_deferred:
    """Ignore SIGINT/SIGTERM inside the block (main thread only); restore the handlers after."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self):
        self.saved = None
        if threading.current_thread() is threading.main_thread():
            self.saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in (self.saved or {}).items():
            signal.signal(sig, handler)


def terminate_as_interrupt() -> None:
    """SIGTERM behaves like Ctrl+C, so that every ``finally`` runs and children are stopped."""
    def _raise(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _raise)


def wait_for(predicate, timeout_s: float, interval_s: float = 0.1, alive=None):
    """predicate() until truthy or timeout; stops early when ``alive()`` turns false."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if alive is not None and not alive():
            break
        time.sleep(interval_s)
    return predicate()


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# --------------------------------------------------------------------------- CPU and load
def cpu_seconds(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


class CpuWindow:
    """CPU% of named processes over a window: (CPU time at end - at start) / wall time.

    A process that exited or was replaced in the window reports None."""

    def __init__(self, processes: dict[str, psutil.Process]):
        self.processes = processes
        self.start_cpu = {name: cpu_seconds(p) for name, p in processes.items()}
        self.start_wall = time.monotonic()
        self.result: dict[str, float | None] = {}

    def finish(self) -> dict[str, float | None]:
        wall = time.monotonic() - self.start_wall
        for name, p in self.processes.items():
            end, start = cpu_seconds(p), self.start_cpu[name]
            self.result[name] = None if end is None or start is None else 100.0 * (end - start) / wall
        return self.result


def total_pct(cpu: dict[str, float | None], exclude: tuple[str, ...] = ()) -> float | None:
    values = [v for name, v in cpu.items() if not name.startswith(exclude)]
    return None if not values or any(v is None for v in values) else float(sum(values))


class LoadSampler:
    """Samples the 1-min load average and the machine's CPU use every second (a thread)."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.load1: list[float] = []
        self.machine_pct: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LoadSampler":
        psutil.cpu_percent(None)
        self.load1.append(os.getloadavg()[0])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.load1.append(os.getloadavg()[0])

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.load1.append(os.getloadavg()[0])
            self.machine_pct.append(psutil.cpu_percent(None) * psutil.cpu_count())

    def summary(self) -> dict:
        return {"load1_start": self.load1[0] if self.load1 else None,
                "load1_end": self.load1[-1] if self.load1 else None,
                "load1_max": max(self.load1) if self.load1 else None,
                "machine_cpu_pct_mean": (sum(self.machine_pct) / len(self.machine_pct)) if self.machine_pct else None,
                "machine_cpu_pct_capacity": 100.0 * (psutil.cpu_count() or 1)}


# --------------------------------------------------------------------------- report
def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release(), "load_avg_at_start": list(os.getloadavg())}


def report_header(name: str, argv: list[str]) -> dict:
    return {"benchmark": name, "schema": f"shm-vla.bench.{name}/1",
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": f"shm-vla bench {name} " + " ".join(argv), "machine": machine_info()}


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def ratio(numerator, denominator) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator) / float(denominator)


def emit(report: dict, as_json: bool, render) -> None:
    if as_json:
        print(json.dumps(report, indent=2), flush=True)
    else:
        print(render(report), flush=True)


def _hog() -> None:
    while True:
        pass


def start_cpu_hogs(n: int) -> list:
    """N processes that spin at normal priority: a saturated machine, bounded by the caller."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    hogs = [ctx.Process(target=_hog, daemon=True) for _ in range(n)]
    for h in hogs:
        h.start()
    return hogs


def stop_cpu_hogs(hogs: list) -> None:
    for h in hogs:
        h.terminate()
    for h in hogs:
        h.join(5)
