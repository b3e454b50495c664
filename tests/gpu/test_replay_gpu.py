"""Replay on CUDA (marker `gpu`: skipped without CUDA; run by bench/gpu_suite.sh core).

* the per-tick noise seed on the CUDA graph path: the seed alone fixes the chunk (twice the
  same), the graph equals the eager CUDA path, the noise is the CPU draw of that seed, and the
  seeded ticks allocate no CUDA memory;
* a session whose act ran on CUDA (one graph, as deployed) replays on CUDA bit-exactly through
  its checkpoint (tiny float32; seed-size bfloat16, the deployed dtype), and on the CPU within
  rounding (the figures are printed: `pytest -s`).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shm_vla import replay
from shm_vla.model import TickRunner, load_checkpoint
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.tick import tick_noise_seed

pytestmark = pytest.mark.gpu


def _fill(runner, seed=0):
    rng = np.random.default_rng(seed)
    for buf in (runner.vl_in, runner.sensor_in, runner.robot_in):
        buf[...] = rng.standard_normal(buf.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seeded_noise_on_the_graph_path(tmp_path, dtype):
    lm = load_checkpoint(make_checkpoint(tmp_path / "f.pt", "tiny", "flow"))
    graph = TickRunner(lm, device="cuda", dtype=dtype, use_cuda_graph=True)
    eager = TickRunner(lm, device="cuda", dtype=dtype, use_cuda_graph=False)
    assert graph.graph is not None
    _fill(graph)
    _fill(eager)
    allocated = torch.cuda.memory_allocated()
    for action_id in range(20):
        seed = tick_noise_seed(3, action_id)
        first = graph.run(seed).actions.copy()
        assert np.array_equal(graph.run(seed).actions, first)                 # the seed alone fixes it
        assert np.array_equal(eager.run(seed).actions, first)                 # the same kernels
        gen = torch.Generator().manual_seed(seed)
        assert torch.equal(torch.from_numpy(graph.x0_in.copy()),
                           torch.randn(1, graph.horizon, graph.action_dim, generator=gen)[0])
    assert torch.cuda.memory_allocated() == allocated                        # no CUDA memory kept per tick


def _replay(capsys, *argv) -> dict:
    code = replay.main([str(a) for a in argv] + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("preset,dtype", [("tiny", "float32"), ("seed-size", "bfloat16")])
def test_a_cuda_session_replays_bit_exactly_on_cuda(tmp_path, instance, capsys, preset, dtype):
    pytest.importorskip("zmq", reason="the session rig needs pyzmq (the act process's command socket)")
    pytest.importorskip("posix_ipc", reason="the session rig needs posix_ipc (shared-memory rings)")
    from replay_rig import record_session
    ckpt = make_checkpoint(tmp_path / "f.pt", preset, "flow")
    session = record_session(tmp_path, instance, ckpt, 20,
                             overrides=('model.act_device="cuda"', f'model.act_dtype="{dtype}"'))
    on_cuda = _replay(capsys, session, "--checkpoint", ckpt)
    assert on_cuda["replayed_on"]["device"] == "cuda" and on_cuda["replayed_on"]["cuda_graph"]
    assert on_cuda["ticks"] == 20
    on_cpu = _replay(capsys, session, "--checkpoint", ckpt, "--device", "cpu")
    print(f"\n{preset} {dtype}: replay on cuda max_abs_diff {on_cuda['max_abs_diff']}, "
          f"on cpu {on_cpu['max_abs_diff']} ({on_cpu['ticks_per_s']:.0f} ticks/s on cpu, "
          f"{on_cuda['ticks_per_s']:.0f} on cuda)")
    assert on_cuda["max_abs_diff"] == 0.0 and on_cuda["bit_exact"]
    assert on_cpu["ticks"] == 20 and on_cpu["max_abs_diff"] < (0.1 if dtype == "bfloat16" else 1e-2)
