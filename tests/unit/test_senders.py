"""Sender allowlists (ingest/senders.py) and the listening-port checks (ingest/listen.py), in one
process over loopback: 127.0.0.1 and 127.0.0.2 are two source addresses on Linux loopback."""
from __future__ import annotations

import logging
import socket
import time

import pytest
import zmq

from shm_vla import config
from shm_vla.ingest import listen
from shm_vla.ingest.senders import CACHE_MAX, ZAP_DOMAIN, SenderFilter, ZapHandler, allowlist


def _filter(*entries):
    return SenderFilter(config.allowed_networks("x.allow", list(entries)))


def test_filter_admits_listed_addresses_and_networks_only():
    f = _filter("192.168.1.20", "10.0.0.0/24")
    assert f.admits("192.168.1.20") and f.admits("10.0.0.7") and f.admits("10.0.0.255")
    assert not f.admits("192.168.1.21") and not f.admits("10.0.1.1") and not f.admits("not an address")
    assert f.admits("::ffff:10.0.0.9") and not f.admits("::1")          # IPv4-mapped IPv6 as IPv4


def test_filter_cache_is_bounded():
    f = _filter("10.0.0.0/8")
    for i in range(CACHE_MAX + 500):
        f.admits(f"192.168.{i // 256}.{i % 256}")
    assert len(f._known) == CACHE_MAX
    assert not f.admits("192.168.200.1") and f.admits("10.1.2.3")         # still answers past the cache


def test_empty_allowlist_is_no_filter_and_warns_only_when_open(caplog):
    log = logging.getLogger("test-senders")
    with caplog.at_level(logging.WARNING):
        assert allowlist(log, "sensor.allow", [], "127.0.0.1:9999", "127.0.0.1") is None
        assert not caplog.records
        assert allowlist(log, "sensor.allow", [], "0.0.0.0:9999", "0.0.0.0") is None
        assert "listens on every interface and accepts any sender: set sensor.allow" in caplog.text
        caplog.clear()
        assert allowlist(log, "camera.allow", ["10.0.0.0/24"], "tcp://*:5555", "*") is not None
        assert not caplog.records


def _push(ctx, source: str, port: int):
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"tcp://{source}:0;127.0.0.1:{port}")       # ZeroMQ's source-address syntax
    return push


def test_zap_handler_admits_the_allowlist_and_counts_refusals():
    ctx = zmq.Context()
    rejected = []
    zap = ZapHandler(ctx, _filter("127.0.0.1"), rejected.append)
    zap.start()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    good, bad = _push(ctx, "127.0.0.1", port), _push(ctx, "127.0.0.2", port)
    try:
        got = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(got) < 3 or not rejected):
            for sock, text in ((good, b"good"), (bad, b"bad")):
                try:
                    sock.send(text, zmq.NOBLOCK)
                except zmq.Again:
                    pass
            if pull.poll(50):
                got.append(pull.recv())
        assert got and set(got) == {b"good"}
        assert rejected and set(rejected) == {"127.0.0.2"}
    finally:
        for s in (good, bad, pull):
            s.close(0)
        zap.stop()
        assert not zap.is_alive()
        ctx.term()


def _free_port(kind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_in_use_is_a_config_error_naming_the_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
        free_tcp, free_udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
        cfg = config.load("x", None, [f'camera.bind="tcp://127.0.0.1:{free_tcp}"', f'sensor.bind="127.0.0.1:{free_udp}"'])
        listen.check_ports_free(cfg)                                       # both free
        cfg.camera.bind = f"tcp://127.0.0.1:{tcp_port}"
        with pytest.raises(config.ConfigError, match=f"camera.bind: tcp://127.0.0.1:{tcp_port}: port {tcp_port} "
                                                     "is already in use"):
            listen.check_ports_free(cfg)
        cfg.camera.bind, cfg.sensor.bind = f"tcp://127.0.0.1:{free_tcp}", f"127.0.0.1:{udp_port}"
        with pytest.raises(config.ConfigError, match=f"sensor.bind: 127.0.0.1:{udp_port}: port {udp_port}"):
            listen.check_ports_free(cfg)
