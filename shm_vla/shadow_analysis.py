"""The shadow part of `shm-vla analyze`: how far a shadow checkpoint's actions were from the
live ones over a session (shadow_results_<stamp>.jsonl beside the timings file).

Per action axis: p50, p99, max and mean of |shadow first action - live first action| over the
shadow ticks whose both outputs were finite; the same per time bin (over time); the shadow
head's time and how far behind the live tick it finished; the ticks by status, the ticks
skipped, and the shadow lines whose action_id is no live tick of the session (there should be
none). Bad lines are skipped with a warning, as everywhere in the analyzer.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_BINS = 60                 # over time: at most this many bins ...
MIN_BIN_S = 10.0              # ... each at least this long


@dataclass
class ShadowData:
    """The valid lines of one shadow results file, as columns."""
    path: Path
    timestamp: np.ndarray                 # live tick wall clock (s)
    action_id: np.ndarray
    divergence: np.ndarray                # (N, A); NaN where not computed
    inference_ms: np.ndarray
    delay_ms: np.ndarray
    statuses: Counter
    skipped: int
    checkpoints: dict                     # (path, sha256, model_type) -> lines
    warnings: list = field(default_factory=list)


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def load(path: Path) -> ShadowData | None:
    """The shadow file's valid lines; None when it has none."""
    rows, statuses, checkpoints, bad, skipped, width = [], Counter(), Counter(), 0, 0, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
                action_id = int(record["action_id"])
                status = str(record["status"])
            except (ValueError, KeyError, TypeError, RecursionError):
                bad += 1
                continue
            divergence = record.get("divergence")
            divergence = [_number(x) for x in divergence] if isinstance(divergence, list) else []
            width = max(width, len(divergence))
            rows.append((_number(record.get("timestamp")), action_id, divergence,
                         _number(record.get("inference_ms")), _number(record.get("delay_ms"))))
            statuses[status] += 1
            skipped_value = _number(record.get("skipped"))
            skipped += int(skipped_value) if math.isfinite(skipped_value) else 0
            checkpoints[(record.get("checkpoint"), record.get("checkpoint_sha256"), record.get("model_type"))] += 1
    if not rows:
        return None
    divergence = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        divergence[i, :len(row[2])] = row[2]
    warnings = [f"{path.name}: {bad} line(s) not valid shadow records, skipped"] if bad else []
    if len(checkpoints) > 1:
        warnings.append(f"{path.name}: {len(checkpoints)} different shadow checkpoints in one session; "
                        "the divergence is of all of them together")
    column = lambda i: np.array([row[i] for row in rows], dtype=np.float64)   # noqa: E731
    return ShadowData(path, column(0), column(1), divergence, column(3), column(4), statuses, skipped,
                      dict(checkpoints), warnings)


def _stats(values: np.ndarray) -> dict | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    p50, p99 = np.percentile(values, [50, 99])
    return {"count": int(values.size), "p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(values.max())}


def _per_axis(divergence: np.ndarray) -> dict | None:
    """p50/p99/max/mean per axis over the rows where the divergence was computed."""
    rows = divergence[np.isfinite(divergence).all(axis=1)]
    if rows.size == 0:
        return None
    p50, p99 = np.percentile(rows, [50, 99], axis=0)
    return {"count": int(len(rows)), "p50": p50.tolist(), "p99": p99.tolist(), "max": rows.max(axis=0).tolist(),
            "mean": rows.mean(axis=0).tolist()}


def _over_time(data: ShadowData, start_s: float) -> dict:
    t = data.timestamp - start_s
    finite = np.isfinite(t)
    if not finite.any():
        return {"bin_s": None, "bins": []}
    span = float(t[finite].max())
    bin_s = max(MIN_BIN_S, math.ceil(span / MAX_BINS)) if span > 0 else MIN_BIN_S
    index = np.floor(t / bin_s)
    bins = []
    for b in np.unique(index[finite]):
        axis = _per_axis(data.divergence[index == b])
        bins.append({"t_s": float(b * bin_s), "ticks": int((index == b).sum()),
                     **({k: axis[k] for k in ("p50", "p99", "max")} if axis else {"p50": None, "p99": None,
                                                                                   "max": None})})
    return {"bin_s": float(bin_s), "bins": bins}


def report(data: ShadowData | None, start_s: float, live_ids: np.ndarray) -> dict | None:
    """The shadow section of the analysis (schema in docs/SESSION_FILES.md); None without a shadow file."""
    if data is None:
        return None
    live = set(live_ids[np.isfinite(live_ids)].astype(np.int64).tolist())
    unpaired = int(sum(1 for a in data.action_id.astype(np.int64).tolist() if a not in live))
    return {
        "file": str(data.path),
        "checkpoints": [{"path": p, "sha256": h, "model_type": m, "ticks": n}
                        for (p, h, m), n in data.checkpoints.items()],
        "ticks": int(len(data.action_id)),
        "by_status": dict(sorted(data.statuses.items())),
        "skipped": data.skipped,
        "unpaired": unpaired,
        "divergence": _per_axis(data.divergence),
        "over_time": _over_time(data, start_s),
        "inference_ms": _stats(data.inference_ms),
        "delay_ms": _stats(data.delay_ms),
        "warnings": list(data.warnings),
    }


# --------------------------------------------------------------------------- text, plot
def _row(label: str, values) -> str:
    return f"    {label:<6}" + "".join(f"{'-' if v is None else format(v, '.4f'):>10}" for v in values)


def render_text(shadow: dict) -> list[str]:
    lines = ["", "shadow: " + "; ".join(f"{c['path']} (sha256 {str(c['sha256'])[:12]}, {c['model_type']}, "
                                        f"{c['ticks']} ticks)" for c in shadow["checkpoints"])]
    lines.append(f"  ticks {shadow['ticks']}: " + ", ".join(f"{k} {v}" for k, v in shadow["by_status"].items())
                 + f"; skipped {shadow['skipped']}; unpaired {shadow['unpaired']}")
    lines += [f"  warning: {w}" for w in shadow["warnings"]]
    div = shadow["divergence"]
    if div is None:
        lines.append("  divergence: none computed (no shadow tick with a finite live and shadow output)")
    else:
        lines.append(f"  divergence |shadow - live| of the first action, per axis ({div['count']} ticks)")
        lines.append(f"    {'axis':<6}" + "".join(f"{i:>10}" for i in range(len(div["p50"]))))
        lines += [_row(key, div[key]) for key in ("p50", "p99", "max", "mean")]
        over = shadow["over_time"]
        lines.append(f"  over time ({over['bin_s']:g} s bins): largest p99 over the axes per bin")
        lines += [f"    {b['t_s']:>7.0f} s {b['ticks']:>6} ticks  "
                  + ("-" if b["p99"] is None else f"{max(b['p99']):.4f} (axis {int(np.argmax(b['p99']))})")
                  for b in over["bins"]]
    for label, key in (("shadow head", "inference_ms"), ("behind the live tick", "delay_ms")):
        s = shadow[key]
        lines.append(f"  {label} ms: " + ("-" if s is None else f"p50 {s['p50_ms']:.2f}, p99 {s['p99_ms']:.2f}, "
                                                               f"max {s['max_ms']:.2f}"))
    return lines


def plot_panel(ax, data: ShadowData, start_s: float) -> None:
    """Per-axis divergence over the session's time, one series per axis."""
    t = data.timestamp - start_s
    for axis in range(data.divergence.shape[1]):
        ax.plot(t, data.divergence[:, axis], ".", ms=2, label=f"axis {axis}")
    ax.set(title=f"shadow divergence |shadow - live| of the first action ({data.path.name})", xlabel="time (s)",
           ylabel="action units")
    if ax.has_data():
        ax.legend(loc="upper right", markerscale=4, ncol=min(7, data.divergence.shape[1]))
