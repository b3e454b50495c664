"""The postmortem analyzer on sessions written by SessionWriter and on hand-made malformed files."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from shm_vla import analyze
from shm_vla.workers.session_files import SessionWriter

REPO = Path(__file__).resolve().parents[2]
STAGES = ("action_prediction", "sensor_encoding", "robot_encoding", "total", "vl_encoding")
STAT_KEYS = {"count", "mean_ms", "std_ms", "min_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"}
REPORT_KEYS = {"schema_version", "source", "records", "warnings", "duration_s", "rate_hz", "stages",
               "outliers", "jitter", "freshness", "holds", "verdict", "recorder", "shadow"}


def action_record(i: int, total_ms: float, **overrides) -> dict:
    record = {
        "timestamp": 1_700_000_000.0 + 0.1 * i, "action_id": i, "vl_update_number": i // 4,
        "vl_update_time": 0.0, "sensor_encoding_time": 1.0 + (i % 3), "robot_encoding_time": 2.0,
        "action_prediction_time": total_ms - 4.0, "total_time": total_ms,
        "sensor_buffer_size": 65, "robot_buffer_size": 100,
        "tick_lateness_ms": 0.1 * ((i % 5) - 2), "sensor_age_ms": 3.0 + (i % 4), "robot_age_ms": 7.0,
        "vl_age_ms": 100.0 + 10 * (i % 4), "frame_age_ms": 300.0, "view_skew_ms": 15.0,
        "held": "stale_sensor" if i % 20 == 19 else None,
    }
    record.update(overrides)
    return record


def totals_ms(n: int, scale: float = 1.0) -> np.ndarray:
    return scale * (10.0 + (np.arange(n) % 10))   # 10..19 ms, p95 = 19


def write_session(out_dir: Path, stamp: str, n: int = 60, scale: float = 1.0, close: bool = True) -> SessionWriter:
    writer = SessionWriter(out_dir, stamp=stamp, flush_every=1)
    for i, total in enumerate(totals_ms(n, scale)):
        if i % 4 == 0:
            writer.write_vl_update({"timestamp": 1_700_000_000.0 + 0.1 * i, "vl_update_number": i // 4,
                                    "vl_update_time": 40.0 * scale})
        writer.write_timing(action_record(i, float(total)))
    if close:
        writer.close()
    return writer


def run(argv, capsys) -> tuple[int, str, str]:
    code = analyze.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(argv, capsys) -> tuple[int, dict]:
    code, out, _ = run([*argv, "--json"], capsys)
    return code, json.loads(out)


# --------------------------------------------------------------------------- sessions
def test_closed_session_text_report(tmp_path, capsys):
    writer = write_session(tmp_path, "20240101_000000")
    code, out, err = run([writer.path], capsys)
    assert code == 0 and err == ""
    for stage in STAGES:
        assert stage in out
    assert "verdict: EXCELLENT" in out
    assert "withheld ticks: 3" in out and "stale_sensor" in out
    assert "achieved rate: 10.00 Hz" in out


def test_statistics_match_numpy(tmp_path, capsys):
    writer = write_session(tmp_path, "20240101_000000", n=100)
    code, report = run_json([writer.path], capsys)
    assert code == 0 and set(report) == REPORT_KEYS
    ran = np.arange(100) % 20 != 19                    # every 20th tick is held (action_record)
    expected = totals_ms(100)[ran]
    total = report["stages"]["total"]
    assert set(total) == STAT_KEYS
    assert total["count"] == 95
    assert total["mean_ms"] == pytest.approx(expected.mean())
    assert total["std_ms"] == pytest.approx(expected.std())
    assert total["p99_ms"] == pytest.approx(np.percentile(expected, 99))
    assert report["stages"]["vl_encoding"]["count"] == 25
    assert report["duration_s"] == pytest.approx(9.9) and report["rate_hz"] == pytest.approx(10.0)
    assert report["jitter"]["max_ms"] == pytest.approx(0.2)
    assert report["freshness"]["vl_age"]["max_ms"] == 130.0
    assert report["holds"] == {"total": 5, "by_reason": {"stale_sensor": 5}, "fraction": 0.05}
    assert report["verdict"]["label"] == "EXCELLENT"
    assert report["verdict"]["p95_total_ms"] == pytest.approx(np.percentile(expected, 95))
    assert report["records"] == {"read": 125, "actions": 95, "held": 5, "vl_updates": 25, "invalid": 0}
    assert report["recorder"] == {"records_written": 120, "held_written": 5, "results_written": 0, "lost": 0}
    assert report["source"]["format"] == "jsonl" and report["warnings"] == []


def test_outliers_beyond_p95_name_the_worst_actions(tmp_path, capsys):
    writer = SessionWriter(tmp_path, stamp="s")
    for i in range(100):
        writer.write_timing(action_record(i, 90.0 if i in (17, 42) else 10.0 + i % 5))
    writer.close()
    code, report = run_json([writer.path], capsys)
    outliers = report["outliers"]
    assert outliers["count"] == 2
    assert sorted(w["action_id"] for w in outliers["worst"]) == [17, 42]
    assert all(w["total_ms"] == 90.0 for w in outliers["worst"])


def test_session_cut_off_without_close(tmp_path, capsys):
    writer = write_session(tmp_path, "20240101_000000", n=30, close=False)
    with open(writer.paths.timings, "a") as f:
        f.write('{"timestamp": 1700000003.0, "action_id": 30, "total_ti')   # killed mid-line
    code, out, err = run([writer.path], capsys)
    assert code == 0
    assert "truncated" in out and "records: 38 read, 29 actions, 1 held ticks, 8 VL updates" in out
    writer.close()


def test_folder_of_sessions_takes_the_newest(tmp_path, capsys):
    write_session(tmp_path, "20240101_000000", n=10)
    newest = write_session(tmp_path, "20240102_000000", n=20)
    code, report = run_json([tmp_path], capsys)
    assert code == 0 and report["records"]["actions"] == 19 and report["records"]["held"] == 1
    assert report["source"]["timings_file"] == str(newest.paths.timings)
    assert any("newest" in w for w in report["warnings"])


@pytest.mark.parametrize("p95_ms, label", [(29.9, "EXCELLENT"), (30.0, "GOOD"), (49.0, "GOOD"),
                                           (50.0, "ACCEPTABLE"), (99.9, "ACCEPTABLE"),
                                           (100.0, "NEEDS OPTIMIZATION"), (None, None)])
def test_verdict_thresholds(p95_ms, label):
    assert analyze.verdict(p95_ms)["label"] == label


def test_verdict_from_a_slow_session(tmp_path, capsys):
    writer = write_session(tmp_path, "s", n=40, scale=4.0)   # totals 40..76 ms
    code, out, _ = run([writer.paths.timings], capsys)
    assert code == 0 and "verdict: ACCEPTABLE" in out


# --------------------------------------------------------------------------- hand-made files
def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_older_json_list_format(tmp_path, capsys):
    records = [action_record(i, 20.0 + i) for i in range(10)]
    path = tmp_path / "performance_timings_old.json"
    path.write_text(json.dumps(records, indent=2))
    code, report = run_json([path], capsys)
    assert code == 0 and report["source"]["format"] == "json-list"
    assert report["stages"]["total"]["count"] == 10 and report["warnings"] == []


def test_truncated_json_list(tmp_path, capsys):
    text = json.dumps([action_record(i, 20.0) for i in range(5)], indent=2)
    path = tmp_path / "t.json"
    path.write_text(text[: text.rindex('"held"')])   # cut inside the fifth record
    code, report = run_json([path], capsys)
    assert code == 0 and report["records"]["actions"] == 4
    assert any("truncated" in w for w in report["warnings"])


def test_deployed_fields_only_no_jitter_or_freshness(tmp_path, capsys):
    deployed = [{k: v for k, v in action_record(i, 25.0).items()
                 if not k.endswith("_ms") and k != "held"} for i in range(10)]
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(r) for r in deployed])
    code, report = run_json([path], capsys)
    assert code == 0 and report["jitter"] is None
    assert all(v is None for v in report["freshness"].values())
    assert any("fields absent" in w and "tick_lateness_ms" in w for w in report["warnings"])
    code, out, _ = run([path], capsys)
    assert "tick jitter: not in these records" in out and "verdict: EXCELLENT" in out


def test_unknown_fields_bad_values_and_non_objects(tmp_path, capsys):
    lines = [json.dumps(action_record(0, 20.0, gpu_temp_c=61)),
             json.dumps(action_record(1, 20.0, total_time="slow", sensor_age_ms=None)),
             "[1, 2, 3]", "not json at all", '"a string"', "",
             json.dumps(action_record(2, 22.0)).replace("22.0", "NaN", 1)]
    path = write_lines(tmp_path / "t.jsonl", lines)
    code, report = run_json([path], capsys)
    assert code == 0
    assert report["records"] == {"read": 3, "actions": 3, "held": 0, "vl_updates": 0, "invalid": 2}
    assert report["stages"]["total"]["count"] == 1
    text = " | ".join(report["warnings"])
    assert "unknown fields ignored: gpu_temp_c" in text
    assert "line 4" in text and "not objects" in text and "total_time" in text


def test_only_vl_records(tmp_path, capsys):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"timestamp": 1.0 + i, "vl_update_number": i,
                                                          "vl_update_time": 30.0}) for i in range(3)])
    code, report = run_json([path], capsys)
    assert code == 0 and report["verdict"]["label"] is None
    assert report["stages"]["vl_encoding"]["count"] == 3 and report["stages"]["total"] is None
    code, out, _ = run([path], capsys)
    assert code == 0 and "verdict: n/a" in out


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("  \n\n", "empty file"),
    ("garbage\n{\"trunc", "no valid timing records"),
    ("[1, 2]", "no valid timing records"),
])
def test_nothing_valid_is_exit_1_with_a_message(tmp_path, capsys, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    code, out, err = run([path], capsys)
    assert code == 1 and out == "" and message in err and "Traceback" not in err


def test_binary_garbage(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_bytes(bytes(range(256)) * 4)
    code, _, err = run([path], capsys)
    assert code == 1 and "no valid timing records" in err


def test_deeply_nested_json_is_skipped(tmp_path, capsys):
    path = write_lines(tmp_path / "t.jsonl", ['{"a": ' * 100_000, json.dumps(action_record(0, 20.0))])
    code, report = run_json([path], capsys)
    assert code == 0 and report["records"]["actions"] == 1
    (tmp_path / "t.json").write_text("[" * 100_000)
    code, _, err = run([tmp_path / "t.json"], capsys)
    assert code == 1 and "no valid timing records" in err


def test_unreadable_timings_file(tmp_path, capsys):
    (tmp_path / "performance_timings_x.jsonl").mkdir()   # IsADirectoryError on open: any OSError
    code, _, err = run([tmp_path], capsys)
    assert code == 1 and "cannot read" in err and "Traceback" not in err


def test_missing_path_and_directory_without_timings(tmp_path, capsys):
    code, _, err = run([tmp_path / "nope"], capsys)
    assert code == 1 and "no such file or directory" in err
    code, _, err = run([tmp_path], capsys)
    assert code == 1 and "without a performance_timings" in err


@pytest.mark.parametrize("argv", [[], ["a", "b"], ["--bogus", "x"], ["x", "--plot"]])
def test_usage_errors_are_exit_2(capsys, argv):
    code, _, err = run(argv, capsys)
    assert code == 2 and "usage" in err


def test_help_is_exit_0(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "--compare" in out


# --------------------------------------------------------------------------- plot, compare, launchers
def test_plot_png_is_written(tmp_path, capsys):
    writer = write_session(tmp_path, "s", n=50)
    png = tmp_path / "out.png"
    code, out, _ = run([writer.path, "--plot", png], capsys)
    assert code == 0 and "plot written" in out
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_plot_of_records_without_optional_fields(tmp_path, capsys):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"timestamp": 1.0 + i, "action_id": i,
                                                          "total_time": 20.0}) for i in range(5)])
    png = tmp_path / "out.png"
    code, _, _ = run([path, "--plot", png, "--json"], capsys)
    assert code == 0 and png.stat().st_size > 0


def test_plot_to_an_unwritable_place_is_exit_1(tmp_path, capsys):
    writer = write_session(tmp_path, "s", n=5)
    code, out, err = run([writer.path, "--plot", tmp_path / "no" / "dir" / "x.png"], capsys)
    assert code == 1 and "verdict" in out and "cannot write" in err


def test_compare_two_sessions(tmp_path, capsys):
    fast = write_session(tmp_path, "a", n=40)
    slow = write_session(tmp_path, "b", n=40, scale=2.0)
    code, result = run_json([fast.path, "--compare", slow.path], capsys)
    assert code == 0 and set(result) == {"schema_version", "a", "b", "ratios"}
    assert set(result["a"]) == REPORT_KEYS == set(result["b"])
    assert result["ratios"]["stages"]["total"]["mean_ms"] == pytest.approx(2.0)
    assert result["ratios"]["stages"]["vl_encoding"]["p99_ms"] == pytest.approx(2.0)
    assert result["ratios"]["rate_hz"] == pytest.approx(1.0)
    assert result["ratios"]["jitter"]["max_ms"] == pytest.approx(1.0)
    code, out, _ = run([fast.path, "--compare", slow.path], capsys)
    assert code == 0 and "B / A" in out and "total p95_ms" in out and "2.00" in out


def test_compare_with_a_bad_other_still_reports_path(tmp_path, capsys):
    writer = write_session(tmp_path, "a", n=10)
    code, out, err = run([writer.path, "--compare", tmp_path / "missing"], capsys)
    assert code == 1 and "verdict: EXCELLENT" in out and "--compare" in err


def test_tools_launcher_and_cli_dispatch(tmp_path, capsys, monkeypatch):
    writer = write_session(tmp_path, "a", n=10)
    monkeypatch.setattr(sys, "argv", ["tools/analyze.py", str(writer.path), "--json"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "tools" / "analyze.py"), run_name="__main__")
    assert exc.value.code == 0
    assert json.loads(capsys.readouterr().out)["records"]["actions"] == 10
    from shm_vla import cli
    assert cli.main(["analyze", str(tmp_path / "missing")]) == 1
