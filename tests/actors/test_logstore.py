"""LogStoreActor: group commit and the failure path with a FakeOutbox (no thread), then once
with the real actor thread and real inproc sockets."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import zmq

from actors.logstore import LogStoreActor
from prisn.messages import Msg, Stop, StoreAppend, StoreFailed, StoreSynced, Tick
from prisn.storage import LogStorage
from transport.codec import decode, encode
from transport.fake import FakeOutbox
from transport.mailbox import inproc_address


def req(seq: int, first: int, n: int, *, term: int = 1, truncate_from: int = 0) -> StoreAppend:
    return StoreAppend(seq=seq, term=term, vote="n1", commit=0, truncate_from=truncate_from,
                       entries=[[i, term, 0, b"x" * 300] for i in range(first, first + n)])


class CountingStorage(LogStorage):
    """A real LogStorage that records each `write` call's requests."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.calls: list[list[StoreAppend]] = []

    def write(self, requests: Any) -> None:
        self.calls.append(list(requests))
        super().write(requests)


class FailingStorage(CountingStorage):
    """Every write raises, as a full disk would."""

    def write(self, requests: Any) -> None:
        self.calls.append(list(requests))
        raise OSError(28, "No space left on device")


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


def make(storage: LogStorage, ctx: zmq.Context, **kw: Any) -> tuple[LogStoreActor, FakeOutbox]:
    actor = LogStoreActor(storage, ctx, "n1", **kw)
    out = FakeOutbox()
    actor.outbox = out  # type: ignore[assignment]
    return actor, out


@pytest.fixture
def storage(tmp_path):
    s = CountingStorage(str(tmp_path / "log"))
    yield s
    s.close()


def test_group_commit_one_write_one_ack_with_highest_seq(storage, ctx):
    seen: list[tuple[float, int]] = []
    actor, out = make(storage, ctx, observe_fsync=lambda s, n: seen.append((s, n)))
    batch: list[Msg] = [req(seq, seq, 1) for seq in range(1, 11)]
    actor.on_messages(batch)
    assert len(storage.calls) == 1 and [r.seq for r in storage.calls[0]] == list(range(1, 11))
    assert out.sent == [("raft", StoreSynced(seq=10))]
    assert [e[0] for e in storage.load().entries] == list(range(1, 11))
    assert len(seen) == 1 and seen[0][1] == 10 and seen[0][0] >= 0
    assert (actor.writes, actor.requests, actor.entries) == (1, 10, 10)


def test_each_batch_is_one_write(storage, ctx):
    actor, out = make(storage, ctx)
    actor.on_messages([req(1, 1, 3), req(2, 4, 2)])
    actor.on_messages([req(3, 6, 1)])
    assert [len(c) for c in storage.calls] == [2, 1]
    assert out.to("raft") == [StoreSynced(seq=2), StoreSynced(seq=3)]


def test_ack_carries_the_highest_seq_not_the_last(storage, ctx):
    actor, out = make(storage, ctx)
    vote = StoreAppend(seq=4, term=2, vote="n2", commit=0)
    actor.on_messages([req(7, 1, 2), vote])
    assert out.to("raft") == [StoreSynced(seq=7)]
    assert storage.load().vote == "n2"  # requests were applied in arrival order


def test_unknown_messages_are_counted_not_answered(storage, ctx):
    actor, out = make(storage, ctx)
    actor.on_messages([Tick(), StoreSynced(seq=1)])
    assert out.sent == [] and storage.calls == [] and actor.ignored == 2
    actor.on_messages([Tick(), req(1, 1, 1), Tick()])
    assert out.sent == [("raft", StoreSynced(seq=1))] and actor.ignored == 4


def test_write_failure_answers_store_failed_and_never_synced(tmp_path, ctx):
    storage = FailingStorage(str(tmp_path / "log"))
    try:
        seen: list[tuple[float, int]] = []
        actor, out = make(storage, ctx, observe_fsync=lambda s, n: seen.append((s, n)))
        actor.on_messages([req(1, 1, 1), req(2, 2, 1)])  # must not raise: the actor keeps going
        sent = out.take()
        assert [d for d, _ in sent] == ["raft"]
        failed = sent[0][1]
        assert isinstance(failed, StoreFailed) and failed.seq == 2
        assert failed.reason == "no space left on device"
        assert seen == [] and actor.writes == 0 and actor.write_failures == 1
    finally:
        storage.close()


def test_failure_is_sticky_so_a_cumulative_ack_never_covers_it(tmp_path, ctx):
    """After seq 1 failed, a later success would claim seq 1 too: later requests are void
    (neither written nor answered) until raft resumes (see test_logstore_diskfault)."""
    storage = CountingStorage(str(tmp_path / "log"))
    try:
        actor, out = make(storage, ctx)
        actor.on_messages([req(1, 5, 1)])  # a gap: the storage refuses, nothing written
        actor.on_messages([StoreAppend(seq=2, term=1, vote="n1", commit=0)])  # would succeed
        answers = [m for m in out.to("raft") if isinstance(m, StoreFailed)]
        assert len(answers) == len(out.sent) == 1
        assert [m.seq for m in answers] == [1] and actor.voided == 1
        assert "gap" in answers[0].reason
        assert len(storage.calls) == 1  # the second batch never reached the disk
        assert storage.load().entries == []
    finally:
        storage.close()


def test_observer_error_does_not_lose_the_ack(storage, ctx):
    def boom(_s: float, _n: int) -> None:
        raise RuntimeError("metrics bug")

    actor, out = make(storage, ctx, observe_fsync=boom)
    actor.on_messages([req(1, 1, 1)])
    assert out.sent == [("raft", StoreSynced(seq=1))]


def test_stop_finishes_the_batch_then_stops(storage, ctx):
    actor, out = make(storage, ctx)
    actor.on_messages([req(1, 1, 1), Stop(reason="test"), req(2, 2, 1)])
    assert len(storage.calls) == 1
    assert out.sent == [("raft", StoreSynced(seq=2))]
    assert actor.stopping


# --------------------------------------------------------------------------- real thread
def test_real_thread_and_inproc_sockets(tmp_path):
    n = 300
    ctx = zmq.Context()
    node = f"t{uuid.uuid4().hex[:10]}"
    storage = LogStorage(str(tmp_path / "log"))
    fsyncs: list[int] = []
    actor = LogStoreActor(storage, ctx, node, observe_fsync=lambda _s, k: fsyncs.append(k))
    raft = ctx.socket(zmq.PULL)
    raft.setsockopt(zmq.LINGER, 0)
    raft.bind(inproc_address(node, "raft"))
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        actor.start()
        assert actor.started.wait(5) and actor.failure is None
        push.connect(inproc_address(node, "logstore"))
        for seq in range(1, n + 1):
            push.send(encode(req(seq, seq, 1)))
        acks: list[int] = []
        deadline = time.monotonic() + 10
        while not acks or acks[-1] < n:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            assert remaining_ms > 0, f"only acked up to {acks[-1:]} of {n}"
            if raft.poll(remaining_ms):
                msg = decode(raft.recv())
                assert isinstance(msg, StoreSynced), msg
                acks.append(msg.seq)
        assert acks == sorted(set(acks))  # strictly increasing, cumulative
    finally:
        actor.stop()
        actor.join(5)
        push.close(0)
        raft.close(0)
        ctx.term()
    assert not actor.is_alive() and actor.failure is None
    # read after join: the observer runs just after the ack is sent
    assert len(acks) == actor.writes == len(fsyncs) and sum(fsyncs) == n
    assert [e[0] for e in storage.load().entries] == list(range(1, n + 1))
    storage.close()
