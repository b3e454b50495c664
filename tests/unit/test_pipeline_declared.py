"""The pipeline declaration (shm_vla/pipeline.py) is the one source of names: the systemd
units, docs/SHM.md's table of rings, the supervisor, stat and streams.py all agree with it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from shm_vla import config, pipeline as P
from shm_vla.stat_model import INPUTS, expected_rates
from shm_vla.streams import Streams

REPO = Path(__file__).resolve().parents[2]


def unit_keys(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).extend(value.split())
    return keys


@pytest.mark.parametrize("stage", P.STAGES.values(), ids=lambda s: s.name)
def test_each_stage_has_its_unit_running_its_command_after_its_writers(stage):
    keys = unit_keys(REPO / "systemd" / stage.unit)
    exec_start = keys["ExecStart"]
    assert exec_start[1:1 + len(stage.command)] == list(stage.command), exec_start
    after = set(keys.get("After", []))
    for writer in P.writers_of(stage):
        assert P.STAGES[writer].unit.replace("@.service", "@%i.service") in after, (stage.name, writer)


def test_the_instance_unit_wants_exactly_the_stages():
    wants = set(unit_keys(REPO / "systemd" / "shm-vla@.service")["Wants"])
    assert wants == {s.unit.replace("@.service", "@%i.service") for s in P.STAGES.values()}


def test_every_stage_unit_in_systemd_is_declared():
    units = {p.name for p in (REPO / "systemd").glob("shm-vla-*@.service")} - {"shm-vla-mps@.service"}
    assert units == {s.unit for s in P.STAGES.values()}


def _expand(cell: str) -> list[str]:
    m = re.fullmatch(r"(\w+?)(\d)\.\.(\w+?)(\d)", cell)
    return [f"{m[1]}{i}" for i in range(int(m[2]), int(m[4]) + 1)] if m else [cell]


def test_docs_shm_table_of_rings_matches_the_declaration():
    text = (REPO / "docs" / "SHM.md").read_text()
    rows = re.findall(r"^\| (\S+) \| [^|]+ \| ([^|]+) \| ([^|]+) \|$", text, re.M)
    table = {}
    for cell, writer, readers in rows:
        if cell in ("stream", "---"):
            continue
        for name in _expand(cell):
            table[name] = (writer.strip(), readers.strip())
    assert set(table) == set(P.STREAMS)
    for name, (writer, readers) in table.items():
        assert writer.replace(" ", "-") == P.STREAMS[name].writer, name
        declared = {s.name for s in P.STAGES.values() if name in s.reads + s.reads_optional}
        declared_save = {s.name for s in P.STAGES.values() if name in s.reads_with_save_data}
        listed = [r.strip() for r in readers.split(",")]
        assert {r.replace(" ", "-") for r in listed if "--save-data" not in r} == declared, name
        assert {r.split(" (")[0] for r in listed if "--save-data" in r} == declared_save, name


def test_streams_stat_and_stop_order_derive_from_it():
    cfg = config.Config()
    specs = Streams(cfg).ring_specs(vl_dim=8, horizon=8, action_dim=7)
    assert [s.stream for s in specs] == list(P.VIEWS + P.JPEGS + (P.ROBOT, P.SENSOR, P.VL_FEATURE, P.RESULTS))
    specs = Streams(cfg).ring_specs(vl_dim=8, horizon=8, action_dim=7, shadow=(8, 7))      # with a shadow
    assert set(specs_names := {s.stream for s in specs}) == set(P.STREAMS), specs_names
    assert set(expected_rates(cfg)) == set(P.STREAMS) - set(P.JPEGS) - {P.SHADOW_RESULTS}     # no shadow
    assert set(expected_rates(config.load("t", None, ['shadow.checkpoint="/x.pt"']))) == set(P.STREAMS) - set(P.JPEGS)
    assert {process for process, _ in INPUTS.values()} == {P.INGEST_CAMERA, P.INGEST_ROBOT, P.INGEST_SENSOR}
    order = P.stop_order([P.SIM, *P.STAGES])
    assert order[:4] == [P.ACT, P.SHADOW, P.RECORD, P.VL] and order[-1] == P.SIM


def test_the_shadow_is_the_one_optional_stage_and_runs_only_when_configured():
    """An optional stage is started by neither `shm-vla run` nor (in effect) systemd unless the
    configuration asks for it; its stream is never one a stage waits for."""
    assert [s.name for s in P.STAGES.values() if s.enabled is not None] == [P.SHADOW]
    assert P.SHADOW not in {s.name for s in P.stages(config.Config())}
    with_shadow = config.load("t", None, ['shadow.checkpoint="/x.pt"'])
    assert [s.name for s in P.stages(with_shadow)] == list(P.STAGES)
    for stage in P.STAGES.values():
        assert P.SHADOW_RESULTS not in stage.reads + stage.reads_with_save_data    # waited for by no one
    assert P.SHADOW_RESULTS in P.STAGES[P.RECORD].reads_optional
    assert set(P.STAGES[P.SHADOW].reads) == set(P.STAGES[P.ACT].reads) | {P.RESULTS}   # what act reads, and act's


def test_the_tick_table_is_the_session_schema_and_the_ring():
    from shm_vla import tick
    from shm_vla.workers import session_stats as S
    assert S.ACTION_FIELDS + S.ACTION_EXTRA_FIELDS == tuple(f.line for f in tick.TICK_FIELDS if f.line)
    dtype = tick.results_dtype(8, 7)
    assert {f.ring for f in tick.TICK_FIELDS if f.ring} == set(dtype.names)
    assert dtype["actions"].shape == (8, 7) and dtype["dp"].shape == (tick.DP_DIMS,)
    assert tick.stat_gauge("total_ms") == "latency_ms" and tick.stat_gauge("tick_lateness_ms") == "lateness_ms"


def test_each_stream_names_its_own_metadata_value(instance):
    """No overloaded `aux`: a reader sees each stream's per-stream value under its name."""
    import numpy as np
    from shm_vla.shm.ring import META_DTYPE, Ring
    cfg = config.Config(instance=instance)
    streams = Streams(cfg)
    jpeg, robot = streams.create_jpeg(0), streams.create_robot()
    try:
        jpeg.write(np.zeros(cfg.camera.jpeg_max_bytes, np.uint8), aux=1234.0)
        robot.write(np.zeros(12, np.float32), aux=-0.5)
        reader = streams.attach_jpeg(0)
        meta = reader.new_meta(1)
        reader.latest(np.zeros((1, cfg.camera.jpeg_max_bytes), np.uint8), meta)
        assert meta["jpeg_bytes"][0] == 1234.0 and reader.meta_dtype.names[5] == "jpeg_bytes"
        generic = np.zeros(1, META_DTYPE)                          # a reader that does not care
        reader.latest(np.zeros((1, cfg.camera.jpeg_max_bytes), np.uint8), generic)
        assert generic["aux"][0] == 1234.0
        reader.close()
        r = Ring.attach(instance, P.ROBOT)
        assert r.meta["force"][0] == -0.5 and P.STREAMS[P.ROBOT].aux_field == "force"
        r.close()
    finally:
        jpeg.close()
        robot.close()
