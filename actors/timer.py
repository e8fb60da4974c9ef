"""The timer actor: owns the wall clock, decides nothing, sends `sys.tick` to raft every tick.

Runs on its own thread. Ticks follow a monotonic schedule (no drift); after a stall (the
process was paused) it sends one tick and re-anchors rather than a burst, so a paused node
wakes with at most one elapsed tick per poll and cannot skip past its peers' timeouts.
"""

from __future__ import annotations

import time

import zmq

from actors.base import Actor
from prisn.messages import Tick
from transport.codec import encode


class TimerActor(Actor):
    """Sends ticks; its inbox exists only so that the actor base can own one (kept empty)."""

    def __init__(self, ctx: zmq.Context, node_id: str, interval: float, **kw) -> None:
        super().__init__("timer", ctx, node_id, **kw)
        self.interval = interval
        self.ticks = 0

    def _loop(self) -> None:
        assert self.outbox is not None
        frame = encode(Tick(src="timer", dst="raft"))
        next_at = time.monotonic() + self.interval
        while not self.stopping:
            delay = next_at - time.monotonic()
            if delay > 0:
                if self._poller.poll(max(1, int(delay * 1000))):
                    self._discard_inbox()  # nobody should write here: drop, never spin
                if time.monotonic() < next_at:
                    continue
            self.outbox.send_bytes("raft", frame)
            self.ticks += 1
            now = time.monotonic()
            next_at += self.interval
            if next_at < now:  # stalled: re-anchor instead of bursting
                next_at = now + self.interval

    def _discard_inbox(self) -> None:
        for sock, _handler in self._sockets:
            while True:
                try:
                    sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.decoder.dropped += 1
