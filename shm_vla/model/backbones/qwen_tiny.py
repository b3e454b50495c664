"""Randomly initialised Qwen2.5-VL models built locally (no download), for tests and benchmarks of
the qwen2.5-vl backbone code. Needs ``transformers`` and ``tokenizers``.

* :func:`make_tiny_qwen_dir`: a tiny model saved as a directory (what ``model.backbone_dir`` holds).
* :func:`random_qwen_backbone`: a backbone over an in-memory random model, up to the 3B size
  (hidden 2048, 36 layers, 32-block vision tower), built directly on the device; for timing the
  VL fast path at deployed size on a GPU without the real weights.

Tokenizers: ``char`` (every byte a token) or ``word`` (words and punctuation runs, vocabulary
taken from the prompt: about as many tokens as Qwen's BPE gives the deployed prompt, ~160).
Both carry Qwen's special tokens; the chat template reproduces the Qwen2.5-VL layout (default
system message, ``<|vision_start|><|image_pad|><|vision_end|>`` per image, ``<|im_start|>role ...
<|im_end|>`` turns).
"""
from __future__ import annotations

import json
from pathlib import Path

from .qwen import CLIP_MEAN, CLIP_STD, DEPLOYED_PIXELS

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
    "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "min_pixels": DEPLOYED_PIXELS,
    "max_pixels": DEPLOYED_PIXELS, "do_rescale": True, "do_normalize": True, "rescale_factor": 1 / 255,
    "resample": 3}
SIZES = {
    # text: hidden, intermediate, layers, heads, kv heads; vision: hidden, intermediate, depth, heads, full-attn blocks
    "tiny": dict(hidden=64, inter=128, layers=2, heads=4, kv=2, v_hidden=32, v_inter=64, v_depth=2, v_heads=2,
                 full=[1], mrope=[2, 3, 3], vocab=0),
    "3b": dict(hidden=2048, inter=11008, layers=36, heads=16, kv=2, v_hidden=1280, v_inter=3420, v_depth=32,
               v_heads=16, full=[7, 15, 23, 31], mrope=[16, 24, 24], vocab=151936),
}


def build_tokenizer(kind: str = "char", text: str = ""):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    if kind == "char":
        vocab = {(chr(b) if 33 <= b < 127 else f"<0x{b:02X}>"): b for b in range(256)}
        unk = "<0x00>"
        tk = Tokenizer(models.WordLevel(vocab, unk_token=unk))
        tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    elif kind == "word":
        pre = pre_tokenizers.Whitespace()
        words = [w for w, _ in pre.pre_tokenize_str(text + " system You are a helpful assistant. user assistant")]
        unk = "<unk>"
        vocab = {unk: 0}
        for w in words:
            vocab.setdefault(w, len(vocab))
        tk = Tokenizer(models.WordLevel(vocab, unk_token=unk))
        tk.pre_tokenizer = pre
    else:
        raise ValueError(f"tokenizer kind {kind!r}: char or word")
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=unk, pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE)


def qwen_config(size: str, tok):
    from transformers import Qwen2_5_VLConfig
    z = SIZES[size]
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIAL}
    special = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(
        text_config=dict(hidden_size=z["hidden"], intermediate_size=z["inter"], num_hidden_layers=z["layers"],
                         num_attention_heads=z["heads"], num_key_value_heads=z["kv"],
                         vocab_size=max(len(tok), z["vocab"]),
                         max_position_embeddings=32768, rope_theta=1e6,
                         rope_scaling={"type": "mrope", "mrope_section": z["mrope"]}, tie_word_embeddings=True,
                         **special),
        vision_config=dict(depth=z["v_depth"], hidden_size=z["v_hidden"], intermediate_size=z["v_inter"],
                           num_heads=z["v_heads"], out_hidden_size=z["hidden"], fullatt_block_indexes=z["full"],
                           window_size=112, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, **special)


def make_tiny_qwen_dir(path, *, seed: int = 0, tokenizer: str = "char", prompt: str = "") -> Path:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(tokenizer, prompt)
    tok.save_pretrained(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(qwen_config("tiny", tok)).eval()
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    return path


def random_qwen(size: str = "3b", *, prompt: str, device: str = "cuda", dtype=None, tokenizer: str = "word",
                seed: int = 0):
    """-> (full Qwen2_5_VLForConditionalGeneration on ``device``, tokenizer): random weights, no files."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    tok = build_tokenizer(tokenizer, prompt)
    cfg = qwen_config(size, tok)
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()
    return model, tok


def random_qwen_backbone(size: str = "3b", *, prompt: str, device: str = "cuda", dtype=None, mode: str = "batched",
                         tokenizer: str = "word", seed: int = 0, model=None, **backbone_kwargs):
    """A QwenBackbone over a random model of ``size`` built on ``device`` (or over ``model=(full, tok)``);
    ``backbone_kwargs`` go to :class:`QwenBackbone` (``compile_mode``, ``vision_attention`` ...)."""
    from .qwen import QwenBackbone
    full, tok = model or random_qwen(size, prompt=prompt, device=device, dtype=dtype, tokenizer=tokenizer, seed=seed)
    return QwenBackbone.from_parts(full, tok, CHAT_TEMPLATE, SIZES[size]["hidden"], prompt=prompt, device=device,
                                   dtype=next(full.parameters()).dtype, mode=mode, preprocessor=PREPROCESSOR,
                                   **backbone_kwargs)
