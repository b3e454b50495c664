"""Camera messages: metadata validation, camera -> view mapping, JPEG decode/resize."""
import json

import numpy as np
import pytest
import simplejpeg
from hypothesis import given, settings, strategies as st

from shm_vla.config import CameraConfig, ConfigError
from shm_vla.protocol import ProtocolError
from shm_vla.protocol.camera import (CameraMapper, JpegDecoder, parse_camera, parse_camera_meta, resize_bilinear,
                                     split_camera_message)

FUZZ = settings(max_examples=150, deadline=None)
META = json.dumps({"camera": "zed_41182735_left", "timestamp": 1.7e9, "extra": [1, 2]}).encode()


def _jpeg(height=360, width=640, rgb=(200, 30, 90), quality=75):
    image = np.empty((height, width, 3), np.uint8)
    image[:] = rgb
    return simplejpeg.encode_jpeg(image, quality=quality, colorspace="RGB", colorsubsampling="420")


def _kind(fn, *args):
    with pytest.raises(ProtocolError) as err:
        fn(*args)
    return err.value.kind


def test_parse_camera_message():
    jpeg = _jpeg()
    assert parse_camera([META, jpeg]) == ("zed_41182735_left", 1.7e9, jpeg)
    assert parse_camera_meta(b'{"camera":"oak_d","timestamp":12}') == ("oak_d", 12.0)


@pytest.mark.parametrize("count", [0, 1, 3, 4])
def test_wrong_frame_count(count):
    assert _kind(split_camera_message, [META] * count) == "frames"


@pytest.mark.parametrize("meta, kind", [
    (b"\xff\xfe{}", "utf8"),
    (b'{"camera": "a", "timestamp": ', "json"),
    (b"[" * 100_000, "meta_size"),
    (b"[" * 30_000 + b"]" * 30_000, "json"),          # deep nesting: RecursionError inside json
    (b'["camera", 1.0]', "not_object"),
    (b'"text"', "not_object"),
    (b'{"timestamp": 1.0}', "no_camera"),
    (b'{"camera": 5, "timestamp": 1.0}', "no_camera"),
    (b'{"camera": "a"}', "timestamp"),
    (b'{"camera": "a", "timestamp": "1.0"}', "timestamp"),
    (b'{"camera": "a", "timestamp": true}', "timestamp"),
    (b'{"camera": "a", "timestamp": null}', "timestamp"),
    (b'{"camera": "a", "timestamp": NaN}', "timestamp"),
    (b'{"camera": "a", "timestamp": Infinity}', "timestamp"),
    (b'{"camera": "a", "timestamp": 1' + b"0" * 400 + b"}", "timestamp"),
])
def test_bad_metadata(meta, kind):
    assert _kind(parse_camera_meta, meta) == kind


@pytest.mark.parametrize("name, view", [
    ("zed_41182735_left", 0), ("zed_49429257_left", 1), ("zed_44377151_left", 2), ("ZED_49045152_LEFT", 3),
    ("oak_d", 4), ("OAK-D-Lite", 4), ("View1", 0), ("View5", 4),
    ("zed_41182735_right", None), ("zed_49045152_right", None),
])
def test_camera_mapping(name, view):
    assert CameraMapper(CameraConfig()).view_index(name) == view


@pytest.mark.parametrize("name", ["", "zed_1_left", "zed_41182735", "webcam", "view1", "zed_41182735_leftright"])
def test_unknown_cameras(name):
    assert _kind(CameraMapper(CameraConfig()).view_index, name) == "unknown_camera"


def test_mapping_is_configurable_and_checked():
    cfg = CameraConfig(views=["a", "b", "c", "d", "e"], zed_serials={"123": "c"}, oak_view="a")
    mapper = CameraMapper(cfg)
    assert mapper.view_index("cam_123_left") == 2 and mapper.view_index("oak") == 0 and mapper.view_index("e") == 4
    with pytest.raises(ConfigError, match="oak_view"):
        CameraMapper(CameraConfig(oak_view="View9"))


@pytest.mark.parametrize("order, expected", [("RGB", (200, 30, 90)), ("BGR", (90, 30, 200))])
def test_decode_in_place_channel_order(order, expected):
    decoder = JpegDecoder(640, 360, order)
    out = np.zeros((360, 640, 3), np.uint8)
    assert decoder.decode_into(_jpeg(), out) is out
    assert np.abs(out[180, 320].astype(int) - expected).max() <= 6
    assert decoder.resized == 0


@pytest.mark.parametrize("size", [(720, 1280), (480, 640), (100, 100), (2880, 5120)])
def test_other_sizes_are_resized(size):
    decoder = JpegDecoder(640, 360)
    out = np.zeros((360, 640, 3), np.uint8)
    decoder.decode_into(_jpeg(*size), out)
    assert np.abs(out.astype(int) - (200, 30, 90)).max() <= 8
    assert decoder.resized == 1


def test_resize_bilinear_keeps_gradients_and_corners():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, :, 0] = np.arange(4)[None, :] * 80
    out = np.zeros((2, 8, 3), np.uint8)
    resize_bilinear(image, out)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 240
    assert np.all(np.diff(out[0, :, 0].astype(int)) >= 0)


@pytest.mark.parametrize("data, kind", [
    (b"", "jpeg"), (b"not a jpeg at all", "jpeg"), (_jpeg()[:2000], "jpeg"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "jpeg"), (_jpeg(3000, 6000), "jpeg_size"),
])
def test_corrupt_or_oversized_jpeg(data, kind):
    assert _kind(JpegDecoder(640, 360).decode_into, data, np.zeros((360, 640, 3), np.uint8)) == kind


def test_jpeg_byte_limit():
    decoder = JpegDecoder(640, 360, max_bytes=100)
    assert _kind(decoder.decode_into, _jpeg(), np.zeros((360, 640, 3), np.uint8)) == "jpeg_size"


def test_output_buffer_is_checked():
    with pytest.raises(ValueError):
        JpegDecoder(640, 360).decode_into(_jpeg(), np.zeros((360, 640, 4), np.uint8))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_meta_random_bytes(data):
    try:
        camera, stamp = parse_camera_meta(data)
    except ProtocolError:
        return
    assert isinstance(camera, str) and np.isfinite(stamp)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@FUZZ
@given(st.dictionaries(st.sampled_from(["camera", "timestamp", "x"]), JSON_VALUES, max_size=3) | JSON_VALUES)
def test_fuzz_meta_json_shapes(value):
    data = json.dumps(value).encode()
    try:
        camera, stamp = parse_camera_meta(data)
    except ProtocolError:
        return
    assert value["camera"] == camera and isinstance(camera, str)
    assert np.isfinite(stamp) and stamp == float(value["timestamp"])


@FUZZ
@given(st.text(max_size=40))
def test_fuzz_mapper(name):
    try:
        view = CameraMapper(CameraConfig()).view_index(name)
    except ProtocolError:
        return
    assert view is None or 0 <= view < 5


_VALID_JPEG = _jpeg(rgb=(10, 200, 40))


@FUZZ
@given(st.data())
def test_fuzz_jpeg_mutations(data):
    jpeg = bytearray(_VALID_JPEG)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        if op == "flip" and jpeg:
            jpeg[data.draw(st.integers(0, len(jpeg) - 1))] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            jpeg = jpeg[:data.draw(st.integers(0, len(jpeg)))]
        else:
            at = data.draw(st.integers(0, len(jpeg)))
            jpeg[at:at] = data.draw(st.binary(max_size=16))
    out = np.zeros((360, 640, 3), np.uint8)
    try:
        JpegDecoder(640, 360).decode_into(bytes(jpeg), out)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_jpeg_random_bytes(data):
    try:
        JpegDecoder(640, 360).decode_into(b"\xff\xd8" + data, np.zeros((360, 640, 3), np.uint8))
    except ProtocolError:
        pass
