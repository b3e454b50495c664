"""The grouped vision attention of the qwen fast path equals transformers' per-window attention."""
from __future__ import annotations

import pytest
import torch

try:
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as hf
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
except ImportError as exc:
    pytest.skip(f"transformers not available ({exc}); the qwen2.5-vl backbone is an optional extra",
                allow_module_level=True)

from shm_vla.model.backbones import qwen_vision  # noqa: E402


def _tower():
    torch.manual_seed(0)
    cfg = Qwen2_5_VLVisionConfig(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=48,
                                 fullatt_block_indexes=[1], window_size=112, patch_size=14, spatial_merge_size=2)
    cfg._attn_implementation = "sdpa"
    return hf.Qwen2_5_VisionTransformerPretrainedModel(cfg).eval()


def _run(tower, views, gh=24, gw=44):
    torch.manual_seed(1)
    grid = torch.tensor([[1, gh, gw]] * views)
    px = torch.randn(views * gh * gw, 3 * 2 * 14 * 14)
    with torch.inference_mode():
        return tower(px, grid_thw=grid).pooler_output


def _groups(shape):
    """{(windows, length) of each group} per layout seen"""
    return {tuple((g.windows, g.length) for g in lay.groups) for lay in shape._layouts.values()}


@pytest.mark.parametrize("views,gh,gw,windowed", [
    (5, 24, 44, [(75, 64), (15, 32)]),       # deployed: per view 15 windows of 64 patches, 3 of 32
    (1, 24, 44, [(15, 64), (3, 32)]),
    (2, 16, 20, [(8, 64), (4, 32)]),         # 8x10 merged units: 2x3 windows, the last column half
    (1, 16, 32, [(8, 64)])])                 # windows all equal: a reshape, no gather
def test_equals_per_window_attention(views, gh, gw, windowed):
    tower = _tower()
    ref = _run(tower, views, gh, gw)
    shape = qwen_vision.install(tower)
    shape.key = (views, gh, gw)
    torch.testing.assert_close(_run(tower, views, gh, gw), ref, atol=2e-6, rtol=0)
    assert _groups(shape) == {((views, gh * gw),), tuple(windowed)}      # the full-attention and windowed blocks


def test_without_a_key_the_original_runs():
    tower = _tower()
    ref = _run(tower, 2)
    shape = qwen_vision.install(tower)
    torch.testing.assert_close(_run(tower, 2), ref, atol=0, rtol=0)
    assert shape._layouts == {}


def test_layouts_are_kept_per_grid():
    tower = _tower()
    shape = qwen_vision.install(tower)
    for views, gh, gw in ((1, 24, 44), (1, 44, 24), (1, 24, 44)):     # same token count, other windows
        ref_tower = _tower()
        shape.key = (views, gh, gw)
        torch.testing.assert_close(_run(tower, views, gh, gw), _run(ref_tower, views, gh, gw), atol=2e-6, rtol=0)
    assert len(shape._layouts) == 4                                   # 2 grids x (windowed, full)


def test_flash_configuration_is_left_alone():
    tower = _tower()
    tower.config._attn_implementation = "flash_attention_2"      # (flash-attn itself is not installed here)
    assert qwen_vision.install(tower) is None
    assert all("forward" not in vars(m) for m in tower.modules())
    assert qwen_vision.install(torch.nn.Linear(2, 2)) is None


def test_a_second_install_shares_the_first():
    tower = _tower()
    first = qwen_vision.install(tower)
    forwards = [m.forward for m in tower.modules() if "forward" in vars(m)]
    assert qwen_vision.install(tower) is first
    assert [m.forward for m in tower.modules() if "forward" in vars(m)] == forwards
