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
    path.write_text('robot_ip = "10.0.0.7"\n[act]\ntick_hz = 20\n[sensor]\nforce_position = "last"\n')
    cfg = config.load("flow", path, ["act.tick_hz=15", "model.task=needle"])
    assert cfg.address(cfg.command.connect) == "tcp://10.0.0.7:5000"
    assert cfg.act.tick_hz == 15.0 and isinstance(cfg.act.tick_hz, float)
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
