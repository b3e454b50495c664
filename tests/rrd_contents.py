"""Reading a .rrd back with rerun-sdk's own reader (rerun.chunk.RrdReader), for the tests."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import rerun.chunk as rrc


def chunks(path: Path) -> list:
    reader = rrc.RrdReader(path)
    assert len(reader.recordings()) == 1, reader.recordings()
    return [c for c in reader.stream().to_chunks() if not c.is_static]


def rows(path: Path) -> Counter:
    """Entity path (without the leading '/') -> rows logged on a timeline."""
    counts: Counter = Counter()
    for chunk in chunks(path):
        if not chunk.entity_path.startswith("/__"):
            counts[chunk.entity_path.lstrip("/")] += chunk.num_rows
    return counts


def column(path: Path, entity: str, component: str) -> list:
    """(capture_time in s, value) of every row of one component of one entity, in time order."""
    out = []
    for chunk in chunks(path):
        if chunk.entity_path == "/" + entity:
            batch = chunk.to_record_batch()
            assert "capture_time" in chunk.timeline_names and chunk.timeline_names == ["capture_time"]
            times = batch.column("capture_time").cast("int64").to_pylist()
            out += zip((t / 1e9 for t in times), batch.column(component).to_pylist())
    return sorted(out, key=lambda row: row[0])
