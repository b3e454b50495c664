"""shm_vla/finite.py: the one rule for "a number" that the recorder, the session summary,
the analyzer and shm-vla-stat share."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shm_vla.finite import finite_or_none, to_jsonable
from shm_vla.stat_model import _num as stat_value
from shm_vla.workers.session_stats import number


@pytest.mark.parametrize("value, expected", [
    (1.5, 1.5), (0, 0), (-3, -3), (np.float32(2.5), 2.5), (np.float64(-1.0), -1.0), (np.int64(7), 7),
    (10 ** 30, 10 ** 30), (np.array(4.5, np.float32), 4.5), (np.zeros((), [("ms", "<f8")])["ms"], 0.0),
])
def test_finite_numbers_come_back_as_python_numbers(value, expected):
    out = finite_or_none(value)
    assert out == expected and type(out) is type(expected)      # an int stays an int: counters print as 5


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf"),
                                   True, False, np.bool_(True), "1.0", b"1", [1.0], {"v": 1},
                                   np.array(np.nan), np.array([1.0])])
def test_everything_else_is_no_number(value):
    assert finite_or_none(value) is None


def test_the_readers_share_the_rule():
    record = {"a": 2, "b": math.nan, "c": "x", "d": True, "e": 1.25}
    for key in (*record, "missing"):
        assert number(record, key) == stat_value(record, key) == finite_or_none(record.get(key))


def test_to_jsonable_is_strict_json():
    obj = {"gauge": math.nan, "n": np.int64(3), "arr": np.array([1.0, np.inf]), "t": (np.float32(0.5), -math.inf),
           1: {"deep": [math.nan, 2]}}
    out = to_jsonable(obj)
    assert out == {"gauge": None, "n": 3, "arr": [1.0, None], "t": [0.5, None], "1": {"deep": [None, 2]}}
    json.dumps(out, allow_nan=False)
