"""A tiny randomly initialised Qwen2.5-VL directory, built locally (no download), for tests and
CPU benchmarks of the qwen2.5-vl backbone code. Needs ``transformers`` and ``tokenizers``.

The tokenizer is character level with Qwen's special tokens; the chat template reproduces the
Qwen2.5-VL layout (default system message, ``<|vision_start|><|image_pad|><|vision_end|>`` per
image, ``<|im_start|>role ... <|im_end|>`` turns).
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


def make_tiny_qwen_dir(path, *, hidden: int = 64, layers: int = 2, vision_hidden: int = 32, vision_depth: int = 2,
                       seed: int = 0) -> Path:
    import torch
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {(chr(b) if 33 <= b < 127 else f"<0x{b:02X}>"): b for b in range(256)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<0x00>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<0x00>", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE)
    tok.save_pretrained(path)
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIAL}
    heads = 4
    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=2, vocab_size=len(tok),
                         max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, tie_word_embeddings=True,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                           num_heads=2, out_hidden_size=hidden, fullatt_block_indexes=[vision_depth - 1],
                           window_size=112, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "merge_size": 2,
        "temporal_patch_size": 2, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "min_pixels": DEPLOYED_PIXELS, "max_pixels": DEPLOYED_PIXELS, "do_rescale": True, "do_normalize": True,
        "rescale_factor": 1 / 255, "resample": 3}, indent=2))
    return path
