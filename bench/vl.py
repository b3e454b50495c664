#!/usr/bin/env python3
"""VL encoding benchmark: one 5-view encode per iteration, per backbone mode.

  shm-vla bench vl [--backbone compact|qwen2.5-vl|tiny-qwen] [--backbone-dir DIR] [--vl-dim N]
                   [--modes batched,batched-windows,preprocess-streams,sequential,streams,reference]
                   [--device cpu|cuda] [--iters N] [--json]

* compact: the built-in backbone (the CPU default), one batched forward.
* qwen2.5-vl: the fast path in each requested mode (batched / preprocess-streams / sequential /
  streams; batched-windows: batched with transformers' per-window vision attention;
  batched-compiled[-graphs]) and, with
  ``reference`` in --modes, the seed's path: PIL preprocessing through the HF image processor,
  chat template + token expansion per call, full model forward with all hidden states.
  ``tiny-qwen`` builds a tiny random Qwen2.5-VL locally (exercises the code on a CPU; its
  timings say nothing about a 3B model). ``random-qwen-3b`` builds a random model of the
  Qwen2.5-VL-3B shape (36 layers, hidden 2048, 32 vision blocks, vocabulary 151936) directly on
  the device, with a word-level tokenizer that gives the deployed prompt about Qwen's token count:
  deployed-size timings without the real weights (GPU; about 8 GB in bf16).

``--load-seconds S``: no report, just encode continuously for S seconds (the background VL
load of ``bench/action_head.py --vl-load``).
Frames are fixed random-but-smooth uint8 (5, 360, 640, 3); timing is wall time per encode
including the device synchronisation (``encode`` returns host numpy).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shm_vla.config import ModelConfig                       # noqa: E402
from shm_vla.model import make_backbone                      # noqa: E402
from shm_vla.model.backbones import format_prompt            # noqa: E402
from shm_vla.model.backbones.qwen_tiny import CHAT_TEMPLATE   # noqa: E402


def frames(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:360, 0:640]
    base = np.stack([128 + 100 * np.sin(xx / 37.0 + k) * np.cos(yy / 23.0 + k) for k in range(3)], -1)
    return np.clip(base[None] + rng.normal(0, 10, (5, 360, 640, 3)), 0, 255).astype(np.uint8)


def _stats(ms):
    a = np.asarray(ms)
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "mean_ms": float(a.mean()), "min_ms": float(a.min())}


class ReferencePath:
    """The seed's per-call path on the same weights (HF image processor on PIL images)."""

    def __init__(self, backbone_dir: str, device: str, prompt: str, parts=None):
        from PIL import Image  # noqa: F401
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        try:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as IP
        except ImportError:
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as IP
        self.device = torch.device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if parts is not None:                      # an in-memory (full model, tokenizer)
            self.model, self.tok = parts
        else:
            self.tok = AutoTokenizer.from_pretrained(backbone_dir, local_files_only=True)
            self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                backbone_dir, local_files_only=True, dtype=dtype).to(self.device).eval()
        self.ip = IP(min_pixels=640 * 360, max_pixels=640 * 360)
        self.prompt = prompt

    @torch.inference_mode()
    def encode(self, views: np.ndarray) -> np.ndarray:
        from PIL import Image
        images = [Image.fromarray(v) for v in views]
        px = self.ip(images, return_tensors="pt")
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        kw = {} if getattr(self.tok, "chat_template", None) else {"chat_template": CHAT_TEMPLATE}
        text = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False, **kw)
        n = int(px["image_grid_thw"][0].prod()) // 4
        enc = self.tok([text.replace("<|image_pad|>", "<|image_pad|>" * n)] * len(views), padding=True,
                       return_tensors="pt")
        mm = (enc["input_ids"] == self.tok.convert_tokens_to_ids("<|image_pad|>")).int()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.model(input_ids=enc["input_ids"].to(self.device),
                             attention_mask=enc["attention_mask"].to(self.device),
                             pixel_values=px["pixel_values"].to(self.device),
                             image_grid_thw=px["image_grid_thw"].to(self.device),
                             mm_token_type_ids=mm.to(self.device), output_hidden_states=True, return_dict=True)
        return out.hidden_states[-1].float().mean(1).mean(0).cpu().numpy()


def run_mode(encoder, views, iters: int, warmup: int, max_seconds: float) -> dict:
    for _ in range(warmup):
        encoder.encode(views)
    ms = []
    deadline = time.monotonic() + max_seconds
    for _ in range(iters):
        t = time.perf_counter_ns()
        encoder.encode(views)
        ms.append((time.perf_counter_ns() - t) / 1e6)
        if time.monotonic() > deadline and len(ms) >= 3:
            break
    return _stats(ms)


# --modes names beyond the backbone's own modes, as QwenBackbone keyword arguments
VARIANTS = {"batched-windows": {"mode": "batched", "vision_attention": "windows"},   # transformers' attention
            "batched-compiled": {"mode": "batched", "compile_mode": "default"},
            "batched-compiled-graphs": {"mode": "batched", "compile_mode": "reduce-overhead"}}


def build_mode(mode, args, cfg, vl_dim, views, random_parts):
    """The encoder for one mode after its first call (compilation, lazy init), and that set-up's seconds."""
    prompt = format_prompt(cfg.task)
    kw = VARIANTS.get(mode, {"mode": mode})
    t0 = time.perf_counter()
    if mode == "reference":
        enc = ReferencePath(args.backbone_dir, args.device, prompt, parts=random_parts)
    elif random_parts is not None:
        from shm_vla.model.backbones.qwen_tiny import random_qwen_backbone
        enc = random_qwen_backbone("3b", prompt=prompt, device=args.device, model=random_parts, **kw)
    elif args.backbone == "compact":
        enc = make_backbone(cfg, vl_dim, device=args.device)
    else:
        enc = make_backbone(cfg, vl_dim, device=args.device, **kw)
    enc.encode(views)
    return enc, time.perf_counter() - t0


def _info(mode, args, vl_dim, setup_s) -> dict:
    return {"backbone": args.backbone, "mode": mode, "vl_dim": vl_dim, "device": args.device,
            "setup_and_first_call_s": setup_s}


def _error(mode, args, exc) -> dict:
    return {"backbone": args.backbone, "mode": mode, "device": args.device,
            "error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def measure_modes(modes, args, cfg, vl_dim, views, random_parts) -> list[dict]:
    """Each mode built and timed in turn; a failing mode gives an error row, not a lost report."""
    results = []
    for mode in modes:
        try:
            enc, setup_s = build_mode(mode, args, cfg, vl_dim, views, random_parts)
            results.append({**_info(mode, args, vl_dim, setup_s),
                            **run_mode(enc, views, args.iters, args.warmup, args.max_seconds)})
        except Exception as exc:  # noqa: BLE001
            results.append(_error(mode, args, exc))
    return results


def measure_interleaved(modes, args, cfg, vl_dim, views, random_parts) -> list[dict]:
    """All modes built first, then timed call by call in rotating order, so that machine noise
    hits every mode alike (on a shared CPU the modes' differences are smaller than the drift)."""
    built, rows = {}, {}
    for mode in modes:
        try:
            built[mode] = build_mode(mode, args, cfg, vl_dim, views, random_parts)
        except Exception as exc:  # noqa: BLE001
            rows[mode] = _error(mode, args, exc)
    names = list(built)
    for _ in range(args.warmup):
        for mode in names:
            built[mode][0].encode(views)
    ms = {mode: [] for mode in names}
    deadline = time.monotonic() + args.max_seconds * max(1, len(names))
    for i in range(args.iters):
        k = i % max(1, len(names))
        for mode in names[k:] + names[:k]:
            t = time.perf_counter_ns()
            built[mode][0].encode(views)
            ms[mode].append((time.perf_counter_ns() - t) / 1e6)
        if time.monotonic() > deadline and i >= 2:
            break
    for mode in names:
        rows[mode] = {**_info(mode, args, vl_dim, built[mode][1]), "interleaved": True, **_stats(ms[mode])}
    return [rows[mode] for mode in modes]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", choices=("compact", "qwen2.5-vl", "tiny-qwen", "random-qwen-3b"), default="compact")
    ap.add_argument("--backbone-dir", default="")
    ap.add_argument("--vl-dim", type=int, default=0, help="default: 2048 (compact), the model's hidden size (qwen)")
    ap.add_argument("--modes", default="batched,sequential,streams",
                    help="qwen: batched, preprocess-streams, sequential, streams, reference, " + ", ".join(VARIANTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="per mode, bound on the measuring loop")
    ap.add_argument("--load-seconds", type=float, default=0.0)
    ap.add_argument("--interleave", action="store_true",
                    help="build every mode first, then time them call by call in turn (fair on a noisy machine; "
                         "a qwen2.5-vl directory is loaded once per mode)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.iters, args.warmup = min(args.iters, 5), 1
    views = frames()
    tmp = None
    cfg = ModelConfig(backbone="compact", vl_device=args.device)
    if args.backbone == "tiny-qwen":
        from shm_vla.model.backbones.qwen_tiny import make_tiny_qwen_dir
        tmp = tempfile.TemporaryDirectory()
        args.backbone_dir = str(make_tiny_qwen_dir(tmp.name))
    random_parts = None
    if args.backbone == "random-qwen-3b":
        from shm_vla.model.backbones.qwen_tiny import random_qwen
        random_parts = random_qwen("3b", prompt=format_prompt(cfg.task), device=args.device)
        args.vl_dim = 2048
    elif args.backbone != "compact":
        cfg.backbone, cfg.backbone_dir = "qwen2.5-vl", args.backbone_dir
        if not args.vl_dim:
            cfg_json = json.loads((Path(args.backbone_dir) / "config.json").read_text())
            args.vl_dim = cfg_json.get("text_config", cfg_json).get("hidden_size") or cfg_json["hidden_size"]
    vl_dim = args.vl_dim or 2048
    modes = ["batched"] if args.backbone == "compact" else [m for m in args.modes.split(",") if m]
    if args.load_seconds:
        if random_parts is not None:
            from shm_vla.model.backbones.qwen_tiny import random_qwen_backbone
            bb = random_qwen_backbone("3b", prompt=format_prompt(cfg.task), device=args.device, model=random_parts)
        else:
            bb = make_backbone(cfg, vl_dim, device=args.device)
        bb.encode(views)
        print("vl-load ready", flush=True)
        end = time.monotonic() + args.load_seconds
        while time.monotonic() < end:
            bb.encode(views)
        return 0
    measure = measure_interleaved if args.interleave else measure_modes
    results = measure(modes, args, cfg, vl_dim, views, random_parts)
    report = {"benchmark": "vl", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "shm-vla bench vl " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": {"cpu_count": __import__("os").cpu_count(), "torch": torch.__version__,
                          "torch_threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "views": list(views.shape), "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report["command"])
        for r in results:
            if "error" in r:
                print(f"{r['backbone']:<11} {r['mode']:<10} {r['device']:<6} error: {r['error']}")
                continue
            print(f"{r['backbone']:<11} {r['mode']:<10} {r['device']:<6} vl_dim {r['vl_dim']:<5} p50 {r['p50_ms']:8.2f} "
                  f"p99 {r['p99_ms']:8.2f} max {r['max_ms']:8.2f} ms (n {r['n']})")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
