"""`qwen2.5-vl`: Qwen2.5-VL through ``transformers`` (optional), offline, with a fast path.

Deployed semantics (the seed receiver): each of the 5 views is one user message
``[image, prompt]`` through the chat template (no generation prompt), preprocessed by the
Qwen2-VL image processor with ``min_pixels = max_pixels = 640*360`` (640x360 -> 616x336,
24x44 patches of 14, 2x2 merge -> 264 image tokens), the five sequences are one batch through
the model, and the feature is the mean over all tokens of the last hidden state per view, then
the mean over views.

Fast path (this module):

* the prompt's token ids, the multimodal token types and the 3-D rope position ids depend
  only on the prompt and the image size: computed once at start-up;
* preprocessing on the model's device straight from the uint8 frames (no JPEG round trip, no
  PIL): bicubic antialiased resize (PIL's filter), rounding to uint8 levels as PIL does,
  rescale, normalise, patchify into the processor's exact layout;
* only the base model runs (no LM head, no hidden-state tuple);
* ``vision_attention``: ``"batched"`` (default) runs one attention call per window length in
  each vision block (2 at the deployed size) instead of transformers' one call per window
  (2,540 calls and 32 host synchronisations per 5-view forward; :mod:`.qwen_vision`);
  ``"windows"`` keeps transformers' own;
* optional ``compile_mode``: ``torch.compile`` of the fixed-shape forward (``"default"``, or
  ``"reduce-overhead"`` for CUDA graphs through compile); measured by bench/vl.py, off by default;
* view scheduling ``mode``: ``batched`` (one forward of 5 sequences, default),
  ``preprocess-streams`` (each view uploaded and preprocessed on its own CUDA stream, then one
  batched forward; equals ``batched`` on a CPU), ``sequential`` (one view at a time) or
  ``streams`` (each view on its own CUDA stream for upload, preprocessing and encoding; equals
  ``sequential`` on a CPU).

Loading is offline only: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``. ``vl_model.*``
tensors from the checkpoint override the directory's weights.
"""
from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from . import Backbone, qwen_vision

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEPLOYED_PIXELS = 640 * 360
MODES = ("batched", "preprocess-streams", "sequential", "streams")
VISION_ATTENTION = ("batched", "windows")


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = DEPLOYED_PIXELS,
                 max_pixels: int = DEPLOYED_PIXELS) -> tuple[int, int]:
    """The Qwen2-VL target size: multiples of ``factor``, pixel count within [min, max], aspect kept."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _import_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers  # noqa: F401
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    except ImportError as exc:
        raise RuntimeError("the qwen2.5-vl backbone needs the optional 'transformers' package "
                           "(pip install -e '.[qwen]'); or set model.backbone = \"compact\"") from exc
    return AutoTokenizer, Qwen2_5_VLForConditionalGeneration


def _chat_template(tokenizer, directory: Path) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    for name in ("chat_template.jinja", "chat_template.json"):
        p = directory / name
        if p.is_file():
            text = p.read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    raise RuntimeError(f"no chat template in {directory} (tokenizer_config.json, chat_template.json/.jinja)")


def _vl_key_candidates(key: str) -> list[str]:
    """A checkpoint's ``vl_model.*`` key in both transformers layouts: >= 4.52 (``model.visual.*``,
    ``model.language_model.*``, ``lm_head``) and older (``visual.*``, ``model.*``, ``lm_head``)."""
    k = key[len("vl_model."):] if key.startswith("vl_model.") else key
    out = [k]
    if k.startswith("visual."):
        out.append("model." + k)
    elif k.startswith("model.visual."):
        out.append(k[len("model."):])
    elif k.startswith("model.language_model."):
        out.append("model." + k[len("model.language_model."):])
    elif k.startswith("model."):
        out.append("model.language_model." + k[len("model."):])
    return out


def _to_keeping_fp32_buffers(module: torch.nn.Module, device, dtype) -> torch.nn.Module:
    """``module.to(device, dtype)``, except that float32 buffers stay float32 (moved only).

    Those are the rotary ``inv_freq`` tables, which ``from_pretrained(dtype=torch.bfloat16)`` keeps
    in float32; ``Module.to(bfloat16)`` would round them to bf16 and shift the rope angles by up to
    about ``position * 2**-9`` rad (~0.2 rad at the deployed sequence length)."""
    keep = {name: buf for name, buf in module.named_buffers() if buf.dtype == torch.float32}
    module.to(device, dtype)
    for name, buf in keep.items():
        owner, _, attr = name.rpartition(".")
        module.get_submodule(owner)._buffers[attr] = buf.to(device)
    return module


class QwenBackbone(Backbone):
    name = "qwen2.5-vl"

    def __init__(self, backbone_dir: str, vl_dim: int, *, prompt: str, device: str = "cpu",
                 dtype: torch.dtype | None = None, vl_state_dict: dict | None = None, mode: str = "batched",
                 min_pixels: int = DEPLOYED_PIXELS, max_pixels: int = DEPLOYED_PIXELS,
                 image_size: tuple[int, int] = (360, 640), num_views: int = 5, compile_mode: str | None = None,
                 vision_attention: str = "batched", _parts: tuple | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown VL mode {mode!r} (choose {', '.join(MODES)})")
        if vision_attention not in VISION_ATTENTION:
            raise ValueError(f"unknown vision attention {vision_attention!r} (choose {', '.join(VISION_ATTENTION)})")
        self.device = torch.device(device)
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        if _parts is not None:                       # see from_parts
            full, self.tokenizer, self.chat_template, pre = _parts
        else:
            directory = Path(backbone_dir) if backbone_dir else None
            if directory is None or not directory.is_dir():
                raise RuntimeError(f"model.backbone_dir {backbone_dir!r} is not a directory holding a Qwen2.5-VL "
                                   "model (nothing is downloaded at run time)")
            AutoTokenizer, VLModel = _import_transformers()
            self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            self.chat_template = _chat_template(self.tokenizer, directory)
            try:
                full = VLModel.from_pretrained(directory, local_files_only=True, dtype=self.dtype)
            except TypeError:                        # transformers < 4.56 spells it torch_dtype
                full = VLModel.from_pretrained(directory, local_files_only=True, torch_dtype=self.dtype)
            pre = {}
            if (directory / "preprocessor_config.json").is_file():
                pre = json.loads((directory / "preprocessor_config.json").read_text())
        self.mode = mode
        self.prompt = prompt
        if vl_state_dict:
            self._override(full, vl_state_dict)
        self.config = full.config
        hidden = self.config.text_config.hidden_size if hasattr(self.config, "text_config") else self.config.hidden_size
        if hidden != vl_dim:
            raise CheckpointError(f"backbone {backbone_dir or '<in memory>'}: hidden size {hidden} differs from the "
                                  f"checkpoint's VL dim {vl_dim} (action_expert.fusion_proj.weight)")
        self.vl_dim = int(vl_dim)
        if hasattr(full.model, "visual") or not hasattr(full, "visual"):
            base, self._hidden_from = full.model, "last_hidden_state"          # transformers >= 4.52: no LM head
        else:       # older layout (visual beside a text-only .model): the whole model, LM head made a no-op
            full.lm_head = torch.nn.Identity()
            base, self._hidden_from = full, "logits"
        self.model = _to_keeping_fp32_buffers(base, self.device, self.dtype).eval().requires_grad_(False)
        self._forward_params = set(inspect.signature(self.model.forward).parameters)
        del full
        # None: transformers' per-window attention (asked for, flash attention, or an unknown layout)
        self._vision = qwen_vision.install(self.model) if vision_attention == "batched" else None
        self._run = self.model
        if compile_mode:    # fixed shapes: torch.compile of the forward ("default", "reduce-overhead" = CUDA graphs);
            # a wrapper, the module is left as it is (from_parts may share it with other backbones)
            self._run = torch.compile(self.model, mode=compile_mode, dynamic=False)
        vc = self.config.vision_config
        self.patch = int(pre.get("patch_size", getattr(vc, "patch_size", 14)))
        self.merge = int(pre.get("merge_size", getattr(vc, "spatial_merge_size", 2)))
        self.temporal = int(pre.get("temporal_patch_size", getattr(vc, "temporal_patch_size", 2)))
        mean = pre.get("image_mean", CLIP_MEAN)
        std = pre.get("image_std", CLIP_STD)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.image_size = tuple(image_size)
        self.num_views = num_views
        self._static = {}
        self._static_for(self.image_size)
        self._streams = ([torch.cuda.Stream(device=self.device) for _ in range(num_views)]
                         if self.device.type == "cuda" and mode.endswith("streams") else None)

    @classmethod
    def from_parts(cls, model, tokenizer, chat_template: str, vl_dim: int, *, prompt: str,
                   preprocessor: dict | None = None, **kwargs) -> "QwenBackbone":
        """A backbone over an in-memory ``Qwen2_5_VLForConditionalGeneration`` (benchmarks of
        random full-size models on a GPU; nothing read from disk)."""
        return cls("", vl_dim, prompt=prompt, _parts=(model, tokenizer, chat_template, preprocessor or {}),
                   **kwargs)

    # ------------------------------------------------------------------ start-up work
    def _override(self, full, vl_state_dict: dict) -> None:
        own = full.state_dict()
        sd, unexpected = {}, []
        for key, value in vl_state_dict.items():
            name = next((c for c in _vl_key_candidates(key) if c in own), None)
            if name is None:
                if not key.endswith("lm_head.weight"):       # tied to the embeddings in the 3B model
                    unexpected.append(key)
                continue
            if tuple(own[name].shape) != tuple(value.shape):
                raise CheckpointError(f"checkpoint key {key}: shape {tuple(value.shape)} does not fit the backbone's "
                                      f"{name} {tuple(own[name].shape)}")
            sd[name] = value
        if unexpected:
            raise CheckpointError(f"checkpoint vl_model.* tensors do not fit the backbone: unexpected "
                                  f"{', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
        full.load_state_dict(sd, strict=False)
        self.overridden = len(sd)
        self.not_overridden = len(own) - len(sd)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.patch * self.merge, self.min_pixels, self.max_pixels)

    def prompt_text(self) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=False)

    def _static_for(self, hw: tuple[int, int]) -> dict:
        """Token ids, token types, grid and rope positions of one view of size hw (cached)."""
        if hw in self._static:
            return self._static[hw]
        rh, rw = self.target_size(*hw)
        gh, gw = rh // self.patch, rw // self.patch
        n_img = gh * gw // (self.merge ** 2)
        image_token = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        text = self.prompt_text().replace("<|image_pad|>", "<|image_pad|>" * n_img, 1)
        ids = torch.tensor([self.tokenizer(text)["input_ids"]], dtype=torch.long, device=self.device)
        if int((ids == image_token).sum()) != n_img:
            raise RuntimeError(f"prompt tokenisation gave {int((ids == image_token).sum())} image tokens, "
                               f"expected {n_img}")
        mm = (ids == image_token).to(torch.int32)
        grid = torch.tensor([[1, gh, gw]], dtype=torch.long, device=self.device)
        mask = torch.ones_like(ids)
        pos = self._rope_positions(ids, mm, grid, mask)
        st = {"resize": (rh, rw), "grid_hw": (gh, gw), "ids": ids, "mm": mm, "grid": grid, "mask": mask,
              "pos": pos, "tokens": ids.shape[1], "image_tokens": n_img}
        self._static[hw] = st
        return st

    def _rope_positions(self, ids, mm, grid, mask):
        fn = getattr(self.model, "get_rope_index", None) or getattr(getattr(self.model, "model", None),
                                                                     "get_rope_index", None)
        if fn is None:
            return None
        params = inspect.signature(fn).parameters
        kwargs = {"image_grid_thw": grid, "attention_mask": mask}
        if "mm_token_type_ids" in params:
            kwargs["mm_token_type_ids"] = mm
        try:
            pos, _ = fn(ids, **kwargs)
        except Exception:  # noqa: BLE001 - let the model compute them at each call instead
            return None
        return pos

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) on any device -> pixel_values (N*gh*gw, 3*T*p*p) float32, processor layout."""
        n, h, w, _ = views.shape
        st = self._static_for((h, w))
        rh, rw = st["resize"]
        x = views.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        if (rh, rw) != (h, w):
            x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True)
            x = x.round_().clamp_(0, 255)                  # PIL resizes uint8 images to uint8 levels
        x = (x / 255.0 - self._mean) / self._std
        p, m, t = self.patch, self.merge, self.temporal
        gh, gw = st["grid_hw"]
        x = x.view(n, 3, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)   # N,bh,bw,mh,mw,C,p,p
        x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)                                # N,...,C,T,p,p
        return x.reshape(n * gh * gw, 3 * t * p * p)

    # ------------------------------------------------------------------ encoding
    def _forward(self, pixels: torch.Tensor, n: int, st: dict) -> torch.Tensor:
        """-> per-view features (n, D) float32."""
        kwargs = dict(input_ids=st["ids"].expand(n, -1), attention_mask=st["mask"].expand(n, -1),
                      pixel_values=pixels.to(self.dtype), image_grid_thw=st["grid"].expand(n, -1), use_cache=False)
        if st["pos"] is not None:
            kwargs["position_ids"] = st["pos"].expand(-1, n, -1)
        if "mm_token_type_ids" in self._forward_params:
            kwargs["mm_token_type_ids"] = st["mm"].expand(n, -1)
        if self._vision is not None:        # only for this call: the model may be shared (benchmarks)
            self._vision.key = (n, *st["grid_hw"])
        try:
            out = self._run(**kwargs)
        finally:
            if self._vision is not None:
                self._vision.key = None
        return getattr(out, self._hidden_from).float().mean(dim=1)

    def features_per_view(self, views: np.ndarray) -> torch.Tensor:
        views = self.check_views(views)
        st = self._static_for(views.shape[1:3])
        host = views
        if self.device.type == "cuda" and host.device.type == "cpu":
            host = host.pin_memory()
        with torch.inference_mode():
            if self.mode == "batched" or (self.mode == "preprocess-streams" and self._streams is None):
                return self._forward(self.preprocess(host), len(views), st)
            if self._streams is None:
                return torch.cat([self._forward(self.preprocess(host[i:i + 1]), 1, st) for i in range(len(views))])
            if self.mode == "preprocess-streams":
                pixels = torch.cat(self._per_view_on_streams(host, self.preprocess))
                return self._forward(pixels, len(views), st)
            return torch.cat(self._per_view_on_streams(host, lambda v: self._forward(self.preprocess(v), 1, st)))

    def _per_view_on_streams(self, host: torch.Tensor, work) -> list:
        """``work(view)`` for each view on its own stream; the current stream then waits for all.
        The results were allocated on the side streams: their memory is only reused after the
        next call's ``wait_stream`` orders that stream behind this one's consumers."""
        main = torch.cuda.current_stream(self.device)
        outs = []
        for i in range(len(host)):
            s = self._streams[i % len(self._streams)]
            s.wait_stream(main)
            with torch.cuda.stream(s):
                outs.append(work(host[i:i + 1]))
        for s in self._streams:
            main.wait_stream(s)
        return outs

    def encode(self, views: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        feat = self.features_per_view(views).mean(dim=0).cpu().numpy()
        if out is None:
            return feat
        out[...] = feat
        return out

    def warmup(self, iterations: int = 2) -> None:
        views = np.zeros((self.num_views, *self.image_size, 3), np.uint8)
        for _ in range(iterations):
            self.encode(views)
