"""Every way a reader refuses a ring at attach is a typed error, closes the ring, and is
waited out, then judged, by attach_when_ready (issue 12, item 3).

LayoutMismatch: another record layout (dtype, shape, metadata, layout version).
IncompatibleStream (a LayoutMismatch): the record layout this reader expects, written for
another configuration (camera.channel_order, sensor.force_position), or a record without a
field the reader needs (the recorder's results ring).
"""
from __future__ import annotations

import numpy as np
import pytest

from shm_vla import config
from shm_vla.process import Runtime, attach_when_ready
from shm_vla.shm import segment as segmod
from shm_vla.shm.ring import Ring
from shm_vla.streams import Streams


def _mappings(instance: str) -> int:
    """This process's mappings of the instance's segments (the writer's own included)."""
    with open("/proc/self/maps") as f:
        return sum(f"shm-vla.{instance}." in line for line in f)


def _streams(instance, *overrides):
    return Streams(config.load(instance, None, list(overrides)))


@pytest.mark.parametrize("writer, reader, attach, says", [
    ('camera.channel_order="RGB"', 'camera.channel_order="BGR"', lambda s: s.attach_view(2),
     ("channel_order 'RGB'", "says 'BGR'")),
    ('sensor.force_position="first"', 'sensor.force_position="last"', lambda s: s.attach_sensor(),
     ("force_position 'first'", "says 'last'")),
])
def test_a_ring_of_another_configuration_is_refused_typed_and_closed(instance, writer, reader, attach, says):
    mine = _streams(instance, writer)
    rings = [mine.create_view(2), mine.create_sensor()]
    mapped = _mappings(instance)
    with pytest.raises(segmod.IncompatibleStream) as refused:
        attach(_streams(instance, reader))
    assert all(words in str(refused.value) for words in says), refused.value
    assert refused.value.writer_pid == rings[0].seg.writer_pid           # a live writer: this process
    assert _mappings(instance) == mapped                                 # nothing left mapped
    attach(mine).close()                                                 # the same configuration attaches
    for ring in rings:
        ring.close()


def test_a_ring_that_is_not_a_results_ring_is_refused_typed_and_closed(instance):
    streams = _streams(instance)
    w = Ring.create(instance, "results", np.float32, (4,), 4)
    mapped = _mappings(instance)
    with pytest.raises(segmod.IncompatibleStream, match="no field actions"):
        streams.attach_results()
    assert _mappings(instance) == mapped
    w.close()                                                            # its writer is gone: stale
    with pytest.raises(segmod.IncompatibleStream) as refused:
        streams.attach_results()
    assert refused.value.writer_pid is None and _mappings(instance) == 0
    results = streams.create_results(8, 7)                               # replaces the stale one
    streams.attach_results().close()
    results.close()


def test_another_record_layout_is_refused_closed_and_names_a_live_writer(instance):
    w = Ring.create(instance, "x", np.float32, (4,), 4)
    mapped = _mappings(instance)
    with pytest.raises(segmod.LayoutMismatch, match="shape") as refused:
        Ring.attach(instance, "x", np.float32, (5,))
    assert not isinstance(refused.value, segmod.IncompatibleStream)
    assert refused.value.writer_pid == w.seg.writer_pid and _mappings(instance) == mapped
    w.close()


@pytest.fixture
def runtime(instance):
    rt = Runtime(config.load(instance, None, ['camera.channel_order="BGR"']), "reader")
    yield rt
    rt.close()


def test_a_live_writer_still_incompatible_at_the_bound_is_a_configuration_error(instance, runtime, caplog):
    rgb = _streams(instance, 'camera.channel_order="RGB"').create_view(0)
    streams = Streams(runtime.cfg)
    with pytest.raises(config.ConfigError) as error:
        attach_when_ready(runtime, lambda: streams.attach_view(0), "camera view 1", timeout_s=0.5, poll_s=0.05)
    assert "channel_order 'RGB'" in str(error.value) and f"pid {rgb.seg.writer_pid}" in str(error.value)
    waits = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) == 1 and waits[0].levelname == "WARNING"          # one line for ~10 retries
    rgb.close()                                          # a dead writer's segment: it may yet be replaced
    with pytest.raises(segmod.ShmError, match="gave up waiting") as gave_up:
        attach_when_ready(runtime, lambda: streams.attach_view(0), "camera view 1", timeout_s=0.3, poll_s=0.05)
    assert not isinstance(gave_up.value, config.ConfigError)
    assert _mappings(instance) == 1                      # only the stats segment: every refused ring closed


def test_a_writer_that_is_replaced_within_the_bound_is_attached(instance, runtime):
    rgb = _streams(instance, 'camera.channel_order="RGB"').create_view(0)
    streams = Streams(runtime.cfg)
    calls = []

    def attach():
        calls.append(1)
        if len(calls) == 3:                                     # meanwhile a restart replaces the writer
            rgb.close()
            calls.append(streams.create_view(0))
        return streams.attach_view(0)

    ring = attach_when_ready(runtime, attach, "camera view 1", timeout_s=30, poll_s=0.01)
    assert ring.layout["extras"]["channel_order"] == "BGR"
    ring.close()
    calls[-1].close()
