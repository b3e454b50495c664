"""The wire formats: camera, robot, sensor, command. Parse and encode, nothing else.

Every parser returns valid data or raises :class:`ProtocolError` (a ValueError) whose
``kind`` names the error counter; no other exception escapes on bad input.
"""
from .errors import KINDS, ProtocolError

__all__ = ["KINDS", "ProtocolError"]
