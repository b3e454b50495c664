import dataclasses
import grp
import os
import subprocess
import sys

import pytest

from shm_vla import config


def test_defaults_are_the_deployed_values():
    cfg = config.load("flow")
    assert cfg.camera.bind == "tcp://0.0.0.0:5555"
    assert cfg.address(cfg.robot.connect) == "tcp://127.0.0.1:5556"
    assert cfg.robot.topic == "robot_state"
    assert cfg.sensor.bind == "0.0.0.0:9999" and cfg.sensor.window == 65 and cfg.sensor_channels == 1026
    assert cfg.address(cfg.command.connect) == "tcp://127.0.0.1:5000"
    assert cfg.act.tick_hz == 10 and cfg.act.vl_reuse == 4
    assert cfg.model.flow_steps == 10 and cfg.model.flow_solver == "euler"
    assert cfg.camera.views == ["View1", "View2", "View3", "View4", "View5"]
    assert (cfg.camera.width, cfg.camera.height) == (640, 360)
    # rings hold several seconds of each stream
    assert cfg.sensor.ring_depth / cfg.sensor.rate_hz >= 3
    assert cfg.robot.ring_depth / cfg.robot.rate_hz >= 3
    assert cfg.camera.ring_depth / cfg.camera.rate_hz >= 3


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "flow.toml"
    path.write_text('robot_ip = "10.0.0.7"\n[act]\ntick_hz = 5\n[sensor]\nforce_position = "last"\n')
    cfg = config.load("flow", path, ["act.tick_hz=8", "model.task=needle"])
    assert cfg.address(cfg.command.connect) == "tcp://10.0.0.7:5000"
    assert cfg.act.tick_hz == 8.0 and isinstance(cfg.act.tick_hz, float)
    assert cfg.sensor.force_position == "last" and cfg.model.task == "needle"


@pytest.mark.parametrize("text,match", [
    ("[act]\ntick_hz_typo = 3\n", "unknown config key 'act.tick_hz_typo'"),
    ("[nosuch]\na = 1\n", "unknown config key 'nosuch'"),
    ("[act]\ntick_hz = 'fast'\n", "act.tick_hz: expected float"),
    ("[act]\ntick_hz = -1\n", "act.tick_hz: must be > 0"),
    ("[sensor]\nforce_position = 'middle'\n", "sensor.force_position"),
    ("[act\n", "config file"),
])
def test_invalid_config_names_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=match):
        config.load("x", path)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[act]\nbogus = 1\n")
    code = ("import argparse; from shm_vla import config\n"
            "p = argparse.ArgumentParser(); config.add_arguments(p)\n"
            f"config.from_args(p.parse_args(['--config', {str(path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "act.bogus" in proc.stderr


# --------------------------------------------------------------------------- removed keys (issue 12, item 5)
def test_a_removed_key_is_ignored_with_a_warning_for_one_version(tmp_path, capsys):
    """robot.dims, vl.poll_timeout_ms and shm.stats_max_processes were validated but never read:
    a file that still sets them loads, each key named once in a warning, its value unused."""
    path = tmp_path / "old.toml"
    path.write_text("[robot]\ndims = 12\nring_depth = 512\n[vl]\npoll_timeout_ms = 200.0\n"
                    "[shm]\nstats_max_processes = 16\n")
    cfg = config.load("x", path, ["robot.dims=14"])
    assert cfg.robot.ring_depth == 512
    assert not any(hasattr(section, key) for section, key in ((cfg.robot, "dims"), (cfg.vl, "poll_timeout_ms"),
                                                              (cfg.shm, "stats_max_processes")))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all("no longer used and is ignored" in line for line in lines)
    assert [key for key in config.REMOVED_KEYS if any(f"config key {key} " in line for line in lines)] \
        == list(config.REMOVED_KEYS)


def test_removed_keys_are_no_live_keys():
    """A key in REMOVED_KEYS is skipped before it is looked up: it must not also be a live key."""
    live = {f"{section}.{key}" for section, values in config.to_dict(config.Config()).items()
            if isinstance(values, dict) for key in values}
    assert set(config.REMOVED_KEYS) and not set(config.REMOVED_KEYS) & live


def test_a_typo_near_a_removed_key_is_still_unknown(tmp_path):
    with pytest.raises(config.ConfigError, match="unknown config key 'robot.dim'"):
        config.load("x", None, ["robot.dim=12"])


# --------------------------------------------------------------------------- safety keys (issue 10, item 2)
SAFETY_KEYS = ["act.clamp_mm", "act.clamp_deg", "act.max_sensor_age_ms", "act.max_robot_age_ms",
               "act.max_vl_age_ms", "act.tick_hz"]


def _rejected(*overrides, match=None):
    with pytest.raises(config.ConfigError, match=match):
        config.load("x", None, list(overrides))


def test_the_deployed_defaults_are_within_the_ceilings():
    cfg = config.load("x")
    assert cfg.act.clamp_mm * cfg.act.tick_hz <= 1.0 and cfg.act.clamp_deg * cfg.act.tick_hz <= 1.0
    assert set(SAFETY_KEYS) <= {f"{section}.{key}" for section, key in config.SAFETY_CEILINGS}


@pytest.mark.parametrize("key", SAFETY_KEYS)
@pytest.mark.parametrize("value,match", [("inf", "not finite"), ("-inf", "not finite"), ("nan", "not finite"),
                                         ("0", "must be > 0"), ("-1", "must be > 0"), ("1e6", "hard ceiling")])
def test_a_safety_key_cannot_be_switched_off(key, value, match):
    _rejected(f"{key}={value}", match=rf"{key}: .*{match}")


def test_clamps_are_a_speed_the_robot_receiver_allows():
    """1 mm/s and 1 deg/s: 0.1 per tick at 10 Hz; a faster tick needs a smaller clamp."""
    _rejected("act.clamp_mm=0.11", match=r"act.clamp_mm: 0.11 mm per tick at act.tick_hz 10 is 1.1 mm/s")
    _rejected("act.clamp_deg=0.2", match=r"act.clamp_deg: .* 2 deg/s, over the hard ceiling of 1 deg/s")
    _rejected("act.tick_hz=20", match=r"act.clamp_mm: .*at most 0.05 mm per tick")
    cfg = config.load("x", None, ["act.tick_hz=20", "act.clamp_mm=0.05", "act.clamp_deg=0.05"])
    assert cfg.act.clamp_mm == 0.05
    assert config.load("x", None, ["act.tick_hz=5", "act.clamp_mm=0.2"]).act.clamp_mm == 0.2
    _rejected("act.tick_hz=101", "act.clamp_mm=0.001", "act.clamp_deg=0.001", match="act.tick_hz: 101 Hz")


def test_age_ceilings():
    assert config.load("x", None, ["act.max_sensor_age_ms=500", "act.max_vl_age_ms=5000"])
    _rejected("act.max_sensor_age_ms=500.5", match="act.max_sensor_age_ms: 500.5 ms is over the hard ceiling of 500 ms")
    _rejected("act.max_robot_age_ms=1000", match="act.max_robot_age_ms")
    _rejected("act.max_vl_age_ms=5001", match="act.max_vl_age_ms")


def _float_keys():
    cfg = config.Config()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                if isinstance(getattr(value, f.name), float):
                    yield f"{section.name}.{f.name}"


@pytest.mark.parametrize("key", list(_float_keys()))
def test_no_float_key_takes_nan_or_inf(key):
    for value in ("nan", "inf", "-inf"):
        _rejected(f"{key}={value}", match=rf"{key}: .* is not finite")


def test_no_float_in_a_list_takes_nan():
    _rejected("command.start_joints=[191.0, 1.0, 309.0, 1.0, nan, 1.0]", match="command.start_joints: .* not finite")


def test_cli_refuses_an_unbounded_clamp_with_one_line():
    code = ("import argparse; from shm_vla import config\n"
            "p = argparse.ArgumentParser(); config.add_arguments(p)\n"
            "config.from_args(p.parse_args(['--set', 'act.clamp_mm=inf']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "act.clamp_mm: inf is not finite" in proc.stderr


def test_every_ceiling_is_documented():
    deployment = (config.Path(__file__).resolve().parents[2] / "docs" / "DEPLOYMENT.md").read_text()
    for (section, key), ceiling in config.SAFETY_CEILINGS.items():
        assert f"`{section}.{key}` | {ceiling.limit:g} {ceiling.unit}" in deployment, key


# --------------------------------------------------------------------------- addresses, allowlists, groups (item 6)
@pytest.mark.parametrize("override,match", [
    ('sensor.bind="nohostport"', "sensor.bind: 'nohostport' is not HOST:PORT"),
    ('sensor.bind="localhost:9999"', "sensor.bind"),
    ('sensor.bind="0.0.0.0:70000"', "sensor.bind"),
    ('sensor.bind="0.0.0.0:"', "sensor.bind"),
    ('camera.bind="garbage"', "camera.bind: 'garbage' is not tcp://HOST:PORT"),
    ('camera.bind="udp://0.0.0.0:5555"', "camera.bind"),
    ('camera.bind="tcp://0.0.0.0:0"', "camera.bind"),
    ('camera.bind="tcp://eth0:5555"', "camera.bind"),
    ('robot.connect="tcp://{robot}:5556"', "robot.connect: .* only {robot_ip}"),
    ('robot.connect="{robot_ip}:5556"', "robot.connect"),
    ('command.connect="tcp://{robot_ip}:port"', "command.connect"),
    ('robot_ip="robot pc"', "robot_ip"),
    ('camera.allow=["10.0.0.1/24"]', r"camera.allow: '10.0.0.1/24' is not an IPv4 address or network"),
    ('camera.allow=["everyone"]', "camera.allow: 'everyone' is not an IPv4"),
    ('sensor.allow=["::1"]', "sensor.allow: '::1' is not an IPv4"),
    ("sensor.allow=[3]", "sensor.allow: 3 is not an IPv4"),
])
def test_addresses_and_allowlists_are_checked_at_load(override, match):
    _rejected(override, match=match)


def test_valid_addresses_and_allowlists():
    cfg = config.load("x", None, ['camera.bind="tcp://*:5555"', 'sensor.bind="192.168.1.5:9999"',
                                  'robot_ip="robot-pc.lab"', 'camera.allow=["192.168.1.20", "10.0.0.0/24"]',
                                  'sensor.allow=["192.168.1.21"]'])
    assert config.zmq_bind_address("camera.bind", cfg.camera.bind) == ("*", 5555)
    assert config.udp_bind_address("sensor.bind", cfg.sensor.bind) == ("192.168.1.5", 9999)
    assert [str(n) for n in config.allowed_networks("camera.allow", cfg.camera.allow)] == \
        ["192.168.1.20/32", "10.0.0.0/24"]
    assert config.load("x").camera.allow == [] and config.load("x").sensor.allow == []   # any sender by default


@pytest.mark.parametrize("key", ["shm.group", "record.group"])
def test_a_missing_group_is_a_config_error_before_anything_starts(key):
    cfg = config.load("x", None, [f'{key}="no-such-group-shmvla"'])       # the file itself is valid ...
    with pytest.raises(config.ConfigError, match=f"{key}: group 'no-such-group-shmvla' does not exist"):
        config.check_host(cfg)                                             # ... not on this machine
    code = ("import argparse; from shm_vla import config\n"
            "p = argparse.ArgumentParser(); config.add_arguments(p)\n"
            f"config.from_args(p.parse_args(['--set', '{key}=\"no-such-group-shmvla\"']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and key in proc.stderr


def test_group_membership():
    own = grp.getgrgid(os.getegid()).gr_name
    config.check_member("record.group", own)
    config.check_member("record.group", "")
    if os.geteuid() != 0:
        other = next((g.gr_name for g in grp.getgrall() if g.gr_gid not in os.getgroups()), None)
        if other:
            with pytest.raises(config.ConfigError, match="not a member"):
                config.check_member("record.group", other)
