"""The shadow beside act in one process: real rings, real tiny models, act's real tick.

The strongest check that the shadow reads the records act used, and not newer ones: after
act's tick, every input ring gets newer records (other values) before the shadow runs; a
regression shadow of act's own checkpoint must still give act's actions bit for bit.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from procs import free_port
from shm_vla import config
from shm_vla import shadow_tick as S
from shm_vla.model import load_checkpoint
from shm_vla.model.make_checkpoint import make_checkpoint
from shm_vla.process import Runtime
from shm_vla.streams import HOLD_REASONS, Streams
from shm_vla.workers.act import ActWorker, Commander, Inputs, make_runner
from shm_vla.workers.shadow import Identity, RecordReader, ShadowWorker, make_shadow_runner

SENSOR_DEPTH = 256


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"regression": make_checkpoint(root / "reg.pt", "tiny", "regression"),
            "flow": make_checkpoint(root / "flow.pt", "tiny", "flow"),
            "flow-other": make_checkpoint(root / "flow1.pt", "tiny", "flow", seed=1)}


class Cell:
    """act's rings and worker, and a shadow of `shadow_ckpt` reading them, all in this process."""

    def __init__(self, instance: str, act_ckpt, shadow_ckpt):
        # no robot listens on the command port: act's sends fail (counted), which changes nothing here
        self.cfg = cfg = config.load(instance, None, [f'command.connect="tcp://127.0.0.1:{free_port()}"',
                                                      f"sensor.ring_depth={SENSOR_DEPTH}",
                                                      f'shadow.checkpoint="{shadow_ckpt}"'])
        act_loaded = load_checkpoint(act_ckpt, cfg.model)
        shadow_loaded = load_checkpoint(shadow_ckpt, cfg.model)
        info = act_loaded.info
        streams = Streams(cfg)
        self.rings = {"vl": streams.create_vl(info.vl_dim), "sensor": streams.create_sensor(),
                      "robot": streams.create_robot()}
        self.results = streams.create_results(info.horizon, info.action_dim, info.robot_window)
        self.out = streams.create_shadow_results(shadow_loaded.info.horizon, shadow_loaded.info.action_dim)
        self.act_rt, self.shadow_rt = Runtime(cfg, "act"), Runtime(cfg, "shadow")
        inputs = Inputs(cfg.sensor.window, info.robot_window, self.rings["vl"], self.rings["sensor"],
                        self.rings["robot"])
        self.act = ActWorker(self.act_rt, make_runner(cfg, act_loaded), inputs, self.results, Commander(self.act_rt))
        self.shadow_loaded = shadow_loaded
        self.shadow = self.new_shadow()
        self.rng = np.random.default_rng(7)

    def new_shadow(self) -> ShadowWorker:
        """A shadow process's worker (a restarted one takes over the same rings)."""
        cfg, info = self.cfg, self.shadow_loaded.info
        reader = RecordReader(cfg.sensor.window, info.robot_window, self.rings["vl"], self.rings["sensor"],
                              self.rings["robot"])
        return ShadowWorker(self.shadow_rt, make_shadow_runner(cfg, self.shadow_loaded), reader, self.results,
                            self.out, Identity(str(cfg.shadow.checkpoint), "ab" * 32), info.model_type)

    def feed(self, n_sensor: int = 70, n_robot: int = 20) -> None:
        """Fresh inputs of random values, captured just now."""
        now = time.monotonic_ns()
        for _ in range(n_sensor):
            self.rings["sensor"].write(self.rng.normal(size=1026).astype(np.float32), capture_mono_ns=now)
        for _ in range(n_robot):
            self.rings["robot"].write(self.rng.normal(size=12).astype(np.float32), capture_mono_ns=now)
        with self.rings["vl"].loan() as slot:
            slot["feature"] = self.rng.normal(size=slot["feature"].shape)
            slot["update"] = self.rings["vl"].head + 1
            slot["frame_recv_mono_ns"] = now
            slot["capture_mono_ns"] = now

    def tick(self) -> np.void:
        self.act.tick(time.monotonic_ns(), 0.0)
        return last(self.results)

    def close(self) -> None:
        self.act.commander.close()
        self.shadow_rt.close()
        self.act_rt.close()


def last(ring) -> np.void:
    out = np.zeros(1, ring.dtype)
    ring.latest(out)
    return out[0]


@pytest.fixture
def cell_of(instance):
    made = []

    def make(act_ckpt, shadow_ckpt) -> Cell:
        made.append(Cell(instance, act_ckpt, shadow_ckpt))
        return made[-1]
    yield make
    for cell in made:
        cell.close()


def test_a_regression_shadow_of_acts_checkpoint_gives_acts_actions_from_the_records_act_used(cell_of, checkpoints):
    cell = cell_of(checkpoints["regression"], checkpoints["regression"])
    for _ in range(3):
        cell.feed()
        live = cell.tick()
        assert HOLD_REASONS[live["held"]] == ""
        cell.feed()                        # newer records everywhere before the shadow reads: not these
        assert cell.shadow.step()
        r = last(cell.out)
        assert S.STATUSES[r["status"]] == "ok" and r["action_id"] == live["action_id"]
        np.testing.assert_array_equal(r["actions"], live["actions"])          # bit for bit
        np.testing.assert_array_equal(r["divergence"], np.zeros(7, np.float32))
        for name in ("vl_record", "sensor_record", "robot_record"):
            assert r[name] == live[name]
        assert (r["sensor_rows"], r["robot_rows"]) == (live["sensor_buffer_size"], live["robot_buffer_size"])
    line = S.shadow_line(r)
    assert list(line) == list(S.LINE_FIELDS) and line["first_action"] == live["actions"][0].tolist()
    assert line["checkpoint_sha256"] == "ab" * 32 and line["model_type"] == "regression"
    assert not cell.shadow.step()                                           # each live tick once


def test_a_flow_shadow_of_acts_checkpoint_starts_from_the_live_ticks_noise(cell_of, checkpoints):
    """A flow head draws its initial noise: the shadow uses the live tick's seed, so the
    divergence measures the checkpoints, never two draws of noise (0 for act's own)."""
    cell = cell_of(checkpoints["flow"], checkpoints["flow"])
    for _ in range(3):
        cell.feed()
        live = cell.tick()
        assert HOLD_REASONS[live["held"]] == "" and live["noise_seed"] >= 0
        assert cell.shadow.step()
        r = last(cell.out)
        np.testing.assert_array_equal(r["actions"], live["actions"])          # bit for bit
        assert not r["divergence"].any()


def test_the_front_padding_is_acts_while_the_rings_fill(cell_of, checkpoints):
    cell = cell_of(checkpoints["regression"], checkpoints["regression"])
    cell.feed(n_robot=7)
    live = cell.tick()
    assert live["robot_buffer_size"] == 7
    cell.feed()
    cell.shadow.step()
    robot_in = cell.shadow.runner.robot_in
    assert (robot_in[:-7] == 0).all() and (robot_in[-7:] != 0).all()
    np.testing.assert_array_equal(last(cell.out)["actions"], live["actions"])


def test_another_checkpoint_diverges_by_what_it_computes(cell_of, checkpoints):
    cell = cell_of(checkpoints["flow"], checkpoints["flow-other"])
    cell.feed()
    live = cell.tick()
    cell.shadow.step()
    r = last(cell.out)
    assert S.STATUSES[r["status"]] == "ok" and r["model_type"] == S.MODEL_TYPES.index("flow_matching")
    np.testing.assert_array_equal(r["divergence"], np.abs(r["actions"][0] - live["actions"][0]))
    assert (r["divergence"] > 0).any()
    limits = np.array([cell.cfg.act.clamp_mm] * 3 + [cell.cfg.act.clamp_deg] * 3, np.float32)
    np.testing.assert_array_equal(r["dp"], np.clip(r["actions"][0, :6], -limits, limits))


def test_a_record_overwritten_before_the_shadow_reads_it_is_a_miss(cell_of, checkpoints):
    cell = cell_of(checkpoints["regression"], checkpoints["regression"])
    cell.feed()
    live = cell.tick()
    cell.feed(n_sensor=SENSOR_DEPTH, n_robot=0)        # the sensor window act used is gone
    cell.shadow.step()
    r = last(cell.out)
    assert S.STATUSES[r["status"]] == "missed_sensor" and r["action_id"] == live["action_id"]
    assert np.isnan(r["actions"]).all() and np.isnan(r["inference_ms"])
    assert cell.shadow.missed.value == 1 and cell.shadow.ticks.value == 1
    assert S.shadow_line(r)["actions"] is None


def test_behind_it_takes_the_newest_tick_and_counts_the_skipped(cell_of, checkpoints):
    cell = cell_of(checkpoints["regression"], checkpoints["regression"])
    for _ in range(4):
        cell.feed()
        live = cell.tick()
    assert cell.shadow.step()
    r = last(cell.out)
    assert r["action_id"] == live["action_id"] and cell.out.head == 1
    assert r["skipped"] == 3 and cell.shadow.skipped.value == 3
    np.testing.assert_array_equal(r["actions"], live["actions"])


def test_held_live_ticks_are_not_shadowed(cell_of, checkpoints):
    cell = cell_of(checkpoints["regression"], checkpoints["regression"])
    live = cell.tick()                                  # no inputs yet: held
    assert HOLD_REASONS[live["held"]] == "no_vl_feature"
    assert cell.shadow.step()
    assert cell.out.head == 0 and cell.shadow.live_held.value == 1


def test_a_restarted_shadow_goes_on_after_its_last_record_and_counts_the_gap(cell_of, checkpoints):
    cell = cell_of(checkpoints["regression"], checkpoints["regression"])
    cell.feed()
    cell.tick()
    cell.shadow.step()
    for _ in range(3):                                   # the shadow is down for three ticks
        cell.feed()
        live = cell.tick()
    restarted = cell.new_shadow()
    assert restarted.next_record == live["action_id"] - 2
    restarted.step()
    r = last(cell.out)
    assert r["action_id"] == live["action_id"] and r["skipped"] == 2 and cell.out.head == 2
