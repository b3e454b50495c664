"""What counts as a number in records, stats and session files: one rule, used everywhere.

A value is a number when it is a finite real number. Anything else (missing, null, text,
true/false, NaN, infinite) is *no number*, written None in Python and null in JSON: a
gauge never set, a stage not timed, a field a file lacks or spells wrongly. The recorder
(ring records to files), the session summary, the analyzer and shm-vla-stat all read
values through ``finite_or_none``, and write JSON through ``to_jsonable``, so they never
disagree on what a number is.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


def finite_or_none(value: Any) -> int | float | None:
    """value as a plain Python number when it is a finite real number, else None.

    An integer stays an integer (a counter prints as 5, not 5.0) and a numpy scalar (or a
    0-d array: a field of one ring record) becomes the Python one; bool is no number (True
    is an int to Python, not to a file's reader).
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def to_jsonable(value: Any) -> Any:
    """numpy values to Python ones and non-finite floats to None, so the output is strict JSON."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
