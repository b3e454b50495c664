"""Checkpoints of other sizes, and a session recorded in one process, for the replay tests: the real act tick (ActWorker, its
runner, its gate) and the real recorder conversion (Recorder.drain) over real rings fed with
changing inputs, written with --save-data. No sockets are listened on, no process started."""
from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import numpy as np
import torch

from shm_vla import config
from shm_vla import pipeline as P
from shm_vla.model import load_checkpoint
from shm_vla.model.make_checkpoint import deployed_state_dict, make_checkpoint, preset_sizes, random_heads
from shm_vla.process import Runtime
from shm_vla.streams import Streams
from shm_vla.workers.act import ActWorker, Commander, Inputs, make_runner
from shm_vla.workers.record import Recorder, session_config
from shm_vla.workers.session_files import SessionWriter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replay_checkpoints(root: Path) -> dict:
    """Tiny checkpoints: flow, another flow (other weights), regression."""
    return {"flow": make_checkpoint(root / "flow.pt", "tiny", "flow"),
            "flow_other": make_checkpoint(root / "flow_other.pt", "tiny", "flow", seed=1),
            "regression": make_checkpoint(root / "reg.pt", "tiny", "regression")}


def sized_checkpoint(path: Path, seed: int = 3, **sizes) -> Path:
    """A tiny flow checkpoint with other sizes (e.g. vl_dim=32, robot_window=120)."""
    s = dataclasses.replace(preset_sizes("tiny", "flow"), **sizes)
    s = dataclasses.replace(s, fusion_width=s.vl_dim + 2 * s.sensor_out)
    torch.save({"model_state_dict": deployed_state_dict(random_heads(s, seed))}, path)
    return path


def record_session(tmp_path: Path, instance: str, ckpt: Path, ticks: int, close: bool = True,
                   overrides: tuple = ()) -> Path:
    """Run `ticks` act ticks and record them as the recorder does; the session directory.
    The first ticks' windows are front-padded (few records yet); later ones hold only fresh
    records (the gate bounds a window's oldest record by capture time)."""
    cfg = config.load(instance, None, [f'command.connect="tcp://127.0.0.1:{free_port()}"', "robot.ring_depth=512",
                                       "model.seed=7", *overrides])
    cfg.model.checkpoint = str(ckpt)
    loaded = load_checkpoint(ckpt, cfg.model, sensor_window=cfg.sensor.window)
    streams = Streams(cfg)
    vl, sensor, robot = streams.create_vl(loaded.info.vl_dim), streams.create_sensor(), streams.create_robot()
    results = streams.create_results(loaded.info.horizon, loaded.info.action_dim)
    act_rt, rec_rt = Runtime(cfg, "act"), Runtime(cfg, "record")
    worker = ActWorker(act_rt, make_runner(cfg, loaded),
                       Inputs(cfg.sensor.window, loaded.info.robot_window, vl, sensor, robot), results,
                       Commander(act_rt))
    writer = SessionWriter(tmp_path / "out", save_data=True, views=cfg.camera.views)
    writer.write_config(session_config(cfg))
    recorder = Recorder(rec_rt, writer, results, vl, {P.ROBOT: robot, P.SENSOR: sensor})
    rng = np.random.default_rng(0)
    try:
        for i in range(ticks):
            now = time.monotonic_ns()
            early = i < 4
            for _ in range(7 if early else 70):
                sensor.write(rng.standard_normal(cfg.sensor_channels).astype(np.float32), capture_mono_ns=now)
            for _ in range(3 if early else 100):
                robot.write(rng.standard_normal(12).astype(np.float32), capture_mono_ns=now)
            if i % 4 == 0:
                with vl.loan(src_ts=1.7e9 + i) as slot:
                    slot["feature"] = rng.standard_normal(loaded.info.vl_dim)
                    slot["update"], slot["encode_ms"] = vl.head + 1, 5.0
                    slot["capture_mono_ns"] = slot["frame_recv_mono_ns"] = now
                    slot["capture_ts"] = 1.7e9 + i
            worker.tick(now, 0.0)
            recorder.drain()
        if close:
            writer.close()
    finally:
        worker.commander.close()
        for ring in (vl, sensor, robot, results):
            ring.close()
        act_rt.close()
        rec_rt.close()
    return writer.path
