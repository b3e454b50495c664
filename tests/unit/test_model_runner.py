"""TickRunner on CPU: identical to the plain heads, fixed buffers, the condition computed once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shm_vla.model import TickRunner, load_checkpoint
from shm_vla.model.make_checkpoint import make_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "flow": load_checkpoint(make_checkpoint(d / "flow.pt", "tiny", "flow", seed=1)),
        "regression": load_checkpoint(make_checkpoint(d / "reg.pt", "tiny", "regression", seed=2)),
        "force": load_checkpoint(make_checkpoint(d / "force.pt", "tiny", "flow", "force-aware", seed=3)),
    }


def _fill(runner, seed=0):
    rng = np.random.default_rng(seed)
    runner.vl_in[:] = rng.standard_normal(runner.vl_in.shape)
    runner.sensor_in[:] = rng.standard_normal(runner.sensor_in.shape)
    runner.robot_in[:] = rng.standard_normal(runner.robot_in.shape)


def _inputs(runner):
    return (torch.from_numpy(runner.vl_in.copy()).view(1, 1, -1), torch.from_numpy(runner.sensor_in.copy())[None],
            torch.from_numpy(runner.robot_in.copy())[None])


def _recompute_every_step(heads, vl, sensor, robot, x0, steps, method):
    """Reference sampler that evaluates the fusion and the time MLP inside every velocity call."""
    e = heads.action_expert
    sf, rf = heads.sensor_encoder(sensor), heads.robot_state_encoder(robot)

    def v(x, t):
        return e.velocity(x, torch.full((1,), t, dtype=torch.float32), e.condition(vl, sf, rf))
    dt = 1.0 / steps
    x = x0.clone()
    for i in range(steps):
        t = i * dt
        if method == "euler":
            x = x + dt * v(x, t)
        else:
            k1 = v(x, t)
            k2 = v(x + dt / 2 * k1, t + dt / 2)
            k3 = v(x + dt / 2 * k2, t + dt / 2)
            k4 = v(x + dt * k3, t + dt)
            x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


@pytest.mark.parametrize("name", ["flow", "force"])
@pytest.mark.parametrize("method,steps", [("euler", 10), ("rk4", 3), ("euler", 1)])
def test_condition_once_equals_recomputed_every_step(models, name, method, steps):
    lm = models[name]
    runner = TickRunner(lm, flow_steps=steps, solver=method)
    _fill(runner, 7)
    res = runner.run(noise_seed=123)
    with torch.inference_mode():
        ref = _recompute_every_step(lm.heads, *_inputs(runner), torch.from_numpy(runner.x0_in.copy())[None],
                                    steps, method)
    np.testing.assert_array_equal(res.actions, ref[0].numpy())     # bit-for-bit, not just close


@pytest.mark.parametrize("name", ["flow", "force", "regression"])
def test_runner_equals_heads(models, name):
    lm = models[name]
    runner = TickRunner(lm, flow_steps=10, solver="euler", horizon=8)
    assert runner.vl_in.shape == (64,) and runner.vl_in.dtype == np.float32
    assert runner.sensor_in.shape == (65, 1026) and runner.robot_in.shape == (100, 12)
    for seed in range(3):
        _fill(runner, seed)
        res = runner.run(noise_seed=seed)
        with torch.inference_mode():
            vl, s, r = _inputs(runner)
            if runner.is_flow:
                g = torch.Generator().manual_seed(seed)
                ref = lm.heads.predict(vl, s, r, generator=g, num_steps=10, method="euler")
                assert res.delta is None
            else:
                ref, delta = lm.heads.predict(vl, s, r)
                np.testing.assert_array_equal(res.delta, delta[0].numpy())
        assert res.actions.shape == (8, 7) and res.actions.dtype == np.float32
        np.testing.assert_array_equal(res.actions, ref[0].numpy())
        assert res.timing_split and res.total_ms >= res.action_prediction_ms > 0
        assert res.sensor_encoding_ms > 0 and res.robot_encoding_ms > 0


def test_noise_seed_convention_and_stream(models):
    runner = TickRunner(models["flow"], seed=5)
    _fill(runner)
    a = runner.run(noise_seed=11).actions.copy()
    torch.manual_seed(11)
    np.testing.assert_array_equal(runner.x0_in, torch.randn(1, 8, 7)[0].numpy())
    b = runner.run().actions.copy()
    c = runner.run().actions.copy()
    assert not np.array_equal(a, b) and not np.array_equal(b, c)
    np.testing.assert_array_equal(runner.run(noise_seed=11).actions, a)
    x0 = np.zeros((8, 7), np.float32)
    d = runner.run(x0=x0).actions.copy()
    np.testing.assert_array_equal(runner.x0_in, x0)
    assert np.isfinite(d).all()


def test_buffers_are_reused(models):
    runner = TickRunner(models["flow"])
    _fill(runner)
    ptrs = (runner.vl_in.ctypes.data, runner.sensor_in.ctypes.data, runner.robot_in.ctypes.data)
    r1 = runner.run(noise_seed=1)
    r2 = runner.run(noise_seed=2)
    assert r1.actions.ctypes.data == r2.actions.ctypes.data     # a view of the output buffer
    assert ptrs == (runner.vl_in.ctypes.data, runner.sensor_in.ctypes.data, runner.robot_in.ctypes.data)


def test_input_changes_reach_the_model(models):
    runner = TickRunner(models["regression"])
    _fill(runner, 1)
    a = runner.run().actions.copy()
    runner.robot_in[-1, :] += 1.0
    assert not np.array_equal(a, runner.run().actions)


def test_horizon_and_solver_options(models):
    runner = TickRunner(models["flow"], horizon=4, flow_steps=2, solver="rk4")
    _fill(runner)
    assert runner.run().actions.shape == (4, 7)
    reg = TickRunner(models["regression"], horizon=3)    # regression takes its horizon from pos_embed
    assert reg.horizon == 8
    with pytest.raises(ValueError, match="solver"):
        TickRunner(models["flow"], solver="midpoint")
    with pytest.raises(ValueError, match="flow_steps"):
        TickRunner(models["flow"], flow_steps=0)


def test_bf16_cpu_runner_close(models):
    lm = models["flow"]
    f32 = TickRunner(lm)
    b16 = TickRunner(lm, dtype=torch.bfloat16)
    for r in (f32, b16):
        _fill(r, 3)
    a = f32.run(noise_seed=4).actions
    b = b16.run(noise_seed=4).actions
    assert np.abs(a - b).max() < 0.1


@pytest.mark.slow
def test_compiled_runner_matches(models):
    """compile=True (torch.compile of velocity and encoders) gives the same actions (float32, CPU)."""
    plain = TickRunner(models["flow"], flow_steps=4, solver="rk4")
    compiled = TickRunner(models["flow"], flow_steps=4, solver="rk4", compile=True)
    for r in (plain, compiled):
        _fill(r, 9)
    np.testing.assert_allclose(compiled.run(noise_seed=3).actions, plain.run(noise_seed=3).actions, atol=1e-5, rtol=0)
    assert not hasattr(models["flow"].heads.action_expert.velocity_biased, "_torchdynamo_orig_callable")
