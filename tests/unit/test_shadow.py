"""The shadow's pieces without processes: its configuration, the fit check against the live
streams, its record and session line, and the analyzer's shadow section."""
from __future__ import annotations

import numpy as np
import pytest

from shm_vla import config
from shm_vla import shadow_tick as S
from shm_vla.model import load_checkpoint
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.workers.session_files import SessionWriter
from shm_vla.workers.shadow import check_fits, identity_of, load_shadow
from test_analyze import action_record, run, run_json


# --------------------------------------------------------------------------- configuration
def test_a_shadow_never_runs_above_act():
    with pytest.raises(config.ConfigError, match="shadow.nice"):
        config.load("t", None, ["shadow.nice=-5"])
    with pytest.raises(config.ConfigError, match="shadow.nice"):
        config.load("t", None, ["shadow.nice=20"])
    with pytest.raises(config.ConfigError, match="higher CUDA priority than act's"):
        config.load("t", None, ["shadow.stream_priority=-2"])          # act's default is -1
    with pytest.raises(config.ConfigError, match="shadow.dtype"):
        config.load("t", None, ['shadow.dtype="float64"'])
    cfg = config.load("t", None, ["shadow.checkpoint=/tmp/x.pt"])      # a bare path is a string
    assert cfg.shadow.checkpoint == "/tmp/x.pt" and cfg.shadow.nice == 10 and cfg.shadow.stream_priority == 0


def test_a_missing_or_bad_shadow_checkpoint_is_one_line(tmp_path):
    from shm_vla.model import CheckpointError
    cfg = config.load("t", None, [f'shadow.checkpoint="{tmp_path / "missing.pt"}"'])
    with pytest.raises(CheckpointError, match=r"^shadow.checkpoint: checkpoint .*missing.pt: no such file$"):
        load_shadow(cfg)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cfg = config.load("t", None, [f'shadow.checkpoint="{tmp_path / "junk.pt"}"'])
    with pytest.raises(CheckpointError, match="shadow.checkpoint: checkpoint .*junk.pt: cannot be read"):
        load_shadow(cfg)
    cfg = config.load("t", None, [f'shadow.checkpoint="/{"x" * 600}.pt"'])
    with pytest.raises(config.ConfigError, match="longer than 512 bytes"):
        load_shadow(cfg)


def test_the_fit_check_names_what_differs_from_act(tmp_path):
    info = load_checkpoint(make_checkpoint(tmp_path / "f.pt", "tiny", "flow"), None).info
    check_fits(info, info.vl_dim, info.robot_window, info.action_dim)        # fits
    with pytest.raises(config.ConfigError, match=r"VL feature width 64 where act's is 2048; robot window 100 "
                                                 r"where act's is 50"):
        check_fits(info, 2048, 50, info.action_dim)
    with pytest.raises(config.ConfigError, match="action width 7 where act's is 6"):
        check_fits(info, info.vl_dim, info.robot_window, 6)


def test_identity_is_the_absolute_path_and_the_files_sha256(tmp_path, monkeypatch):
    import hashlib
    path = make_checkpoint(tmp_path / "f.pt", "tiny", "flow")
    monkeypatch.chdir(tmp_path)
    identity = identity_of("f.pt")
    assert identity.path == str(path) and identity.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the record
def test_the_line_of_a_missed_tick_has_no_actions():
    r = np.zeros((), S.shadow_dtype(8, 7))
    r["status"] = S.STATUSES.index("missed_robot")
    r["actions"] = r["divergence"] = r["dp"] = r["inference_ms"] = np.nan
    r["live_first_action"] = 0.5
    line = S.shadow_line(r)
    assert list(line) == list(S.LINE_FIELDS)
    assert line["status"] == "missed_robot" and line["actions"] is line["first_action"] is line["divergence"] is None
    assert line["live_first_action"] == [0.5] * 7 and line["inference_ms"] is None


# --------------------------------------------------------------------------- analyze
def _shadow_session(tmp_path, n=300, stray=(), bad_lines=0):
    """A session of n ticks at 10 Hz and a shadow line for each: divergence axis a = 0.001 * a * (i % 10)."""
    writer = SessionWriter(tmp_path, stamp="s", flush_every=1, shadow=True)
    for i in range(n):
        writer.write_timing(action_record(i, 12.0, held=None))
    rows = []
    for i in list(range(n)) + list(stray):
        divergence = [0.001 * a * (i % 10) for a in range(7)]
        status = "missed_sensor" if i % 50 == 49 else "ok"
        rows.append(divergence if status == "ok" else None)
        writer.write_shadow({"action_id": i, "timestamp": 1_700_000_000.0 + 0.1 * i, "status": status,
                             "checkpoint": "/c.pt", "checkpoint_sha256": "ab" * 32, "model_type": "flow_matching",
                             "divergence": rows[-1], "inference_ms": 3.0, "delay_ms": 10.0 + i % 3,
                             "skipped": 1 if i == 100 else 0})
    writer.close()
    with open(writer.paths.shadow_results, "a") as f:
        f.write("garbage\n" * bad_lines)
    return writer, np.array([r for r in rows if r is not None])


def test_analyze_reports_the_divergence_per_axis_over_the_session_and_over_time(tmp_path, capsys):
    writer, divergence = _shadow_session(tmp_path, stray=(5000,), bad_lines=2)
    code, report = run_json([writer.path], capsys)
    shadow = report["shadow"]
    assert code == 0 and shadow["ticks"] == 301 and shadow["by_status"] == {"missed_sensor": 6, "ok": 295}
    assert shadow["unpaired"] == 1 and shadow["skipped"] == 1            # the stray line names no live tick
    assert shadow["checkpoints"] == [{"path": "/c.pt", "sha256": "ab" * 32, "model_type": "flow_matching",
                                      "ticks": 301}]
    div = shadow["divergence"]
    assert div["count"] == len(divergence) == 295
    np.testing.assert_allclose(div["p50"], np.percentile(divergence, 50, axis=0))
    np.testing.assert_allclose(div["p99"], np.percentile(divergence, 99, axis=0))
    np.testing.assert_allclose(div["max"], divergence.max(axis=0))
    over = shadow["over_time"]
    assert over["bin_s"] >= 10 and len(over["bins"]) >= 3 and sum(b["ticks"] for b in over["bins"]) == 300 + 1
    assert shadow["delay_ms"]["max_ms"] == 12.0 and shadow["inference_ms"]["p50_ms"] == 3.0
    assert any("2 line(s) not valid" in w for w in shadow["warnings"])
    code, text, _ = run([writer.path], capsys)
    assert "shadow: /c.pt (sha256 abababababab, flow_matching, 301 ticks)" in text
    assert "unpaired 1" in text and "over time" in text


def test_analyze_without_a_shadow_has_none_and_the_plot_has_a_shadow_row(tmp_path, capsys):
    plain = SessionWriter(tmp_path / "a", stamp="s", flush_every=1)
    plain.write_timing(action_record(0, 12.0, held=None))
    plain.close()
    assert run_json([plain.path], capsys)[1]["shadow"] is None
    pytest.importorskip("matplotlib")
    writer, _ = _shadow_session(tmp_path / "b", n=50)
    png = tmp_path / "p.png"
    code, out, _ = run([writer.path, "--plot", png], capsys)
    assert code == 0 and png.stat().st_size > 10_000
    from PIL import Image
    with Image.open(png) as image:          # one row more than without a shadow (11 in + 3 in) x 80 dpi
        assert image.size[1] == 14 * 80


def test_the_documented_shadow_line_is_what_the_recorder_writes():
    from session_schema import doc_tables
    assert [f.name for f in doc_tables()["shadow"]] == list(S.LINE_FIELDS)   # real files: test_shadow_run.py


def test_the_shadow_runner_is_acts_with_the_shadows_device_dtype_priority_and_one_thread(monkeypatch):
    """make_shadow_runner goes through act's make_runner, with the shadow's settings (TickRunner
    itself, the hardware boundary here, is only captured: its CUDA path is tests/gpu's)."""
    import torch
    import shm_vla.model as model
    from shm_vla.workers.shadow import make_shadow_runner
    seen = {}
    monkeypatch.setattr(model, "TickRunner", lambda loaded, **kw: seen.update(kw) or "runner")
    threads = torch.get_num_threads()
    try:
        cfg = config.load("t", None, ['model.act_device="cuda:0"', 'model.act_dtype="bfloat16"', "model.act_threads=2",
                                      'shadow.device="cuda:1"'])
        assert make_shadow_runner(cfg, object()) == "runner"
        assert (seen["device"], seen["dtype"], seen["stream_priority"]) == ("cuda:1", torch.bfloat16, 0)
        assert torch.get_num_threads() == 1 and cfg.model.act_threads == 2      # act's config untouched
        assert seen["flow_steps"] == cfg.model.flow_steps and seen["use_cuda_graph"] == cfg.model.cuda_graph
        cfg = config.load("t", None, ['model.act_dtype="bfloat16"', 'shadow.dtype="float32"'])
        make_shadow_runner(cfg, object())
        assert (seen["device"], seen["dtype"]) == ("cpu", torch.float32)       # act's device, its own dtype
    finally:
        torch.set_num_threads(threads)
