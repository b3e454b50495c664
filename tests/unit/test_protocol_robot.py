"""Robot state: [topic, '<ddf12f'] messages, validation, caller-provided record."""
import math
import struct

import numpy as np
import pytest
import zmq
from hypothesis import given, settings, strategies as st

from shm_vla.protocol import ProtocolError
from shm_vla.protocol.robot import (ROBOT_PAYLOAD_BYTES, ROBOT_STATE_DTYPE, ROBOT_TOPIC, encode_robot, model_values,
                                    parse_robot)

FUZZ = settings(max_examples=200, deadline=None)
JOINTS = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
POSE = [100.5, -200.25, 300.0, 1.0, 2.0, 3.0]


def _payload(**changes):
    values = dict(timestamp=1.7e9, send_timestamp=1.7e9 + 0.002, force=0.0, joints=JOINTS, pose=POSE)
    values.update(changes)
    return encode_robot(values["timestamp"], values["send_timestamp"], values["force"], values["joints"], values["pose"])


def test_payload_is_68_bytes_in_the_deployed_layout():
    payload = _payload()
    assert len(payload) == ROBOT_PAYLOAD_BYTES == 68
    assert struct.unpack("<ddf12f", payload)[3:] == tuple(JOINTS + POSE)


@pytest.mark.parametrize("frame_type", [bytes, bytearray, zmq.Frame])
def test_parse_into_caller_record(frame_type):
    out = np.zeros((), dtype=ROBOT_STATE_DTYPE)
    result = parse_robot([frame_type(ROBOT_TOPIC), frame_type(_payload())], out)
    assert result is out
    assert out["timestamp"] == 1.7e9 and out["send_timestamp"] == 1.7e9 + 0.002
    values = model_values(out, np.zeros(12, np.float32))
    assert np.array_equal(values, np.float32(JOINTS + POSE))


def test_parse_without_out_returns_a_fresh_record():
    first = parse_robot([ROBOT_TOPIC, _payload()])
    second = parse_robot([ROBOT_TOPIC, _payload(joints=[0.0] * 6)])
    assert first["joints"][0] == 10.0 and second["joints"][0] == 0.0


@pytest.mark.parametrize("frames, kind", [
    ([_payload()], "frames"),
    ([ROBOT_TOPIC, _payload(), b""], "frames"),
    ([b"robot_stat", _payload()], "topic"),
    ([b"other", _payload()], "topic"),
    ([ROBOT_TOPIC, _payload()[:-1]], "length"),
    ([ROBOT_TOPIC, _payload() + b"\x00"], "length"),
    ([ROBOT_TOPIC, _payload(joints=[0, 0, math.nan, 0, 0, 0])], "nonfinite"),
    ([ROBOT_TOPIC, _payload(pose=[0, 0, 0, 0, 0, math.inf])], "nonfinite"),
    ([ROBOT_TOPIC, _payload(timestamp=math.nan)], "nonfinite"),
])
def test_bad_messages(frames, kind):
    out = np.zeros((), dtype=ROBOT_STATE_DTYPE)
    before = out.copy()
    with pytest.raises(ProtocolError) as err:
        parse_robot(frames, out)
    assert err.value.kind == kind
    assert out.tobytes() == before.tobytes()  # nothing written on error


def test_force_placeholder_is_not_checked():
    assert math.isnan(parse_robot([ROBOT_TOPIC, _payload(force=math.nan)])["force"])


def test_custom_topic():
    assert parse_robot([b"t", _payload()], topic=b"t")["joints"][5] == 60.0


def _check(frames):
    try:
        record = parse_robot(frames)
    except ProtocolError:
        return
    assert len(frames) == 2 and bytes(frames[0]) == ROBOT_TOPIC and len(frames[1]) == 68
    assert np.isfinite(record["joints"]).all() and np.isfinite(record["pose"]).all()


@FUZZ
@given(st.lists(st.binary(max_size=100), max_size=4))
def test_fuzz_random_frames(frames):
    _check(frames)


@FUZZ
@given(st.integers(0, 67), st.integers(1, 255), st.booleans())
def test_fuzz_mutated_payload(index, xor, with_topic_typo):
    payload = bytearray(_payload())
    payload[index] ^= xor
    topic = b"robot_statE" if with_topic_typo else ROBOT_TOPIC
    _check([topic, bytes(payload)])
