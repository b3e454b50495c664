import os
import subprocess
import sys

from shm_vla.shm import stats as statsmod


def test_counters_gauges_and_snapshot(instance):
    s = statsmod.Stats.create(instance, "ingest-sensor")
    c = s.counter("records")
    g = s.gauge("age_ms")
    c.inc()
    c.inc(41)
    g.set(12.5)
    assert s.counter("records").value == 42          # registering twice returns the same entry
    s.set_state("up")
    snap = statsmod.read_snapshot(instance, "ingest-sensor")
    assert snap["values"] == {"records": 42, "age_ms": 12.5}
    assert snap["state"] == "up" and snap["alive"] and snap["pid"] == os.getpid()
    assert 0 <= snap["heartbeat_age_ms"] < 60_000
    assert statsmod.list_processes(instance) == ["ingest-sensor"]
    s.close()


def test_dead_process_shows_down_with_last_state(instance):
    code = ("from shm_vla.shm.stats import Stats\n"
            f"s = Stats.create('{instance}', 'act'); s.counter('ticks').inc(7); s.set_state('up')")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    snap = statsmod.read_snapshot(instance, "act")
    assert snap["state"] == "down" and snap["last_state"] == "up"
    assert snap["values"]["ticks"] == 7


def test_name_too_long_is_refused(instance):
    s = statsmod.Stats.create(instance, "x", max_entries=2)
    try:
        s.counter("a" * 49)
        raise AssertionError("expected ValueError")
    except ValueError as exc:
        assert "longer" in str(exc)
    s.counter("a")
    s.counter("b")
    try:
        s.counter("c")
        raise AssertionError("expected ValueError")
    except ValueError as exc:
        assert "too many" in str(exc)
    s.close()
