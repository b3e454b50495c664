"""The safety gate alone: order of the checks, capture vs receipt ages, window bounds, NaN."""
from __future__ import annotations

import math

import pytest

from shm_vla import config
from shm_vla.gate import Gate, InputAges

NAN = float("nan")
SPAN_MS = {"sensor": 64 / 650 * 1e3, "robot": 9.0}


@pytest.fixture
def gate():
    return Gate(config.Config().act, sensor_span_ms=SPAN_MS["sensor"], robot_span_ms=SPAN_MS["robot"])


def fresh(**changes) -> InputAges:
    ages = InputAges(sensor=1.0, sensor_recv=0.5, sensor_window=99.0, robot=2.0, robot_recv=1.0,
                     robot_window=11.0, vl=50.0, frames=300.0)
    for key, value in changes.items():
        setattr(ages, key, value)
    return ages


def test_fresh_inputs_pass_and_missing_ones_hold_first(gate):
    assert gate.check_inputs(True, 65, 10, fresh()) == ""
    assert gate.check_inputs(False, 0, 0, fresh()) == "no_vl_feature"
    assert gate.check_inputs(True, 0, 10, fresh()) == "no_sensor"
    assert gate.check_inputs(True, 65, 0, fresh()) == "no_robot"


@pytest.mark.parametrize("changes, reason", [
    ({"sensor": NAN}, "unsynced_sensor"),
    ({"sensor_window": NAN}, "unsynced_sensor"),
    ({"robot_window": NAN}, "unsynced_robot"),
    ({"frames": NAN}, "unsynced_camera"),
    ({"sensor": 2400.0}, "stale_sensor"),               # received now, captured 2.4 s ago
    ({"sensor_recv": 201.0}, "stale_sensor"),           # receipt is a second bound
    ({"sensor_window": 200.0 + SPAN_MS["sensor"] + 1}, "stale_sensor_window"),
    ({"robot": 201.0}, "stale_robot"),
    ({"robot_window": 200.0 + SPAN_MS["robot"] + 1}, "stale_robot_window"),
    ({"vl": 2001.0}, "stale_vl"),
    ({"vl": NAN}, "stale_vl"),
    ({"frames": 2501.0}, "stale_frames"),
])
def test_each_bound_holds_with_its_reason(gate, changes, reason):
    assert gate.check_inputs(True, 65, 10, fresh(**changes)) == reason


def test_the_window_may_be_as_old_as_the_limit_plus_its_span(gate):
    limit = 200.0 + SPAN_MS["sensor"]
    assert gate.check_inputs(True, 65, 10, fresh(sensor_window=limit)) == ""
    assert gate.check_inputs(True, 65, 10, fresh(sensor_window=math.nextafter(limit, math.inf))) != ""
