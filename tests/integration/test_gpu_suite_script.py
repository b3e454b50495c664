"""bench/gpu_suite.sh, run here in its CPU `smoke` part: the script, its result file and the
benchmark options it uses work before scarce GPU time is spent on them (the GPU itself is not
exercised). And its time budget: a step that no longer fits is recorded as skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE_STEPS = ["env", "gpu-tests", "ah_graph", "ah_stage_timing", "ah_noise_seed", "frame_upload", "vl_big",
              "ah_vl_load"]


def _suite(tmp_path: Path, part: str, budget: int | None = None, timeout: float = 280) -> list[dict]:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    if budget is not None:
        env["SUITE_BUDGET_S"] = str(budget)
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_suite.sh"), part], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_suite.jsonl", "gpu_suite.log"]
    return [json.loads(line) for line in (tmp_path / "gpu_suite.jsonl").read_text().splitlines()]


@pytest.mark.timeout(300)
def test_smoke_part_runs_every_core_step(tmp_path):
    steps = {s["step"]: s for s in _suite(tmp_path, "smoke")}
    assert list(steps) == CORE_STEPS
    log = (tmp_path / "gpu_suite.log").read_text()
    for name, s in steps.items():
        assert s["rc"] == 0, f"{name}: {s['result']}\n{log[-3000:]}"
    assert steps["env"]["result"]["torch"].startswith("2.")
    # on CPU the GPU tests skip; the conformance tests pass where ../shared/fixtures exists
    # (CI), and skip with their reason in a checkout without it
    gpu_tests = steps["gpu-tests"]["result"]["tail"][-1]
    fixtures = Path(os.environ.get("SHM_VLA_FIXTURES", REPO.parent / "shared" / "fixtures"))
    assert "passed" in gpu_tests if fixtures.is_dir() else "skipped" in gpu_tests, gpu_tests
    vl = steps["vl_big"]["result"]["results"]
    assert [r["mode"] for r in vl] == ["batched", "batched-windows", "preprocess-streams", "streams", "reference"]
    assert all("error" not in r and r["p50_ms"] > 0 for r in vl), vl
    graph = steps["ah_graph"]["result"]["results"][0]
    assert graph["stage_timing"] == "events" and graph["ours_split_p50_ms"]["sensor"] > 0
    timing = steps["ah_stage_timing"]["result"]["results"][0]      # what the stage times cost
    assert [m["requested"] for m in timing["modes"]] == [m["stage_timing"] for m in timing["modes"]] \
        == ["events", "graphs", "off"]
    assert all(m["tick"]["n"] > 0 for m in timing["modes"]) and timing["stream_priority"] == -1
    assert timing["modes"][0]["split_p50_ms"]["action"] > 0 and timing["modes"][2]["split_p50_ms"] is None
    assert set(timing["cost_vs_off"]) == {"events", "graphs"}
    seeded = steps["ah_noise_seed"]["result"]["results"][0]        # what seeding each tick's noise costs
    assert seeded["reproducible"] and seeded["seeded"]["n"] > 0 and seeded["stream"]["n"] > 0
    assert set(seeded["cost_us"]) == {"p50", "mean"}
    upload = {r["path"]: r for r in steps["frame_upload"]["result"]["results"]}   # CPU: no pageable variant
    assert set(upload) == {"staged", "direct"} and all(r["n"] > 0 and r["torn"] == 0 for r in upload.values())
    load = steps["ah_vl_load"]["result"]
    assert load["vl_load"] == "tiny-qwen"
    assert [r["stream_priority"] for r in load["results"]] == [0, -1]
    assert all(r["ours"]["n"] > 0 and r["seed_style"]["n"] > 0 for r in load["results"])


def test_budget_skips_what_no_longer_fits(tmp_path):
    steps = _suite(tmp_path, "smoke", budget=5, timeout=60)
    assert [s["step"] for s in steps] == CORE_STEPS
    assert all(s["rc"] == -1 and s["result"] == {"skipped": "budget"} for s in steps)
