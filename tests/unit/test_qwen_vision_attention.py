"""The batched vision attention of the qwen fast path equals transformers' per-window attention."""
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


@pytest.mark.parametrize("views,gh,gw", [(5, 24, 44), (1, 24, 44), (2, 16, 20)])
def test_equals_per_window_attention(views, gh, gw):
    tower = _tower()
    ref = _run(tower, views, gh, gw)
    count = qwen_vision.install(tower)
    assert count is not None
    count.views, count.patches = views, gh * gw
    fast = _run(tower, views, gh, gw)
    torch.testing.assert_close(fast, ref, atol=2e-6, rtol=0)
    assert count._mask.shape == (views, 1, gh * gw, gh * gw)     # the windowed blocks used one masked call


def test_unknown_view_count_falls_back_to_the_original():
    tower = _tower()
    ref = _run(tower, 2)
    count = qwen_vision.install(tower)
    count.views, count.patches = 0, 0     # not set by a backbone: the original forward runs
    torch.testing.assert_close(_run(tower, 2), ref, atol=0, rtol=0)
    assert count._mask is None
    count.views, count.patches = 3, 24 * 44   # declared for another sequence length: the original too
    torch.testing.assert_close(_run(tower, 2), ref, atol=0, rtol=0)
    assert count._mask is None
    torch.testing.assert_close(_run(tower, 2), ref, atol=0, rtol=0)


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
