"""Robot commands: exactly two JSON shapes; encoders refuse what the validator refuses."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shm_vla.protocol import ProtocolError
from shm_vla.protocol.command import encode_dpose, encode_start, validate_command

FUZZ = settings(max_examples=200, deadline=None)


def test_dpose_roundtrip_and_wire_shape():
    data = encode_dpose(np.array([0.1, -0.1, 0.0, 0.05, 0.0, -0.05], np.float32))
    assert json.loads(data) == {"cmd": "dpose", "dp": [float(np.float32(v)) for v in (0.1, -0.1, 0, 0.05, 0, -0.05)]}
    assert validate_command(data) == json.loads(data)


def test_start_roundtrip_and_wire_shape():
    data = encode_start([191, 1, 309, 1, 91, 1], False)
    assert json.loads(data) == {"cmd": "start", "start_joints": [191.0, 1.0, 309.0, 1.0, 91.0, 1.0], "lock_j6": False}
    assert validate_command(data)["lock_j6"] is False


def test_integers_are_numbers():
    assert validate_command(b'{"cmd": "dpose", "dp": [0, 0, 0, 0, 0, 1]}')["dp"][5] == 1.0


@pytest.mark.parametrize("values, kind", [
    ([0.0] * 5, "count"), ([0.0] * 7, "count"), ([0, 0, 0, 0, 0, math.nan], "nonfinite"),
    ([0, 0, 0, 0, 0, math.inf], "nonfinite"), ([0, 0, 0, 0, 0, "1"], "type"), ([0, 0, 0, 0, 0, None], "type"),
    ([0, 0, 0, 0, 0, True], "type"), (5.0, "type"),
])
def test_encoders_refuse_bad_values(values, kind):
    for encode in (encode_dpose, encode_start):
        with pytest.raises(ProtocolError) as err:
            encode(values)
        assert err.value.kind == kind


def test_encode_start_needs_a_bool():
    with pytest.raises(ProtocolError, match="type"):
        encode_start([0.0] * 6, 0)


@pytest.mark.parametrize("data, kind", [
    (b"\xff", "utf8"), (b"{", "json"), (b"[1]", "not_object"), (b"{}", "cmd"),
    (b'{"cmd": "move", "dp": [0,0,0,0,0,0]}', "cmd"), (b'{"cmd": 1}', "cmd"),
    (b'{"cmd": "dpose"}', "keys"), (b'{"cmd": "dpose", "dp": [0,0,0,0,0,0], "x": 1}', "keys"),
    (b'{"cmd": "dpose", "dp": [0,0,0,0,0]}', "count"), (b'{"cmd": "dpose", "dp": "000000"}', "type"),
    (b'{"cmd": "dpose", "dp": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}}', "type"),
    (b'{"cmd": "dpose", "dp": [0,0,0,0,0,NaN]}', "nonfinite"),
    (b'{"cmd": "dpose", "dp": [0,0,0,0,0,1e999]}', "nonfinite"),
    (b'{"cmd": "dpose", "dp": [0,0,0,0,0,[1]]}', "type"),
    (b'{"cmd": "start", "start_joints": [0,0,0,0,0,0]}', "keys"),
    (b'{"cmd": "start", "start_joints": [0,0,0,0,0,0], "lock_j6": 0}', "type"),
    (b'{"cmd": "start", "start_joints": [0,0,0,0,0,-Infinity], "lock_j6": false}', "nonfinite"),
])
def test_validator_rejects(data, kind):
    with pytest.raises(ProtocolError) as err:
        validate_command(data)
    assert err.value.kind == kind


def _check(data: bytes):
    try:
        command = validate_command(data)
    except ProtocolError:
        return
    key = {"dpose": "dp", "start": "start_joints"}[command["cmd"]]
    assert len(command[key]) == 6 and all(math.isfinite(v) for v in command[key])
    # what passes the validator re-encodes to an equal valid command
    again = encode_dpose(command["dp"]) if command["cmd"] == "dpose" else \
        encode_start(command["start_joints"], command["lock_j6"])
    assert validate_command(again) == command


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
    _check(data)


NUMBERS = st.integers(-10**400, 10**400) | st.floats(allow_nan=True, allow_infinity=True)
VALUES = NUMBERS | st.booleans() | st.none() | st.text(max_size=4)


@FUZZ
@given(st.fixed_dictionaries({"cmd": st.sampled_from(["dpose", "start", "stop"])},
                             optional={"dp": st.lists(VALUES, max_size=8),
                                       "start_joints": st.lists(VALUES, max_size=8),
                                       "lock_j6": VALUES, "extra": VALUES}))
def test_fuzz_command_shapes(command):
    try:
        data = json.dumps(command).encode()
    except ValueError:   # ints beyond Python's digit limit cannot even be serialised
        return
    _check(data)
