"""The systemd integration: install.sh into a temp DESTDIR, `systemd-analyze verify` on every
installed unit, the unit structure (cascade, notify, watchdog, ordering), the example configs.

`systemd-analyze verify` checks the syntax of every key, specifiers, and that each Exec*=
binary exists and is executable; install.sh points ExecStart at this checkout's real
shm-vla executable, so the verified files are the ones a deployment would get.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import urllib.request

import pytest

from procs import free_port, write_config
from shm_vla import cli, config
from shm_vla import pipeline as P
from shm_vla.shm.segment import EXIT_SHM_FULL

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
INSTALL = SYSTEMD / "install.sh"
UMBRELLA = "shm-vla@.service"
PROCESS_UNITS = {stage.unit: " ".join(stage.command) for stage in P.STAGES.values()}  # unit -> its command
EXPORTER = "shm-vla-exporter.service"
ALL_UNITS = [UMBRELLA, *PROCESS_UNITS, "shm-vla-mps@.service", EXPORTER]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def shm_vla_executable() -> str:
    """The console script of this environment (what a venv deployment would run)."""
    script = Path(sys.executable).parent / "shm-vla"
    return str(script) if os.access(script, os.X_OK) else sys.executable


def run_install(destdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MPS_CONTROL": shutil.which("true"), **(env or {})}
    full_env.pop("DESTDIR", None)
    return subprocess.run(["sh", str(INSTALL), "--destdir", str(destdir), *args],
                          capture_output=True, text=True, timeout=30, env=full_env)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    destdir = tmp_path_factory.mktemp("destdir")
    result = run_install(destdir, "--bin", shm_vla_executable())
    assert result.returncode == 0, result.stderr
    return destdir


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (systemd allows a key many times)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def words(unit: dict, section: str, key: str) -> list[str]:
    return [w for value in unit.get(section, {}).get(key, []) for w in value.split()]


# --------------------------------------------------------------------------- install.sh
def test_install_into_destdir(root):
    units = root / "etc/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == sorted(ALL_UNITS)
    exe = shm_vla_executable()
    for name in ALL_UNITS:
        text = (units / name).read_text()
        assert "/usr/local/bin/shm-vla" not in text and "nvidia-cuda-mps-control -d" not in text
        assert (units / name).stat().st_mode & 0o777 == 0o644
    assert f"ExecStart={exe} act --instance %i" in (units / "shm-vla-act@.service").read_text()
    assert f"ExecStart={shutil.which('true')} -d" in (units / "shm-vla-mps@.service").read_text()
    for name in ("flow.toml", "regression.toml"):
        conf = root / "etc/shm-vla" / name
        assert conf.read_text() == (SYSTEMD / name).read_text()
        assert conf.stat().st_mode & 0o777 == 0o640  # not world-readable
    # Documentation= in every unit points at the installed copy of docs/DEPLOYMENT.md.
    doc = root / "usr/local/share/doc/shm-vla/DEPLOYMENT.md"
    assert doc.read_text() == (REPO / "docs/DEPLOYMENT.md").read_text()
    assert f"Documentation=file:///{doc.relative_to(root)}" in (units / UMBRELLA).read_text()


def test_install_never_overwrites_configs(tmp_path):
    assert run_install(tmp_path, "--bin", shm_vla_executable()).returncode == 0
    conf = tmp_path / "etc/shm-vla/flow.toml"
    conf.write_text("# the operator's own\n")
    unit = tmp_path / "etc/systemd/system/shm-vla-act@.service"
    unit.write_text("stale\n")
    result = run_install(tmp_path, "--prefix", str(Path(shm_vla_executable()).parent.parent))
    assert result.returncode == 0, result.stderr
    assert conf.read_text() == "# the operator's own\n"
    assert "kept existing /etc/shm-vla/flow.toml" in result.stdout
    assert unit.read_text().startswith("# shm-vla-act@.service")  # units are ours: replaced


@pytest.mark.parametrize("bad, why", [
    ("relative/shm-vla", "must be absolute"),
    ("/nonexistent/bin/shm-vla", "no executable shm-vla"),
    ("/tmp/a b/shm-vla", "unsupported character"),      # would split ExecStart=
    ("/opt/100%/shm-vla", "unsupported character"),     # a systemd specifier
])
def test_install_rejects_bad_executable(tmp_path, bad, why):
    result = run_install(tmp_path / "d", "--bin", bad)
    assert result.returncode != 0
    assert why in result.stderr
    assert not (tmp_path / "d/etc/systemd/system").exists()


# --------------------------------------------------------------------------- systemd-analyze
def analyze_verify(unit_dir: Path, units: list[str]) -> subprocess.CompletedProcess:
    # A trailing ':' keeps systemd's own unit directories (multi-user.target, ...) on the path.
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *units],
                          capture_output=True, text=True, timeout=60, env=env)


needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


@needs_analyze
@pytest.mark.parametrize("instance", ["flow", "regression"])
def test_systemd_analyze_verify_every_unit(root, instance):
    units = [name.replace("@", f"@{instance}") for name in ALL_UNITS]
    result = analyze_verify(root / "etc/systemd/system", units)
    # Unknown keys and bad values are only warnings to verify: any output is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


@needs_analyze
def test_systemd_analyze_catches_broken_units(tmp_path, root):
    """The verify test above can fail: a typo'd key and a missing binary are both reported."""
    good = (root / "etc/systemd/system/shm-vla-act@.service").read_text()
    (tmp_path / "shm-vla-act@.service").write_text(good.replace("WatchdogSec=", "WatchDogSec="))
    (tmp_path / "shm-vla-vl@.service").write_text(
        re.sub(r"ExecStart=\S+", "ExecStart=/nonexistent/shm-vla", good))
    for unit in ("shm-vla-act@flow.service", "shm-vla-vl@flow.service"):
        result = analyze_verify(tmp_path, [unit])
        assert result.returncode != 0 or (result.stdout + result.stderr).strip(), unit


# --------------------------------------------------------------------------- unit structure
def test_umbrella_pulls_in_every_process_and_cleans_only_when_safe():
    unit = parse_unit(SYSTEMD / UMBRELLA)
    wanted = set(words(unit, "Unit", "Wants"))
    assert wanted == {name.replace("@", "@%i") for name in PROCESS_UNITS}
    assert unit["Service"]["Type"] == ["oneshot"] and unit["Service"]["RemainAfterExit"] == ["yes"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert unit["Service"]["RemoveIPC"] == ["no"]
    # The cleanup commands are real CLI commands that remove only stale segments; the start
    # cleans first, then checks (a failed check fails the unit: no '-').
    clean, check = unit["Service"]["ExecStart"]
    (stop_clean,) = unit["Service"]["ExecStopPost"]
    for command in (clean, stop_clean):
        argv = shlex.split(command.lstrip("-"))
        assert argv[0] == "/usr/local/bin/shm-vla" and argv[1:4] == ["shm", "clean", "--instance"]
    act = parse_unit(SYSTEMD / "shm-vla-act@.service")["Service"]["ExecStart"][0].split()
    assert check.split() == ["/usr/local/bin/shm-vla", "check", *act[2:]]    # the stages' own config


def test_umbrella_check_command_refuses_what_would_fail_the_stages(instance, tmp_path):
    """Run as the unit runs it (its arguments, a config file of ours): a bad checkpoint is one
    line and status 2, a good one passes."""
    from shm_vla.model.make_checkpoint import make_checkpoint
    command = parse_unit(SYSTEMD / UMBRELLA)["Service"]["ExecStart"][1]
    cfg_file = tmp_path / "cfg.toml"
    argv = [a.replace("%i", instance).replace(f"/etc/shm-vla/{instance}.toml", str(cfg_file))
            for a in shlex.split(command)[1:]]
    for checkpoint, rc in ((tmp_path / "missing.pt", 2), (make_checkpoint(tmp_path / "f.pt", "tiny", "flow"), 0)):
        write_config(cfg_file, f'[model]\ncheckpoint = "{checkpoint}"\n')      # fresh loopback ports
        result = subprocess.run([sys.executable, "-m", "shm_vla.cli", *argv], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == rc, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == (rc != 0)


def test_umbrella_cleanup_command_runs(instance):
    command = parse_unit(SYSTEMD / UMBRELLA)["Service"]["ExecStopPost"][0].lstrip("-")
    argv = [a.replace("%i", instance) for a in shlex.split(command)[1:]]
    result = subprocess.run([sys.executable, "-m", "shm_vla.cli", *argv],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "0 stale segment(s) removed" in result.stdout


@pytest.mark.parametrize("name", list(PROCESS_UNITS))
def test_process_unit_is_bound_notify_watchdog_restart(name):
    unit = parse_unit(SYSTEMD / name)
    service = unit["Service"]
    for key in ("PartOf", "BindsTo", "After"):
        assert "shm-vla@%i.service" in words(unit, "Unit", key), key
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert float(service["WatchdogSec"][0]) > 0
    assert service["Restart"] == ["on-failure"] and float(service["RestartSec"][0]) > 0
    assert words(unit, "Service", "RestartPreventExitStatus") == [str(config.EXIT_CONFIG_ERROR), str(EXIT_SHM_FULL)]
    assert service["User"] == ["shm-vla"] and service["Group"] == ["shm-vla"]
    assert service["RemoveIPC"] == ["no"]
    assert int(service["UMask"][0], 8) & 0o007 == 0o007  # nothing for other users
    assert "ExecStopPost" not in service  # cleanup only in the umbrella (see there)
    (command,) = service["ExecStart"]
    argv = shlex.split(command)
    expected = PROCESS_UNITS[name].split()
    assert argv[0] == "/usr/local/bin/shm-vla" and argv[1:1 + len(expected)] == expected
    assert argv[1] in cli.COMMANDS
    assert argv[1 + len(expected):] == ["--instance", "%i", "--config", "/etc/shm-vla/%i.toml"]


def test_start_order_writers_before_readers():
    after = {name: set(words(parse_unit(SYSTEMD / name), "Unit", "After")) for name in PROCESS_UNITS}
    ingest = {"shm-vla-ingest-camera@%i.service", "shm-vla-ingest-robot@%i.service",
              "shm-vla-ingest-sensor@%i.service"}
    assert ingest <= after["shm-vla-vl@.service"]
    assert ingest | {"shm-vla-vl@%i.service"} <= after["shm-vla-act@.service"]
    assert "shm-vla-act@%i.service" in after["shm-vla-record@.service"]
    for gpu in ("shm-vla-vl@.service", "shm-vla-act@.service"):
        assert "shm-vla-mps@%i.service" in after[gpu]  # ordering only: MPS stays optional
        assert "Wants" not in parse_unit(SYSTEMD / gpu)["Unit"]


def test_action_unit_real_time_settings():
    service = parse_unit(SYSTEMD / "shm-vla-act@.service")["Service"]
    assert service["CPUSchedulingPolicy"] == ["fifo"]
    prio = int(service["CPUSchedulingPriority"][0])
    assert 1 <= prio < 50 and service["LimitRTPRIO"] == [str(prio)]
    assert service["LimitMEMLOCK"] == ["infinity"]
    assert service["CPUSchedulingResetOnFork"] == ["yes"]


def test_mps_unit_is_optional_and_shares_the_pipe_directory():
    mps = parse_unit(SYSTEMD / "shm-vla-mps@.service")
    assert mps["Install"]["WantedBy"] == ["shm-vla@%i.service"]  # only when enabled
    assert mps["Service"]["User"] == ["shm-vla"]  # an MPS server serves its own user only
    pipe = [w for w in words(mps, "Service", "Environment") if w.startswith("CUDA_MPS_PIPE_DIRECTORY=")]
    for gpu in ("shm-vla-vl@.service", "shm-vla-act@.service"):
        env = words(parse_unit(SYSTEMD / gpu), "Service", "Environment")
        assert pipe and pipe[0] in env
        assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in env
        assert not any(w.startswith("CUDA_VISIBLE_DEVICES") for w in env)  # device: config only


def test_shadow_unit_is_pulled_in_always_and_runs_below_act():
    """The optional stage: Wants= by the instance like every stage, but never real-time, niced,
    and its exit status 2 (a bad shadow checkpoint) is not restarted."""
    unit = parse_unit(SYSTEMD / "shm-vla-shadow@.service")
    service = unit["Service"]
    assert "CPUSchedulingPolicy" not in service and "LimitRTPRIO" not in service
    assert int(service["Nice"][0]) >= config.Config().shadow.nice
    assert "shm-vla-act@%i.service" in words(unit, "Unit", "After")
    assert "shm-vla-shadow@%i.service" in words(parse_unit(SYSTEMD / "shm-vla-record@.service"), "Unit", "After")


def test_an_unconfigured_shadow_reports_ready_and_exits_0_leaving_nothing(instance):
    """What systemd starts with every instance: without shadow.checkpoint, READY=1, then exit 0
    (inactive, not failed, not restarted), and no segment in /dev/shm."""
    from shm_vla.shm import segment as segmod
    address = f"/tmp/sdn-{uuid.uuid4().hex[:12]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(30)
    try:
        result = subprocess.run([sys.executable, "-m", "shm_vla.cli", "shadow", "--instance", instance],
                                env={**os.environ, "NOTIFY_SOCKET": address}, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert sock.recv(4096).decode().startswith("READY=1\nSTATUS=no shadow configured")
    finally:
        sock.close()
        os.unlink(address)
    assert result.stderr.strip() == ("shm-vla shadow: no shadow configured (shadow.checkpoint is empty): "
                                     "nothing to run")
    assert segmod.instance_segments(instance) == []


# --------------------------------------------------------------------------- example configs
@pytest.mark.parametrize("name", ["flow", "regression"])
def test_example_config_loads(name):
    cfg = config.load(name, SYSTEMD / f"{name}.toml")
    assert cfg.instance == name
    assert Path(cfg.model.checkpoint).name.startswith(name)
    assert cfg.model.vl_device.startswith("cuda") and cfg.model.act_device.startswith("cuda")
    assert cfg.shm.group == "shm-vla"
    assert cfg.record.out_dir.startswith("/var/lib/shm-vla/")  # the units' StateDirectory


def test_example_configs_reject_a_typo(tmp_path):
    """The load test can fail: an unknown key in an example is a ConfigError."""
    bad = tmp_path / "flow.toml"
    bad.write_text((SYSTEMD / "flow.toml").read_text().replace("vl_reuse", "vl_reuses"))
    with pytest.raises(config.ConfigError, match="vl_reuses"):
        config.load("flow", bad)



# --------------------------------------------------------------------------- a real process
def test_real_process_speaks_notify_protocol(instance, tmp_path):
    """`shm-vla ingest robot` under a fake NOTIFY_SOCKET, as systemd would start it:
    READY first, WATCHDOG from its loop at about half the interval, STOPPING on SIGTERM."""
    address = f"/tmp/sdn-{uuid.uuid4().hex[:12]}"  # AF_UNIX paths are short
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.1)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([sys.executable, "-m", "shm_vla.cli", "ingest", "robot", "--instance", instance,
                             "--set", 'robot.connect="tcp://127.0.0.1:1"'],  # no peer needed
                            env=env, stderr=subprocess.PIPE, text=True)
    got: list[tuple[float, str]] = []

    def collect(until) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not until():
            try:
                got.append((time.monotonic(), sock.recv(4096).decode()))
            except socket.timeout:
                pass

    try:
        collect(lambda: sum(m == "WATCHDOG=1" for _, m in got) >= 3 or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        collect(lambda: proc.poll() is not None)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
        sock.setblocking(False)  # the process is gone: read what is left
        while True:
            try:
                got.append((time.monotonic(), sock.recv(4096).decode()))
            except BlockingIOError:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
        os.unlink(address)
    messages = [m for _, m in got]
    assert messages[0].startswith("READY=1\nSTATUS="), messages
    assert messages[-1] == "STOPPING=1", messages
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    assert len(pings) >= 3, messages
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    # Sent at >= 0.5 s intervals (interval/2) by the sender's clock; measured here, one late
    # receipt can shorten a gap, hence the margin. Unlimited, the 50 ms loop would ping 10x as often.
    assert min(gaps) >= 0.3 and max(gaps) < 2.0, gaps


# --------------------------------------------------------------------------- the exporter
def _exporter_argv(env: dict[str, str]) -> list[str]:
    """The exporter unit's ExecStart after systemd's expansion: ${VAR} one word, $VAR split."""
    unit = parse_unit(SYSTEMD / EXPORTER)
    defaults = dict(w.split("=", 1) for w in words(unit, "Service", "Environment"))
    env = {**defaults, **env}
    argv = []
    for word in shlex.split(unit["Service"]["ExecStart"][0]):
        if word.startswith("${"):
            argv.append(env[word[2:-1]])
        elif word.startswith("$"):
            argv += env[word[1:]].split()
        else:
            argv.append(word)
    return argv


def test_exporter_unit_is_one_per_host_read_only_and_outside_the_pipelines():
    unit = parse_unit(SYSTEMD / EXPORTER)
    service = unit["Service"]
    assert "@" not in EXPORTER and unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert not {"PartOf", "BindsTo", "Wants", "Requires"} & set(unit["Unit"])   # no pipeline needs it
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["User"] == ["shm-vla"] and service["RemoveIPC"] == ["no"]
    assert service["ReadOnlyPaths"] == ["/dev/shm"] and "PrivateDevices" not in service
    assert words(unit, "Service", "RestartPreventExitStatus") == [str(config.EXIT_CONFIG_ERROR)]
    argv = _exporter_argv({})
    assert argv[:4] == ["/usr/local/bin/shm-vla", "stat", "--prometheus", "0.0.0.0:9500"] and len(argv) == 4
    argv = _exporter_argv({"SHM_VLA_EXPORTER_ARGS": "--instance flow --instance regression"})
    assert argv[4:] == ["--instance", "flow", "--instance", "regression"]
    assert argv[1] in cli.COMMANDS


def test_exporter_process_speaks_notify_protocol(instance):
    """The unit's command as systemd runs it (another port, one cell): READY=1 once it
    listens, /metrics answers, STOPPING=1 and exit 0 on SIGTERM."""
    pytest.importorskip("prometheus_client", reason="pip install shm-vla[metrics]")
    address = f"/tmp/sdn-{uuid.uuid4().hex[:12]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(30)
    port = free_port()
    argv = _exporter_argv({"SHM_VLA_EXPORTER_LISTEN": f"127.0.0.1:{port}",
                           "SHM_VLA_EXPORTER_ARGS": f"--instance {instance}"})
    proc = subprocess.Popen([sys.executable, "-m", "shm_vla.cli", *argv[1:]], env={**os.environ, "NOTIFY_SOCKET": address},
                            stderr=subprocess.PIPE, text=True)
    try:
        assert sock.recv(4096).decode().startswith("READY=1"), proc.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert f'shm_vla_cell_processes{{cell="{instance}"}} 0.0' in response.read().decode()
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
        os.unlink(address)
