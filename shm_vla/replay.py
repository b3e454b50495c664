"""`shm-vla replay SESSION_DIR --checkpoint PATH [--device cpu|cuda] [--json] [--plot F.png] [--vl]`:
re-run every recorded tick of a session through a checkpoint, offline, and say how far its
actions are from the recorded ones.

A session recorded with --save-data holds every input of every tick (docs/SESSION_FILES.md):
each tick line names the records it used (`vl_record`, `sensor_record`, `robot_record`, the
window sizes) and the seed of a flow head's initial noise (`noise_seed`); the VL features
(`vl_features_*.npz`), the robot rows (`ring_record` column) and the sensor records
(`records`) carry their ring record numbers. The replay feeds each tick that ran the model
those inputs, front-padded with zeros as act does, draws the same noise, and runs the head
with the same TickRunner settings (flow steps, solver, horizon, dtype, device, threads,
CUDA graph: the session's session_config_*.json; --device, --dtype, --threads override them),
one tick at a time, as fast as the device allows. Ticks held before the model ran have no
actions and are counted, not replayed.

Through the checkpoint the session was recorded with, on the same device, dtype and thread
count, the replay runs the very kernels act ran on the very inputs: on the CPU the actions
are bit-identical (max_abs_diff 0; see docs/SHADOW_AND_REPLAY.md for why, and for what breaks
it). Another checkpoint gives its difference, per tick and overall.

--vl re-encodes the recorded frames (the JPEGs, decoded as the camera ingest does) with the
configured backbone, compares the features with the recorded ones, and feeds the heads the
re-encoded features (a checkpoint with another VL width needs it).

Exit codes: 0 ticks were replayed; 1 nothing could be replayed, a --fail-above bound was
exceeded, or the plot could not be written; 2 the session or the checkpoint cannot be
replayed (one line says what is missing or does not fit).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import json
import os
import sys
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import tick as tickmod
from .config import Config
from .protocol.sensor import ascan_columns, force_column
from .workers.session_files import (
    ROBOT_CSV_ADDED, ROBOT_CSV_HEADER, SessionPaths, iter_json_lines, npz_arrays, parts_arrays,
)
from .workers.session_stats import HELD_FIELD, is_action_record, is_held

SCHEMA_VERSION = 1
EXIT_OK, EXIT_FAILED, EXIT_CANNOT = 0, 1, 2
INPUT_FIELDS = ("vl_record", "sensor_record", "robot_record", "noise_seed", "sensor_buffer_size")
ROBOT_VALUES = ROBOT_CSV_HEADER[4:]        # joints, then pose: the robot ring's 12 values
RING_RECORD = ROBOT_CSV_ADDED[0]
WORST_TICKS = 5
PREFIX = "shm-vla replay"


class CannotReplay(Exception):
    """The session or the checkpoint cannot be replayed; the message is one line for people."""


# --------------------------------------------------------------------------- the recorded session
@dataclass
class RecordedTick:
    action_id: int
    timestamp: float
    vl_record: int
    sensor_record: int
    sensor_rows: int               # the sensor window's recorded rows (the rest front-padded)
    robot_record: int
    noise_seed: int                # -1: none recorded (regression head)
    actions: np.ndarray            # (H, A) the recorded chunk


class RecordIndex:
    """Rows of a recorded array by ring record number (the recorder writes them ascending)."""

    def __init__(self, records: np.ndarray):
        records = np.asarray(records, np.int64)
        self.order = None
        if len(records) > 1 and not (np.diff(records) > 0).all():    # not as the recorder writes: sort
            self.order = np.argsort(records, kind="stable")
            records = records[self.order]
        self.records = records

    def window(self, newest: int, k: int):
        """The rows of ring records newest-k+1 .. newest (a slice or an index array), None
        unless every one of them is recorded."""
        first = newest - k + 1
        i = int(np.searchsorted(self.records, first))
        if k < 1 or first < 0 or i + k > len(self.records) or self.records[i] != first \
                or self.records[i + k - 1] != newest:
            return None
        return slice(i, i + k) if self.order is None else self.order[i:i + k]

    def row(self, record: int):
        return self.window(record, 1)


@dataclass
class RecordedSession:
    paths: SessionPaths
    cfg: Config
    checkpoint_file: dict
    ticks: list
    skipped: Counter
    vl: dict                       # records, updates, features (N, V), capture_timestamps (N, views)
    sensor: dict                   # records, forces, alines
    robot_records: np.ndarray
    robot_values: np.ndarray       # (N, 12) float32
    finalised: bool
    warnings: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.paths.root.name


def recorded_config(table: dict) -> Config:
    """The Config a session was recorded with, from its session_config file; keys this
    version does not know are left out (a session of another version)."""
    import dataclasses
    cfg = Config()
    for section in dataclasses.fields(cfg):
        current, values = getattr(cfg, section.name), table.get(section.name)
        if dataclasses.is_dataclass(current) and isinstance(values, dict):
            known = {f.name for f in dataclasses.fields(current)}
            for key, value in values.items():
                if key in known:
                    setattr(current, key, value)
    return cfg


def _arrays(npz: Path, parts: Path) -> tuple[dict, bool]:
    """(arrays, finalised): the .npz (memory-mapped), else the parts not assembled yet."""
    if npz.exists():
        try:
            return npz_arrays(npz), True
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise CannotReplay(f"{npz}: unreadable ({exc})") from None
    return (parts_arrays(parts), False) if parts.is_dir() else ({}, True)


def read_robot_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ring record numbers, (N, 12) float32 values) of a robot CSV; rows cut by a crash are skipped."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if RING_RECORD not in header or any(c not in header for c in ROBOT_VALUES):
            raise CannotReplay(f"{path.name} has no {RING_RECORD} column: recorded by an shm-vla before replay, "
                               "its rows cannot be matched to the ticks")
        columns, rc = [header.index(c) for c in ROBOT_VALUES], header.index(RING_RECORD)
        records, values = [], []
        for row in reader:
            try:
                values.append([float(row[i]) for i in columns])
                records.append(int(row[rc]))
            except (ValueError, IndexError):
                del values[len(records):]
    return np.array(records, np.int64), np.array(values, np.float32).reshape(-1, len(ROBOT_VALUES))


def _jsonl(path: Path) -> list:
    return [obj for _, _, obj in iter_json_lines(path) if isinstance(obj, dict)] if path.exists() else []


def _what_is_missing(paths: SessionPaths, vl: dict, sensor: dict) -> str | None:
    root = paths.root.name
    robot = paths.robot_csv.exists()
    if not vl and not sensor and not robot:
        return (f"{root} was recorded without --save-data: it holds no VL features, sensor or robot data to "
                f"re-run its ticks with (record with `shm-vla run ... --save-data`, or record.save_data = true)")
    missing = [what for what, there in (("VL features (vl_features_*.npz)", bool(vl)),
                                        ("sensor data (sensor_data_*.npz)", bool(sensor)),
                                        ("robot data (robot_state_*.csv)", robot)) if not there]
    if missing:
        return (f"{root} holds no {' and no '.join(missing)}: none reached the recorder, or it was recorded by "
                "an shm-vla before replay, or the files were removed")
    if "records" not in sensor:
        return (f"{root}: its sensor data has no ring record numbers (`records`): recorded by an shm-vla "
                "before replay")
    if not paths.config.exists():
        return f"{root} lacks {paths.config.name}: the model settings it was recorded with are unknown"
    return None


def load_session(path: str | os.PathLike) -> RecordedSession:
    """Everything a replay reads from a session directory; CannotReplay (one line) otherwise."""
    try:
        paths = SessionPaths.of_dir(path)
    except FileNotFoundError as exc:
        raise CannotReplay(str(exc)) from None
    if not paths.root.is_dir():
        raise CannotReplay(f"{path}: no such session directory")
    vl, vl_done = _arrays(paths.vl_npz, paths.vl_parts)
    sensor, sensor_done = _arrays(paths.sensor_npz, paths.sensor_parts)
    missing = _what_is_missing(paths, vl, sensor)
    if missing:
        raise CannotReplay(missing)
    recorded = json.loads(paths.config.read_text())
    robot_records, robot_values = read_robot_csv(paths.robot_csv)
    ticks, skipped = _recorded_ticks(paths)
    session = RecordedSession(paths, recorded_config(recorded.get("config", {})), recorded.get("checkpoint_file", {}),
                              ticks, skipped, vl, sensor, robot_records, robot_values, vl_done and sensor_done)
    if not session.finalised:
        session.warnings.append("the session is not finalised (still being recorded, or cut off): replaying the "
                                "complete records (`shm-vla recover` finalises a cut-off session)")
    return session


def _recorded_ticks(paths: SessionPaths) -> tuple[list, Counter]:
    """The ticks that ran the model, with their recorded chunk; the others counted by reason."""
    lines = [t for t in _jsonl(paths.timings) if is_action_record(t)] + _jsonl(paths.held)
    if lines and any(name not in lines[0] for name in INPUT_FIELDS):
        raise CannotReplay(f"{paths.root.name}: its tick lines do not name their inputs (vl_record, sensor_record, "
                           "robot_record, noise_seed): recorded by an shm-vla before replay")
    results = {r.get("action_id"): r for r in _jsonl(paths.results_jsonl)}
    ticks, skipped = [], Counter()
    for line in sorted(lines, key=lambda t: t.get("action_id", -1)):
        if is_held(line):
            skipped[f"held.{line[HELD_FIELD]}"] += 1        # no actions: the model did not run, or gave NaN
            continue
        result = results.get(line["action_id"])
        if result is None:
            skipped["no_result_recorded"] += 1
            continue
        ticks.append(RecordedTick(int(line["action_id"]), float(line["timestamp"]), int(line["vl_record"]),
                                  int(line["sensor_record"]), int(line["sensor_buffer_size"]),
                                  int(line["robot_record"]), int(line["noise_seed"]),
                                  np.asarray(result["actions"], np.float64)))
    return ticks, skipped


# --------------------------------------------------------------------------- --vl: the frames again
class FrameEncoder:
    """--vl: a VL update's frames, found by capture time among the recorded JPEGs, decoded as
    the camera ingest decodes them and encoded by the backbone, as the vl process does."""

    def __init__(self, session: RecordedSession, backbone, threads: int):
        from .protocol.camera import JpegDecoder
        cam = session.cfg.camera
        self.views = list(cam.views)
        self.decoder = JpegDecoder.from_config(cam)
        self.frames = np.zeros((len(self.views), cam.height, cam.width, 3), np.uint8)
        self.files = {view: {p.stem.rpartition("_")[2]: p for p in (session.paths.root / view).glob("*.jpg")}
                      for view in self.views}
        self.backbone, self.threads = backbone, threads
        self.diffs: list[float] = []       # per update re-encoded: max |diff| to the recorded feature
        self.missing = 0                   # updates whose frames are not all recorded (or not readable)
        self._last: tuple[int, np.ndarray | None] = (-1, None)

    def encode(self, row: int, capture_ts: np.ndarray, recorded: np.ndarray) -> np.ndarray | None:
        """The re-encoded feature of the VL update in vl_features row `row` (ticks reuse an
        update: the last one is kept), None if one of its frames was not recorded."""
        if self._last[0] == row:
            return self._last[1]
        feature = None
        paths = [self.files[view].get(f"{ts:.3f}") for view, ts in zip(self.views, capture_ts)]
        if all(paths) and self._decode(paths):
            with _torch_threads(self.threads):
                feature = np.array(self.backbone.encode(self.frames), np.float32)
            if feature.shape == recorded.shape:
                self.diffs.append(float(np.abs(feature.astype(np.float64) - recorded).max()))
        else:
            self.missing += 1
        self._last = (row, feature)
        return feature

    def _decode(self, paths: list) -> bool:
        """The frames into the views buffer, as the camera ingest decodes them; False for a bad JPEG."""
        from .protocol.errors import ProtocolError
        try:
            for i, path in enumerate(paths):
                self.decoder.decode_into(path.read_bytes(), self.frames[i])
        except (OSError, ProtocolError):
            return False
        return True


@contextlib.contextmanager
def _torch_threads(n: int):
    """torch's CPU threads for a block (the vl and act processes each have their own count)."""
    import torch
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


# --------------------------------------------------------------------------- the replay
@dataclass
class Settings:
    checkpoint: str
    device: str | None = None      # None: as recorded (act_device; vl_device for --vl)
    dtype: str | None = None
    threads: int | None = None
    vl: bool = False


class Replayer:
    """Feeds a TickRunner the recorded inputs of one tick at a time."""

    def __init__(self, session: RecordedSession, settings: Settings):
        import torch
        from .model import CheckpointError, load_checkpoint
        from .protocol.robot import ROBOT_DIMS
        from .workers.act import make_runner
        self.session, self.settings = session, settings
        cfg = self.cfg = copy.deepcopy(session.cfg)         # the session's, with this replay's overrides
        m = cfg.model
        m.checkpoint = settings.checkpoint
        m.act_device = settings.device or m.act_device
        m.vl_device = settings.device or m.vl_device
        m.act_dtype = settings.dtype or m.act_dtype
        m.act_threads = settings.threads or m.act_threads
        for device in {m.act_device, m.vl_device if settings.vl else "cpu"}:
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise CannotReplay(f"this machine has no CUDA for {device}" + ("" if settings.device else
                                   " (the session was recorded on it): give --device cpu (expect float rounding "
                                   "differences)"))
        try:
            self.loaded = load_checkpoint(m.checkpoint, m, sensor_window=cfg.sensor.window,
                                          sensor_channels=cfg.sensor_channels, robot_dims=ROBOT_DIMS)
        except CheckpointError as exc:
            raise CannotReplay(f"{exc} (the session's configuration: sensor.window {cfg.sensor.window}, "
                               f"{cfg.sensor_channels} sensor channels)") from None
        self.runner = make_runner(cfg, self.loaded)
        self.runner.run()                              # warm-up (and graph capture on CUDA), as act
        self.vl_index = RecordIndex(session.vl["records"])
        self.sensor_index = RecordIndex(session.sensor["records"])
        self.robot_index = RecordIndex(session.robot_records)
        width = cfg.sensor_channels
        self.fcol, self.acols = force_column(cfg.sensor.force_position, width), \
            ascan_columns(cfg.sensor.force_position, width)
        recorded_width = session.vl["features"].shape[1]
        self.frames = None
        if settings.vl:
            from .model import make_backbone
            backbone = make_backbone(m, self.runner.vl_dim, device=m.vl_device,
                                     vl_state_dict=self.loaded.vl_state_dict)
            with _torch_threads(m.vl_threads):
                backbone.warmup()
            self.frames = FrameEncoder(session, backbone, m.vl_threads)
        elif recorded_width != self.runner.vl_dim:
            raise CannotReplay(f"the session's VL features are {recorded_width} wide, {m.checkpoint}'s heads take "
                               f"{self.runner.vl_dim}: give --vl to re-encode the recorded frames at its width")

    def fill(self, t: RecordedTick) -> str | None:
        """The tick's inputs into the runner's buffers; the reason when they are not all recorded."""
        r, s = self.runner, self.session
        row = self.vl_index.row(t.vl_record)
        if row is None:
            return "vl_feature_not_recorded"
        recorded = s.vl["features"][row][0]
        if self.frames is not None:
            recorded = self.frames.encode(row.start if isinstance(row, slice) else int(row[0]),
                                          s.vl["capture_timestamps"][row][0], recorded)
            if recorded is None:
                return "frames_not_recorded"
        r.vl_in[:] = recorded
        k = t.sensor_rows
        rows = self.sensor_index.window(t.sensor_record, k)
        if rows is None:
            return "sensor_window_not_recorded"
        r.sensor_in[: r.sensor_window - k] = 0.0                 # front-padded, as act (Inputs.read)
        r.sensor_in[r.sensor_window - k:, self.fcol] = s.sensor["forces"][rows]
        r.sensor_in[r.sensor_window - k:, self.acols] = s.sensor["alines"][rows]
        k = min(r.robot_window, t.robot_record + 1)           # ring.window(n): min(n, records so far)
        rows = self.robot_index.window(t.robot_record, k)
        if rows is None:
            return "robot_window_not_recorded"
        r.robot_in[: r.robot_window - k] = 0.0
        r.robot_in[r.robot_window - k:] = s.robot_values[rows]
        return None

    def run(self, t: RecordedTick) -> np.ndarray:
        """The replayed chunk (a view of the runner's output: copy to keep)."""
        seed = None
        if self.runner.is_flow:            # the recorded seed; a session recorded without one: act's rule
            seed = t.noise_seed if t.noise_seed >= 0 else tickmod.tick_noise_seed(self.cfg.model.seed, t.action_id)
        return self.runner.run(seed).actions


class Comparison:
    """Differences of the replayed chunks to the recorded ones, tick by tick."""

    def __init__(self, limits: np.ndarray):
        self.limits = limits
        self.action_ids: list[int] = []
        self.times: list[float] = []
        self.max_abs: list[float] = []
        self.first_action: list[np.ndarray] = []
        self.command_max = 0.0
        self.sum_abs, self.count = 0.0, 0
        self.nonfinite: list[int] = []
        self.shapes: set = set()

    def add(self, t: RecordedTick, replayed: np.ndarray) -> None:
        h, a = min(replayed.shape[0], t.actions.shape[0]), min(replayed.shape[1], t.actions.shape[1])
        self.shapes.add((t.actions.shape, replayed.shape))
        out = replayed[:h, :a].astype(np.float64)
        if not np.isfinite(out).all():
            self.nonfinite.append(t.action_id)            # act would have held it: no command
            return
        diff = np.abs(out - t.actions[:h, :a])
        self.action_ids.append(t.action_id)
        self.times.append(t.timestamp)
        self.max_abs.append(float(diff.max()))
        self.first_action.append(diff[0])
        self.sum_abs += float(diff.sum())
        self.count += diff.size
        d = min(len(self.limits), a)                      # the command: the first action, clamped
        clamp = lambda x: np.clip(x[0, :d], -self.limits[:d], self.limits[:d])  # noqa: E731
        self.command_max = max(self.command_max, float(np.abs(clamp(out) - clamp(t.actions)).max()))


def replay(session: RecordedSession, settings: Settings, progress=None) -> dict:
    """Re-run every recorded tick; returns the report (the --json document)."""
    replayer = Replayer(session, settings)
    cfg = replayer.cfg
    comparison = Comparison(np.array([cfg.act.clamp_mm] * 3 + [cfg.act.clamp_deg] * 3, np.float64))
    skipped = Counter(session.skipped)
    t0 = time.perf_counter()
    for i, t in enumerate(session.ticks):
        reason = replayer.fill(t)
        if reason:
            skipped[reason] += 1
            continue
        comparison.add(t, replayer.run(t))
        if progress is not None:
            progress(i + 1, len(session.ticks))
    wall_s = time.perf_counter() - t0
    return _report(session, replayer, comparison, skipped, wall_s)


def _sha256(path: str) -> str | None:
    """The checkpoint file's sha256 (what the shadow lines name, and the file to deploy)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _checkpoint_identity(path: str, recorded: dict) -> bool | None:
    """The checkpoint is the recorded file (same path, size and modification time); None if unknown."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if "size_bytes" not in recorded:
        return None
    same_path = os.path.realpath(path) == os.path.realpath(recorded.get("path", ""))
    return same_path and st.st_size == recorded["size_bytes"] and st.st_mtime_ns == recorded.get("mtime_ns")


def _report(session: RecordedSession, replayer: Replayer, c: Comparison, skipped: Counter, wall_s: float) -> dict:
    m, r, recorded = replayer.cfg.model, replayer.runner, session.cfg.model
    warnings = list(session.warnings)
    if len(c.shapes) and any(a != b for a, b in c.shapes):
        rec_shape, rep_shape = next(iter(c.shapes))
        warnings.append(f"the chunks differ in shape (recorded {rec_shape}, replayed {rep_shape}): "
                        "the common part is compared")
    if c.nonfinite:
        warnings.append(f"{len(c.nonfinite)} replayed tick(s) gave non-finite actions (act would have held them), "
                        f"first action_id {c.nonfinite[0]}: not in the differences")
    order = np.argsort(c.max_abs)[::-1][:WORST_TICKS] if c.max_abs else []
    max_abs = max(c.max_abs) if c.max_abs else None
    vl = None
    frames = replayer.frames
    if frames is not None:
        vl = {"updates_reencoded": len(frames.diffs), "updates_without_frames": frames.missing,
              "width": [int(session.vl["features"].shape[1]), int(r.vl_dim)],
              "max_abs_diff": max(frames.diffs) if frames.diffs else None,
              "bit_exact": bool(frames.diffs) and max(frames.diffs) == 0.0}
    return {
        "schema_version": SCHEMA_VERSION,
        "session": str(session.paths.root), "finalised": session.finalised,
        "checkpoint": {"path": m.checkpoint, "model_type": r.model_type, "sha256": _sha256(m.checkpoint),
                       "same_file_as_recorded": _checkpoint_identity(m.checkpoint, session.checkpoint_file)},
        "recorded_with": {"checkpoint": session.checkpoint_file.get("path"), "device": recorded.act_device,
                          "dtype": recorded.act_dtype, "threads": recorded.act_threads},
        "replayed_on": {"device": m.act_device, "dtype": m.act_dtype, "threads": m.act_threads,
                        "cuda_graph": r.graph is not None, "flow_steps": r.flow_steps if r.is_flow else None,
                        "solver": r.solver if r.is_flow else None},
        "ticks": len(c.max_abs), "ticks_recorded": len(session.ticks) + sum(session.skipped.values()),
        "skipped": dict(sorted(skipped.items())),
        "max_abs_diff": max_abs,
        "mean_abs_diff": c.sum_abs / c.count if c.count else None,
        "bit_exact": max_abs == 0.0 and not c.nonfinite,
        "ticks_differing": int(sum(d > 0 for d in c.max_abs)),
        "first_action_max_abs_diff": np.max(c.first_action, axis=0).tolist() if c.first_action else None,
        "command_max_abs_diff": c.command_max if c.max_abs else None,
        "nonfinite_ticks": len(c.nonfinite),
        "worst": [{"action_id": c.action_ids[i], "max_abs_diff": c.max_abs[i]} for i in order],
        "per_tick": [{"action_id": a, "max_abs_diff": d} for a, d in zip(c.action_ids, c.max_abs)],
        "vl": vl,
        "warnings": warnings,
        "wall_s": wall_s, "ticks_per_s": len(c.max_abs) / wall_s if wall_s > 0 else None,
        "_series": {"times": c.times, "first_action": c.first_action},          # for --plot; not printed
    }


# --------------------------------------------------------------------------- output
def _g(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def render_text(report: dict) -> str:
    ck, rec, on = report["checkpoint"], report["recorded_with"], report["replayed_on"]
    same = {True: "the recorded checkpoint", False: "another checkpoint than recorded",
            None: "checkpoint identity unknown"}[ck["same_file_as_recorded"]]
    lines = [f"replay of {report['session']}",
             f"  through {ck['path']} ({ck['model_type']}, {same}; recorded with {rec['checkpoint']})",
             f"  on {on['device']} {on['dtype']}, {on['threads']} thread(s)"
             f"{', CUDA graph' if on['cuda_graph'] else ''} (recorded on {rec['device']} {rec['dtype']}, "
             f"{rec['threads']} thread(s))",
             f"ticks replayed: {report['ticks']} of {report['ticks_recorded']}"
             + (f" (skipped: {', '.join(f'{n} {k}' for k, n in report['skipped'].items())})" if report['skipped'] else "")]
    if report["ticks"]:
        verdict = "bit-exact" if report["bit_exact"] else f"{report['ticks_differing']} tick(s) differ"
        lines += [f"max |diff|: {_g(report['max_abs_diff'])}  mean |diff|: {_g(report['mean_abs_diff'])}  ({verdict})",
                  "first action, max |diff| per value: "
                  + " ".join(_g(v) for v in report["first_action_max_abs_diff"]),
                  f"command after the clamp, max |diff|: {_g(report['command_max_abs_diff'])}"]
        if not report["bit_exact"]:
            lines.append("worst ticks: " + ", ".join(f"{w['action_id']} ({_g(w['max_abs_diff'])})"
                                                      for w in report["worst"]))
    if report["vl"] is not None:
        vl = report["vl"]
        lines.append(f"VL features re-encoded from the frames: {vl['updates_reencoded']} update(s) compared, "
                     f"max |diff| {_g(vl['max_abs_diff'])} (width recorded {vl['width'][0]}, checkpoint "
                     f"{vl['width'][1]}); {vl['updates_without_frames']} update(s) without all their frames")
    lines.append(f"{_g(report['ticks_per_s'])} ticks/s ({report['wall_s']:.2f} s)")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def plot(report: dict, out_path: Path) -> None:
    """Per tick: the largest difference, and the first action's differences per value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = report["_series"]
    times = np.asarray(series["times"]) - (series["times"][0] if series["times"] else 0.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    per_tick = [t["max_abs_diff"] for t in report["per_tick"]]
    top.plot(times, per_tick, ".", ms=3)
    top.set_ylabel("max |diff| of the chunk")
    if per_tick and min(per_tick) > 0:
        top.set_yscale("log")
    else:                                   # zeros (bit-exact ticks) stay on the axis
        top.set_yscale("symlog", linthresh=1e-7)
    top.set_title(f"replay through {Path(report['checkpoint']['path']).name}: {report['ticks']} ticks, "
                  f"max |diff| {_g(report['max_abs_diff'])}")
    first = np.asarray(series["first_action"]).reshape(len(times), -1)
    for j in range(first.shape[1]):
        bottom.plot(times, first[:, j], lw=0.8, label="xyzabrg"[j] if j < 7 else str(j))
    bottom.set_yscale("symlog", linthresh=1e-7)
    bottom.set_ylabel("first action |diff|")
    bottom.set_xlabel("s since the first replayed tick")
    bottom.legend(ncol=7, fontsize="small")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def _parse_args(argv: list[str]):
    p = argparse.ArgumentParser(prog="shm-vla replay", description="Re-run a recorded session's ticks through a "
                                "checkpoint, offline, and report the difference to the recorded actions.")
    p.add_argument("session", help="a session directory recorded with --save-data")
    p.add_argument("--checkpoint", required=True, help="the checkpoint to replay through")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: as recorded)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="the heads' dtype (default: as recorded, model.act_dtype)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as recorded)")
    p.add_argument("--vl", action="store_true", help="also re-encode the recorded frames with the backbone")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--plot", type=Path, default=None, metavar="F.png", help="write a plot of the differences")
    p.add_argument("--fail-above", type=float, default=None, metavar="TOL",
                   help="exit 1 if max_abs_diff exceeds TOL or a replayed tick gives non-finite actions")
    try:
        return p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(list(sys.argv[1:] if argv is None else argv))
    if isinstance(args, int):
        return args
    settings = Settings(args.checkpoint, args.device, args.dtype, args.threads, args.vl)
    try:
        report = replay(load_session(args.session), settings)
    except CannotReplay as exc:
        print(f"{PREFIX}: {exc}", file=sys.stderr)
        return EXIT_CANNOT
    series = report.pop("_series")
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    code = EXIT_OK
    if not report["ticks"]:
        print(f"{PREFIX}: no tick could be replayed", file=sys.stderr)
        code = EXIT_FAILED
    tol = args.fail_above
    if tol is not None and report["ticks"] and (report["max_abs_diff"] > tol or report["nonfinite_ticks"]):
        print(f"{PREFIX}: max |diff| {report['max_abs_diff']:.3g} > {tol:g}"
              + (f" or {report['nonfinite_ticks']} non-finite tick(s)" if report["nonfinite_ticks"] else ""),
              file=sys.stderr)
        code = EXIT_FAILED
    if args.plot is not None:
        try:
            plot({**report, "_series": series}, args.plot)
        except ImportError:
            print(f"{PREFIX}: --plot needs matplotlib (pip install 'shm-vla[plot]'); no plot written", file=sys.stderr)
            return EXIT_FAILED
        except (OSError, ValueError) as exc:
            print(f"{PREFIX}: --plot: cannot write {args.plot}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    return code
