#!/usr/bin/env python3
"""A faithful seed-style receiver: one process, threads, locks and deques, a 10 ms poll loop.

    bench/baseline_threaded.py --instance NAME [--config TOML] [--set K=V ...]
                               [--checkpoint PATH] [--out DIR] [--duration S] [--head seed|runner]
    shm-vla bench baseline-threaded ...     (the same script, run from a checkout)

Written from the description of the seed's Real_Inference/Async_inference_receiver.py, as
the comparison point for bench/e2e.py (issue 5 item 7). Everything shm-vla splits into
processes runs here in one Python process:

* camera thread: ZeroMQ PULL bound on ``camera.bind``; JSON metadata + JPEG decoded with
  simplejpeg (RGB) in the thread; ``(capture ts, receive time, frame)`` appended to a
  ``collections.deque`` per view under a ``threading.Lock``;
* robot thread: ZeroMQ SUB on ``robot.connect`` (topic ``robot.topic``), ``struct.unpack``
  of '<ddf12f', appended to a deque under a lock;
* sensor thread: UDP on ``sensor.bind`` (4 MiB receive buffer), one datagram per
  ``recvfrom``, each record unpacked in Python (``struct`` + ``np.frombuffer(...).copy()``)
  and appended to a deque under a lock;
* VL thread: polls every 10 ms; when every view has a new frame and ``act.vl_reuse`` ticks
  have passed since its last encode, it stacks the newest 5 views into a fresh array and
  encodes them with the same backbone as shm-vla (``model.backbone``);
* action loop (main thread): ``time.sleep(0.01)``, then "have 100 ms passed since the last
  action?" (relative timing, as the seed does: each tick is due 100 ms after the previous
  one *started*, so the schedule drifts); copies the windows out of the deques under the
  locks into fresh numpy arrays (front-padded with zeros while they fill), runs the head
  (default: :class:`SeedStyleTick` of bench/_seed_style.py, the seed's execution strategy:
  fresh tensors per call, fusion recomputed at every flow step; bf16 autocast on CUDA,
  float32 on CPU), sends ``{"cmd": "dpose", "dp": first action's first 6 values}`` on a
  ZeroMQ PUSH to ``command.connect`` (blocking, as the seed; bounded here by a 1 s send
  timeout so that the benchmark cannot hang), and logs one timing record.

Timing records go to ``OUT/async_inference_<stamp>/performance_timings_<stamp>.jsonl`` with
exactly the fields of shm-vla's recorder, so that ``shm-vla analyze`` applies:
``tick_lateness_ms`` is the tick's start minus the time it was due (the previous tick's start
+ 100 ms: the seed's own notion of its schedule), ages are receive-time ages (monotonic
clock) at the moment the windows were copied out, ``frame_age_ms`` is the age of the oldest
view in the VL feature used, ``total_time`` runs from the tick's start to the sent command.
No staleness gate and no clamp (the seed had neither); a tick without a VL feature or
without any sensor/robot sample sends nothing and is logged with ``held`` set.

At exit (``--duration``, SIGTERM or SIGINT) it prints one JSON summary line on stdout.
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import simplejpeg
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the checkout on sys.path)

from shm_vla import config as configmod  # noqa: E402
from shm_vla.protocol.robot import ROBOT_DIMS  # noqa: E402
from shm_vla.sim.base import loopback  # noqa: E402

ACTION_POLL_S = 0.01          # the seed's action-loop poll
VL_POLL_S = 0.01
RECV_TIMEOUT_MS = 100         # socket waits, so that threads see the stop flag
ROBOT_STRUCT = struct.Struct("<ddf12f")
SENSOR_HEAD = struct.Struct("<ddf")
COUNT = struct.Struct("<I")
FLUSH_EVERY = 10
SEND_TIMEOUT_MS = 1000
CAMERA_DEQUE = 5              # frames kept per view
SENSOR_DEQUE_S = 2.0          # seconds of sensor / robot history kept
ROBOT_DEQUE_S = 2.0


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


# --------------------------------------------------------------------------- shared state
class Buffers:
    """Everything the threads share: deques, each guarded by its own lock."""

    def __init__(self, cfg, robot_window: int):
        self.view_locks = [threading.Lock() for _ in range(5)]
        self.views = [collections.deque(maxlen=CAMERA_DEQUE) for _ in range(5)]
        self.view_counts = [0] * 5
        self.sensor_lock = threading.Lock()
        self.sensor = collections.deque(maxlen=max(cfg.sensor.window, int(cfg.sensor.rate_hz * SENSOR_DEQUE_S)))
        self.robot_lock = threading.Lock()
        self.robot = collections.deque(maxlen=max(robot_window, int(cfg.robot.rate_hz * ROBOT_DEQUE_S)))
        self.vl_lock = threading.Lock()
        self.vl = None        # dict: feature, update, encode_ms, published_ms, oldest_frame_ms, skew_ms
        self.counts = collections.Counter()


class TimingLog:
    """performance_timings_<stamp>.jsonl in a session directory, as shm-vla's recorder writes it."""

    def __init__(self, out_dir: Path):
        stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
        self.session_dir = out_dir / f"async_inference_{stamp}"
        self.session_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.session_dir / f"performance_timings_{stamp}.jsonl"
        self._file = open(self.path, "w", encoding="utf-8")
        self._lock = threading.Lock()
        self._unflushed = 0

    def write(self, record: dict) -> None:
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._unflushed += 1
            if self._unflushed >= FLUSH_EVERY:
                self._file.flush()
                self._unflushed = 0

    def close(self) -> None:
        with self._lock:
            self._file.close()


# --------------------------------------------------------------------------- input threads
class CameraThread(threading.Thread):
    def __init__(self, cfg, buffers: Buffers, stop: threading.Event, ctx: zmq.Context):
        super().__init__(name="camera", daemon=True)
        self.cfg, self.buffers, self.stop = cfg, buffers, stop
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, cfg.camera.rcvhwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(cfg.camera.bind)
        self.colorspace = cfg.camera.channel_order
        self.serials = {str(s): cfg.camera.views.index(v) for s, v in cfg.camera.zed_serials.items()}
        self.oak = cfg.camera.views.index(cfg.camera.oak_view)

    def view_of(self, name: str) -> int | None:
        if name in self.cfg.camera.views:
            return self.cfg.camera.views.index(name)
        if "oak" in name.lower():
            return self.oak
        if "left" in name:
            for serial, view in self.serials.items():
                if serial in name:
                    return view
        return None

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(RECV_TIMEOUT_MS):
                continue
            frames = self.sock.recv_multipart()
            recv_ms = now_ms()
            try:
                self.handle(frames, recv_ms)
            except (ValueError, KeyError, TypeError, RuntimeError):
                self.buffers.counts["camera_errors"] += 1
        self.sock.close(0)

    def handle(self, frames: list, recv_ms: float) -> None:
        meta = json.loads(frames[0])
        view = self.view_of(str(meta["camera"]))
        if view is None:
            self.buffers.counts["camera_ignored"] += 1
            return
        image = simplejpeg.decode_jpeg(frames[1], colorspace=self.colorspace)
        if image.shape[:2] != (self.cfg.camera.height, self.cfg.camera.width):
            self.buffers.counts["camera_wrong_size"] += 1
            return
        b = self.buffers
        with b.view_locks[view]:
            b.views[view].append((float(meta["timestamp"]), recv_ms, image))
            b.view_counts[view] += 1
        b.counts["camera_frames"] += 1


class RobotThread(threading.Thread):
    def __init__(self, cfg, buffers: Buffers, stop: threading.Event, ctx: zmq.Context):
        super().__init__(name="robot", daemon=True)
        self.buffers, self.stop = buffers, stop
        self.topic = cfg.robot.topic.encode()
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        self.sock.connect(cfg.address(cfg.robot.connect))

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(RECV_TIMEOUT_MS):
                continue
            frames = self.sock.recv_multipart()
            recv_ms = now_ms()
            if len(frames) != 2 or frames[0] != self.topic or len(frames[1]) != ROBOT_STRUCT.size:
                self.buffers.counts["robot_errors"] += 1
                continue
            values = ROBOT_STRUCT.unpack(frames[1])
            state = np.array(values[3:], dtype=np.float32)      # 6 joints then 6 pose values
            with self.buffers.robot_lock:
                self.buffers.robot.append((recv_ms, values[0], state))
            self.buffers.counts["robot_samples"] += 1
        self.sock.close(0)


class SensorThread(threading.Thread):
    def __init__(self, cfg, buffers: Buffers, stop: threading.Event):
        super().__init__(name="sensor", daemon=True)
        self.buffers, self.stop = buffers, stop
        self.ascan_len = cfg.sensor.ascan_len
        self.record_bytes = SENSOR_HEAD.size + 4 * self.ascan_len
        host, _, port = cfg.sensor.bind.rpartition(":")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.sensor.rcvbuf_bytes)
        self.sock.bind((host, int(port)))
        self.sock.settimeout(RECV_TIMEOUT_MS / 1000)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            recv_ms = now_ms()
            records = self.parse(data, recv_ms)
            if records is None:
                self.buffers.counts["sensor_errors"] += 1
                continue
            with self.buffers.sensor_lock:
                self.buffers.sensor.extend(records)
            self.buffers.counts["sensor_records"] += len(records)
        self.sock.close()

    def parse(self, data: bytes, recv_ms: float) -> list | None:
        if len(data) < COUNT.size:
            return None
        (n,) = COUNT.unpack_from(data)
        if n == 0 or len(data) != COUNT.size + n * self.record_bytes:
            return None
        records = []
        for i in range(n):
            off = COUNT.size + i * self.record_bytes
            ts, _send_ts, force = SENSOR_HEAD.unpack_from(data, off)
            ascan = np.frombuffer(data, np.float32, self.ascan_len, off + SENSOR_HEAD.size).copy()
            records.append((recv_ms, ts, force, ascan))
        return records


# --------------------------------------------------------------------------- VL thread
class VlThread(threading.Thread):
    def __init__(self, cfg, buffers: Buffers, stop: threading.Event, backbone, log: TimingLog):
        super().__init__(name="vl", daemon=True)
        self.buffers, self.stop, self.backbone, self.log = buffers, stop, backbone, log
        self.min_interval_ms = cfg.act.vl_reuse / cfg.act.tick_hz * 1e3
        self.last_start_ms = -self.min_interval_ms
        self.used_counts = [0] * 5
        self.update = 0

    def run(self) -> None:
        while not self.stop.is_set():
            time.sleep(VL_POLL_S)
            if now_ms() - self.last_start_ms < self.min_interval_ms:
                continue
            if not all(c > used for c, used in zip(self.buffers.view_counts, self.used_counts)):
                continue
            self.last_start_ms = now_ms()
            self.encode_newest()

    def newest_views(self) -> tuple[np.ndarray, list, list]:
        b = self.buffers
        frames, captures, received = [], [], []
        for i in range(5):
            with b.view_locks[i]:
                capture_ts, recv_ms, image = b.views[i][-1]
                self.used_counts[i] = b.view_counts[i]
            frames.append(image)
            captures.append(capture_ts)
            received.append(recv_ms)
        return np.stack(frames), captures, received

    def encode_newest(self) -> None:
        views, captures, received = self.newest_views()
        t0 = now_ms()
        feature = self.backbone.encode(views)
        encode_ms = now_ms() - t0
        self.update += 1
        skew_ms = (max(captures) - min(captures)) * 1e3
        with self.buffers.vl_lock:
            self.buffers.vl = {"feature": feature, "update": self.update, "encode_ms": encode_ms,
                               "published_ms": now_ms(), "oldest_frame_ms": min(received), "skew_ms": skew_ms}
        self.log.write({"timestamp": time.time(), "vl_update_number": self.update, "vl_update_time": encode_ms,
                        "view_skew_ms": skew_ms, "capture_timestamps": captures})


# --------------------------------------------------------------------------- the head
class SeedHead:
    """The seed's tick strategy (SeedStyleTick), timed per stage like the deployed receiver."""

    def __init__(self, cfg, loaded):
        import torch
        from _seed_style import SeedStyleTick
        self.torch = torch
        device = torch.device(cfg.model.act_device)
        on_cuda = device.type == "cuda"
        self.tick = SeedStyleTick(loaded.heads, device=device, flow_steps=cfg.model.flow_steps,
                                  solver=cfg.model.flow_solver, horizon=cfg.model.flow_horizon,
                                  dtype=torch.bfloat16 if on_cuda else torch.float32, autocast=on_cuda)

    def __call__(self, vl, sensor, robot) -> tuple[np.ndarray, float, float, float]:
        torch, t = self.torch, self.tick
        with torch.no_grad():
            t0 = now_ms()
            vl_t = torch.tensor(vl, dtype=torch.float32).view(1, 1, -1).to(t.device)
            s_t = torch.tensor(sensor, dtype=torch.float32).unsqueeze(0).to(t.device)
            r_t = torch.tensor(robot, dtype=torch.float32).unsqueeze(0).to(t.device)
            with torch.autocast(t.device.type, dtype=t.dtype, enabled=t.autocast):
                sf = t.heads.sensor_encoder(s_t)
                t1 = now_ms()
                rf = t.heads.robot_state_encoder(r_t)
                t2 = now_ms()
                if t.heads.is_flow:
                    out = t._sample(vl_t, sf, rf)
                else:
                    z = torch.zeros(1, t.heads.horizon, t.heads.sizes.action_dim, device=t.device)
                    out, _ = t.heads.action_expert(vl_t, z, sf, rf)
            actions = out.float().cpu().numpy()[0]
            t3 = now_ms()
        return actions, t1 - t0, t2 - t1, t3 - t2


class RunnerHead:
    """shm-vla's TickRunner (``--head runner``): isolates the runtime from the head's strategy."""

    def __init__(self, cfg, loaded):
        from shm_vla.workers.act import make_runner
        self.runner = make_runner(cfg, loaded)

    def __call__(self, vl, sensor, robot) -> tuple[np.ndarray, float, float, float]:
        r = self.runner
        r.vl_in[:], r.sensor_in[:], r.robot_in[:] = vl, sensor, robot
        res = r.run()
        return res.actions.copy(), res.sensor_encoding_ms, res.robot_encoding_ms, res.action_prediction_ms


# --------------------------------------------------------------------------- action loop
class ActionLoop:
    def __init__(self, cfg, buffers: Buffers, head, log: TimingLog, ctx: zmq.Context, sensor_window: int,
                 robot_window: int):
        self.cfg, self.buffers, self.head, self.log = cfg, buffers, head, log
        self.period_s = 1.0 / cfg.act.tick_hz
        self.sensor_window, self.robot_window = sensor_window, robot_window
        self.channels = cfg.sensor_channels
        self.force_col = 0 if cfg.sensor.force_position == "first" else self.channels - 1
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        self.sock.connect(cfg.address(cfg.command.connect))
        self.action_id = 0

    def run(self, stop: threading.Event, deadline: float | None) -> None:
        last_action_time = time.time()
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            now = time.time()
            if now - last_action_time >= self.period_s:
                lateness_ms = (now - (last_action_time + self.period_s)) * 1e3
                last_action_time = now
                self.tick(now, lateness_ms)
            time.sleep(ACTION_POLL_S)
        self.sock.close(0)

    def copy_windows(self) -> tuple[np.ndarray, int, float | None, np.ndarray, int, float | None]:
        b = self.buffers
        with b.sensor_lock:
            s_items = list(b.sensor)[-self.sensor_window:]
        with b.robot_lock:
            r_items = list(b.robot)[-self.robot_window:]
        sensor = np.zeros((self.sensor_window, self.channels), np.float32)
        if s_items:
            rows = sensor[self.sensor_window - len(s_items):]
            rows[:, self.force_col] = [item[2] for item in s_items]
            asc = slice(1, None) if self.force_col == 0 else slice(0, -1)
            rows[:, asc] = np.stack([item[3] for item in s_items])
        robot = np.zeros((self.robot_window, ROBOT_DIMS), np.float32)
        if r_items:
            robot[self.robot_window - len(r_items):] = np.stack([item[2] for item in r_items])
        s_recv = s_items[-1][0] if s_items else None
        r_recv = r_items[-1][0] if r_items else None
        return sensor, len(s_items), s_recv, robot, len(r_items), r_recv

    def tick(self, wall: float, lateness_ms: float) -> None:
        t0 = now_ms()
        with self.buffers.vl_lock:
            vl = self.buffers.vl
        sensor, ks, s_recv, robot, kr, r_recv = self.copy_windows()
        at = now_ms()
        rec = {"timestamp": wall, "action_id": self.action_id,
               "vl_update_number": vl["update"] if vl else 0, "vl_update_time": 0.0,
               "sensor_encoding_time": 0.0, "robot_encoding_time": 0.0, "action_prediction_time": 0.0,
               "total_time": 0.0, "sensor_buffer_size": ks, "robot_buffer_size": kr,
               "tick_lateness_ms": lateness_ms,
               "sensor_age_ms": at - s_recv if s_recv is not None else None,
               "robot_age_ms": at - r_recv if r_recv is not None else None,
               "vl_age_ms": at - vl["published_ms"] if vl else None,
               "frame_age_ms": at - vl["oldest_frame_ms"] if vl else None,
               "view_skew_ms": vl["skew_ms"] if vl else None, "held": None}
        held = "no_vl_feature" if vl is None else "no_sensor" if not ks else "no_robot" if not kr else None
        if held is None:
            self.infer_and_send(rec, vl["feature"], sensor, robot)
        else:
            rec["held"] = held
            self.buffers.counts[f"held.{held}"] += 1
        rec["total_time"] = now_ms() - t0
        self.log.write(rec)
        self.action_id += 1

    def infer_and_send(self, rec: dict, feature, sensor, robot) -> None:
        actions, s_ms, r_ms, p_ms = self.head(feature, sensor, robot)
        rec.update(sensor_encoding_time=s_ms, robot_encoding_time=r_ms, action_prediction_time=p_ms)
        dp = [float(v) for v in actions[0, :6]]
        try:
            self.sock.send_string(json.dumps({"cmd": "dpose", "dp": dp}))
            self.buffers.counts["commands_sent"] += 1
        except zmq.Again:
            self.buffers.counts["commands_failed"] += 1


# --------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="baseline_threaded", description=__doc__.splitlines()[0])
    configmod.add_arguments(p)
    p.add_argument("--checkpoint", default=None, help="override model.checkpoint")
    p.add_argument("--out", default=None, help="session directory root (default record.out_dir)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--head", choices=("seed", "runner"), default="seed",
                   help="seed: the seed's tick strategy (default); runner: shm-vla's TickRunner")
    return p.parse_args(argv)


def load_model(cfg, head_kind: str):
    import torch
    from shm_vla.model import load_checkpoint, make_backbone
    torch.set_num_threads(cfg.model.act_threads)
    loaded = load_checkpoint(cfg.model.checkpoint, cfg.model, sensor_window=cfg.sensor.window,
                             sensor_channels=cfg.sensor_channels)
    backbone = make_backbone(cfg.model, loaded.info.vl_dim, device=cfg.model.vl_device,
                             vl_state_dict=loaded.vl_state_dict)
    backbone.warmup()
    head = SeedHead(cfg, loaded) if head_kind == "seed" else RunnerHead(cfg, loaded)
    return loaded.info, backbone, head


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.checkpoint:
        args.overrides.append(f'model.checkpoint="{Path(args.checkpoint).resolve()}"')
    cfg = configmod.from_args(args)
    cfg.camera.bind, cfg.sensor.bind = loopback(cfg.camera.bind), loopback(cfg.sensor.bind)   # loopback only
    info, backbone, head = load_model(cfg, args.head)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    buffers = Buffers(cfg, info.robot_window)
    log = TimingLog(Path(args.out or cfg.record.out_dir).resolve())
    ctx = zmq.Context()
    threads = [CameraThread(cfg, buffers, stop, ctx), RobotThread(cfg, buffers, stop, ctx),
               SensorThread(cfg, buffers, stop), VlThread(cfg, buffers, stop, backbone, log)]
    loop = ActionLoop(cfg, buffers, head, log, ctx, cfg.sensor.window, info.robot_window)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    print(f"baseline_threaded: ready, session {log.session_dir}", file=sys.stderr, flush=True)
    try:
        for t in threads:
            t.start()
        loop.run(stop, deadline)
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        log.close()
        if not any(t.is_alive() for t in threads):
            ctx.term()
    summary = {"session_dir": str(log.session_dir), "timings": str(log.path), "ticks": loop.action_id,
               "head": args.head, "model_type": info.model_type, **dict(sorted(buffers.counts.items()))}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
