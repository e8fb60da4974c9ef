"""The state-machine actor (`actors.statemachine.StateMachineActor`) with a real
`DeploymentStore` and a FakeOutbox (no thread), then once on a real thread: entries apply in
order, results only for this node's proposals, replays skipped, one `Applied` per batch, and
NOOP/CONFIG entries advance the index without a result."""

from __future__ import annotations

import itertools
import time
from typing import Any

import cbor2
import pytest
import zmq

from actors.statemachine import StateMachineActor
from prisn.fsm.commands import CommandFactory, encode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.messages import Applied, Apply, EntryKind, Msg, Tick
from tests.helpers import unique_id
from transport.codec import decode, encode
from transport.fake import FakeOutbox
from transport.mailbox import inproc_address

_ids = itertools.count()
ME = "n1"


def node_id(tag: str) -> str:
    return unique_id("fsm", tag)


@pytest.fixture
def cf() -> CommandFactory:
    ids = (f"id{n:04d}" for n in itertools.count(1))
    ticks = itertools.count(1_700_000_000)
    return CommandFactory(clock=lambda: float(next(ticks)), new_id=lambda: next(ids))


class Rig:
    def __init__(self, ctx: zmq.Context, node: str = ME) -> None:
        self.store = DeploymentStore()
        self.actor = StateMachineActor(ctx, node, self.store)
        self.out = FakeOutbox()
        self.actor.outbox = self.out  # type: ignore[assignment]

    def feed(self, *msgs: Msg) -> list[Applied]:
        """One batch; returns what went to the api (and checks nothing went elsewhere)."""
        self.actor.on_messages(list(msgs))
        sent = self.out.take()
        assert all(dest == "api" for dest, _ in sent)
        applied = [m for _, m in sent]
        assert all(isinstance(m, Applied) for m in applied)
        return applied  # type: ignore[return-value]


@pytest.fixture
def rig(ctx: zmq.Context) -> Rig:
    return Rig(ctx)


def command(index: int, origin: str, rid: int, cmd: dict[str, Any], term: int = 1) -> list:
    return [index, term, int(EntryKind.COMMAND), encode_entry(origin, rid, cmd)]


def noop(index: int, term: int = 1) -> list:
    return [index, term, int(EntryKind.NOOP), b""]


def config(index: int, term: int = 1) -> list:
    wire = {"cluster": "c", "voters": {ME: "h:1"}, "learners": {}}
    return [index, term, int(EntryKind.CONFIG), cbor2.dumps(wire, canonical=True)]


def apply(*entries: list) -> Apply:
    return Apply(src="raft", dst="fsm", entries=list(entries))


# --------------------------------------------------------------------------- tests
def check_results_only_for_own_origin(rig: Rig, cf: CommandFactory) -> None:
    (applied,) = rig.feed(apply(
        command(1, ME, 11, cf.create({"name": "web", "source": "print(1)"})),
        command(2, "n2", 11, cf.create({"name": "api", "source": "print(2)"})),
        command(3, ME, 12, cf.scale("web", {"replicas": 3})),
        command(4, "n3", 13, cf.delete("api")),
    ))
    assert applied.index == 4 == rig.store.applied_index
    assert [r[:2] for r in applied.results] == [[11, 201], [12, 200]]
    web = rig.store.get("default", "web")
    assert applied.results[1][2] == web and web is not None and web["replicas"] == 3
    assert applied.results[0][2]["generation"] == 1 and web["generation"] == 2
    assert rig.store.get("default", "api") is None  # n3's delete applied too, silently


def test_entries_apply_in_order_results_only_for_own_origin(rig: Rig, cf: CommandFactory) -> None:
    check_results_only_for_own_origin(rig, cf)


def test_companion_the_origin_check_can_fail(rig: Rig, cf: CommandFactory,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real = rig.store.apply

    def claims_every_entry(index: int, kind: int, data: bytes) -> object:
        out = real(index, kind, data)
        rig.store.last_origin = (ME, rig.store.last_origin[1])
        return out

    monkeypatch.setattr(rig.store, "apply", claims_every_entry)
    with pytest.raises(AssertionError):
        check_results_only_for_own_origin(rig, cf)


def test_one_applied_per_batch_carrying_the_applied_index(rig: Rig, cf: CommandFactory) -> None:
    applied = rig.feed(
        apply(command(1, ME, 1, cf.create({"name": "a", "source": "x"})), noop(2)),
        Tick(),
        apply(command(3, ME, 2, cf.create({"name": "b", "source": "x"}))),
        apply(command(4, ME, 3, cf.create({"name": "a", "source": "x"}))),  # 409
    )
    assert len(applied) == 1
    assert applied[0].index == 4
    assert [r[:2] for r in applied[0].results] == [[1, 201], [2, 201], [3, 409]]
    (second,) = rig.feed(apply(noop(5)))
    assert second == Applied(src="fsm", dst="api", index=5, results=[])


def test_a_batch_of_large_results_is_split_into_frames_under_the_cap(
        rig: Rig, cf: CommandFactory) -> None:
    """64 KiB specs, 300 of this node's creates drained in one batch (~19 MiB of results):
    one Applied frame would pass the 16 MiB cap the API's decoder enforces and every waiter
    would time out on writes that committed. Several frames, each under APPLIED_BYTES plus one
    result, carry every result in order and the index applied up to them."""
    from actors.statemachine import APPLIED_BYTES
    from transport.codec import DEFAULT_MAX_BYTES

    source = "x" * 65_000
    frames = [apply(*(command(i, ME, i, cf.create({"name": f"d{i}", "source": source}))
                      for i in range(k, k + 15)))
              for k in range(1, 301, 15)]
    applied = rig.feed(*frames)
    assert len(applied) >= 5
    sizes = [len(encode(m)) for m in applied]
    assert max(sizes) < APPLIED_BYTES + 70_000 < DEFAULT_MAX_BYTES, sizes
    assert [r[0] for m in applied for r in m.results] == list(range(1, 301))
    assert all(r[1] == 201 for m in applied for r in m.results)
    indexes = [m.index for m in applied]
    assert indexes == sorted(indexes) and indexes[-1] == 300 == rig.store.applied_index
    for m in applied:  # each frame's index covers its own results
        assert m.results[-1][0] <= m.index


def test_replayed_entries_are_skipped(rig: Rig, cf: CommandFactory) -> None:
    rig.feed(apply(
        command(1, ME, 1, cf.create({"name": "a", "source": "x"})),
        command(2, ME, 2, cf.create({"name": "b", "source": "x"})),
    ))
    before = rig.store.state_hash()
    # a replay of 1..2 (here with other commands at those indexes: they must not run)
    (applied,) = rig.feed(apply(
        command(1, ME, 1, cf.delete("a")),
        command(2, ME, 2, cf.delete("b")),
        command(3, ME, 3, cf.scale("b", {"replicas": 2})),
    ))
    assert applied.index == 3 and [r[:2] for r in applied.results] == [[3, 200]]
    assert rig.store.get("default", "a") is not None
    assert rig.store.state_hash() != before  # only the scale changed something
    # a batch that is nothing but replay applies nothing and says nothing
    assert rig.feed(apply(noop(1), command(3, ME, 3, cf.delete("b")))) == []
    assert rig.store.applied_index == 3 and rig.store.get("default", "b") is not None


def test_noop_and_config_advance_the_index_without_result(rig: Rig, cf: CommandFactory) -> None:
    (applied,) = rig.feed(apply(noop(1), config(2)))
    assert applied == Applied(src="fsm", dst="api", index=2, results=[])
    (applied,) = rig.feed(apply(noop(3), command(4, ME, 9, cf.create({"name": "z",
                                                                       "source": "x"}))))
    assert applied.index == 4 and [r[:2] for r in applied.results] == [[9, 201]]


def test_undecodable_command_advances_without_a_routable_result(rig: Rig, cf: CommandFactory
                                                                ) -> None:
    (applied,) = rig.feed(apply(
        [1, 1, int(EntryKind.COMMAND), b"\xff not cbor"],
        command(2, ME, 5, cf.scale("ghost", {"replicas": 1})),  # valid but not found
    ))
    assert applied.index == 2
    assert [r[:2] for r in applied.results] == [[5, 404]]


def test_other_messages_are_ignored(rig: Rig) -> None:
    assert rig.feed(Tick(), Applied(index=9)) == []
    assert rig.store.applied_index == 0


def test_a_gap_is_a_wiring_bug_that_fails_the_actor(rig: Rig) -> None:
    with pytest.raises(ValueError, match="gap"):
        rig.actor.on_messages([apply(noop(1), noop(3))])


def test_the_store_tells_the_origin_of_the_last_command() -> None:
    store = DeploymentStore()
    store.apply(1, EntryKind.COMMAND, encode_entry("n7", 42, {"op": "x"}))
    assert store.last_origin == ("n7", 42)
    store.apply(2, EntryKind.COMMAND, b"")
    assert store.last_origin == ("", 0)
    store.apply(3, EntryKind.COMMAND, cbor2.dumps({"o": "n7", "r": True, "c": {}}))
    assert store.last_origin == ("", 0)


def test_real_thread_round_trip(cf: CommandFactory) -> None:
    ctx = zmq.Context()
    node = node_id("thread")
    store = DeploymentStore()
    actor = StateMachineActor(ctx, node, store)
    api = ctx.socket(zmq.PULL)
    api.setsockopt(zmq.LINGER, 0)
    api.bind(inproc_address(node, "api"))
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        actor.start()
        assert actor.started.wait(5) and actor.failure is None
        push.connect(inproc_address(node, "fsm"))
        for i in range(1, 21):
            push.send(encode(apply(command(i, node, i, cf.create({"name": f"d{i}",
                                                                   "source": "x"})))))
        results: list[list] = []
        index = 0
        deadline = time.monotonic() + 10
        while index < 20:
            remaining = int((deadline - time.monotonic()) * 1000)
            assert remaining > 0 and api.poll(remaining), f"applied only through {index}"
            msg = decode(api.recv())
            assert isinstance(msg, Applied) and msg.index > index
            index = msg.index
            results += msg.results
        assert [r[:2] for r in results] == [[i, 201] for i in range(1, 21)]
        assert store.count() == 20
    finally:
        actor.stop()
        actor.join(5)
        push.close(0)
        api.close(0)
        ctx.term()
    assert not actor.is_alive() and actor.failure is None


# --------------------------------------------------------------------------- restart replay
def test_entries_committed_before_boot_apply_without_results(ctx: zmq.Context,
                                                             cf: CommandFactory) -> None:
    """A restart replays entries an earlier incarnation proposed (same origin): they apply, the
    index advances, but no result is collected for them (no waiter of this process holds
    their request ids); entries after `boot_commit` are answered as usual."""
    rig = Rig(ctx)
    rig.actor.boot_commit = 2
    (applied,) = rig.feed(apply(
        command(1, ME, 1, cf.create({"name": "a", "source": "x"})),
        command(2, ME, 2, cf.create({"name": "b", "source": "x"})),
        command(3, ME, 3, cf.create({"name": "c", "source": "x"})),
    ))
    assert applied.index == 3 and rig.store.count() == 3
    assert [r[:2] for r in applied.results] == [[3, 201]]
    # a batch that is only replay still reports the applied index
    rig2 = Rig(ctx)
    rig2.actor.boot_commit = 5
    assert rig2.feed(apply(command(1, ME, 1, cf.create({"name": "z", "source": "x"})))) == [
        Applied(src="fsm", dst="api", index=1, results=[])]


def test_a_drained_batch_is_decoded_one_frame_at_a_time(ctx: zmq.Context,
                                                        cf: CommandFactory) -> None:
    """Frames of one batch are decoded lazily: frame k+1 is decoded only after frame k's
    entries were applied and frame k released (a restart's replay arrives as one batch of
    many large frames); still one `Applied` for the whole batch, in order."""
    rig = Rig(ctx)
    frames = [encode(apply(*(command(i, ME, i, cf.create({"name": f"d{i}", "source": "x"}))
                             for i in range(k, k + 3))))
              for k in (1, 4, 7)]
    frames.insert(1, b"\xff malformed")  # dropped and counted, the rest goes on
    seen: list[tuple[int, int]] = []  # (applied index, frames still held) at each decode
    real = rig.actor.decoder.try_decode

    def spy(frame: bytes) -> Msg | None:
        seen.append((rig.store.applied_index, sum(1 for f in frames if f)))
        return real(frame)

    rig.actor.decoder.try_decode = spy  # type: ignore[method-assign]
    rig.actor._inbox_batch(frames)
    assert seen == [(0, 4), (3, 3), (3, 2), (6, 1)]
    (applied,) = [m for _, m in rig.out.take()]
    assert isinstance(applied, Applied) and applied.index == 9
    assert [r[:2] for r in applied.results] == [[i, 201] for i in range(1, 10)]
    assert rig.actor.decoder.dropped == 1
