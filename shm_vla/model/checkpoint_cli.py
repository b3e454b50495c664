"""`shm-vla checkpoint info|verify PATH`: what the loader infers, and reference-case verification.

info    prints the inferred model (type, sensor-encoder variant, every size, ignored keys,
        parameter count, dtypes) and warns where the configuration disagrees with it
        (e.g. a force-aware encoder reads the force from the LAST channel while
        sensor.force_position says 'first').
verify  runs the reference cases stored under a ``cases`` key (the shared fixtures' layout) in
        float32 on the CPU and prints the max abs error per case; exit 1 above --atol (1e-5).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .. import config as config_mod
from .checkpoint import load_file, load_state_dict_model, read_checkpoint
from .errors import CheckpointError

DEFAULT_ATOL = 1e-5


def config_warnings(info, cfg) -> list[str]:
    """Disagreements between a checkpoint and the configuration that do not stop start-up."""
    warnings = []
    if info.sensor_encoder_variant == "force_aware" and cfg.sensor.force_position != "last":
        warnings.append(
            "the checkpoint's force-aware sensor encoder reads the force from the LAST channel, but "
            f"sensor.force_position = {cfg.sensor.force_position!r} (the receiver layout puts it first): "
            "set sensor.force_position = \"last\" if the model was trained on [ascan..., force] rows")
    if info.sensor_encoder_variant == "default" and cfg.sensor.force_position != "first":
        warnings.append(
            "the checkpoint has the default sensor encoder (trained on the receiver layout, force in channel 0), "
            f"but sensor.force_position = {cfg.sensor.force_position!r}")
    if info.sensor_channels != cfg.sensor_channels:
        warnings.append(f"the checkpoint expects {info.sensor_channels} sensor channels, the config gives "
                        f"{cfg.sensor_channels} (sensor.ascan_len + 1)")
    return warnings


def _human(info, warnings: list[str]) -> str:
    i = info
    lines = [f"checkpoint        {i.path}",
             f"model type        {i.model_type}",
             f"sensor encoder    {i.sensor_encoder_variant}"
             + (f" (distance {i.sensor_dist_out} + force {i.force_hidden}; force = LAST channel)"
                if i.sensor_encoder_variant == "force_aware" else ""),
             f"VL dim            {i.vl_dim}",
             f"sensor            {i.sensor_channels} channels, window {i.sensor_window} (config), hidden "
             f"{i.sensor_hidden}, features {i.sensor_out}, {i.sensor_conv_layers} conv + "
             f"{i.sensor_transformer_layers} transformer layers",
             f"robot             window {i.robot_window}, width {i.robot_width}, {i.robot_layers} layers, "
             f"features {i.sensor_out}",
             f"action expert     hidden {i.hidden_dim}, {i.expert_layers} layers, {i.num_heads} heads, action "
             f"{i.action_dim}, horizon {i.horizon} ({i.horizon_source})"
             + (f", time embedding {i.time_embed_dim}" if i.time_embed_dim else ""),
             f"fusion            concat, width {i.fusion_width} = {i.vl_dim} + 2 x {i.sensor_out}",
             f"parameters        {i.parameter_count:,} ({i.parameter_count / 1e6:.2f} M)",
             "dtypes            " + ", ".join(f"{k.replace('torch.', '')} {v}" for k, v in i.dtypes.items()),
             f"ignored keys      {len(i.ignored_keys)}"
             + (" (" + ", ".join(f"{k}.* {v}" for k, v in i.ignored_summary.items()) + ")" if i.ignored_keys else ""),
             f"vl_model tensors  {i.vl_key_count}" + (" (override the backbone directory's weights)"
                                                       if i.vl_key_count else "")]
    if i.extra:
        lines.append("other entries     " + ", ".join(f"{k}={v}" for k, v in i.extra.items()))
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines)


def _info(args, cfg) -> int:
    sd, extra = read_checkpoint(args.path)
    lm = load_state_dict_model(sd, path=args.path, sensor_window=cfg.sensor.window,
                               flow_horizon=cfg.model.flow_horizon, extra=extra)
    warnings = config_warnings(lm.info, cfg)
    if args.json:
        d = lm.info.to_dict()
        d["warnings"] = warnings
        if not args.all_keys and len(d["ignored_keys"]) > 50:
            d["ignored_keys"] = d["ignored_keys"][:50] + [f"... {len(lm.info.ignored_keys) - 50} more"]
        print(json.dumps(d, indent=2, default=str))
    else:
        print(_human(lm.info, warnings))
    for w in warnings:
        if args.json:
            print(f"warning: {w}", file=sys.stderr)
    return 0


def verify_cases(obj_path: str, sensor_window: int = 65, atol: float = DEFAULT_ATOL) -> list[dict]:
    """Run every stored case; -> [{name, max_abs_error, ok, per-tensor errors}]."""
    obj = load_file(obj_path)
    if not isinstance(obj, dict) or not obj.get("cases"):
        raise CheckpointError(f"checkpoint {obj_path}: no reference 'cases' stored in this file")
    sd = obj["model_state_dict"] if "model_state_dict" in obj else obj
    # the flow horizon is not in the weights: each case's stored x0 (1, H, A) gives it
    heads = load_state_dict_model(sd, path=obj_path, sensor_window=sensor_window).heads
    results = []
    for c in obj["cases"]:
        errs = {}
        with torch.no_grad():
            sf = heads.sensor_encoder(c["sensor"])
            rf = heads.robot_state_encoder(c["robot"])
            if "sensor_features" in c:
                errs["sensor_features"] = (sf - c["sensor_features"]).abs().max().item()
            if "robot_features" in c:
                errs["robot_features"] = (rf - c["robot_features"]).abs().max().item()
            if heads.is_flow:
                if "x0" not in c:
                    raise CheckpointError(f"case {c.get('name')}: a flow-matching case needs x0")
                if "velocity_t0" in c:
                    cond = heads.action_expert.condition(c["vl_features"], sf, rf)
                    v = heads.action_expert.velocity(c["x0"], torch.zeros(c["x0"].shape[0]), cond)
                    errs["velocity_t0"] = (v - c["velocity_t0"]).abs().max().item()
                a = heads.sample_from(c["vl_features"], sf, rf, x0=c["x0"], num_steps=int(c.get("num_steps", 10)),
                                      method=str(c.get("method", "euler")))
            else:
                a, d = heads.action_expert(c["vl_features"], c["z_chunk"], sf, rf)
                if "delta" in c:
                    errs["delta"] = (d - c["delta"]).abs().max().item()
            errs["actions"] = (a - c["actions"]).abs().max().item()
        worst = max(errs.values())
        results.append({"name": str(c.get("name", len(results))), "max_abs_error": worst, "ok": worst <= atol,
                        "errors": errs})
    return results


def _verify(args, cfg) -> int:
    try:
        results = verify_cases(args.path, cfg.sensor.window, args.atol)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {args.path}: a stored case lacks the entry {exc}") from None
    if args.json:
        print(json.dumps({"path": args.path, "atol": args.atol, "cases": results}, indent=2))
    else:
        for r in results:
            detail = ", ".join(f"{k} {v:.2e}" for k, v in r["errors"].items())
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']:<20} max abs error {r['max_abs_error']:.2e}  ({detail})")
        bad = sum(not r["ok"] for r in results)
        print(f"{len(results) - bad}/{len(results)} cases within {args.atol:g}")
    return 0 if all(r["ok"] for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="shm-vla checkpoint", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="print what the loader infers from a checkpoint")
    p_info.add_argument("path")
    p_info.add_argument("--json", action="store_true")
    p_info.add_argument("--all-keys", action="store_true", help="with --json: list every ignored key")
    config_mod.add_arguments(p_info)
    p_ver = sub.add_parser("verify", help="run the reference cases stored in the file")
    p_ver.add_argument("path")
    p_ver.add_argument("--atol", type=float, default=DEFAULT_ATOL)
    p_ver.add_argument("--json", action="store_true")
    config_mod.add_arguments(p_ver)
    args = ap.parse_args(argv)
    cfg = config_mod.from_args(args)
    try:
        return _info(args, cfg) if args.cmd == "info" else _verify(args, cfg)
    except CheckpointError as exc:
        print(f"shm-vla checkpoint: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
