"""Who may send to a listening input: the allowlists `camera.allow` and `sensor.allow`.

The senders are other PCs, so the inputs listen on every interface by default; an
allowlist of IPv4 addresses and networks narrows that. An empty allowlist admits every
sender and costs nothing (the ingest keeps no filter at all). A refused sender is counted
as the input error `rejected_sender` (shown by shm-vla-stat) and logged at a bounded rate.

- UDP (sensor): `SenderFilter.admits(host)` for each datagram's source address. Answers
  are cached per address (bounded), so the cost per datagram is one dict lookup.
- ZeroMQ (camera): `ZapHandler`, a thread answering ZeroMQ's authentication requests
  (ZAP, RFC 27) on inproc://zeromq.zap.01 for the PULL socket, which asks it once per
  connection: a refused peer never gets a message in, and is counted once per connection
  attempt (libzmq 4.3 peers do not retry after a refusal until they are restarted).
"""
from __future__ import annotations

import ipaddress
import threading

import zmq

from .. import config as configmod

ZAP_ENDPOINT = "inproc://zeromq.zap.01"     # fixed by ZeroMQ: one handler per context
ZAP_DOMAIN = b"shm-vla"                     # setting a domain makes a NULL-mechanism socket ask ZAP
ZAP_POLL_MS = 100
CACHE_MAX = 1024                            # addresses remembered; a spoofing flood cannot grow it


class SenderFilter:
    """Is a sender's address in the allowlist (a tuple of IPv4 networks)?"""

    def __init__(self, networks: tuple):
        self.networks = networks
        self._known: dict[str, bool] = {}

    def admits(self, host: str) -> bool:
        known = self._known.get(host)
        if known is None:
            known = self._lookup(host)
            if len(self._known) < CACHE_MAX:
                self._known[host] = known
        return known

    def _lookup(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)


def allowlist(log, key: str, entries: list, bind: str, host: str) -> SenderFilter | None:
    """The filter of allowlist `key` (e.g. camera.allow); None when it is empty (any sender,
    nothing to check). Warns once when such an input listens on every interface."""
    networks = configmod.allowed_networks(key, entries)
    if not networks and host in configmod.ALL_INTERFACES:
        log.warning("%s listens on every interface and accepts any sender: set %s to the senders' addresses",
                    bind, key)
    return SenderFilter(networks) if networks else None


class ZapHandler(threading.Thread):
    """Answers the ZAP requests of every socket of `ctx` that sets ZAP_DOMAIN.

    Bound in the constructor, so that it is in place before the socket it guards binds
    (ZeroMQ admits every peer of a socket whose ZAP endpoint has no handler). Every wait
    is bounded; stop() ends the thread and closes its socket.
    """

    def __init__(self, ctx: zmq.Context, senders: SenderFilter, on_reject):
        super().__init__(name="zap", daemon=True)
        self.senders = senders
        self.on_reject = on_reject            # called with the refused peer's address
        self.running = True
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)

    def run(self) -> None:
        try:
            while self.running:
                if self.sock.poll(ZAP_POLL_MS):
                    self.sock.send_multipart(self.answer(self.sock.recv_multipart()))
        finally:
            self.sock.close(0)

    def answer(self, request: list) -> list:
        """[version, request id, domain, address, identity, mechanism, ...] -> the reply."""
        version, request_id, _, address = request[:4]
        host = address.decode("ascii", "replace")
        if self.senders.admits(host):
            return [version, request_id, b"200", b"OK", b"", b""]
        self.on_reject(host)
        return [version, request_id, b"400", b"sender not in camera.allow", b"", b""]

    def stop(self, timeout_s: float = 2.0) -> None:
        self.running = False
        if self.is_alive():
            self.join(timeout_s)
        else:
            self.sock.close(0)
