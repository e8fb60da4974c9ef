"""One replicator per peer: forwards the raft actor's encoded messages to that peer over tcp.

Runs on its own thread and owns one PUSH socket connected to the peer's raft address.
Invariants: frames pass through without being decoded again (the raft actor already encoded
them); a send never blocks — when the peer is down or its queue is full the frame is dropped
and counted (Raft retransmits); libzmq reconnects with backoff (50 ms doubling to 1 s). Only
the most recent heartbeat-sized frames matter after a stall, so a backlog past `max_queue`
frames is cut from the oldest end.

Snapshots: a second inbox (``repl:<peer>/ctl``) takes `SnapSend` requests from the raft actor;
for each one the replicator reads that byte range of the snapshot file (in this thread, so the
raft thread never touches the disk) and sends it as one `InstallSnapshot` frame. The core
decides which chunk and when (one in flight per peer); a file that cannot be read is reported
to raft as `SnapSendFailed` (e.g. pruned by a newer snapshot: the core restarts from 0).

Peer security: with the cluster's `CurveKeys` the PUSH is a CURVE client; a monitor on it logs
(rate-limited) handshakes the peer refuses, the usual sign of a node with another key or none.
"""

from __future__ import annotations

import logging

import zmq

from actors.base import Actor
from prisn.messages import InstallSnapshot, SnapSend, SnapSendFailed
from transport import faults
from transport.codec import encode
from transport.curve import CLIENT_FAILURE_EVENTS, CurveKeys, HandshakeWatcher
from transport.mailbox import bind_inbox, connect_peer

log = logging.getLogger("prisn.replicator")


class ReplicatorActor(Actor):
    poll_ms = 200

    def __init__(self, ctx: zmq.Context, node_id: str, peer: str, addr: str,
                 max_queue: int = 1024, curve: CurveKeys | None = None,
                 name: str | None = None, **kw) -> None:
        # `name`: a unique inbox name per incarnation (the raft actor passes one), so a new
        # replicator for the same peer never collides with one that is still shutting down
        super().__init__(name or replicator_name(peer), ctx, node_id, **kw)
        self.ctl = self.actor_name + "/ctl"  # == ctl_name(peer) for the default name
        self.peer = peer
        self.addr = addr
        self.curve = curve
        self.handshakes: HandshakeWatcher | None = None
        self.max_queue = max_queue
        self.sent = 0
        self.dropped = 0
        self.snap_chunks_sent = 0
        self.snap_bytes_sent = 0
        self.snap_read_failures = 0
        self._sock: zmq.Socket | None = None

    def on_start(self) -> None:
        self._sock = connect_peer(self.ctx, self.addr, self.curve)  # curve None: plaintext
        if self.curve is not None:
            self.handshakes = HandshakeWatcher(f"peer {self.peer} at {self.addr}",
                                               CLIENT_FAILURE_EVENTS)
            self.add_socket(self.handshakes.attach(self._sock), self.handshakes)
        # TEST-ONLY: the same socket unless PRISN_TEST_FAULTS is set (see transport/faults.py)
        self._sock = faults.maybe_wrap(self, self._sock)
        self.add_socket(bind_inbox(self.ctx, self.node_id, self.ctl), self._ctl)

    def _ctl(self, frames: list[bytes]) -> None:
        for m in self.decode_all(frames):
            if isinstance(m, SnapSend):
                self._send_chunk(m)

    def _send_chunk(self, m: SnapSend) -> None:
        assert self._sock is not None
        try:
            with open(m.path, "rb") as f:
                f.seek(m.offset)
                data = f.read(m.length)
            if len(data) != m.length:
                raise OSError(f"short read: {len(data)} of {m.length} bytes at {m.offset}")
        except OSError as e:
            self.snap_read_failures += 1
            log.warning("replicator %s: snapshot %s unreadable: %s", self.peer, m.snap_id[:12], e)
            self.send("raft", SnapSendFailed(src=self.actor_name, dst="raft", peer=self.peer,
                                             snap_id=m.snap_id, reason=str(e)))
            return
        frame = encode(InstallSnapshot(
            src=self.node_id, dst=self.peer, cluster=m.cid, term=m.term, index=m.index,
            snap_term=m.snap_term, snap_id=m.snap_id, size=m.size, offset=m.offset, data=data))
        try:
            self._sock.send(frame, zmq.NOBLOCK, copy=False)
            self.sent += 1
            self.snap_chunks_sent += 1
            self.snap_bytes_sent += len(data)
        except zmq.Again:
            self.dropped += 1  # the core resends after its retry timeout

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
            if self.handshakes is not None:
                self._sock.disable_monitor()
            self._sock.close(0)
            self._sock = None


def replicator_name(peer: str) -> str:
    """Actor (inproc) name of the replicator for `peer` (a node id or `@host:port`)."""
    return f"repl:{peer}"


def ctl_name(peer: str) -> str:
    """Inproc name of the replicator's control inbox (SnapSend requests)."""
    return f"repl:{peer}/ctl"
