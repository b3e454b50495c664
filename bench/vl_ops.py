#!/usr/bin/env python3
"""Work per 5-view encode of the qwen2.5-vl fast path, counted on a CPU: a proxy for GPU launches.

  shm-vla bench vl-ops [--shape 3b|tiny] [--attention batched,windows] [--json]

Builds a random Qwen2.5-VL with the chosen shape's depth and window layout (``3b``: 36 text
layers, 32 vision blocks with full attention in 7/15/23/31, as Qwen2.5-VL-3B) but tiny widths, so
that it runs here, and counts during one encode (after a warm-up encode):

* the aten operations dispatched, views excluded: on a GPU each is at least one kernel launch;
* the attention calls among them;
* ``Tensor.tolist()`` calls: on a GPU each reads device memory, a host synchronisation.

Widths change none of these counts; the GPU timings themselves come from ``bench/gpu_suite.sh``.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from shm_vla.model.backbones import format_prompt, qwen_tiny   # noqa: E402
from shm_vla.model.backbones.qwen import QwenBackbone          # noqa: E402

VIEW_OPS = {"view", "_unsafe_view", "reshape", "expand", "transpose", "t", "split", "split_with_sizes", "select",
            "slice", "unsqueeze", "squeeze", "as_strided", "detach", "alias", "permute", "unbind", "chunk", "narrow",
            "_reshape_alias", "unflatten", "flatten"}
SHAPES = {"tiny": qwen_tiny.SIZES["tiny"],
          "3b": dict(qwen_tiny.SIZES["tiny"], layers=36, v_depth=32, full=[7, 15, 23, 31])}


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEW_OPS:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count_encode(backbone: QwenBackbone, views: np.ndarray) -> dict:
    backbone.encode(views)                            # warm-up: layouts, lazy initialisation
    reads = [0]
    tolist = torch.Tensor.tolist

    def counting_tolist(self):
        reads[0] += 1
        return tolist(self)
    torch.Tensor.tolist = counting_tolist
    try:
        with _OpCounter() as counter:
            backbone.encode(views)
    finally:
        torch.Tensor.tolist = tolist
    return {"aten_ops": sum(counter.ops.values()), "attention_calls": counter.ops["scaled_dot_product_attention"],
            "tolist_reads": reads[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    ap.add_argument("--attention", default="batched,windows", help="vision_attention values to count")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    qwen_tiny.SIZES.setdefault(f"{args.shape}-shape", SHAPES[args.shape])
    prompt = format_prompt("eye_trocar")
    model, tok = qwen_tiny.random_qwen(f"{args.shape}-shape", prompt=prompt, device="cpu", tokenizer="word")
    views = np.random.default_rng(0).integers(0, 256, (5, 360, 640, 3), dtype=np.uint8)
    results = []
    for attention in [a for a in args.attention.split(",") if a]:
        bb = QwenBackbone.from_parts(model, tok, qwen_tiny.CHAT_TEMPLATE, SHAPES[args.shape]["hidden"], prompt=prompt,
                                     device="cpu", dtype=torch.float32, preprocessor=qwen_tiny.PREPROCESSOR,
                                     vision_attention=attention)
        results.append({"vision_attention": attention, **count_encode(bb, views)})
    report = {"benchmark": "vl_ops", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "shm-vla bench vl-ops " + " ".join(sys.argv[1:] if argv is None else argv),
              "shape": args.shape, "text_layers": SHAPES[args.shape]["layers"],
              "vision_blocks": SHAPES[args.shape]["v_depth"], "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report["command"])
        for r in results:
            print(f"vision_attention {r['vision_attention']:<8} aten ops {r['aten_ops']:6d}  attention calls "
                  f"{r['attention_calls']:5d}  tolist reads {r['tolist_reads']:4d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
