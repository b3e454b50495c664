"""Command sink: validates, counts and logs good and bad commands with receive times."""
import json
import time

import pytest
import zmq

from shm_vla.protocol.command import encode_dpose, encode_start
from shm_vla.sim.commands import CommandSink

pytestmark = pytest.mark.slow

BAD = [[b"{"], [b'{"cmd": "dpose", "dp": [0, 0, 0, 0, 0, NaN]}'], [b'{"cmd": "dpose", "dp": [1, 2]}'],
       [b'{"cmd": "jump"}'], [encode_dpose([0] * 6), b"extra frame"], [b"\xff\xfe"]]


@pytest.mark.timeout(20)
def test_sink_counts_validates_and_logs(tmp_path):
    log_path = tmp_path / "commands.jsonl"
    sink = CommandSink("tcp://127.0.0.1:*", str(log_path))
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    good = [encode_start([191, 1, 309, 1, 91, 1])] + [encode_dpose([0.01 * i, 0, 0, 0, 0, -0.01 * i]) for i in range(5)]
    try:
        with sink:
            push.connect(sink.endpoint)
            before_ns = time.monotonic_ns()
            for data in good:
                push.send(data)
            for frames in BAD:
                push.send_multipart(frames)
            end = time.monotonic() + 3.0
            while sink.valid + sink.invalid < len(good) + len(BAD) and time.monotonic() < end:
                time.sleep(0.02)
    finally:
        push.close()
    assert sink.error is None
    assert sink.summary() == {"valid": 6, "invalid": 6, "invalid_by_kind": {
        "json": 1, "nonfinite": 1, "count": 1, "cmd": 1, "frames": 1, "utf8": 1}}
    assert [entry["command"] for entry in sink.commands] == [json.loads(data) for data in good]
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(lines) == 12 and [line["valid"] for line in lines] == [True] * 6 + [False] * 6
    assert all(line["recv_monotonic_ns"] >= before_ns and line["recv_wall_s"] > 1e9 for line in lines)
    assert lines[1]["command"] == {"cmd": "dpose", "dp": [0.0] * 6}
    assert lines[6]["error"] == "json" and lines[6]["raw"] == "{"
