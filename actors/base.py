"""The actor base: a thread that owns its ZeroMQ sockets and its poll loop.

Invariants:
- Every socket an actor uses is created in its own thread (`run` -> `on_start`) and closed
  there (`on_stop`), LINGER 0.
- Messages are handled in arrival order, in batches: the loop drains up to `max_batch` frames
  from a readable socket without blocking, then calls `on_messages(batch)` once and
  `on_batch_end()` once. Group commit and coalesced replication hang on that.
- Malformed frames are counted and logged by the actor's `Decoder`, never raised.
- An exception escaping a hook marks the actor failed and tells the supervisor, which stops the
  whole node (exit non-zero, so systemd restarts it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import zmq

from prisn.messages import Msg
from transport.codec import DEFAULT_MAX_BYTES, Decoder
from transport.mailbox import Outbox, bind_inbox

log = logging.getLogger("prisn.actor")

FailureHook = Callable[["Actor", BaseException], None]


class Actor(threading.Thread):
    """Base class; subclasses override the `on_*` hooks (all run in this actor's thread)."""

    poll_ms = 100  # how often the loop checks for a stop request when idle
    max_batch = 4096

    def __init__(self, name: str, ctx: zmq.Context, node_id: str,
                 on_failure: FailureHook | None = None, max_frame: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(name=f"prisn-{name}", daemon=True)
        self.actor_name = name
        self.ctx = ctx
        self.node_id = node_id
        self.decoder = Decoder(name, max_frame)
        self.outbox: Outbox | None = None
        self.started = threading.Event()
        self.failure: BaseException | None = None
        self._on_failure = on_failure
        self._stopping = threading.Event()
        self.closing = threading.Event()  # node-wide; the supervisor replaces it before start
        self._sockets: list[tuple[zmq.Socket, Callable[[list[bytes]], None]]] = []
        self._poller = zmq.Poller()

    # ------------------------------------------------------------------ hooks
    def on_start(self) -> None:
        """Open sockets and resources (own thread)."""

    def on_message(self, msg: Msg) -> None:
        """Handle one decoded local message (own thread)."""

    def on_messages(self, msgs: list[Msg]) -> None:
        """Handle a batch; default: one by one."""
        for m in msgs:
            self.on_message(m)

    def on_batch_end(self) -> None:
        """Called once after each drained batch (own thread)."""

    def on_idle(self) -> None:
        """Called when a poll returns with nothing to read (own thread)."""

    def on_stop(self) -> None:
        """Release resources (own thread)."""

    # ------------------------------------------------------------------ helpers for subclasses
    def send(self, to: str, msg: Msg) -> None:
        assert self.outbox is not None, "send() before on_start"
        self.outbox.send(to, msg)

    def add_socket(self, sock: zmq.Socket, handler: Callable[[list[bytes]], None]) -> None:
        """Poll `sock` too; `handler` gets each drained batch of raw frames."""
        self._sockets.append((sock, handler))
        self._poller.register(sock, zmq.POLLIN)

    def decode_all(self, frames: list[bytes]) -> list[Msg]:
        out = []
        for f in frames:
            m = self.decoder.try_decode(f)
            if m is not None:
                out.append(m)
        return out

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to end (any thread)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        inbox = None
        try:
            inbox = bind_inbox(self.ctx, self.node_id, self.actor_name)
            self.outbox = Outbox(self.ctx, self.node_id, closing=self.closing)
            self.add_socket(inbox, self._inbox_batch)
            self.on_start()
            self.started.set()
            self._loop()
        except BaseException as e:  # noqa: BLE001 - any failure stops the node
            self.failure = e
            if not self.started.is_set():  # a start-up failure: one line, traceback at debug
                log.error("actor %s failed to start: %s", self.actor_name, e)
                log.debug("actor %s start-up failure", self.actor_name, exc_info=True)
            else:
                log.exception("actor %s failed", self.actor_name)
            self.started.set()
            if self._on_failure is not None:
                self._on_failure(self, e)
        finally:
            try:
                self.on_stop()
            except Exception:
                log.exception("actor %s: on_stop failed", self.actor_name)
            for s, _ in self._sockets:
                s.close(0)
            if self.outbox is not None:
                self.outbox.close()

    def _inbox_batch(self, frames: list[bytes]) -> None:
        msgs = self.decode_all(frames)
        if msgs:
            self.on_messages(msgs)

    def _loop(self) -> None:
        poll = self._poller.poll
        while not self._stopping.is_set():
            ready = dict(poll(self.poll_ms))
            if not ready:
                self.on_idle()
                continue
            for sock, handler in self._sockets:
                if sock in ready:
                    frames = _drain(sock, self.max_batch)
                    if frames:
                        handler(frames)
            self.on_batch_end()


def _drain(sock: zmq.Socket, limit: int) -> list[bytes]:
    """Up to `limit` frames that are ready now (never blocks). Multipart: frame 0 only."""
    out: list[bytes] = []
    recv = sock.recv
    while len(out) < limit:
        try:
            frame = recv(zmq.NOBLOCK)
        except zmq.Again:
            break
        while sock.getsockopt(zmq.RCVMORE):  # optional raw frames are handled by overrides
            sock.recv(zmq.NOBLOCK)
        out.append(frame)
    return out
