"""act's command socket at exit: a command handed to it just before the process ends (with
os._exit, as every stage ends) reaches a connected receiver: closing alone would leave it to
ZeroMQ's I/O thread, which dies with the process (seen: 46 of 47 commands received)."""
from __future__ import annotations

import subprocess
import sys

import zmq

from procs import REPO, free_port

SENDER = """
import os, sys, time
from shm_vla import config
from shm_vla.process import Runtime
from shm_vla.workers.act import Commander
cfg = config.load(sys.argv[1], None, [f'command.connect="tcp://127.0.0.1:{sys.argv[2]}"'])
commander = Commander(Runtime(cfg, "act"))
payload = b"x" * int(sys.argv[3])
deadline = time.monotonic() + 20
while not commander.send(payload):               # IMMEDIATE: refused until connected
    assert time.monotonic() < deadline, "never connected"
    time.sleep(0.01)
commander.close()
os._exit(0)
"""


def test_a_command_sent_just_before_exit_is_delivered(instance):
    port = free_port()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{port}")
    try:
        for size in (200,) + (1 << 20,) * 8:        # a large one takes longest to hand over
            proc = subprocess.run([sys.executable, "-c", SENDER, instance, str(port), str(size)], cwd=REPO,
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert pull.poll(2000), f"a {size}-byte command sent before exit was lost"
            assert len(pull.recv()) == size
    finally:
        pull.close(0)
        ctx.term()
