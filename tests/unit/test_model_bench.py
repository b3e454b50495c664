"""Smoke runs of the model benchmarks (tiny sizes, a few iterations): they run and their JSON holds
what docs/MODEL.md reports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench(script, *args):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, "--json"], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_action_head_quick():
    rep = _bench("action_head.py", "--quick", "--presets", "tiny", "--iters", "5")
    (r,) = rep["results"]
    assert r["preset"] == "tiny" and r["model_type"] == "flow_matching" and not r["cuda_graph"]
    for path in ("ours", "seed_style"):
        assert r[path]["n"] == 5 and 0 < r[path]["p50_ms"] <= r[path]["max_ms"]
    assert r["ratio_p50"] > 0 and set(r["ours_split_p50_ms"]) == {"sensor", "robot", "action"}
    assert rep["command"].startswith("shm-vla bench action-head")


def test_action_head_regression_quick():
    rep = _bench("action_head.py", "--quick", "--presets", "tiny", "--type", "regression", "--iters", "3")
    assert rep["results"][0]["model_type"] == "regression"


def test_vl_quick():
    rep = _bench("vl.py", "--quick", "--vl-dim", "64")
    (r,) = rep["results"]
    assert r["backbone"] == "compact" and r["vl_dim"] == 64 and r["n"] == 5 and r["p50_ms"] > 0


def test_vl_interleaved_modes_and_an_error_row():
    pytest.importorskip("transformers")
    rep = _bench("vl.py", "--backbone", "tiny-qwen", "--modes", "batched,batched-windows,nope", "--iters", "3",
                 "--warmup", "1", "--interleave")
    ok, windows, bad = rep["results"]
    assert (ok["mode"], windows["mode"], bad["mode"]) == ("batched", "batched-windows", "nope")
    assert ok["interleaved"] and ok["n"] == windows["n"] == 3 and 0 < ok["p50_ms"] <= ok["max_ms"]
    assert "unknown VL mode" in bad["error"]


def test_vl_ops_counts_the_saved_attention_calls():
    pytest.importorskip("transformers")
    rep = _bench("vl_ops.py", "--shape", "tiny")
    grouped, windows = rep["results"]
    # tiny shape: 2 text layers; 2 vision blocks, block 1 with full attention; per view 18 windows
    # of 2 lengths (15 x 64 patches, 3 x 32), 5 views
    assert grouped["attention_calls"] == 2 + 2 + 1              # text layers + 2 lengths + 1 full block
    assert windows["attention_calls"] == 2 + 5 * 18 + 5          # text layers + one call per window and view
    assert grouped["aten_ops"] < windows["aten_ops"] and grouped["tolist_reads"] < windows["tolist_reads"]
