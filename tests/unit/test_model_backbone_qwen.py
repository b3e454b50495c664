"""qwen2.5-vl backbone: the fast path against the reference path (HF image processor + tokenizer +
a plain full-model forward, the seed receiver's semantics) on a tiny random Qwen2.5-VL built locally.

Skips cleanly when transformers is not installed (it is the optional extra `.[qwen]`).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import torch

try:
    import tokenizers  # noqa: F401
    import transformers  # noqa: F401
except ImportError as exc:        # absent (ModuleNotFoundError) or unusable
    pytest.skip(f"transformers/tokenizers not available ({exc}); the qwen2.5-vl backbone is an optional extra",
                allow_module_level=True)

from shm_vla.config import ModelConfig                                          # noqa: E402
from shm_vla.model import CheckpointError, make_backbone                        # noqa: E402
from shm_vla.model.backbones import format_prompt                               # noqa: E402
from shm_vla.model.backbones.qwen import QwenBackbone, smart_resize             # noqa: E402

PROMPT = format_prompt("eye_trocar")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from shm_vla.model.backbones.qwen_tiny import make_tiny_qwen_dir
    return make_tiny_qwen_dir(tmp_path_factory.mktemp("qwen"), seed=0)


def _image_processor(min_pixels, max_pixels):
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as IP
    except ImportError:                                  # older transformers: the numpy/PIL processor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as IP
    return IP(min_pixels=min_pixels, max_pixels=max_pixels)


def reference_features(qwen_dir, views, min_pixels, max_pixels):
    """The seed's path: one [image, prompt] user message per view through the chat template, the
    processor's image preprocessing (PIL bicubic) and token expansion, one batched forward of the
    full model with hidden states, mean over tokens of the last one, mean over views."""
    from PIL import Image
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    tok = AutoTokenizer.from_pretrained(qwen_dir, local_files_only=True)
    full = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_dir, local_files_only=True,
                                                              dtype=torch.float32).eval()
    images = [Image.fromarray(v) for v in views]
    px = _image_processor(min_pixels, max_pixels)(images, return_tensors="pt")
    msgs = [{"role": "user", "content": [{"type": "image", "image": images[0]}, {"type": "text", "text": PROMPT}]}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    n = int(px["image_grid_thw"][0].prod()) // 4
    enc = tok([text.replace("<|image_pad|>", "<|image_pad|>" * n)] * len(views), padding=True, return_tensors="pt")
    mm = (enc["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).int()
    with torch.no_grad():
        out = full(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=px["pixel_values"],
                   image_grid_thw=px["image_grid_thw"], mm_token_type_ids=mm, output_hidden_states=True,
                   return_dict=True)
    return out.hidden_states[-1].mean(1).mean(0).numpy(), px["pixel_values"], enc["input_ids"]


def _smooth_views(seed=0, h=360, w=640):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / 37.0 + k) * np.cos(yy / 23.0 + k) for k in range(3)], -1)
    return np.clip(base[None] + rng.normal(0, 10, (5, h, w, 3)), 0, 255).astype(np.uint8)


def test_smart_resize_deployed():
    assert smart_resize(360, 640) == (336, 616)      # 24 x 44 patches, 264 merged image tokens


def test_static_prompt_tokens(qwen_dir):
    bb = QwenBackbone(str(qwen_dir), 64, prompt=PROMPT)
    st = bb._static_for((360, 640))
    assert st["resize"] == (336, 616) and st["grid_hw"] == (24, 44) and st["image_tokens"] == 264
    _, _, ids = reference_features(qwen_dir, _smooth_views()[:1], 640 * 360, 640 * 360)
    assert torch.equal(st["ids"].cpu(), ids)


def test_fast_path_equals_reference_without_resize(qwen_dir):
    """Frames already at a processor size: everything but the resize is compared, to float32 rounding."""
    views = np.random.default_rng(1).integers(0, 256, (5, 336, 616, 3), dtype=np.uint8)
    ref, ref_px, _ = reference_features(qwen_dir, views, 336 * 616, 640 * 360)
    bb = QwenBackbone(str(qwen_dir), 64, prompt=PROMPT, min_pixels=336 * 616, image_size=(336, 616))
    torch.testing.assert_close(bb.preprocess(torch.from_numpy(views)), ref_px, atol=1e-6, rtol=0)
    np.testing.assert_allclose(bb.encode(views), ref, atol=1e-5, rtol=0)


def test_fast_path_close_to_reference_deployed_size(qwen_dir):
    """640x360 frames: torch's antialiased bicubic vs PIL's fixed-point bicubic differ by a couple of
    uint8 levels at most (a fraction of a level on average); the features follow."""
    views = _smooth_views(2)
    ref, ref_px, _ = reference_features(qwen_dir, views, 640 * 360, 640 * 360)
    bb = QwenBackbone(str(qwen_dir), 64, prompt=PROMPT)
    px = bb.preprocess(torch.from_numpy(views))
    assert px.shape == ref_px.shape == (5 * 24 * 44, 3 * 2 * 14 * 14)
    levels = (px - ref_px).abs() * 255 * 0.2758            # normalised units back to uint8 levels (max std)
    assert levels.max() <= 3.0 and levels.mean() <= 0.5, (levels.max(), levels.mean())
    feat = bb.encode(views)
    assert np.abs(feat - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("mode", ["sequential", "streams", "preprocess-streams"])
def test_modes_agree(qwen_dir, mode):
    views = _smooth_views(3)
    batched = QwenBackbone(str(qwen_dir), 64, prompt=PROMPT).encode(views)
    other = QwenBackbone(str(qwen_dir), 64, prompt=PROMPT, mode=mode).encode(views)
    np.testing.assert_allclose(other, batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["batched", "sequential"])
def test_grouped_vision_attention_equals_transformers_windows(qwen_dir, mode):
    views = _smooth_views(5)
    fast = QwenBackbone(str(qwen_dir), 64, prompt=PROMPT, mode=mode)
    hf = QwenBackbone(str(qwen_dir), 64, prompt=PROMPT, mode=mode, vision_attention="windows")
    assert fast._vision is not None and hf._vision is None
    np.testing.assert_allclose(fast.encode(views), hf.encode(views), atol=1e-6, rtol=0)
    assert len(fast._vision._layouts) == 2                # windowed and full blocks ran grouped
    assert fast._vision.key is None                       # and only during the backbone's own forward


def test_make_backbone_and_vl_override(qwen_dir):
    cfg = ModelConfig(backbone="qwen2.5-vl", backbone_dir=str(qwen_dir))
    views = _smooth_views(4)
    plain = make_backbone(cfg, 64)
    assert plain.name == "qwen2.5-vl"
    base = plain.encode(views)
    from transformers import Qwen2_5_VLForConditionalGeneration
    sd = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_dir, local_files_only=True).state_dict()
    current = {f"vl_model.{k}": v + 0.01 for k, v in sd.items() if "norm" in k}
    legacy = {}
    for k, v in current.items():      # the pre-4.52 transformers layout: visual.*, model.* (text)
        k2 = k.replace("vl_model.model.visual.", "vl_model.visual.").replace("vl_model.model.language_model.",
                                                                           "vl_model.model.")
        legacy[k2] = v
    a = make_backbone(cfg, 64, vl_state_dict=current).encode(views)
    b = make_backbone(cfg, 64, vl_state_dict=legacy).encode(views)
    assert not np.allclose(a, base)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="do not fit"):
        make_backbone(cfg, 64, vl_state_dict={"vl_model.model.visual.nonexistent.weight": torch.zeros(1)})
    some_key = next(iter(current))
    with pytest.raises(CheckpointError, match=r"shape \(3,\) does not fit"):
        make_backbone(cfg, 64, vl_state_dict={some_key: torch.zeros(3)})


def test_errors(qwen_dir, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="hidden size 64 differs .* VL dim 2048"):
        QwenBackbone(str(qwen_dir), 2048, prompt=PROMPT)
    with pytest.raises(RuntimeError, match="not a directory"):
        QwenBackbone(str(tmp_path / "absent"), 64, prompt=PROMPT)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(RuntimeError, match="optional 'transformers'"):
        QwenBackbone(str(qwen_dir), 64, prompt=PROMPT)


def test_bf16_keeps_rotary_tables_float32(qwen_dir):
    """As from_pretrained(dtype=bf16) does (the CUDA default): weights in bf16, the rope inv_freq
    buffers left in float32 (a plain Module.to(bf16) would round them and shift the rope angles)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_dir, local_files_only=True,
                                                             dtype=torch.bfloat16).model
    bb = QwenBackbone(str(qwen_dir), 64, prompt=PROMPT, dtype=torch.bfloat16)
    assert {p.dtype for p in bb.model.parameters()} == {torch.bfloat16}
    ref_buffers = dict(ref.named_buffers())
    buffers = dict(bb.model.named_buffers())
    assert any(name.endswith("inv_freq") for name in buffers)
    for name, buf in buffers.items():
        assert buf.dtype == ref_buffers[name].dtype, name
        torch.testing.assert_close(buf, ref_buffers[name], rtol=0, atol=0)
    assert np.isfinite(bb.encode(_smooth_views(5))).all()


def test_compile_leaves_a_shared_module_as_it_is(monkeypatch):
    """bench vl builds one backbone per mode over one in-memory model: compile_mode must wrap, not
    replace the module's forward (later modes and the reference path would run compiled code)."""
    from shm_vla.model.backbones.qwen_tiny import CHAT_TEMPLATE, PREPROCESSOR, random_qwen
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    full, tok = random_qwen("tiny", prompt=PROMPT, device="cpu")
    QwenBackbone.from_parts(full, tok, CHAT_TEMPLATE, 64, prompt=PROMPT, preprocessor=PREPROCESSOR,
                            compile_mode="reduce-overhead")
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}]
    assert "forward" not in vars(full.model)
    from shm_vla.model.backbones.qwen_tiny import random_qwen_backbone    # bench vl's batched-compiled modes
    random_qwen_backbone("tiny", prompt=PROMPT, device="cpu", model=(full, tok), compile_mode="default")
    assert calls[-1] == {"mode": "default", "dynamic": False}
