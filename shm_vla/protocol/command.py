"""Robot commands (our ZeroMQ PUSH -> the robot-side receiver), JSON text.

Exactly two shapes are valid:
  {"cmd": "dpose", "dp": [dx, dy, dz, da, db, dr]}          mm and deg, once per action tick
  {"cmd": "start", "start_joints": [6 floats], "lock_j6": false}   once at auto-start
The encoders refuse anything :func:`validate_command` would refuse, so an invalid
command can never leave this process.
"""
from __future__ import annotations

import json
import math
import numbers

from .errors import ProtocolError

DOF = 6
_SHAPES = {"dpose": frozenset({"cmd", "dp"}), "start": frozenset({"cmd", "start_joints", "lock_j6"})}


def _six_finite(values, what: str) -> list[float]:
    try:
        count = len(values)
    except TypeError:
        raise ProtocolError("type", f"{what} is not a list") from None
    if count != DOF:
        raise ProtocolError("count", f"{what} has {count} values, expected {DOF}")
    return [_finite_number(value, what) for value in values]


def _finite_number(value, what: str) -> float:
    # numbers.Real admits numpy scalars for the encoders; true/false is no number
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ProtocolError("type", f"{what} holds a {type(value).__name__}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise ProtocolError("nonfinite", f"{what} holds a number out of float range") from None
    if not math.isfinite(number):
        raise ProtocolError("nonfinite", f"{what} holds {number}")
    return number


def encode_dpose(dp) -> bytes:
    """One tick's pose delta [dx, dy, dz (mm), da, db, dr (deg)] as command bytes."""
    return json.dumps({"cmd": "dpose", "dp": _six_finite(dp, "dp")}, allow_nan=False).encode()


def encode_start(joints, lock_j6: bool = False) -> bytes:
    """The auto-start command moving to ``joints`` (deg)."""
    if not isinstance(lock_j6, bool):
        raise ProtocolError("type", "lock_j6 must be a bool")
    body = {"cmd": "start", "start_joints": _six_finite(joints, "start_joints"), "lock_j6": lock_j6}
    return json.dumps(body, allow_nan=False).encode()


def validate_command(data) -> dict:
    """The command in ``data`` (bytes) as a dict with float lists, or ProtocolError."""
    try:
        text = str(memoryview(data), "utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("utf8", "command is not UTF-8") from None
    try:
        command = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("json", "command is not JSON") from None
    if not isinstance(command, dict):
        raise ProtocolError("not_object", f"command is a {type(command).__name__}")
    kind = command.get("cmd")
    if not isinstance(kind, str) or kind not in _SHAPES:
        raise ProtocolError("cmd", f"unknown cmd {str(kind)[:32]!r}")
    if set(command) != _SHAPES[kind]:
        raise ProtocolError("keys", f"{kind} needs exactly the keys {sorted(_SHAPES[kind])}")
    if kind == "dpose":
        return {"cmd": "dpose", "dp": _json_six(command["dp"], "dp")}
    if not isinstance(command["lock_j6"], bool):
        raise ProtocolError("type", "lock_j6 must be true or false")
    return {"cmd": "start", "start_joints": _json_six(command["start_joints"], "start_joints"),
            "lock_j6": command["lock_j6"]}


def _json_six(values, what: str) -> list[float]:
    if not isinstance(values, list):
        raise ProtocolError("type", f"{what} is not a list")
    return _six_finite(values, what)
