"""Errors of the model package."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as configured. The message is one line meant for the
    operator: it names the file (when known), the key and the values that disagree."""
