"""sd_notify against a fake NOTIFY_SOCKET: a real AF_UNIX datagram socket we bind ourselves."""
from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid

import pytest

from shm_vla.sdnotify import Notifier


@pytest.fixture
def fs_socket():
    # A short directory in /tmp: AF_UNIX paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn", dir="/tmp") as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2.0)
        yield path, sock
        sock.close()


@pytest.fixture
def abstract_socket():
    name = f"shm-vla-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    yield "@" + name, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket, without blocking once it is empty."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


def test_messages_on_filesystem_socket(fs_socket):
    path, sock = fs_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready(status="attached, warmed up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=attached, warmed up"
    assert n.status("ticking\nat 10 Hz")  # a newline must not start a new field
    assert sock.recv(4096) == b"STATUS=ticking at 10 Hz"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert n.extend_timeout(90)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=90000000"
    assert n.ready()
    assert sock.recv(4096) == b"READY=1"
    assert (n.sent, n.failures) == (5, 0)


def test_abstract_namespace_socket(abstract_socket, monkeypatch):
    address, sock = abstract_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)  # read from the real environment
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    assert n.watchdog_interval_s == 2.0
    assert n.ready()
    assert n.watchdog()
    assert received(sock) == ["READY=1", "WATCHDOG=1"]


def test_watchdog_rate_limit(fs_socket):
    path, sock = fs_socket
    now = [100.0]
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}, clock=lambda: now[0])
    assert n.watchdog_interval_s == 1.0
    assert n.watchdog()                 # the first call sends at once
    for _ in range(1000):               # a busy loop: nothing more within half the interval
        now[0] += 0.0004
        n.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    now[0] = 100.5                      # exactly interval/2 after the first ping
    assert n.watchdog()
    assert not n.watchdog()
    now[0] = 101.2
    assert n.watchdog()
    assert received(sock) == ["WATCHDOG=1", "WATCHDOG=1"]
    assert n.sent == 3


def test_watchdog_for_another_pid_or_absent_is_off(fs_socket):
    path, sock = fs_socket
    other = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                      "WATCHDOG_PID": str(os.getpid() + 1)})
    absent = Notifier({"NOTIFY_SOCKET": path})
    garbage = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "soon"})
    for n in (other, absent, garbage):
        assert n.watchdog_interval_s is None
        assert not n.watchdog()
    assert received(sock) == []
    assert other.ready()  # the notify socket itself still works
    assert received(sock) == ["READY=1"]


def test_no_socket_is_a_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    n = Notifier()
    assert not n.enabled and n.disabled_reason
    assert n.watchdog_interval_s is None
    assert not any([n.ready("x"), n.status("y"), n.stopping(), n.watchdog()])
    assert (n.sent, n.failures) == (0, 0)
    unsupported = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not unsupported.enabled and not unsupported.ready()


def test_send_failure_is_counted_not_raised():
    with tempfile.TemporaryDirectory(prefix="sdn", dir="/tmp") as tmp:
        n = Notifier({"NOTIFY_SOCKET": os.path.join(tmp, "gone"), "WATCHDOG_USEC": "1000000"})
        assert not n.ready()
        assert not n.watchdog()
        assert n.failures == 2 and n.sent == 0
        assert "FileNotFoundError" in n.last_error


def test_full_queue_never_blocks(fs_socket):
    # Nobody reads the socket: the kernel queue fills and sends must fail fast, not wait.
    path, sock = fs_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    start = time.monotonic()
    for _ in range(5000):
        n.status("x" * 1000)
        if n.failures:
            break
    assert n.failures >= 1 and n.sent >= 1
    assert time.monotonic() - start < 2.0
    assert "BlockingIOError" in n.last_error
