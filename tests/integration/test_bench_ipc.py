"""Smoke test of bench/ipc.py: it runs end to end and its JSON has the documented schema.

Timing values are never asserted (benchmarks are not tests); only shape and bookkeeping.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "ipc.py"
pytestmark = pytest.mark.slow

CASE_KEYS = {"transport", "payload_bytes", "rate_hz", "planned", "samples", "p50_ms", "p99_ms", "p99_9_ms",
             "max_ms", "mean_ms", "reader_cpu_pct", "writer_cpu_pct", "writer_send_us_p50", "status"}


def _run(*args, timeout=110):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


def _iceoryx2_installed():
    try:
        import iceoryx2  # noqa: F401
        return True
    except Exception:
        return False


def test_quick_json_schema_all_transports():
    doc, table = _run("--quick", "--json", "--duration", "0.15", "--payloads", "4120,691200")
    assert doc["schema"] == "shm-vla.bench.ipc/1"
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["cpu_model"]
    assert doc["command"].startswith("bench/ipc.py")
    assert "one-way latency" in table          # the human table goes to stderr with --json

    cases = {(c["transport"], c["payload_bytes"]): c for c in doc["latency"]}
    expected = {(t, n) for t in ("ring", "zmq", "mpqueue", "iceoryx2") for n in (4120, 691200)}
    expected.add(("ring-view", 691200))        # the in-place view runs for large payloads only
    assert set(cases) == expected
    for key, c in cases.items():
        if c["transport"] == "iceoryx2" and not _iceoryx2_installed():
            assert c["status"] == "skipped"
            continue
        assert c["status"] == "ok", (key, c.get("error"))
        assert CASE_KEYS <= set(c), key
        assert c["samples"] > 0, key
        assert c["samples"] <= c["planned"], key
        assert c["p50_ms"] <= c["p99_ms"] <= c["p99_9_ms"] <= c["max_ms"], key
        assert c["reader_cpu_pct"] >= 0 and c["writer_cpu_pct"] >= 0, key

    ratio_pairs = {(r["transport"], r["vs"], r["payload_bytes"]) for r in doc["ratios"]}
    assert ("ring", "zmq", 4120) in ratio_pairs
    tick = doc["tick"]
    assert {w["payload_bytes"] for w in tick["writer"]} == {4120, 691200}
    assert tick["window"]["records"] == 65 and tick["window"]["p99_us"] > 0
    assert tick["views"]["views"] == 5 and tick["views"]["latest_copy"]["p99_us"] > 0
    assert {t["name"] for t in doc["targets"]} >= {"ring p99 at 4120 B (ms)", "ring reader CPU% (max over cases)"}


def test_segments_are_removed_and_bad_arguments_are_refused():
    before = set(Path("/dev/shm").iterdir()) if Path("/dev/shm").is_dir() else set()
    _run("--quick", "--json", "--duration", "0.1", "--payloads", "68", "--transports", "ring", "--no-tick")
    after = set(Path("/dev/shm").iterdir()) if Path("/dev/shm").is_dir() else set()
    assert not [p for p in after - before if p.name.startswith("shm-vla.bench")]
    bad = subprocess.run([sys.executable, str(SCRIPT), "--transports", "carrier-pigeon"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown transport" in bad.stderr
