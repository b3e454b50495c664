"""load_checkpoint: formats accepted, sizes inferred, contradictions and bad files rejected clearly."""
from __future__ import annotations

import pickle

import pytest
import torch

from shm_vla.config import ModelConfig
from shm_vla.model import CheckpointError, load_checkpoint, load_heads
from shm_vla.model.make_checkpoint import make_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {
        "flow": make_checkpoint(d / "flow.pt", "tiny", "flow"),
        "regression": make_checkpoint(d / "reg.pt", "tiny", "regression"),
        "force": make_checkpoint(d / "force.pt", "tiny", "flow", "force-aware"),
    }


def _sd(path):
    return torch.load(path, weights_only=True)["model_state_dict"]


def test_training_checkpoint_and_bare_state_dict(tiny, tmp_path):
    lm = load_checkpoint(tiny["flow"], ModelConfig())
    bare = tmp_path / "bare.pt"
    torch.save(_sd(tiny["flow"]), bare)
    lm2 = load_checkpoint(bare, ModelConfig())
    assert lm.info.model_type == lm2.info.model_type == "flow_matching"
    assert lm.info.extra["epoch"] == 0 and lm2.info.extra == {}
    for (k, a), (k2, b) in zip(lm.heads.state_dict().items(), lm2.heads.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_inferred_sizes(tiny):
    f = load_checkpoint(tiny["flow"]).info
    assert (f.vl_dim, f.sensor_channels, f.sensor_out, f.robot_window, f.hidden_dim, f.action_dim) == \
        (64, 1026, 64, 100, 64, 7)
    assert f.horizon == 8 and f.horizon_source == "config"
    r = load_checkpoint(tiny["regression"]).info
    assert r.model_type == "regression" and r.horizon == 8 and r.horizon_source == "checkpoint"
    fa = load_checkpoint(tiny["force"]).info
    assert fa.sensor_encoder_variant == "force_aware" and fa.sensor_out == 64 + 128 and fa.sensor_dist_out == 64


def test_flow_horizon_from_config(tiny):
    lm = load_checkpoint(tiny["flow"], ModelConfig(flow_horizon=4))
    assert lm.info.horizon == 4 and lm.heads.horizon == 4


def test_vl_and_other_keys_ignored_and_reported(tiny, tmp_path):
    ck = torch.load(tiny["flow"], weights_only=True)
    ck["model_state_dict"]["vl_model.model.embed_tokens.weight"] = torch.zeros(10, 64, dtype=torch.bfloat16)
    ck["model_state_dict"]["some_other.buffer"] = torch.zeros(3)
    p = tmp_path / "with_vl.pt"
    torch.save(ck, p)
    lm = load_checkpoint(p)
    assert list(lm.vl_state_dict) == ["vl_model.model.embed_tokens.weight"]
    assert lm.info.ignored_keys == ["some_other.buffer", "vl_model.model.embed_tokens.weight"]
    assert lm.info.ignored_summary == {"some_other": 1, "vl_model": 1}
    assert lm.info.vl_key_count == 1
    heads = load_heads(ck["model_state_dict"])
    assert heads.ignored_keys == ["some_other.buffer", "vl_model.model.embed_tokens.weight"]


def _save_modified(tiny, tmp_path, fn, name="bad.pt"):
    ck = torch.load(tiny["flow"], weights_only=True)
    fn(ck["model_state_dict"])
    p = tmp_path / name
    torch.save(ck, p)
    return p


def test_missing_key(tiny, tmp_path):
    p = _save_modified(tiny, tmp_path, lambda sd: sd.pop("action_expert.velocity_net.layers.1.norm2.bias"))
    with pytest.raises(CheckpointError, match=r"bad\.pt.*missing key.*velocity_net\.layers\.1\.norm2\.bias"):
        load_checkpoint(p)


def test_unexpected_head_key(tiny, tmp_path):
    p = _save_modified(tiny, tmp_path, lambda sd: sd.__setitem__("action_expert.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match="unexpected key.*action_expert.extra.weight"):
        load_checkpoint(p)


def test_wrong_shape(tiny, tmp_path):
    def f(sd):
        sd["action_expert.velocity_net.layers.0.linear1.weight"] = torch.zeros(100, 64, dtype=torch.bfloat16)
    p = _save_modified(tiny, tmp_path, f)
    with pytest.raises(CheckpointError, match=r"velocity_net\.layers\.0\.linear1\.weight: shape \(100, 64\)"):
        load_checkpoint(p)


def test_fusion_width_mismatch(tiny, tmp_path):
    def f(sd):   # fusion input narrower than sensor + robot features: no room for the VL features
        sd["action_expert.fusion_proj.weight"] = torch.zeros(64, 128, dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match="fusion_proj.weight.*fusion width mismatch"):
        load_checkpoint(_save_modified(tiny, tmp_path, f))

    def g(sd):   # the seed's lazily created fallback projection
        sd["action_expert._dynamic_fusion_proj.weight"] = torch.zeros(64, 10, dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match="_dynamic_fusion_proj"):
        load_checkpoint(_save_modified(tiny, tmp_path, g, "dyn.pt"))

    def h(sd):   # robot features of another width than the sensor features
        sd["robot_state_encoder.projection.4.weight"] = torch.zeros(32, 64, dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match="robot_state_encoder.projection.4.weight.*32.*64"):
        load_checkpoint(_save_modified(tiny, tmp_path, h, "rob.pt"))


def test_configured_vl_dim_contradiction(tiny):
    with pytest.raises(CheckpointError, match=r"fusion_proj\.weight gives VL feature width 64, .* says 2048"):
        load_checkpoint(tiny["flow"], vl_dim=2048)


def test_runtime_vl_width_mismatch(tiny):
    heads = load_checkpoint(tiny["flow"]).heads
    with pytest.raises(ValueError, match="fusion width mismatch"):
        heads.predict(torch.zeros(1, 1, 32), torch.zeros(1, 65, 1026), torch.zeros(1, 100, 12))


def test_robot_window_contradiction(tiny):
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tiny["flow"], ModelConfig(), sensor_window=65, robot_window=65)
    msg = str(exc.value)
    assert str(tiny["flow"]) in msg and "robot_state_encoder.pos_encoder" in msg
    assert "100" in msg and "65" in msg and "\n" not in msg
    load_checkpoint(tiny["flow"], ModelConfig(), robot_window=100)     # agreeing is fine


def test_sensor_channel_contradiction(tiny):
    with pytest.raises(CheckpointError, match="conv1.weight gives sensor channels 1026.*says 1025"):
        load_checkpoint(tiny["flow"], sensor_channels=1025)
    with pytest.raises(CheckpointError, match="dist_encoder.conv_backbone.0.conv1.weight"):
        load_checkpoint(tiny["force"], sensor_channels=1000)


def test_robot_dims_contradiction(tiny):
    with pytest.raises(CheckpointError, match="input_proj.weight gives robot values per row 12.*says 14"):
        load_checkpoint(tiny["flow"], robot_dims=14)


def test_variant_keys_do_not_mix(tiny, tmp_path):
    """A force-aware state dict missing its force branch is a clear missing-key error."""
    ck = torch.load(tiny["force"], weights_only=True)
    for k in [k for k in ck["model_state_dict"] if k.startswith("sensor_encoder.force_encoder.3")]:
        del ck["model_state_dict"][k]
    p = tmp_path / "fa.pt"
    torch.save(ck, p)
    with pytest.raises(CheckpointError, match="force_encoder.3.weight"):
        load_checkpoint(p)


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"model_state_dict": object()}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    q = tmp_path / "list.pt"
    torch.save([1, 2], q)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(q)


def test_unknown_model_type(tiny):
    sd = {k: v for k, v in _sd(tiny["flow"]).items() if "velocity_net" not in k}
    with pytest.raises(CheckpointError, match="model type"):
        load_heads(sd)


def test_make_checkpoint_format(tiny):
    ck = torch.load(tiny["regression"], weights_only=True)
    assert {"epoch", "model_state_dict", "val_loss"} <= set(ck)
    for k, v in ck["model_state_dict"].items():
        if k.endswith("num_batches_tracked"):
            assert v.dtype == torch.int64
        elif ".bn" in k:
            assert v.dtype == torch.float32
        else:
            assert v.dtype == torch.bfloat16, k
    n = len(ck["model_state_dict"])
    assert n == 82 + 45 + 91      # the format's key inventory for a regression checkpoint
    assert len(_sd(tiny["flow"])) == 187 and len(_sd(tiny["force"])) == 193
