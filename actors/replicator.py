"""One replicator per peer: forwards the raft actor's encoded messages to that peer over tcp.

Runs on its own thread and owns one PUSH socket connected to the peer's raft address.
Invariants: frames pass through without being decoded again (the raft actor already encoded
them); a send never blocks — when the peer is down or its queue is full the frame is dropped
and counted (Raft retransmits); libzmq reconnects with backoff (50 ms doubling to 1 s). Only
the most recent heartbeat-sized frames matter after a stall, so a backlog past `max_queue`
frames is cut from the oldest end.
"""

from __future__ import annotations

import logging

import zmq

from actors.base import Actor
from transport.mailbox import connect_peer

log = logging.getLogger("prisn.replicator")


class ReplicatorActor(Actor):
    poll_ms = 200

    def __init__(self, ctx: zmq.Context, node_id: str, peer: str, addr: str,
                 max_queue: int = 1024, **kw) -> None:
        super().__init__(replicator_name(peer), ctx, node_id, **kw)
        self.peer = peer
        self.addr = addr
        self.max_queue = max_queue
        self.sent = 0
        self.dropped = 0
        self._sock: zmq.Socket | None = None

    def on_start(self) -> None:
        self._sock = connect_peer(self.ctx, self.addr)

    def _inbox_batch(self, frames: list[bytes]) -> None:
        assert self._sock is not None
        if len(frames) > self.max_queue:
            self.dropped += len(frames) - self.max_queue
            frames = frames[-self.max_queue:]
        send = self._sock.send
        for i, f in enumerate(frames):
            try:
                send(f, zmq.NOBLOCK, copy=len(f) > 65536)
                self.sent += 1
            except zmq.Again:
                self.dropped += len(frames) - i
                break

    def on_stop(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


def replicator_name(peer: str) -> str:
    """Actor (inproc) name of the replicator for `peer` (a node id or `@host:port`)."""
    return f"repl:{peer}"
