"""GPU checks of the model package (marker `gpu`: skipped without CUDA; run by bench/gpu_suite.sh).

* the fixtures reproduce on CUDA in float32 (TF32 off);
* the bf16 TickRunner with one CUDA graph equals the same runner without a graph (same kernels),
  stays within the bf16 band of the float32 CPU runner, and its timings are sane (per-stage
  times: tests/gpu/test_stage_timing_gpu.py);
* the compact backbone agrees between CPU and CUDA; the qwen fast path (tiny model) too.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shm_vla.config import ModelConfig
from shm_vla.model import TickRunner, load_checkpoint, load_heads, make_backbone
from shm_vla.model.make_checkpoint import make_checkpoint

pytestmark = pytest.mark.gpu
FIXTURES = ["seed_flow_small.pt", "seed_regression_small.pt", "seed_flow_forceaware_small.pt"]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name", FIXTURES)
def test_fixtures_on_cuda_float32(shared_fixtures, name):
    fx = torch.load(shared_fixtures / name, weights_only=True)
    heads = load_heads(fx["model_state_dict"], device="cuda")
    with torch.no_grad():
        for c in fx["cases"]:
            c = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
            if "x0" in c:
                a = heads.predict(c["vl_features"], c["sensor"], c["robot"], x0=c["x0"], num_steps=c["num_steps"],
                                  method=c["method"])
            else:
                a, _ = heads.predict(c["vl_features"], c["sensor"], c["robot"], z_chunk=c["z_chunk"])
            torch.testing.assert_close(a, c["actions"], atol=1e-4, rtol=0)


def _fill(r, seed=0):
    rng = np.random.default_rng(seed)
    r.vl_in[:] = rng.standard_normal(r.vl_in.shape)
    r.sensor_in[:] = rng.standard_normal(r.sensor_in.shape)
    r.robot_in[:] = rng.standard_normal(r.robot_in.shape)


@pytest.mark.parametrize("preset", ["tiny", "seed-size"])
@pytest.mark.parametrize("model_type", ["flow", "regression"])
def test_graph_runner(tmp_path, preset, model_type):
    lm = load_checkpoint(make_checkpoint(tmp_path / "c.pt", preset, model_type))
    graph = TickRunner(lm, device="cuda", dtype=torch.bfloat16, use_cuda_graph=True)
    eager = TickRunner(lm, device="cuda", dtype=torch.bfloat16, use_cuda_graph=False)
    cpu = TickRunner(lm)
    assert graph.graph is not None and graph.graph_copies in ("h2d+d2h", "h2d", "none")
    for seed in range(3):
        for r in (graph, eager, cpu):
            _fill(r, seed)
        a = graph.run(noise_seed=seed)
        b = eager.run(noise_seed=seed)
        c = cpu.run(noise_seed=seed)
        np.testing.assert_allclose(a.actions, b.actions, atol=1e-3, rtol=0)
        scale = max(1.0, float(np.abs(c.actions).max()))
        assert np.abs(a.actions - c.actions).max() < 0.1 * scale
        for res in (a, b):              # the graph too has the split (stage_timing "events")
            stages = (res.sensor_encoding_ms, res.robot_encoding_ms, res.action_prediction_ms)
            assert res.timing_split and min(stages) >= 0 and res.action_prediction_ms > 0
            assert sum(stages) <= res.total_ms
    # inputs written after capture reach the graph
    graph.robot_in[-1] += 1.0
    assert not np.array_equal(graph.run(noise_seed=0).actions.copy(), a.actions)


def test_float32_graph_matches_cpu(tmp_path):
    lm = load_checkpoint(make_checkpoint(tmp_path / "c.pt", "tiny", "flow"))
    g = TickRunner(lm, device="cuda", dtype=torch.float32)
    c = TickRunner(lm)
    for r in (g, c):
        _fill(r, 5)
    np.testing.assert_allclose(g.run(noise_seed=1).actions, c.run(noise_seed=1).actions, atol=1e-4, rtol=0)


def test_compact_backbone_cuda_matches_cpu():
    views = np.random.default_rng(0).integers(0, 256, (5, 360, 640, 3), dtype=np.uint8)
    a = make_backbone(ModelConfig(), 2048, device="cpu").encode(views)
    b = make_backbone(ModelConfig(), 2048, device="cuda").encode(views)
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)


def test_qwen_fast_path_cuda(tmp_path):
    pytest.importorskip("transformers")
    from shm_vla.model.backbones.qwen import QwenBackbone
    from shm_vla.model.backbones.qwen_tiny import make_tiny_qwen_dir
    from shm_vla.model.backbones import format_prompt
    d = make_tiny_qwen_dir(tmp_path / "q")
    views = np.random.default_rng(0).integers(0, 256, (5, 360, 640, 3), dtype=np.uint8)
    cpu = QwenBackbone(str(d), 64, prompt=format_prompt("t")).encode(views)
    for mode in ("batched", "preprocess-streams", "sequential", "streams"):
        gpu = QwenBackbone(str(d), 64, prompt=format_prompt("t"), device="cuda", dtype=torch.float32,
                           mode=mode).encode(views)
        np.testing.assert_allclose(gpu, cpu, atol=2e-2, rtol=0)
    # the grouped vision attention (the CUDA default) against transformers' per-window one, on CUDA
    for mode in ("batched", "streams"):
        grouped, windows = (QwenBackbone(str(d), 64, prompt=format_prompt("t"), device="cuda", dtype=torch.float32,
                                         mode=mode, vision_attention=va) for va in ("batched", "windows"))
        assert grouped._vision is not None and windows._vision is None
        np.testing.assert_allclose(grouped.encode(views), windows.encode(views), atol=1e-4, rtol=0)


def test_qwen_bf16_cuda_close_to_float32(tmp_path):
    """The deployed dtype: bf16 weights (rotary tables kept float32) stay near the float32 features."""
    pytest.importorskip("transformers")
    from shm_vla.model.backbones.qwen import QwenBackbone
    from shm_vla.model.backbones.qwen_tiny import make_tiny_qwen_dir
    from shm_vla.model.backbones import format_prompt
    d = make_tiny_qwen_dir(tmp_path / "q")
    views = np.random.default_rng(1).integers(0, 256, (5, 360, 640, 3), dtype=np.uint8)
    f32 = QwenBackbone(str(d), 64, prompt=format_prompt("t"), device="cuda", dtype=torch.float32).encode(views)
    bf16 = QwenBackbone(str(d), 64, prompt=format_prompt("t"), device="cuda").encode(views)
    scale = max(1.0, float(np.abs(f32).max()))
    assert np.abs(bf16 - f32).max() < 0.05 * scale
