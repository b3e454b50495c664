"""The direct frame path on CUDA (marker `gpu`: skipped without CUDA; run by bench/gpu_suite.sh).

Read-only view rings registered as page-locked memory, each frame copied from its slot on its
own stream: the device holds exactly the ring's frames, the feature equals the staged path's,
a slot lapped during the encode is found, and closing unregisters (the same mapping can be
registered again).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from shm_vla import config
from shm_vla.model import make_backbone
from shm_vla.shm.ring import Ring
from shm_vla.workers.frame_upload import DirectFrames, StagedFrames, make_frame_source

pytestmark = pytest.mark.gpu
SHAPE = (360, 640, 3)


@pytest.fixture
def rings(instance):
    writers = [Ring.create(instance, f"v{i}", np.uint8, SHAPE, 4) for i in range(5)]
    readers = [Ring.attach(instance, f"v{i}") for i in range(5)]
    rng = np.random.default_rng(0)
    for ring in writers:
        ring.write(rng.integers(0, 256, SHAPE, dtype=np.uint8))
    yield writers, readers
    for ring in readers + writers:
        ring.close()


def _read_all(source, readers, meta):
    for i, ring in enumerate(readers):
        assert source.read(i, ring, ring.head - 1, meta)


def test_direct_frames_on_cuda_are_the_rings_frames_and_give_the_staged_feature(rings):
    writers, readers = rings
    meta = readers[0].new_meta(5)
    direct = make_frame_source("direct", readers, "cuda:0", log=logging.getLogger("test"))
    assert isinstance(direct, DirectFrames)                      # registered, not fallen back
    _read_all(direct, readers, meta)
    frames = direct.frames_for_encode()
    assert frames.is_cuda
    expect = np.stack([ring.payload[(ring.head - 1) % ring.depth] for ring in readers])
    np.testing.assert_array_equal(frames.cpu().numpy(), expect)
    assert direct.intact()
    backbone = make_backbone(config.ModelConfig(backbone="compact", vl_device="cuda:0"), 64, device="cuda:0")
    staged = StagedFrames(5, SHAPE, pin=True)
    _read_all(staged, readers, meta)
    np.testing.assert_array_equal(backbone.encode(direct.frames_for_encode()),
                                  backbone.encode(staged.frames_for_encode()))
    direct.close()
    again = DirectFrames(readers, "cuda:0")                      # unregistered: registers again
    again.close()


def test_a_slot_lapped_after_the_upload_is_found_on_cuda(rings):
    writers, readers = rings
    meta = readers[0].new_meta(5)
    direct = DirectFrames(readers, "cuda:0")
    _read_all(direct, readers, meta)
    direct.frames_for_encode()
    torch.cuda.synchronize()
    for _ in range(writers[2].depth):
        writers[2].write(np.zeros(SHAPE, np.uint8))
    assert not direct.intact()
    direct.close()
