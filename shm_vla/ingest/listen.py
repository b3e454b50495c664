"""The listening inputs (camera PULL, sensor UDP): bind errors and start-up checks.

A port that another program holds does not heal by restarting: binding it is a
configuration error (exit 2, one line naming the port), and `shm-vla run` checks both
ports before it starts anything. The addresses themselves are checked at configuration
load (config.zmq_bind_address, config.udp_bind_address).
"""
from __future__ import annotations

import errno
import socket

from .. import config as configmod
from ..config import ConfigError


def in_use(key: str, address: str, port: int, exc: Exception) -> Exception:
    """The error to raise for a failed bind: a ConfigError if the port is taken, else exc."""
    if getattr(exc, "errno", None) == errno.EADDRINUSE:
        return ConfigError(f"config key {key}: {address}: port {port} is already in use by another program")
    return exc


def listening_ports(cfg) -> list[tuple[str, str, str, int, int]]:
    """(key, address, host, port, socket type) of every input that binds."""
    cam_host, cam_port = configmod.zmq_bind_address("camera.bind", cfg.camera.bind)
    udp_host, udp_port = configmod.udp_bind_address("sensor.bind", cfg.sensor.bind)
    return [("camera.bind", cfg.camera.bind, "0.0.0.0" if cam_host == "*" else cam_host, cam_port,
             socket.SOCK_STREAM),
            ("sensor.bind", cfg.sensor.bind, udp_host, udp_port, socket.SOCK_DGRAM)]


def check_ports_free(cfg) -> None:
    """Raise ConfigError naming the first input port another program holds.

    A trial bind, released at once. SO_REUSEADDR on TCP as ZeroMQ sets it, so that the
    connections of a previous run in TIME_WAIT do not count as the port being in use.
    """
    for key, address, host, port, kind in listening_ports(cfg):
        with socket.socket(socket.AF_INET, kind) as trial:
            if kind == socket.SOCK_STREAM:
                trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                trial.bind((host, port))
            except OSError as exc:
                error = in_use(key, address, port, exc)
                if isinstance(error, ConfigError):
                    raise error from None
