"""The session directory the recorder writes, in the deployed file formats (docs/SESSION_FILES.md).

``SessionWriter`` streams every file to disk as records arrive, so memory does not grow
with the session and a crash leaves everything written so far readable; ``close()``
finalises the files that are assembled from streamed parts (inference_results .json,
sensor_data .npz, performance_summary .json); ``recover(session_dir)`` does the same
for a session left by a crash. For the recorder, the writer also keeps a checkpoint
(``checkpoint()``) from which ``SessionWriter.resume`` continues a session cut off by a
crash, with no record twice (session_state.py). With save_data the session also holds
what `shm-vla replay` needs to re-run every tick's head (the VL features, the ring record
number of every robot and sensor record, the configuration: docs/SESSION_FILES.md).
Library code only: no processes, no shared memory.
"""
from __future__ import annotations

import contextlib
import grp
import json
import math
import os
import struct
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from shm_vla.finite import to_jsonable
from shm_vla.workers.disk_room import free_bytes
from shm_vla.workers.session_state import STATE_FILE, SessionLock, SessionState, read_state
from shm_vla.workers.session_stats import (
    ACTION_EXTRA_FIELDS, ACTION_FIELDS, DEPLOYED_TIMING_FIELDS, MEASURED_FIELDS, SPLIT_FIELDS, VL_DEFAULTS,
    VL_EXTRA_FIELDS, VL_REQUIRED_FIELDS, SessionSummary, deployed_split, is_held, number,
)

SESSION_PREFIX = "async_inference_"
STAMP_FORMAT = "%Y%m%d_%H%M%S"
DEFAULT_VIEWS = ("View1", "View2", "View3", "View4", "View5")
ROBOT_CSV_HEADER = (
    ["recv_timestamp", "origin_timestamp", "send_timestamp", "force_placeholder"]
    + [f"joint_{i}" for i in range(1, 7)]
    + ["pose_x", "pose_y", "pose_z", "pose_a", "pose_b", "pose_r"]
)
# After the deployed columns: the record's number in the robot ring (what a tick's robot_record
# names), so that a replay finds the window each tick used; -1 where it is not known.
ROBOT_CSV_ADDED = ["ring_record"]
NO_RECORD = -1
# Sensor arrays streamed as raw little-endian rows: name -> dtype (row shape set by the first write).
SENSOR_ARRAYS = {
    "timestamps": "<f8",
    "send_timestamps": "<f8",
    "forces": "<f4",
    "alines": "<f4",
    "records": "<i8",          # ours: the record's number in the sensor ring (-1: not known)
}
# The VL features (save_data; what `shm-vla replay` feeds the heads), one row per VL update.
VL_ARRAYS = {
    "records": "<i8",          # the record's number in the vl_feature ring (a tick's vl_record)
    "updates": "<i8",          # its vl_update_number
    "features": "<f4",         # the feature (N, V)
    "capture_timestamps": "<f8",   # each view's capture time (N, 5): names the frames encoded
}
COPY_CHUNK_BYTES = 1 << 20
TMP_SUFFIX = ".tmp"
FINISH_SLACK_BYTES = 8_000_000        # room kept free beyond a file written whole at the end
# Session directories are 0750 (02750 with a group: what is made inside inherits it); files
# are 0640 through the recorder's umask 027 (workers/record.py), as UMask=0027 in the units.
SESSION_DIR_MODE = 0o750


class SessionClosedError(ValueError):
    """A write on a SessionWriter that was closed."""


# --------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class SessionPaths:
    """Every file of one session directory."""

    root: Path
    stamp: str

    def _file(self, stem: str, suffix: str) -> Path:
        return self.root / f"{stem}_{self.stamp}{suffix}"

    @property
    def timings(self) -> Path:
        return self._file("performance_timings", ".jsonl")

    @property
    def held(self) -> Path:
        """The ticks whose command was withheld (never in the files the deployed scripts read)."""
        return self._file("held_ticks", ".jsonl")

    @property
    def results_json(self) -> Path:
        return self._file("inference_results", ".json")

    @property
    def results_jsonl(self) -> Path:
        return self._file("inference_results", ".jsonl")

    @property
    def shadow_results(self) -> Path:
        """The shadow's results, one line per live tick it ran (docs/SHADOW_AND_REPLAY.md)."""
        return self._file("shadow_results", ".jsonl")

    @property
    def summary(self) -> Path:
        return self._file("performance_summary", ".json")

    @property
    def robot_csv(self) -> Path:
        return self._file("robot_state", ".csv")

    @property
    def sensor_npz(self) -> Path:
        return self._file("sensor_data", ".npz")

    @property
    def sensor_parts(self) -> Path:
        """Folder of the raw streamed sensor arrays, assembled into the .npz at close."""
        return self._file("sensor_data", ".parts")

    @property
    def vl_npz(self) -> Path:
        return self._file("vl_features", ".npz")

    @property
    def vl_parts(self) -> Path:
        return self._file("vl_features", ".parts")

    @property
    def config(self) -> Path:
        """The configuration the session was recorded with (what a replay needs)."""
        return self._file("session_config", ".json")

    def assembled(self) -> tuple[tuple[Path, Path], ...]:
        """(parts folder, .npz) of every array file assembled at close."""
        return (self.sensor_parts, self.sensor_npz), (self.vl_parts, self.vl_npz)

    @classmethod
    def of_dir(cls, root: str | os.PathLike) -> "SessionPaths":
        """Paths of an existing session: the stamp comes from its timings file, else its name."""
        root = Path(root)
        found = sorted(root.glob("performance_timings_*.jsonl"))
        if found:
            return cls(root, found[0].name[len("performance_timings_"):-len(".jsonl")])
        if root.name.startswith(SESSION_PREFIX):
            return cls(root, root.name[len(SESSION_PREFIX):])
        raise FileNotFoundError(f"{root}: not a session directory (no performance_timings_*.jsonl)")


def _create_session_dir(out_dir: Path, stamp: str | None) -> SessionPaths:
    """Create out_dir/async_inference_<stamp>/; a generated stamp gets _1, _2.. on collision."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if stamp is not None:
        if "/" in stamp or not stamp:
            raise ValueError(f"invalid session stamp {stamp!r}")
        (out_dir / f"{SESSION_PREFIX}{stamp}").mkdir()
        return SessionPaths(out_dir / f"{SESSION_PREFIX}{stamp}", stamp)
    base = time.strftime(STAMP_FORMAT, time.localtime())
    for attempt in range(1000):
        candidate = base if attempt == 0 else f"{base}_{attempt}"
        try:
            (out_dir / f"{SESSION_PREFIX}{candidate}").mkdir()
        except FileExistsError:
            continue
        return SessionPaths(out_dir / f"{SESSION_PREFIX}{candidate}", candidate)
    raise FileExistsError(f"{out_dir}: 1000 sessions named {SESSION_PREFIX}{base}*")


def _limit_access(root: Path, group: str) -> None:
    """Owner and (optionally) `group` only, set before anything is written inside."""
    if group:
        os.chown(root, -1, grp.getgrnam(group).gr_gid)
        os.chmod(root, SESSION_DIR_MODE | 0o2000)
    else:
        os.chmod(root, SESSION_DIR_MODE)


# --------------------------------------------------------------------------- JSON helpers
def _ordered(record: dict, fields: tuple) -> dict:
    """The known fields first in their documented order, then any extra fields as given."""
    out = {name: record[name] for name in fields if name in record}
    out.update((k, v) for k, v in record.items() if k not in out)
    return out


def _fsync_replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    with contextlib.suppress(OSError):
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json_atomic(path: Path, obj: Any, durable: bool = True) -> None:
    """Write obj as JSON to a temp file beside path, fsync, then rename over path.

    durable=False skips the fsyncs: the rename is still atomic for every process on this
    machine (a checkpoint taken ten times a second only has to survive a process crash).
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "w") as f:
        json.dump(to_jsonable(obj), f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        if durable:
            os.fsync(f.fileno())
    (_fsync_replace if durable else os.replace)(tmp, path)


def iter_json_lines(path: Path) -> Iterator[tuple[int, str, Any]]:
    """(line number, text, object) of each line of a JSON Lines file that parses; others skipped."""
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            try:
                yield line_no, text, json.loads(text)
            except ValueError:
                continue


def write_results_json(jsonl: Path, final: Path) -> int:
    """inference_results .json (a JSON list) from its .jsonl, streamed; returns the record count."""
    tmp = final.with_name(final.name + TMP_SUFFIX)
    count = 0
    with open(tmp, "w") as out:
        out.write("[")
        if jsonl.exists():
            for _, text, obj in iter_json_lines(jsonl):
                if isinstance(obj, dict):
                    out.write(("\n" if count == 0 else ",\n") + text)
                    count += 1
        out.write("\n]\n")
        out.flush()
        os.fsync(out.fileno())
    _fsync_replace(tmp, final)
    return count


def trim_partial_line(path: Path) -> bool:
    """Cut a last line that a crash left without its newline; returns True when cut."""
    if not path.exists():
        return False
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        end = size
        while end > 0:   # walk back block by block to the previous newline
            start = max(end - COPY_CHUNK_BYTES, 0)
            f.seek(start)
            cut = f.read(end - start).rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return True
            end = start
        f.truncate(0)
        return True


# --------------------------------------------------------------------------- streamed files
class _LineFile:
    """An append-only text file flushed to the OS every flush_every writes and on close."""

    def __init__(self, path: Path, flush_every: int, header: str | None = None) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")
        self._flush_every = flush_every
        self._pending = 0
        self.lines = 0
        if header is not None and self._file.tell() == 0:
            self._file.write(header + "\n")
            self._file.flush()

    def write_line(self, text: str) -> None:
        self._file.write(text + "\n")
        self.lines += 1
        self._pending += 1
        if self._pending >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        self._file.flush()
        self._pending = 0

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class _ArrayParts:
    """Raw row files, one per array (``dtypes``: name -> dtype), appended in place; assembled
    into the .npz later. A crash can tear the last row of some files; assembly keeps the rows
    complete in all.
    """

    MANIFEST = "manifest.json"

    def __init__(self, folder: Path, flush_every: int, dtypes: dict) -> None:
        self.folder = folder
        self.dtypes = dtypes
        self._flush_every = flush_every
        self._pending = 0
        self._files: dict[str, Any] = {}
        self._row_shapes: dict[str, tuple] = {}
        self.rows = 0

    def _open(self, arrays: dict[str, np.ndarray]) -> None:
        self.folder.mkdir(exist_ok=True)
        self._row_shapes = {name: tuple(a.shape[1:]) for name, a in arrays.items()}
        manifest = {name: {"dtype": self.dtypes[name], "row_shape": list(shape)}
                    for name, shape in self._row_shapes.items()}
        write_json_atomic(self.folder / self.MANIFEST, manifest)
        self._files = {name: open(self.folder / f"{name}.bin", "ab") for name in self.dtypes}

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        rows = {len(a) for a in arrays.values()}
        if len(rows) != 1:
            raise ValueError(f"arrays differ in length: { {k: len(a) for k, a in arrays.items()} }")
        if not self._files:
            self._open(arrays)
        for name, array in arrays.items():
            if tuple(array.shape[1:]) != self._row_shapes[name]:
                raise ValueError(f"{self.folder.name} {name}: row shape {array.shape[1:]}, "
                                 f"expected {self._row_shapes[name]}")
            self._files[name].write(np.ascontiguousarray(array, dtype=self.dtypes[name]).tobytes())
        self.rows += rows.pop()
        self._pending += 1
        if self._pending >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()
        self._pending = 0

    def paths(self) -> list[Path]:
        """The array files on disk (a continued session has them before its first append)."""
        return sorted(self.folder.glob("*.bin")) if self.folder.is_dir() else []

    def close(self) -> None:
        for f in self._files.values():
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()


class NoRoom(OSError):
    """A file written whole at the end (the results .json, an .npz) would not fit: it is not
    started, its source stays, and recover() writes it once there is room."""


def _check_room(what: str, needed: int, folder: Path, reserve: int) -> None:
    """NoRoom unless `folder`'s file system holds `needed` bytes more, keeping `reserve` free."""
    free = free_bytes(str(folder))
    if needed + FINISH_SLACK_BYTES + reserve > free:
        keeping = f", keeping {reserve / 1e6:.0f} MB for the live session" if reserve else ""
        raise NoRoom(f"{what} needs {needed / 1e6:.0f} MB and {free / 1e6:.0f} MB are free{keeping}: not written "
                     "until `shm-vla recover` (or the recorder's next start) finds room")


def assemble_npz(parts: Path, npz: Path, reserve: int = 0) -> int:
    """Write the .npz from the raw parts (chunked copy, bounded memory); returns its row count.

    The parts folder is removed once the .npz is in place. NoRoom, before anything is written,
    if the file system cannot hold the .npz beside its parts and `reserve` bytes (the copy
    needs as much again as the data: never start what would fill the disk).
    """
    manifest_path = parts / _ArrayParts.MANIFEST
    if not manifest_path.exists():
        # No manifest: nothing was written yet, or an earlier assembly finished and was
        # removing the folder (the manifest goes first) - either way no data is here.
        _remove_parts(parts)
        return 0
    manifest = json.loads(manifest_path.read_text())
    rows, row_bytes = _complete_rows(parts, manifest)
    _check_room(f"{npz.name} (its data stays in {parts.name}/)", sum(rows * n for n in row_bytes.values()),
                npz.parent, reserve)
    tmp = npz.with_name(npz.name + TMP_SUFFIX)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, meta in manifest.items():
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(meta["dtype"])),
                      "fortran_order": False, "shape": (rows, *meta["row_shape"])}
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member, \
                    open(parts / f"{name}.bin", "rb") as source:
                np.lib.format.write_array_header_1_0(member, header)
                _copy_bytes(source, member, rows * row_bytes[name])
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    _fsync_replace(tmp, npz)
    _remove_parts(parts)
    return rows


def _complete_rows(parts: Path, manifest: dict) -> tuple[int, dict]:
    """(rows complete in every array file, bytes of a row of each array)."""
    row_bytes = {name: np.dtype(m["dtype"]).itemsize * int(np.prod(m["row_shape"], dtype=np.int64))
                 for name, m in manifest.items()}
    sizes = {name: (parts / f"{name}.bin").stat().st_size if (parts / f"{name}.bin").exists() else 0
             for name in manifest}
    return min(sizes[name] // row_bytes[name] for name in manifest), row_bytes


def parts_arrays(parts: Path) -> dict[str, np.ndarray]:
    """The arrays of a parts folder not assembled yet (a session being recorded, or cut off
    and not finalised), memory-mapped: the rows complete in every array; {} without data."""
    try:
        manifest = json.loads((parts / _ArrayParts.MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    rows, _ = _complete_rows(parts, manifest)
    out = {}
    for name, meta in manifest.items():
        shape = (rows, *meta["row_shape"])
        out[name] = (np.memmap(parts / f"{name}.bin", dtype=meta["dtype"], mode="r", shape=shape) if rows
                     else np.empty(shape, meta["dtype"]))
    return out


def _remove_parts(parts: Path) -> None:
    """Remove the parts folder, manifest first, so a crash here never looks like data."""
    if not parts.is_dir():
        return
    (parts / _ArrayParts.MANIFEST).unlink(missing_ok=True)
    for child in parts.iterdir():
        child.unlink()
    parts.rmdir()


def _copy_bytes(source, target, n_bytes: int) -> None:
    while n_bytes > 0:
        chunk = source.read(min(COPY_CHUNK_BYTES, n_bytes))
        if not chunk:
            raise OSError(f"{source.name}: ended {n_bytes} bytes early")
        target.write(chunk)
        n_bytes -= len(chunk)


def _record_numbers(records: Any, n: int) -> np.ndarray:
    """Ring record numbers (N,) int64; None: not known (-1)."""
    if records is None:
        return np.full(n, NO_RECORD, np.int64)
    numbers = np.asarray(records, dtype=np.int64).reshape(-1)
    if len(numbers) != n:
        raise ValueError(f"{len(numbers)} record numbers for {n} rows")
    return numbers


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz, memory-mapped where stored uncompressed (the recorder's are:
    np.savez's layout), so the A-scans of a long session are never all in memory."""
    out = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            header_reader = None
            if info.compress_type == zipfile.ZIP_STORED:
                f.seek(info.header_offset + 26)           # local header: name and extra lengths
                name_len, extra_len = struct.unpack("<HH", f.read(4))
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                header_reader = {(1, 0): np.lib.format.read_array_header_1_0,
                                 (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header_reader is None:                     # compressed or an unknown .npy version
                with archive.open(info) as member:
                    out[name] = np.lib.format.read_array(member)
                continue
            shape, fortran, dtype = header_reader(f)
            if math.prod(shape) == 0:
                out[name] = np.empty(shape, dtype)
            else:
                out[name] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                                      order="F" if fortran else "C")
    return out


def summary_from_files(paths: SessionPaths) -> SessionSummary:
    """Rebuild the summary by streaming the timings and held ticks files (resume, recover())."""
    summary = SessionSummary()
    for path, add in ((paths.timings, summary.add_timing), (paths.held, summary.add_held)):
        if path.exists():
            for _, _, obj in iter_json_lines(path):
                if isinstance(obj, dict):
                    add(obj)
    return summary


def _action_line(record: dict) -> dict:
    """The timings line of a tick that ran: the deployed fields all numbers (stand-ins for
    the stages not timed on their own, session_stats.deployed_split), each stage's own
    measurement in its *_ms extra."""
    total_ms = number(record, "total_time")
    if total_ms is None:
        raise ValueError(f"timing record needs a total_time in ms, got {record['total_time']!r}")
    measured = {name: number(record, name) for name in SPLIT_FIELDS}
    line = dict(record)
    line.update(deployed_split(measured, total_ms))
    line.update((MEASURED_FIELDS[name], value) for name, value in measured.items())
    if line["vl_update_time"] is None:
        line["vl_update_time"] = 0.0
    return line


def _check_deployed(line: dict) -> None:
    """The deployed scripts read every deployed field of every timings line as a number."""
    bad = [name for name in DEPLOYED_TIMING_FIELDS if number(line, name) is None]
    if bad:
        raise ValueError(f"timings line needs numbers in {', '.join(bad)}: "
                         + ", ".join(f"{name}={line.get(name)!r}" for name in bad))


# --------------------------------------------------------------------------- the writer
class SessionWriter:
    """Writes one session directory; see the module docstring and docs/SESSION_FILES.md.

    One thread writes and closes. No signal handler closes it: a shutdown signal only ends
    the recorder's loop (process.py), which then drains the rings and closes the writer
    in order; a process killed instead leaves a checkpoint to resume from.
    """

    def __init__(self, out_dir: str | os.PathLike, *, stamp: str | None = None, save_data: bool = False,
                 flush_every: int = 10, views: tuple | list = DEFAULT_VIEWS, state: SessionState | None = None,
                 group: str = "", shadow: bool = False) -> None:
        """state: keep a checkpoint for a recorder (its instance, run and starting cursors);
        group: the session directory's group (0750, setgid; files 0640 by the recorder's umask)."""
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        paths = _create_session_dir(Path(out_dir), stamp)
        _limit_access(paths.root, group)
        self._open(paths, SessionLock(paths.root), save_data, flush_every, views, shadow)
        self._state = state
        if state is not None:
            state.created_wall_ns = time.time_ns()
            self._save_state("recording")

    @classmethod
    def resume(cls, session_dir: str | os.PathLike, *, save_data: bool = False, flush_every: int = 10,
               views: tuple | list = DEFAULT_VIEWS, shadow: bool = False) -> "SessionWriter":
        """Continue a session cut off while recording, from its checkpoint: each streamed
        file is cut back to the size checkpointed with the cursors (session_state.py), and
        the summary is rebuilt from the timings file. SessionBusy if another process holds it."""
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        paths = SessionPaths.of_dir(session_dir)
        lock = SessionLock(paths.root)
        try:
            state = read_state(paths.root)
            if state is None or state.phase != "recording":
                raise ValueError(f"{paths.root}: no checkpoint of a session being recorded")
            _cut_to_checkpoint(paths, state)
            writer = cls.__new__(cls)
            writer._open(paths, lock, save_data, flush_every, views, shadow)
        except BaseException:
            lock.release()
            raise
        writer.summary = summary_from_files(paths)
        writer.summary.result_records = state.results_written
        writer.summary.lost_records = state.lost
        writer.frames_written = state.frames_written
        writer._state = state
        writer._save_state("recording")
        return writer

    def _open(self, paths: SessionPaths, lock: SessionLock, save_data: bool, flush_every: int,
              views: tuple | list, shadow: bool = False) -> None:
        self.paths = paths
        self._lock = lock
        self._state: SessionState | None = None
        self.save_data = save_data
        self.views = tuple(views)
        self.summary = SessionSummary()
        self.frames_written = 0
        self._summary_dict: dict | None = None
        self.closed = False
        self.unfinished: list[str] = []       # after close: why a file written whole at the end was not
        self._timings = _LineFile(self.paths.timings, flush_every)
        self._held = _LineFile(self.paths.held, flush_every)
        self._results = _LineFile(self.paths.results_jsonl, flush_every)
        self._robot: _LineFile | None = None
        self._sensor: _ArrayParts | None = None
        self._vl_features: _ArrayParts | None = None
        # opened at once, so that every checkpoint names its size (a resume cuts it back)
        self._shadow = _LineFile(self.paths.shadow_results, flush_every) if shadow else None
        if save_data:
            for view in self.views:
                (self.paths.root / view).mkdir(exist_ok=True)
            self._robot = _LineFile(self.paths.robot_csv, flush_every,
                                    header=",".join(ROBOT_CSV_HEADER + ROBOT_CSV_ADDED))
            self._sensor = _ArrayParts(self.paths.sensor_parts, flush_every, SENSOR_ARRAYS)
            self._vl_features = _ArrayParts(self.paths.vl_parts, flush_every, VL_ARRAYS)

    @property
    def path(self) -> Path:
        return self.paths.root

    @property
    def stamp(self) -> str:
        return self.paths.stamp

    # ---- guarded writes
    def _require_open(self) -> None:
        if self.closed:
            raise SessionClosedError(f"session {self.paths.root.name} is closed")

    def _require_data(self, what: str) -> None:
        if not self.save_data:
            raise ValueError(f"{what} needs save_data=True")

    def write_timing(self, record: dict) -> None:
        """One tick record; every field of ACTION_FIELDS must be present (null allowed).

        The stage times (sensor_encoding_time, robot_encoding_time, action_prediction_time)
        are what was measured, None where a stage was not timed on its own. A tick that ran
        goes to performance_timings with numbers in every deployed field (_action_line); a
        held tick (held names the reason) goes to held_ticks as given, so the deployed
        scripts never see it.
        """
        missing = [name for name in ACTION_FIELDS if name not in record]
        if missing:
            raise KeyError(f"timing record lacks {', '.join(missing)}")
        fields = ACTION_FIELDS + ACTION_EXTRA_FIELDS
        if is_held(record):
            self._write_line(self._held, record, fields, self.summary.add_held)
            return
        line = _action_line(record)
        _check_deployed(line)
        self._write_line(self._timings, line, fields, self.summary.add_timing)

    def write_vl_update(self, record: dict) -> None:
        """One VL update record: timestamp, vl_update_number, vl_update_time (> 0 ms), then
        optionally view_skew_ms and capture_timestamps (one wall-clock s per view), extras.
        The other deployed fields are written as the deployed receiver does: 0."""
        missing = [name for name in VL_REQUIRED_FIELDS if name not in record]
        if missing:
            raise KeyError(f"VL update record lacks {', '.join(missing)}")
        if not (isinstance(record["vl_update_time"], (int, float)) and record["vl_update_time"] > 0):
            raise ValueError(f"VL update record needs vl_update_time > 0, got {record['vl_update_time']!r}")
        line = {**VL_DEFAULTS, **record}
        _check_deployed(line)
        self._write_line(self._timings, line, DEPLOYED_TIMING_FIELDS + VL_EXTRA_FIELDS, self.summary.add_timing)

    def _write_line(self, stream: "_LineFile", record: dict, fields: tuple, add) -> None:
        clean = to_jsonable(_ordered(record, fields))
        self._require_open()
        stream.write_line(json.dumps(clean, allow_nan=False))
        add(clean)

    def write_result(self, record: dict) -> None:
        """{timestamp, actions, delta, inference_time (s, as deployed), vl_update_number,
        robot_state: {joints, pose, timestamp}}, then any extras."""
        text = json.dumps(to_jsonable(record), allow_nan=False)
        self._require_open()
        self._results.write_line(text)
        self.summary.note_result()

    def write_frame(self, view: str, camera: str, timestamp: float, jpeg: bytes) -> Path:
        """The received JPEG bytes, unchanged, as <view>/<camera>_<timestamp:.3f>.jpg."""
        self._require_data("write_frame")
        if view not in self.views:
            raise ValueError(f"unknown view {view!r} (views: {', '.join(self.views)})")
        if not camera or "/" in camera or camera.startswith("."):
            raise ValueError(f"invalid camera name {camera!r}")
        path = self.paths.root / view / f"{camera}_{timestamp:.3f}.jpg"
        self._require_open()
        tmp = path.with_name(path.name + TMP_SUFFIX)
        tmp.write_bytes(bytes(jpeg))   # a crash leaves a .tmp, never a truncated .jpg
        os.replace(tmp, path)
        self.frames_written += 1
        return path

    def write_robot_rows(self, rows: Any, records: Any = None) -> None:
        """N x 16 float64 rows in ROBOT_CSV_HEADER order (one row of 16 is accepted too), and
        their robot ring record numbers (N,) (None: not known, written as -1)."""
        self._require_data("write_robot_rows")
        array = np.asarray(rows, dtype=np.float64)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != len(ROBOT_CSV_HEADER):
            raise ValueError(f"robot rows must be N x {len(ROBOT_CSV_HEADER)}, got shape {array.shape}")
        numbers = _record_numbers(records, len(array))
        self._require_open()
        for row, record in zip(array.tolist(), numbers.tolist()):
            self._robot.write_line(",".join(map(repr, row)) + f",{record}")

    def write_sensor_records(self, timestamps: Any, send_timestamps: Any, forces: Any, alines: Any,
                             records: Any = None) -> None:
        """N sensor records: timestamps (N,), send_timestamps (N,), forces (N,), alines (N, L),
        and their sensor ring record numbers (N,) (None: not known, written as -1)."""
        self._require_data("write_sensor_records")
        arrays = {"timestamps": np.asarray(timestamps), "send_timestamps": np.asarray(send_timestamps),
                  "forces": np.asarray(forces), "alines": np.asarray(alines)}
        if arrays["alines"].ndim != 2:
            raise ValueError(f"alines must be N x L, got shape {arrays['alines'].shape}")
        arrays["records"] = _record_numbers(records, len(arrays["alines"]))
        self._require_open()
        self._sensor.append(arrays)

    def write_vl_features(self, records: Any, updates: Any, features: Any, capture_timestamps: Any) -> None:
        """N VL updates: their vl_feature ring record numbers (N,), update numbers (N,),
        features (N, V) and view capture times (N, views), for `shm-vla replay`."""
        self._require_data("write_vl_features")
        arrays = {"records": np.asarray(records), "updates": np.asarray(updates),
                  "features": np.asarray(features), "capture_timestamps": np.asarray(capture_timestamps)}
        if arrays["features"].ndim != 2 or arrays["capture_timestamps"].ndim != 2:
            raise ValueError(f"features and capture_timestamps must be N x V and N x views, got shapes "
                             f"{arrays['features'].shape}, {arrays['capture_timestamps'].shape}")
        self._require_open()
        self._vl_features.append(arrays)

    def write_config(self, config: dict) -> None:
        """The configuration the session is recorded with (session_config_<stamp>.json), once:
        a continued session keeps the file of its start."""
        self._require_open()
        if not self.paths.config.exists():
            write_json_atomic(self.paths.config, config)

    def write_shadow(self, line: dict) -> None:
        """One shadow line (shadow_tick.shadow_line), to shadow_results_<stamp>.jsonl."""
        if self._shadow is None:
            raise ValueError("write_shadow needs shadow=True")
        text = json.dumps(to_jsonable(line), allow_nan=False)
        self._require_open()
        self._shadow.write_line(text)

    def note_lost(self, n: int) -> None:
        """Records the recorder lost (overwritten in the results ring before it read them)."""
        if n < 0:
            raise ValueError(f"lost count must be >= 0, got {n}")
        self.summary.note_lost(n)

    def flush(self) -> None:
        self._require_open()
        for stream in self._streams():
            stream.flush()

    def _streams(self) -> list:
        return [s for s in (self._timings, self._held, self._results, self._robot, self._sensor, self._vl_features,
                            self._shadow) if s is not None]

    # ---- checkpoint (session_state.py)
    def checkpoint(self, cursors: dict) -> None:
        """Flush every file, then save the cursors with the file sizes that go with them."""
        if self._state is None:
            raise ValueError("checkpoint() needs a writer made with state=")
        self._require_open()
        for stream in self._streams():
            stream.flush()
        self._state.cursors = {name: int(n) for name, n in cursors.items()}
        self._save_state("recording")

    def _save_state(self, phase: str, durable: bool = False) -> None:
        """Replace the checkpoint; the files must be flushed (sizes are read from disk)."""
        state = self._state
        state.phase, state.pid = phase, os.getpid()
        if phase != "closed":            # finalising removes the sensor parts: keep the last sizes
            files = [s.path for s in (self._timings, self._held, self._results, self._robot, self._shadow)
                     if s is not None]
            files += [path for parts in (self._sensor, self._vl_features) if parts is not None for path in parts.paths()]
            state.sizes = {str(path.relative_to(self.paths.root)): path.stat().st_size for path in files}
        state.results_written = self.summary.result_records
        state.lost = self.summary.lost_records
        state.frames_written = self.frames_written
        write_json_atomic(self.paths.root / STATE_FILE, state.to_dict(), durable=durable)

    # ---- shutdown
    def close(self, cursors: dict | None = None) -> dict | None:
        """Flush and finalise every file; idempotent. Returns the summary.

        cursors: the recorder's final cursors, saved before finalising starts (phase
        "closing"), so that a run that goes on starts its next session right after these.
        """
        if self.closed:
            return self._summary_dict
        self.closed = True       # from here on, a write is refused
        try:
            for stream in self._streams():
                stream.close()
            if self._state is not None:
                if cursors is not None:
                    self._state.cursors = {name: int(n) for name, n in cursors.items()}
                self._save_state("closing", durable=True)
            _, _, self.unfinished = _finish(self.paths)     # the reserve is for this
            self._summary_dict = self.summary.to_dict()
            write_json_atomic(self.paths.summary, self._summary_dict)
            if self._state is not None and not self.unfinished:
                # else it stays "closing": recover() (the recorder's next start) finishes it
                self._save_state("closed", durable=True)
        finally:
            self._lock.release()
        return self._summary_dict

    def __enter__(self) -> "SessionWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- crash recovery
def _cut_to_checkpoint(paths: SessionPaths, state: SessionState) -> None:
    """Cut each streamed file back to its checkpointed size: what lies beyond was written
    after the checkpoint, and the continuing recorder reads those records again."""
    for rel, size in state.sizes.items():
        with open(paths.root / rel, "r+b") as f:
            f.truncate(int(size))
    for folder, _ in paths.assembled():
        if folder.is_dir():             # an array file opened after the checkpoint holds only later rows
            for part in folder.glob("*.bin"):
                if str(part.relative_to(paths.root)) not in state.sizes:
                    part.write_bytes(b"")
    _remove_tmp(paths.root)


def _remove_tmp(root: Path) -> int:
    """Remove what a crash left half-written (.tmp: frames, JSON being replaced)."""
    removed = 0
    for tmp in root.rglob(f"*{TMP_SUFFIX}"):
        tmp.unlink()
        removed += 1
    return removed


def recover(session_dir: str | os.PathLike, reserve_bytes: int = 0) -> dict:
    """Finalise a session left by a crash (idempotent); returns what was done.

    Cuts lines torn by the crash, writes inference_results .json from its .jsonl,
    assembles sensor_data .npz from its parts, removes frames left half-written (.tmp),
    and writes performance_summary .json from the timings when it is missing (the
    lost-record count is then the recorder's last checkpoint's, or 0 without one).
    The files written whole are written only where they fit keeping `reserve_bytes` free
    (a live recorder's reserve); the others are named in "unfinished" and the session stays
    `closing`. Raises SessionBusy while another process (a live recorder) holds the session.
    """
    paths = SessionPaths.of_dir(session_dir)
    lock = SessionLock(paths.root)
    try:
        return _recover(paths, reserve_bytes)
    finally:
        lock.release()


def _count_results(jsonl: Path) -> int:
    return sum(isinstance(obj, dict) for _, _, obj in iter_json_lines(jsonl)) if jsonl.exists() else 0


def _finish(paths: SessionPaths, reserve: int = 0) -> tuple[int | None, dict, list[str]]:
    """The files written whole at the end, each only where it fits (keeping `reserve` free):
    the results .json from its .jsonl, each .npz from its parts. Returns (results written, or
    None where there was no room; {npz: rows}; why each file not written was not)."""
    results, rows, left = None, {}, []
    try:
        jsonl = paths.results_jsonl
        _check_room(paths.results_json.name, jsonl.stat().st_size if jsonl.exists() else 0, paths.root, reserve)
        results = write_results_json(jsonl, paths.results_json)
    except NoRoom as exc:
        left.append(str(exc))
    for parts, npz in paths.assembled():
        if parts.exists():
            try:
                rows[npz] = assemble_npz(parts, npz, reserve)
            except NoRoom as exc:
                left.append(str(exc))
    return results, rows, left


def _recover(paths: SessionPaths, reserve: int) -> dict:
    report: dict[str, Any] = {"session": str(paths.root), "trimmed": []}
    for path in (paths.timings, paths.held, paths.results_jsonl, paths.robot_csv, paths.shadow_results):
        if trim_partial_line(path):
            report["trimmed"].append(path.name)
    results, rows, report["unfinished"] = _finish(paths, reserve)
    report["results"] = results if results is not None else _count_results(paths.results_jsonl)
    report["sensor_records"] = rows.get(paths.sensor_npz)
    if paths.vl_npz in rows:
        report["vl_features"] = rows[paths.vl_npz]
    report["removed_tmp"] = _remove_tmp(paths.root)
    state = read_state(paths.root)
    report["summary_written"] = not paths.summary.exists()
    if report["summary_written"]:
        summary = summary_from_files(paths)
        summary.result_records = report["results"]
        summary.lost_records = state.lost if state is not None else 0
        write_json_atomic(paths.summary, summary.to_dict())
    if state is not None and state.phase != "closed" and not report["unfinished"]:
        state.phase = "closed"
        write_json_atomic(paths.root / STATE_FILE, state.to_dict())
    return report
