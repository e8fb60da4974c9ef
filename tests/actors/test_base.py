"""The actor base (`actors.base.Actor`) on a real thread with real inproc sockets: hooks run in
the actor's own thread, frames arrive in batches followed by `on_batch_end`, malformed frames
are counted and dropped, a failing hook marks the actor failed and calls `on_failure`, and
`stop()` ends the loop and closes every socket."""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from actors.base import Actor
from prisn.messages import Msg, Propose, StoreSynced, Tick
from tests.helpers import unique_id, wait_until
from transport.codec import decode, encode
from transport.mailbox import bind_inbox, inproc_address


def node_id(tag: str) -> str:
    return unique_id("base", tag)


class Recorder(Actor):
    """Records every hook call as (hook, thread ident, payload). `on_start` waits for `go`
    so a test can queue frames before the loop first polls."""

    poll_ms = 5

    def __init__(self, ctx: zmq.Context, node: str, *, hold: bool = False, **kw: Any) -> None:
        super().__init__("rec", ctx, node, **kw)
        self.events: list[tuple[str, int, Any]] = []
        self.bound = threading.Event()
        self.go = threading.Event()
        if not hold:
            self.go.set()
        self.fail_on: type[Msg] | None = None
        self.fail_start = False
        self.extra_frames: list[tuple[int, list[bytes]]] = []
        self.idle = 0

    def _rec(self, hook: str, payload: Any = None) -> None:
        self.events.append((hook, threading.get_ident(), payload))

    def on_start(self) -> None:
        self._rec("start")
        extra = self.ctx.socket(zmq.PULL)
        extra.setsockopt(zmq.LINGER, 0)
        extra.bind(inproc_address(self.node_id, "extra"))
        self.add_socket(extra, lambda frames: self.extra_frames.append(
            (threading.get_ident(), list(frames))))
        self.bound.set()
        if self.fail_start:
            raise RuntimeError("start failed")
        assert self.go.wait(5), "test never released on_start"

    def on_messages(self, msgs: list[Msg]) -> None:
        self._rec("messages", list(msgs))
        super().on_messages(msgs)

    def on_message(self, msg: Msg) -> None:
        self._rec("message", msg)
        if self.fail_on is not None and isinstance(msg, self.fail_on):
            raise ValueError(f"cannot handle {msg.T}")
        if isinstance(msg, Propose):
            self.send("sink", StoreSynced(seq=msg.rid))

    def on_batch_end(self) -> None:
        self._rec("batch_end")

    def on_idle(self) -> None:
        self.idle += 1

    def on_stop(self) -> None:
        self._rec("stop")

    def hooks(self) -> list[str]:
        return [h for h, _, _ in self.events]

    def messages(self) -> list[Msg]:
        return [p for h, _, p in self.events if h == "message"]


class Pusher:
    """The test's PUSH socket into an actor's inbox (or any inproc address)."""

    def __init__(self, ctx: zmq.Context, address: str) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def send(self, *msgs: Msg | bytes) -> None:
        for m in msgs:
            self.sock.send(m if isinstance(m, bytes) else encode(m))

    def close(self) -> None:
        self.sock.close(0)


def assert_rebindable(ctx: zmq.Context, address: str, timeout: float = 5.0) -> None:
    """`address` can be bound again: whoever had it closed it. libzmq releases an inproc
    endpoint asynchronously (its reaper thread), so retry until a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.bind(address)
            return
        except zmq.ZMQError:
            assert time.monotonic() < deadline, f"{address} is still bound"
            time.sleep(0.001)
        finally:
            s.close(0)


def stop(actor: Actor) -> None:
    if isinstance(actor, Recorder):
        actor.go.set()
    actor.stop()
    actor.join(5)
    assert not actor.is_alive(), "actor did not stop"


# --------------------------------------------------------------------------- tests
def test_hooks_run_in_the_actors_own_thread(ctx: zmq.Context) -> None:
    node = node_id("thread")
    actor = Recorder(ctx, node)
    push = Pusher(ctx, inproc_address(node, "rec"))
    extra = Pusher(ctx, inproc_address(node, "extra"))
    try:
        actor.start()
        assert actor.started.wait(5) and actor.failure is None
        push.send(Tick())
        extra.send(b"raw extra frame")
        wait_until(lambda: actor.messages() and actor.extra_frames, what="both sockets")
    finally:
        push.close()
        extra.close()
        stop(actor)
    idents = {ident for _, ident, _ in actor.events} | {i for i, _ in actor.extra_frames}
    assert idents == {actor.ident}
    assert actor.ident != threading.get_ident()
    assert actor.hooks()[0] == "start" and actor.hooks()[-1] == "stop"
    assert actor.extra_frames[0][1] == [b"raw extra frame"]  # raw frames, not decoded


def test_queued_frames_arrive_as_one_batch_then_batch_end(ctx: zmq.Context) -> None:
    node = node_id("batch")
    actor = Recorder(ctx, node, hold=True)
    push = Pusher(ctx, inproc_address(node, "rec"))
    sent = [StoreSynced(seq=i) for i in range(7)]
    try:
        actor.start()
        assert actor.bound.wait(5)
        push.send(*sent)  # queued while on_start holds the loop
        actor.go.set()
        assert actor.started.wait(5)
        wait_until(lambda: "batch_end" in actor.hooks(), what="first batch")
    finally:
        push.close()
        stop(actor)
    hooks = actor.hooks()
    first = hooks.index("messages")
    assert hooks[first:first + 9] == ["messages"] + ["message"] * 7 + ["batch_end"]
    assert actor.events[first][2] == sent  # all seven in one call, in order
    assert hooks.count("messages") == 1


def test_multipart_message_delivers_frame_zero_only(ctx: zmq.Context) -> None:
    node = node_id("multi")
    actor = Recorder(ctx, node)
    push = Pusher(ctx, inproc_address(node, "rec"))
    try:
        actor.start()
        assert actor.started.wait(5)
        push.sock.send_multipart([encode(Tick()), b"raw chunk"])
        push.send(StoreSynced(seq=1))
        wait_until(lambda: len(actor.messages()) == 2, what="two messages")
    finally:
        push.close()
        stop(actor)
    assert actor.messages() == [Tick(), StoreSynced(seq=1)]
    assert actor.decoder.dropped == 0  # the raw frame 1 was never decoded


def test_malformed_frame_is_dropped_and_counted_actor_keeps_running(ctx: zmq.Context) -> None:
    node = node_id("garbage")
    actor = Recorder(ctx, node, max_frame=200)
    push = Pusher(ctx, inproc_address(node, "rec"))
    try:
        actor.start()
        assert actor.started.wait(5)
        push.send(b"\xff not cbor", Tick(), encode(Propose(rid=1, data=b"x" * 500)), b"")
        wait_until(lambda: actor.decoder.dropped == 3 and actor.messages(), what="drops")
        push.send(StoreSynced(seq=9))  # still alive and serving
        wait_until(lambda: len(actor.messages()) == 2, what="the next message")
        assert actor.is_alive() and actor.failure is None
    finally:
        push.close()
        stop(actor)
    assert actor.messages() == [Tick(), StoreSynced(seq=9)]
    assert actor.decoder.dropped == 3


def test_garbage_only_batch_skips_on_messages_but_ends_the_batch(ctx: zmq.Context) -> None:
    node = node_id("gonly")
    actor = Recorder(ctx, node)
    push = Pusher(ctx, inproc_address(node, "rec"))
    try:
        actor.start()
        assert actor.started.wait(5)
        push.send(b"\x00\x01")
        wait_until(lambda: actor.decoder.dropped == 1 and "batch_end" in actor.hooks())
    finally:
        push.close()
        stop(actor)
    assert "messages" not in actor.hooks()


def test_send_goes_through_the_outbox_to_another_inbox(ctx: zmq.Context) -> None:
    node = node_id("send")
    sink = bind_inbox(ctx, node, "sink")
    actor = Recorder(ctx, node)
    push = Pusher(ctx, inproc_address(node, "rec"))
    try:
        actor.start()
        assert actor.started.wait(5)
        push.send(Propose(rid=41, data=b""), Propose(rid=42, data=b""))
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 2:
            assert sink.poll(max(1, int((deadline - time.monotonic()) * 1000)))
            got.append(decode(sink.recv()))
    finally:
        push.close()
        stop(actor)
        sink.close(0)
    assert got == [StoreSynced(seq=41), StoreSynced(seq=42)]


def test_on_idle_runs_when_nothing_arrives(ctx: zmq.Context) -> None:
    actor = Recorder(ctx, node_id("idle"))
    try:
        actor.start()
        assert actor.started.wait(5)
        wait_until(lambda: actor.idle >= 3, what="idle polls")
    finally:
        stop(actor)


def test_exception_in_on_message_marks_failure_and_calls_hook(ctx: zmq.Context) -> None:
    node = node_id("fail")
    calls: list[tuple[Actor, BaseException, int]] = []
    actor = Recorder(ctx, node, hold=True,
                     on_failure=lambda a, e: calls.append((a, e, threading.get_ident())))
    actor.fail_on = StoreSynced
    push = Pusher(ctx, inproc_address(node, "rec"))
    try:
        actor.start()
        assert actor.bound.wait(5)
        push.send(Tick(), StoreSynced(seq=1), Tick())  # one batch
        actor.go.set()
        actor.join(5)
        assert not actor.is_alive(), "a failing actor must leave its loop"
    finally:
        push.close()
        stop(actor)
    assert isinstance(actor.failure, ValueError)
    assert len(calls) == 1
    failed_actor, exc, ident = calls[0]
    assert failed_actor is actor and exc is actor.failure and ident == actor.ident
    assert actor.hooks()[-1] == "stop"  # on_stop still ran
    assert actor.messages() == [Tick(), StoreSynced(seq=1)]  # nothing after the failure
    assert "batch_end" not in actor.hooks()  # the failing batch never completed
    assert all(sock.closed for sock, _ in actor._sockets)
    assert_rebindable(ctx, inproc_address(node, "rec"))


def test_exception_in_on_start_marks_failure_and_sets_started(ctx: zmq.Context) -> None:
    node = node_id("startfail")
    calls: list[BaseException] = []
    actor = Recorder(ctx, node, on_failure=lambda a, e: calls.append(e))
    actor.fail_start = True
    try:
        actor.start()
        assert actor.started.wait(5)
        actor.join(5)
        assert not actor.is_alive()
    finally:
        stop(actor)
    assert isinstance(actor.failure, RuntimeError) and calls == [actor.failure]
    assert actor.hooks() == ["start", "stop"]
    assert len(actor._sockets) == 2 and all(sock.closed for sock, _ in actor._sockets)
    for address in ("rec", "extra"):
        assert_rebindable(ctx, inproc_address(node, address))


def test_stop_ends_the_loop_and_closes_sockets(ctx: zmq.Context) -> None:
    node = node_id("stop")
    actor = Recorder(ctx, node)
    push = Pusher(ctx, inproc_address(node, "rec"))
    try:
        actor.start()
        assert actor.started.wait(5)
        push.send(Propose(rid=1, data=b""))  # makes the outbox open a socket to "sink"
        wait_until(lambda: actor.messages(), what="a message")
        assert not actor.stopping
        actor.stop()
        assert actor.stopping
        actor.join(5)
        assert not actor.is_alive()
    finally:
        push.close()
        stop(actor)
    assert actor.failure is None and actor.hooks()[-1] == "stop"
    assert len(actor._sockets) == 2 and all(sock.closed for sock, _ in actor._sockets)
    assert actor.outbox is not None and actor.outbox._socks == {}
    for address in ("rec", "extra"):
        assert_rebindable(ctx, inproc_address(node, address))


def test_stop_before_the_first_poll_returns_promptly(ctx: zmq.Context) -> None:
    actor = Recorder(ctx, node_id("early"), hold=True)
    actor.start()
    assert actor.bound.wait(5)
    actor.stop()
    stop(actor)
    assert actor.failure is None and "messages" not in actor.hooks()
