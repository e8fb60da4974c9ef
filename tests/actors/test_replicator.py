"""The replicator actor (`actors.replicator.ReplicatorActor`): frames pushed into its inbox go
out byte-identical to a real tcp PULL on an ephemeral loopback port; with nobody listening they
are dropped and counted without blocking; a backlog beyond `max_queue` is cut from the oldest
end."""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

import actors.replicator as replicator_mod
from actors.replicator import ReplicatorActor, replicator_name
from prisn.messages import AppendEntries, Tick, VoteRequest
from tests.helpers import free_port, wait_until
from transport.codec import encode
from transport.mailbox import inproc_address

_ids = itertools.count()


def node_id(tag: str) -> str:
    return f"repl-{tag}-{os.getpid()}-{next(_ids)}"


class Rig:
    """Fresh context; a replicator for peer "n2"; a PUSH into its inbox (the raft side)."""

    def __init__(self, addr: str, **kw: Any) -> None:
        self.ctx = zmq.Context()
        self.node = node_id("rig")
        self.failures: list[BaseException] = []
        self.repl = ReplicatorActor(self.ctx, self.node, "n2", addr,
                                    on_failure=lambda _a, e: self.failures.append(e), **kw)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.socks: list[zmq.Socket] = [self.push]

    def start(self) -> None:
        self.repl.start()
        assert self.repl.started.wait(5) and self.repl.failure is None
        self.push.connect(inproc_address(self.node, replicator_name("n2")))

    def close(self) -> None:
        self.repl.stop()
        if self.repl.is_alive():
            self.repl.join(5)
        for s in self.socks:
            s.close(0)
        self.ctx.term()


@pytest.fixture
def rigs() -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(addr: str, **kw: Any) -> Rig:
        made.append(Rig(addr, **kw))
        return made[-1]

    try:
        yield make
    finally:
        for r in made:
            r.close()


def test_name() -> None:
    assert replicator_name("n2") == "repl:n2"
    assert replicator_name("@10.0.0.1:7332") == "repl:@10.0.0.1:7332"


def test_frames_are_forwarded_byte_identical_in_order(rigs: Callable[..., Rig]) -> None:
    rig = rigs("unset:1")
    pull = rig.ctx.socket(zmq.PULL)  # the peer's raft inbox, on an ephemeral loopback port
    pull.setsockopt(zmq.LINGER, 0)
    rig.socks.append(pull)
    pull.bind("tcp://127.0.0.1:*")
    port = pull.getsockopt_string(zmq.LAST_ENDPOINT).rpartition(":")[2]
    rig.repl.addr = f"127.0.0.1:{port}"  # before start: on_start connects to it
    rig.start()

    # IMMEDIATE drops frames until the tcp connection is up: probe until one gets through
    probe = b"probe"
    probes = 0
    deadline = time.monotonic() + 10
    while not pull.poll(5):
        assert time.monotonic() < deadline, "the replicator never connected"
        rig.push.send(probe)
        probes += 1
    rng = random.Random(7)
    frames = [
        encode(AppendEntries(src="n1", dst="n2", cluster="c", term=3, prev_index=1,
                             prev_term=1, entries=[[2, 3, 0, b"x" * 100]], commit=1)),
        encode(VoteRequest(src="n1", dst="n2", cluster="c", term=4, last_index=2,
                           last_term=3)),
        bytes(rng.randrange(256) for _ in range(300)),  # not even CBOR: never decoded
        encode(AppendEntries(src="n1", dst="n2", cluster="c", term=3, prev_index=2,
                             prev_term=3, entries=[[3, 3, 0, rng.randbytes(200_000)]],
                             commit=2)),  # > 64 KiB: the zero-copy send path
        b"",
    ]
    for f in frames:
        rig.push.send(f)
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < len(frames):
        remaining = int((deadline - time.monotonic()) * 1000)
        assert remaining > 0 and pull.poll(remaining), f"got {len(got)} of {len(frames)}"
        frame = pull.recv()
        if frame != probe:
            got.append(frame)
    assert got == frames
    # every frame was counted once, as sent or (only probes, before the link was up) dropped
    total = probes + len(frames)
    wait_until(lambda: rig.repl.sent + rig.repl.dropped == total, what="the counters")
    assert rig.repl.sent >= len(frames) + 1 and rig.repl.failure is None


def test_nobody_listening_drops_and_counts_without_blocking(rigs: Callable[..., Rig]) -> None:
    rig = rigs(f"127.0.0.1:{free_port()}")
    rig.start()
    n = 2_500  # more than the peer HWM: nothing may queue for a peer that is not there
    for i in range(n):
        rig.push.send(encode(Tick(src=str(i))))
    wait_until(lambda: rig.repl.dropped == n, what=f"{n} drops (have {rig.repl.dropped})")
    assert rig.repl.sent == 0 and rig.repl.is_alive() and rig.repl.failure is None
    # still responsive: stop ends it promptly
    rig.repl.stop()
    rig.repl.join(5)
    assert not rig.repl.is_alive()


def test_companion_a_blocking_peer_socket_would_be_caught(
        rigs: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch) -> None:
    """The drop test can fail: with a peer socket that queues for an absent peer (no
    IMMEDIATE), frames are accepted instead of dropped and the drop count stays below n."""
    real = replicator_mod.connect_peer

    def queuing(ctx: zmq.Context, addr: str, *curve: object) -> zmq.Socket:
        s = real(ctx, addr, *curve)
        s.setsockopt(zmq.IMMEDIATE, 0)  # only affects later connections, so reconnect
        s.disconnect(s.getsockopt_string(zmq.LAST_ENDPOINT))
        s.connect(f"tcp://{addr}")
        return s

    monkeypatch.setattr(replicator_mod, "connect_peer", queuing)
    rig = rigs(f"127.0.0.1:{free_port()}")
    rig.start()
    for i in range(50):
        rig.push.send(encode(Tick(src=str(i))))
    wait_until(lambda: rig.repl.sent + rig.repl.dropped == 50, what="50 frames handled")
    assert rig.repl.sent > 0  # i.e. the drop assertion of the test above would fail


class FakeSock:
    """Accepts `capacity` frames, then raises zmq.Again like a full PUSH socket."""

    def __init__(self, capacity: int = 10**9) -> None:
        self.capacity = capacity
        self.frames: list[bytes] = []

    def send(self, frame: bytes, flags: int = 0, copy: bool = True) -> None:
        assert flags & zmq.NOBLOCK, "a replicator send must never block"
        if len(self.frames) >= self.capacity:
            raise zmq.Again()
        self.frames.append(frame)

    def close(self, linger: int | None = None) -> None:
        pass


def bare_replicator(max_queue: int, sock: FakeSock) -> ReplicatorActor:
    ctx = zmq.Context.instance()  # never used: no thread, no sockets
    r = ReplicatorActor(ctx, node_id("bare"), "n2", "127.0.0.1:1", max_queue=max_queue)
    r._sock = sock  # type: ignore[assignment]
    return r


def test_backlog_beyond_max_queue_is_cut_from_the_oldest_end() -> None:
    sock = FakeSock()
    r = bare_replicator(3, sock)
    frames = [f"f{i}".encode() for i in range(10)]
    r._inbox_batch(frames)
    assert sock.frames == frames[-3:]  # the newest survive
    assert (r.sent, r.dropped) == (3, 7)
    r._inbox_batch(frames[:2])  # under the limit: all go
    assert sock.frames[-2:] == frames[:2] and (r.sent, r.dropped) == (5, 7)


def test_full_peer_queue_drops_the_rest_of_the_batch() -> None:
    sock = FakeSock(capacity=4)
    r = bare_replicator(100, sock)
    frames = [bytes([i]) for i in range(10)]
    r._inbox_batch(frames)
    assert sock.frames == frames[:4] and (r.sent, r.dropped) == (4, 6)
    r._inbox_batch(frames)  # still full: everything dropped, nothing raised
    assert (r.sent, r.dropped) == (4, 16)
