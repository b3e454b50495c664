"""Replay a session directory recorded with --save-data, with its original timing.

Layout read (the recorder's, see the pipeline issue):
  DIR/View1..View5/<camera>_<timestamp:.3f>.jpg   received JPEG bytes, capture time in the name
  DIR/robot_state_<stamp>.csv   recv_timestamp, origin_timestamp, send_timestamp,
                                force_placeholder, joint_1..joint_6, pose_x..pose_r
  DIR/sensor_data_<stamp>.npz   timestamps, send_timestamps, forces, alines (N x ascan_len)

Each stream is scheduled on its sender's clock (camera capture time, robot and sensor
send times). Streams whose first times lie within ``ORIGIN_TOLERANCE_S`` of each other
share one origin, so their relative timing is kept too; a stream whose sender clock is
further off starts with the others. Timestamps are shifted by one constant per stream
so they look current to the ingest (the relative timing is unchanged); keep the
originals with ``keep_timestamps``.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..protocol.sensor import COUNT_BYTES, max_records, record_dtype, write_count
from .base import NS_PER_S
from .camera import CameraSim
from .robot import RobotSim
from .sensor import SensorSim

ORIGIN_TOLERANCE_S = 5.0
START_LEAD_S = 0.2     # senders are created before the shared start
ROBOT_COLUMNS = ["origin_timestamp", "send_timestamp", "force_placeholder",
                 *[f"joint_{i}" for i in range(1, 7)], "pose_x", "pose_y", "pose_z", "pose_a", "pose_b", "pose_r"]


class ReplayError(ValueError):
    """A session directory that cannot be replayed (one line for the CLI)."""


# --------------------------------------------------------------------------- loading
def load_camera_frames(session: Path) -> list[tuple[float, str, Path]]:
    """``(capture timestamp, camera name, path)`` of every frame, in time order."""
    frames = []
    for path in session.glob("View*/*.jpg"):
        camera, _, stamp = path.stem.rpartition("_")
        try:
            frames.append((float(stamp), camera, path))
        except ValueError:
            raise ReplayError(f"{path}: name is not <camera>_<timestamp>.jpg") from None
    return sorted(frames)


def load_robot(session: Path) -> np.ndarray:
    """(N, 15) float64 rows of ROBOT_COLUMNS from every robot_state_*.csv, in time order."""
    rows = []
    for path in sorted(session.glob("robot_state_*.csv")):
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = set(ROBOT_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ReplayError(f"{path}: missing columns {sorted(missing)}")
            rows += [[float(row[name]) for name in ROBOT_COLUMNS] for row in reader]
    table = np.array(rows, dtype=np.float64).reshape(-1, len(ROBOT_COLUMNS))
    return table[np.argsort(table[:, 1], kind="stable")]


def load_sensor(session: Path) -> np.ndarray:
    """Structured records from every sensor_data_*.npz, in send-time order."""
    parts = []
    for path in sorted(session.glob("sensor_data_*.npz")):
        with np.load(path) as data:
            alines = data["alines"]
            records = np.zeros(len(alines), dtype=record_dtype(alines.shape[1]))
            records["timestamp"], records["send_timestamp"] = data["timestamps"], data["send_timestamps"]
            records["force"], records["ascan"] = data["forces"], alines
            parts.append(records)
    if not parts:
        return np.zeros(0, dtype=record_dtype())
    records = np.concatenate(parts)
    return records[np.argsort(records["send_timestamp"], kind="stable")]


def datagram_starts(send_timestamps: np.ndarray, limit: int) -> np.ndarray:
    """First record of each datagram: records sent together share a send timestamp
    (at most ``limit`` per datagram)."""
    run_starts = np.flatnonzero(np.r_[True, send_timestamps[1:] != send_timestamps[:-1]])
    run_ends = np.r_[run_starts[1:], len(send_timestamps)]
    return np.concatenate([np.arange(first, end, limit) for first, end in zip(run_starts, run_ends)])


# --------------------------------------------------------------------------- senders
@dataclass
class Clock:
    """Maps a stream's sender time to the replay: due offset and shifted timestamp."""
    origin_s: float
    shift_s: float

    def due_ns(self, stamp_s: float) -> int:
        return max(0, int((stamp_s - self.origin_s) * NS_PER_S))


class CameraReplay(CameraSim):
    def __init__(self, address: str, frames: list, clock: Clock, start_ns: int) -> None:
        super().__init__(address, cameras=[("", 0)], start_ns=start_ns, profile="ideal")
        self.frames, self.clock = frames, clock

    def _due_ns(self, k: int) -> int | None:
        return self.clock.due_ns(self.frames[k][0]) if k < len(self.frames) else None

    def _emit(self, k: int) -> None:
        stamp, camera, path = self.frames[k]
        self.send_frame(camera, stamp + self.clock.shift_s, path.read_bytes())


class RobotReplay(RobotSim):
    def __init__(self, address: str, rows: np.ndarray, clock: Clock, start_ns: int) -> None:
        super().__init__(address, start_ns=start_ns)
        self.rows, self.clock = rows, clock

    def _due_ns(self, k: int) -> int | None:
        return self.clock.due_ns(self.rows[k, 1]) if k < len(self.rows) else None

    def _emit(self, k: int) -> None:
        row = self.rows[k]
        self.send_state(row[0] + self.clock.shift_s, row[1] + self.clock.shift_s, row[2], row[3:9], row[9:15])


class SensorReplay(SensorSim):
    def __init__(self, address: tuple[str, int], records: np.ndarray, clock: Clock, start_ns: int) -> None:
        ascan_len = records.dtype["ascan"].shape[0]
        super().__init__(address, ascan_len=ascan_len, start_ns=start_ns)
        self.records, self.clock = records, clock
        limit = max_records(self.dtype)
        self.starts = np.r_[datagram_starts(records["send_timestamp"], limit), len(records)]
        self._buf = bytearray(COUNT_BYTES + limit * self.dtype.itemsize)
        self._view = np.frombuffer(self._buf, self.dtype, limit, COUNT_BYTES)

    def _due_ns(self, k: int) -> int | None:
        if k >= len(self.starts) - 1:
            return None
        return self.clock.due_ns(self.records["send_timestamp"][self.starts[k]])

    def _emit(self, k: int) -> None:
        first, end = self.starts[k], self.starts[k + 1]
        count = int(end - first)
        chunk = self._view[:count]
        chunk[:] = self.records[first:end]
        chunk["timestamp"] += self.clock.shift_s
        chunk["send_timestamp"] += self.clock.shift_s
        write_count(self._buf, count)
        self.send_datagram(memoryview(self._buf)[:COUNT_BYTES + count * self.dtype.itemsize], count)


def stream_clocks(first_stamps: dict[str, float], start_wall_s: float, keep_timestamps: bool) -> dict[str, Clock]:
    """One Clock per stream: a shared origin for streams whose senders' clocks agree."""
    common = min(first_stamps.values())
    clocks = {}
    for stream, first in first_stamps.items():
        origin = common if first - common <= ORIGIN_TOLERANCE_S else first
        clocks[stream] = Clock(origin, 0.0 if keep_timestamps else start_wall_s - origin)
    return clocks


def build_replay(session: str | Path, camera_address: str, robot_address: str, sensor_address: tuple[str, int],
                 keep_timestamps: bool = False) -> list:
    """The replay senders of a session (not started; they share one start time)."""
    session = Path(session)
    if not session.is_dir():
        raise ReplayError(f"replay directory {session} does not exist")
    frames, rows, records = load_camera_frames(session), load_robot(session), load_sensor(session)
    firsts = {}
    if frames:
        firsts["camera"] = frames[0][0]
    if len(rows):
        firsts["robot"] = float(rows[0, 1])
    if len(records):
        firsts["sensor"] = float(records["send_timestamp"][0])
    if not firsts:
        raise ReplayError(f"replay directory {session} holds no camera, robot or sensor data")
    start_ns = time.monotonic_ns() + int(START_LEAD_S * NS_PER_S)
    clocks = stream_clocks(firsts, time.time() + START_LEAD_S, keep_timestamps)
    senders = []
    if frames:
        senders.append(CameraReplay(camera_address, frames, clocks["camera"], start_ns))
    if len(rows):
        senders.append(RobotReplay(robot_address, rows, clocks["robot"], start_ns))
    if len(records):
        senders.append(SensorReplay(sensor_address, records, clocks["sensor"], start_ns))
    return senders
