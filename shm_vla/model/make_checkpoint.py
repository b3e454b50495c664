"""`shm-vla make-checkpoint`: a random-init checkpoint in the deployed training-checkpoint format.

The file is a dict ``{"model_state_dict", "epoch", "val_loss", ...}`` whose state dict holds the
head keys exactly as the training code saves them: bfloat16 weights, BatchNorm tensors in
float32, ``num_batches_tracked`` int64. No ``vl_model.*`` tensors (the compact backbone has its
own seeded weights). Presets:

* ``tiny``: VL 64, sensor hidden 8, features 64 (force-aware 64+128), robot width 32,
  expert hidden 64; a CPU tick takes a few milliseconds. For demos and tests.
* ``seed-size``: the deployed sizes: VL 2048, sensor hidden 512, features 2048 (force-aware
  2944+128 = 3072 as the training scripts build it), robot width 256, hidden 1024, 4 layers,
  horizon 8, action 7 (about 120-150 M head parameters, 240-300 MB).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from .heads import ROBOT_INPUT_DIM, Heads, HeadSizes
from .layers import BatchNorm1d

PRESETS = {
    #            V     Hs   So(default)  Sd(force-aware)  R    D     Tr
    "tiny":      (64,   8,   64,          64,              32,  64,   100),
    "seed-size": (2048, 512, 2048,        2944,            256, 1024, 100),
}
SENSOR_CHANNELS = 1026
ACTION_DIM = 7
HORIZON = 8
FORCE_MLP, FORCE_HIDDEN = 64, 128


def preset_sizes(preset: str, model_type: str, sensor_encoder: str = "default") -> HeadSizes:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose {', '.join(PRESETS)})")
    model_type = {"flow": "flow_matching", "regression": "regression", "flow_matching": "flow_matching"}.get(model_type)
    if model_type is None:
        raise ValueError("model type must be flow or regression")
    sensor_encoder = sensor_encoder.replace("-", "_")
    if sensor_encoder not in ("default", "force_aware"):
        raise ValueError("sensor encoder must be default or force-aware")
    v, hs, so, sd, r, d, tr = PRESETS[preset]
    force = sensor_encoder == "force_aware"
    so_total = sd + FORCE_HIDDEN if force else so
    return HeadSizes(
        model_type=model_type, sensor_encoder_variant=sensor_encoder, vl_dim=v, sensor_channels=SENSOR_CHANNELS,
        sensor_hidden=hs, sensor_out=so_total, sensor_dist_out=sd if force else None,
        force_mlp=FORCE_MLP if force else None, force_hidden=FORCE_HIDDEN if force else None, sensor_conv_layers=4,
        sensor_transformer_layers=2, robot_window=tr, robot_width=r, robot_input_dim=ROBOT_INPUT_DIM, robot_layers=3,
        hidden_dim=d, action_dim=ACTION_DIM, expert_layers=4,
        time_embed_dim=256 if model_type == "flow_matching" else None,
        regression_horizon=HORIZON if model_type == "regression" else None, fusion_width=v + 2 * so_total)


def random_heads(sizes: HeadSizes, seed: int = 0) -> Heads:
    """Float32 heads with a seeded random init (BatchNorm and LayerNorm made non-trivial)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        heads = Heads(sizes)
        with torch.no_grad():
            for m in heads.modules():
                if isinstance(m, BatchNorm1d):
                    n = m.weight.numel()
                    m.weight.copy_(1 + 0.1 * torch.randn(n))
                    m.bias.copy_(0.1 * torch.randn(n))
                    m.running_mean.copy_(0.1 * torch.randn(n))
                    m.running_var.copy_(torch.rand(n) + 0.5)
            for name, p in heads.named_parameters():
                if name.endswith(("pos_encoder", "pos_embed")):
                    p.copy_(0.02 * torch.randn_like(p))
    finally:
        torch.random.set_rng_state(gen_state)
    return heads.eval()


def deployed_state_dict(heads: Heads) -> dict:
    """bf16 weights, BatchNorm float32, num_batches_tracked int64 (section 3 of the format)."""
    bn_prefixes = tuple(name + "." for name, m in heads.named_modules() if isinstance(m, BatchNorm1d))
    out = {}
    for k, t in heads.state_dict().items():
        if not t.is_floating_point():
            out[k] = t.clone()
        elif k.startswith(bn_prefixes):
            out[k] = t.detach().float().clone()
        else:
            out[k] = t.detach().to(torch.bfloat16).clone()
    return out


def make_checkpoint(path, preset: str = "tiny", model_type: str = "flow", sensor_encoder: str = "default",
                    seed: int = 0) -> Path:
    """Write a random-init training checkpoint to ``path``; returns the path."""
    sizes = preset_sizes(preset, model_type, sensor_encoder)
    heads = random_heads(sizes, seed)
    ckpt = {
        "epoch": 0,
        "model_state_dict": deployed_state_dict(heads),
        "val_loss": math.nan,
        "generated_by": f"shm-vla make-checkpoint --preset {preset} --type {model_type} "
                        f"--sensor-encoder {sensor_encoder} --seed {seed} (random weights)",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="shm-vla make-checkpoint", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--type", dest="model_type", choices=("flow", "regression"), default="flow")
    ap.add_argument("--sensor-encoder", choices=("default", "force-aware"), default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("out", help="output .pt path")
    args = ap.parse_args(argv)
    path = make_checkpoint(args.out, args.preset, args.model_type, args.sensor_encoder, args.seed)
    n = sum(t.numel() for t in torch.load(path, weights_only=True)["model_state_dict"].values())
    print(f"wrote {path} ({args.preset}, {args.model_type}, sensor encoder {args.sensor_encoder}, "
          f"{n / 1e6:.2f} M values, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
