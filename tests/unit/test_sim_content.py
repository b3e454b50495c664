"""Self-checking synthetic content: encoders and decoders agree, corruption is caught."""
import numpy as np
import pytest
import simplejpeg

from shm_vla.protocol.sensor import assemble_samples, record_dtype
from shm_vla.sim.content import (ContentError, fill_sensor, frame_image, frame_jpeg, frame_counter, robot_counter,
                                 robot_counters, robot_values, sensor_counter, sensor_counters)


@pytest.mark.parametrize("first", [0, 1, 4095, 4096, 2**24 - 2, 2**31 + 7, 2**36 - 10])
def test_sensor_counters_roundtrip_records_and_samples(first):
    records = np.zeros(8, dtype=record_dtype(1025))
    fill_sensor(records, first)
    assert sensor_counters(records).tolist() == list(range(first, first + 8))
    for position in ("first", "last"):
        samples = assemble_samples(records, np.zeros((8, 1026), np.float32), position)
        assert sensor_counters(samples, position).tolist() == list(range(first, first + 8))
        assert sensor_counter(samples[3], position) == first + 3
    assert sensor_counter(records[0]) == first


def test_sensor_values_are_in_unit_range():
    records = np.zeros(3, dtype=record_dtype(1025))
    fill_sensor(records, 123456789)
    assert 0 <= records["ascan"].min() and records["ascan"].max() < 1 and records["force"].max() < 1


@pytest.mark.parametrize("field, index", [("ascan", 0), ("ascan", 700), ("force", None)])
def test_sensor_corruption_is_detected(field, index):
    records = np.zeros(4, dtype=record_dtype(1025))
    fill_sensor(records, 1000)
    if index is None:
        records[field][2] += 0.5
    else:
        records[field][2, index] += 1 / 4096
    with pytest.raises(ContentError):
        sensor_counters(records)


def test_sensor_wrong_force_position_is_detected():
    records = np.zeros(2, dtype=record_dtype(1025))
    fill_sensor(records, 77)
    samples = assemble_samples(records, np.zeros((2, 1026), np.float32), "first")
    with pytest.raises(ContentError):
        sensor_counters(samples, "last")


@pytest.mark.parametrize("counter", [0, 1, 99, 4096 * 5 + 3, 2**35 + 1])
def test_robot_roundtrip(counter):
    values = robot_values(counter)
    assert values.dtype == np.float32 and values.shape == (12,)
    assert robot_counter(values) == counter
    assert robot_counters(np.stack([robot_values(counter + i) for i in range(3)])).tolist() == \
        [counter, counter + 1, counter + 2]


def test_robot_corruption_is_detected():
    values = robot_values(500)
    values[7] += 1 / 16
    with pytest.raises(ContentError):
        robot_counter(values)


@pytest.mark.parametrize("view, counter", [(0, 0), (4, 1), (2, 12345), (3, 2**32 - 1)])
def test_frame_counter_survives_jpeg(view, counter):
    image = simplejpeg.decode_jpeg(frame_jpeg(view, counter, quality=75), "RGB")
    assert frame_counter(image) == (view, counter)
    assert frame_counter(frame_image(view, counter)) == (view, counter)


def test_frame_counter_checks_channel_order():
    image = simplejpeg.decode_jpeg(frame_jpeg(1, 5), "BGR")
    assert frame_counter(image, "BGR") == (1, 5)
    with pytest.raises(ContentError, match="red"):
        frame_counter(image, "RGB")


def test_frame_counter_survives_a_resize():
    from shm_vla.protocol.camera import JpegDecoder
    big = simplejpeg.encode_jpeg(frame_image(2, 321, height=720, width=1280), quality=75)
    out = np.zeros((360, 640, 3), np.uint8)
    JpegDecoder(640, 360).decode_into(big, out)
    assert frame_counter(out) == (2, 321)


def test_frame_corruption_is_detected():
    image = frame_image(1, 6)
    image[40:80, 40:80] = 255 - image[40:80, 40:80]   # flip one data block
    with pytest.raises(ContentError):
        frame_counter(image)
    with pytest.raises(ContentError):
        frame_counter(np.full((360, 640, 3), 128, np.uint8))
