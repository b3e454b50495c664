"""The command sink: stands in for the robot-side command receiver. Binds a PULL,
validates every message against the command format, counts valid/invalid (by kind),
and appends each one with its receive times to a JSONL log (flushed per line)."""
from __future__ import annotations

import collections
import json
import time

import zmq

from ..protocol.command import validate_command
from ..protocol.errors import ProtocolError
from .base import Runner, log, zmq_context

POLL_MS = 100          # how often the loop looks at the stop flag
KEEP_COMMANDS = 10_000  # newest commands kept in memory for tests
RAW_LOG_BYTES = 200    # an invalid message is logged truncated to this


class CommandSink(Runner):
    """``valid``/``invalid`` counters, ``invalid_by_kind``, ``commands`` (the newest
    valid ones as dicts with recv_monotonic_ns / recv_wall_s); ``endpoint`` once bound."""

    name = "commands"

    def __init__(self, address: str, log_path: str | None = None, duration_s: float | None = None) -> None:
        super().__init__()
        self.address, self.log_path, self.duration_s = address, log_path, duration_s
        self.valid = 0
        self.invalid = 0
        self.invalid_by_kind: collections.Counter = collections.Counter()
        self.commands: collections.deque = collections.deque(maxlen=KEEP_COMMANDS)
        self.endpoint = ""
        self._socket: zmq.Socket | None = None
        self._log_file = None

    def _open(self) -> None:
        self._socket = zmq_context().socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self.address)
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.log_path:
            self._log_file = open(self.log_path, "a", encoding="utf-8")

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        if self._log_file is not None:
            self._log_file.close()

    def _run(self) -> None:
        end_ns = None if self.duration_s is None else time.monotonic_ns() + int(self.duration_s * 1e9)
        while not self._stop_event.is_set():
            if end_ns is not None and time.monotonic_ns() >= end_ns:
                return
            if self._socket.poll(POLL_MS):
                while (frames := self._recv()) is not None:
                    self._handle(frames)

    def _recv(self):
        try:
            return self._socket.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return None

    def _handle(self, frames: list[bytes]) -> None:
        entry = {"recv_monotonic_ns": time.monotonic_ns(), "recv_wall_s": time.time()}
        try:
            if len(frames) != 1:
                raise ProtocolError("frames", f"{len(frames)} frames, expected 1")
            entry.update(valid=True, command=validate_command(frames[0]))
            self.valid += 1
            self.commands.append(entry)
        except ProtocolError as exc:
            raw = b"".join(frames)[:RAW_LOG_BYTES]
            entry.update(valid=False, error=exc.kind, raw=raw.decode("utf-8", "replace"))
            self.invalid += 1
            self.invalid_by_kind[exc.kind] += 1
            if self.invalid_by_kind[exc.kind] <= 10 or self.invalid % 1000 == 0:  # bounded log rate
                log.warning("command sink: invalid command (%s), %d invalid so far", exc, self.invalid)
        if self._log_file is not None:
            self._log_file.write(json.dumps(entry) + "\n")
            self._log_file.flush()

    def summary(self) -> dict:
        return {"valid": self.valid, "invalid": self.invalid, "invalid_by_kind": dict(self.invalid_by_kind)}
