"""Sensor datagrams: zero-copy parse, length/count rules, NaN policy helpers, sample layout."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from shm_vla.protocol import ProtocolError
from shm_vla.protocol.sensor import (DATAGRAM_MAX_BYTES, SENSOR_RECORD_DTYPE, assemble_samples, encode_datagram,
                                     finite_mask, max_records, parse_datagram, record_dtype)

FUZZ = settings(max_examples=150, deadline=None)


def _records(count, ascan_len=1025, seed=0):
    records = np.zeros(count, dtype=record_dtype(ascan_len))
    rng = np.random.default_rng(seed)
    records["timestamp"] = 1.7e9 + np.arange(count) / 650
    records["send_timestamp"] = records["timestamp"][-1] + 0.001
    records["force"] = rng.normal(size=count)
    records["ascan"] = rng.normal(size=(count, ascan_len))
    return records


def _received(datagram: bytes) -> tuple[bytearray, int]:
    """As a receive loop holds it: a fixed max-size buffer and a byte count."""
    buf = bytearray(DATAGRAM_MAX_BYTES)
    buf[:len(datagram)] = datagram
    return buf, len(datagram)


def test_record_is_4120_bytes_and_packed():
    assert SENSOR_RECORD_DTYPE.itemsize == 4120
    assert record_dtype(7).itemsize == 20 + 4 * 7
    assert max_records(SENSOR_RECORD_DTYPE) == 15


@pytest.mark.parametrize("count", [1, 5, 15])
def test_roundtrip_is_a_view_of_the_receive_buffer(count):
    records = _records(count)
    buf, nbytes = _received(encode_datagram(records))
    parsed = parse_datagram(buf, nbytes, SENSOR_RECORD_DTYPE)
    assert parsed.dtype == SENSOR_RECORD_DTYPE and len(parsed) == count
    assert np.array_equal(parsed, records)
    assert np.shares_memory(parsed, np.frombuffer(buf, np.uint8))  # zero copy


def test_other_ascan_length():
    dtype = record_dtype(64)
    records = _records(3, 64)
    buf, nbytes = _received(encode_datagram(records))
    assert np.array_equal(parse_datagram(buf, nbytes, dtype), records)


@pytest.mark.parametrize("delta, kind", [(-1, "length"), (1, "length"), (-4120, "count"), (4120, "count")])
def test_truncated_oversized_and_wrong_count(delta, kind):
    datagram = encode_datagram(_records(3))
    data = datagram[:len(datagram) + delta] if delta < 0 else datagram + bytes(delta)
    buf, nbytes = _received(data)
    with pytest.raises(ProtocolError) as err:
        parse_datagram(buf, nbytes)
    assert err.value.kind == kind


@pytest.mark.parametrize("data, kind", [(b"", "length"), (b"\x00\x00", "length"),
                                        (b"\x00\x00\x00\x00", "count")])
def test_empty_and_zero_count(data, kind):
    with pytest.raises(ProtocolError) as err:
        parse_datagram(bytearray(data), len(data))
    assert err.value.kind == kind


def test_zero_count_with_a_record_is_invalid():
    datagram = bytearray(encode_datagram(_records(1)))
    datagram[:4] = b"\x00\x00\x00\x00"
    with pytest.raises(ProtocolError, match="count"):
        parse_datagram(datagram, len(datagram))


def test_finite_mask_flags_every_nonfinite_field():
    records = _records(6)
    records["ascan"][1, 500] = np.nan
    records["force"][2] = np.inf
    records["timestamp"][3] = np.nan
    records["send_timestamp"][4] = -np.inf
    assert finite_mask(records).tolist() == [True, False, False, False, False, True]
    out = np.empty(6, dtype=bool)
    assert finite_mask(records, out=out) is out


@pytest.mark.parametrize("position", ["first", "last"])
def test_assemble_samples_force_position(position):
    records = _records(4)
    out = np.full((4, 1026), -1.0, dtype=np.float32)
    assemble_samples(records, out, position)
    force_col, ascan = (out[:, 0], out[:, 1:]) if position == "first" else (out[:, -1], out[:, :-1])
    assert np.array_equal(force_col, records["force"])
    assert np.array_equal(ascan, records["ascan"])


def test_assemble_samples_rejects_bad_shapes_and_positions():
    records = _records(2)
    with pytest.raises(ValueError):
        assemble_samples(records, np.zeros((2, 1025), np.float32))
    with pytest.raises(ValueError):
        assemble_samples(records, np.zeros((2, 1026), np.float32), "middle")


def _check_parse(data: bytes, dtype=SENSOR_RECORD_DTYPE):
    buf, nbytes = _received(data)
    try:
        parsed = parse_datagram(buf, nbytes, dtype)
    except ProtocolError:
        return
    assert 4 + len(parsed) * dtype.itemsize == nbytes and len(parsed) >= 1
    assert int.from_bytes(data[:4], "little") == len(parsed)


@FUZZ
@given(st.binary(max_size=20_000))
def test_fuzz_random_bytes(data):
    _check_parse(data)


@FUZZ
@given(st.integers(1, 4), st.data())
def test_fuzz_mutated_valid_datagrams(count, data):
    datagram = bytearray(encode_datagram(_records(count, ascan_len=16)))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "extend", "count"]))
        if op == "flip" and datagram:
            datagram[data.draw(st.integers(0, len(datagram) - 1))] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            datagram = datagram[:data.draw(st.integers(0, len(datagram)))]
        elif op == "extend":
            datagram += data.draw(st.binary(max_size=200))
        elif op == "count" and len(datagram) >= 4:
            datagram[:4] = data.draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    _check_parse(bytes(datagram), record_dtype(16))
