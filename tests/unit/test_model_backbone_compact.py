"""The compact VL backbone: interface, determinism, sizing, pooling and speed on this CPU."""
from __future__ import annotations

import time

import numpy as np
import pytest

from shm_vla.config import ModelConfig
from shm_vla.model import make_backbone
from shm_vla.model.backbones import PROMPT_TEMPLATE, format_prompt


def _views(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (5, 360, 640, 3), dtype=np.uint8)


@pytest.mark.parametrize("vl_dim", [64, 100, 2048])
def test_shape_and_determinism(vl_dim):
    a = make_backbone(ModelConfig(seed=3), vl_dim)
    b = make_backbone(ModelConfig(seed=3), vl_dim)
    fa, fb = a.encode(_views()), b.encode(_views())
    assert fa.shape == (vl_dim,) and fa.dtype == np.float32 and np.isfinite(fa).all()
    np.testing.assert_array_equal(fa, fb)
    c = make_backbone(ModelConfig(seed=4), vl_dim)
    assert not np.array_equal(fa, c.encode(_views()))


def test_depends_on_views_prompt_and_view_mean():
    bb = make_backbone(ModelConfig(), 64)
    v = _views(1)
    f = bb.encode(v)
    assert not np.array_equal(f, bb.encode(_views(2)))
    other_task = make_backbone(ModelConfig(task="another_target"), 64)
    assert not np.array_equal(f, other_task.encode(v))
    # the feature is the mean over views of per-view features
    per_view = np.stack([bb.encode(v[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(f, per_view.mean(0), atol=1e-5)
    out = np.empty(64, np.float32)
    assert bb.encode(v, out=out) is out and np.array_equal(out, f)


def test_bad_views():
    bb = make_backbone(ModelConfig(), 64)
    with pytest.raises(ValueError, match="uint8"):
        bb.encode(np.zeros((5, 360, 640, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        bb.encode(np.zeros((360, 640, 3), np.uint8))


def test_prompt_template():
    p = format_prompt("eye_trocar")
    assert "'eye_trocar' target" in p and p.startswith("You are an expert robot operator")
    assert p.endswith("4) Confidence: [HIGH/MEDIUM/LOW].") and "{task}" in PROMPT_TEMPLATE


def test_unknown_backbone():
    cfg = ModelConfig()
    cfg.backbone = "clip"
    with pytest.raises(ValueError, match="unknown backbone"):
        make_backbone(cfg, 64)


def test_five_view_encode_is_fast():
    """Issue 3: on the 2-core CPU a 5-view encode takes well under 100 ms. The bound is on the third best
    of nine runs so that other processes on a shared 2-core machine do not make it flaky; the
    measured figures (docs/MODEL.md) are far below it."""
    bb = make_backbone(ModelConfig(), 2048)
    bb.warmup()
    v = _views()
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        bb.encode(v)
        times.append((time.perf_counter() - t0) * 1e3)
    assert sorted(times)[2] < 100, times
