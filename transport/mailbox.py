"""ZeroMQ mailboxes: the inbox an actor polls, the outbox it sends with, and peer sockets.

Invariants:
- One socket, one thread: every socket here is created and used by the thread that owns it
  (an `Outbox` must be created inside its actor's thread, see `actors.base.Actor.run`).
- Local queues are bounded by the high-water mark; a full local queue blocks the sender for
  at most `send_timeout_ms`, then raises `MailboxFull` (the actor fails, the node stops): a
  local message is never silently lost while the node runs. Once the node is closing (the
  supervisor set `closing`), a send that cannot go through at once is dropped instead, so no
  actor hangs on a peer actor that already stopped. Peer sends never block: a full queue
  drops and counts. `send_nowait` is for local destinations whose loss the sender accepts and
  counts (the raft actor's replicators): it raises `MailboxFull` at once, never waits.
- LINGER is 0 everywhere: stopping never waits on unsent messages.
- Peer sockets are CurveZMQ (encrypted, authenticated through the node's ZAP handler) when
  given the cluster's `CurveKeys`, and plaintext exactly as before when not.
"""

from __future__ import annotations

import threading
import time

import zmq

from prisn.messages import Msg
from transport.codec import encode
from transport.curve import CurveKeys

LOCAL_HWM = 100_000
PEER_HWM = 1_000
PEER_MAX_MSG_BYTES = 64 << 20  # libzmq disconnects a peer that sends a larger frame


class MailboxFull(RuntimeError):
    """A local actor's inbox stayed full past the send timeout."""


def inproc_address(node_id: str, actor: str) -> str:
    return f"inproc://{node_id}/{actor}"


def bind_inbox(ctx: zmq.Context, node_id: str, actor: str) -> zmq.Socket:
    """The PULL socket an actor polls for local messages."""
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, LOCAL_HWM)
    sock.bind(inproc_address(node_id, actor))
    return sock


class Outbox:
    """Lazily connected PUSH sockets, one per local destination actor (owner thread only)."""

    def __init__(self, ctx: zmq.Context, node_id: str, send_timeout_ms: int = 10_000,
                 closing: threading.Event | None = None) -> None:
        self.ctx = ctx
        self.node_id = node_id
        self.send_timeout_ms = send_timeout_ms
        self.closing = closing if closing is not None else threading.Event()
        self._socks: dict[str, zmq.Socket] = {}

    def _sock(self, to: str) -> zmq.Socket:
        s = self._socks.get(to)
        if s is None:
            s = self.ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, LOCAL_HWM)
            s.connect(inproc_address(self.node_id, to))
            self._socks[to] = s
        return s

    def send(self, to: str, msg: Msg) -> None:
        self.send_bytes(to, encode(msg))

    def send_bytes(self, to: str, data: bytes) -> None:
        sock = self._sock(to)
        copy = len(data) > 65536
        try:
            sock.send(data, zmq.NOBLOCK, copy=copy)
            return
        except zmq.Again:
            pass
        deadline = time.monotonic() + self.send_timeout_ms / 1000
        while not self.closing.is_set():
            if sock.poll(50, zmq.POLLOUT):
                try:
                    sock.send(data, zmq.NOBLOCK, copy=copy)
                    return
                except zmq.Again:
                    continue
            if time.monotonic() > deadline:
                raise MailboxFull(f"local mailbox {to!r} full for {self.send_timeout_ms} ms")

    def send_nowait(self, to: str, data: bytes) -> None:
        """Send without waiting; MailboxFull at once if the inbox is full (or not bound).

        For destinations that may be dropped (a replicator): the caller counts the loss."""
        try:
            self._sock(to).send(data, zmq.NOBLOCK, copy=len(data) > 65536)
        except zmq.Again:
            raise MailboxFull(f"local mailbox {to!r} full") from None

    def forget(self, to: str) -> None:
        """Close the socket to `to` (its actor ended): an inproc PUSH never reconnects to a
        later bind of the same name, so a cached one would stay full forever."""
        s = self._socks.pop(to, None)
        if s is not None:
            s.close(0)

    def close(self) -> None:
        for s in self._socks.values():
            s.close(0)
        self._socks.clear()


def tcp_endpoint(addr: str, *, bind: bool) -> str:
    """`host:port` (host may be empty, IPv6 in brackets) -> a ZeroMQ tcp endpoint.

    Raises ValueError for anything else: a port outside 1-65535 or not plain ASCII digits,
    a bare IPv6 literal, white space. Addresses also arrive from peers, so this is input
    validation, not a formality."""
    host, sep, port = addr.rpartition(":")
    lowest = 0 if bind else 1  # port 0 binds an ephemeral port; it cannot be connected to
    if not sep or not (port.isascii() and port.isdigit()) or not lowest <= int(port) < 65536:
        raise ValueError(f"address {addr!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or ":" not in host:
            raise ValueError(f"address {addr!r} has a bad IPv6 host")
    elif ":" in host:
        raise ValueError(f"address {addr!r}: put an IPv6 host in brackets")
    if any(c.isspace() for c in host) or not host.isascii():
        raise ValueError(f"address {addr!r} has a bad host")
    if not host:
        host = "0.0.0.0" if bind else "127.0.0.1"
    if ":" in host:
        return f"tcp://[{host}]:{port}"
    return f"tcp://{host}:{port}"


# ZMTP heartbeats on every peer connection, both ends: a PING every HEARTBEAT_IVL_MS, and a
# connection that carried nothing (no message, no PONG) for HEARTBEAT_TIMEOUT_MS is closed
# and re-dialled. Without them a link whose packets were dropped for a few seconds stays in
# TCP retransmission backoff after it heals (one drop of 7 s kept a follower out ~100 s).
HEARTBEAT_IVL_MS = 500
HEARTBEAT_TIMEOUT_MS = 2000
CONNECT_TIMEOUT_MS = 1000


def _heartbeats(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)  # the remote's timeout for us


def bind_peer_inbox(ctx: zmq.Context, addr: str, curve: CurveKeys | None = None) -> zmq.Socket:
    """The PULL socket on --raft-addr that every peer's replicator pushes to.

    With `curve` it is a CURVE server: only peers holding the cluster key get through the
    handshake (the context's ZAP handler must already run, see `transport.curve`)."""
    endpoint = tcp_endpoint(addr, bind=True)  # raises before any socket exists
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    sock.setsockopt(zmq.MAXMSGSIZE, PEER_MAX_MSG_BYTES)
    _heartbeats(sock)
    if curve is not None:
        curve.apply_server(sock)
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        raise zmq.ZMQError(e.errno, f"cannot listen on {addr} for Raft (--raft-addr): "
                           f"{e.strerror}") from None
    return sock


def connect_peer(ctx: zmq.Context, addr: str, curve: CurveKeys | None = None) -> zmq.Socket:
    """A PUSH socket to a peer's raft address: queues only on a live connection (IMMEDIATE),
    never blocks the sender, reconnects with backoff up to 1 s. With `curve` it is a CURVE
    client of the cluster's server key (a connection counts as live once the handshake
    succeeded, so nothing is queued for a peer that refuses us)."""
    endpoint = tcp_endpoint(addr, bind=False)  # raises before any socket exists
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply_client(sock)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDHWM, PEER_HWM)
    sock.setsockopt(zmq.RECONNECT_IVL, 50)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    _heartbeats(sock)
    # a connect whose SYNs are dropped is abandoned after 1 s and retried (at most every
    # RECONNECT_IVL_MAX), instead of waiting out the kernel's SYN backoff
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock
