"""The shadow's runner on CUDA (marker `gpu`: skipped without CUDA; run by bench/gpu_suite.sh).

act's and the shadow's runners of one regression checkpoint, as their processes make them
(make_runner, make_shadow_runner: bf16, one CUDA graph each), give the same actions from the
same inputs, and the shadow's stream has a lower priority than act's (a larger number).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shm_vla import config
from shm_vla.model import load_checkpoint
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.workers.act import make_runner
from shm_vla.workers.shadow import make_shadow_runner

pytestmark = pytest.mark.gpu


def test_the_shadow_runner_on_cuda_equals_acts_below_its_priority(tmp_path):
    ckpt = make_checkpoint(tmp_path / "r.pt", "tiny", "regression")
    cfg = config.load("t", None, ['model.act_device="cuda:0"', 'model.act_dtype="bfloat16"',
                                  f'shadow.checkpoint="{ckpt}"'])
    loaded = load_checkpoint(ckpt, cfg.model)
    act, shadow = make_runner(cfg, loaded), make_shadow_runner(cfg, loaded)
    rng = np.random.default_rng(0)
    for _ in range(3):
        for name in ("vl_in", "sensor_in", "robot_in"):
            values = rng.standard_normal(getattr(act, name).shape).astype(np.float32)
            getattr(act, name)[:] = values
            getattr(shadow, name)[:] = values
        np.testing.assert_array_equal(shadow.run().actions, act.run().actions)
    least, greatest = torch.cuda.Stream.priority_range()        # e.g. (0, -5): lower is higher
    # act asks for -1, the shadow for 0: the shadow is below act wherever the device has levels
    assert shadow._stream.priority > act._stream.priority if least != greatest else \
        shadow._stream.priority == act._stream.priority
