"""The supervisor (`actors.supervisor.Supervisor`) with real actor threads: start in order,
stop in reverse, a failing actor sets `failed` and `stop_requested`, and a start that times out
or fails raises."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import zmq

from actors.base import Actor
from actors.supervisor import Supervisor
from prisn.messages import Msg, Tick
from tests.helpers import unique_id
from transport.codec import encode
from transport.mailbox import inproc_address


def node_id(tag: str) -> str:
    return unique_id("sup", tag)


class Member(Actor):
    """Appends ("start"|"stop", name) to a shared journal; optional failure modes."""

    poll_ms = 5

    def __init__(self, name: str, ctx: zmq.Context, node: str, journal: list[tuple[str, str]],
                 *, fail_start: bool = False, fail_on_message: bool = False,
                 release: threading.Event | None = None, **kw: Any) -> None:
        super().__init__(name, ctx, node, **kw)
        self.journal = journal
        self.fail_start = fail_start
        self.fail_on_message = fail_on_message
        self.release = release

    def on_start(self) -> None:
        if self.release is not None:
            assert self.release.wait(5), "never released"
        self.journal.append(("start", self.actor_name))
        if self.fail_start:
            raise OSError("cannot open the database")

    def on_message(self, msg: Msg) -> None:
        if self.fail_on_message:
            raise RuntimeError(f"{self.actor_name} broke on {msg.T}")

    def on_stop(self) -> None:
        self.journal.append(("stop", self.actor_name))


def test_starts_in_order_and_stops_in_reverse(ctx: zmq.Context) -> None:
    node = node_id("order")
    sup = Supervisor()
    journal: list[tuple[str, str]] = []
    names = ["logstore", "fsm", "raft", "timer", "api"]
    try:
        for name in names:
            sup.start(Member(name, ctx, node, journal, on_failure=sup.on_failure))
            # each actor's on_start finished before the next one is started
            assert journal[-1] == ("start", name)
        assert [a.actor_name for a in sup.actors] == names
        assert not sup.wait(timeout=0)
    finally:
        sup.stop_all()
    assert journal == [("start", n) for n in names] + [("stop", n) for n in reversed(names)]
    assert all(not a.is_alive() for a in sup.actors)
    assert not sup.failed.is_set() and sup.failure is None


def test_a_failing_actor_sets_failed_and_stop_requested(ctx: zmq.Context) -> None:
    node = node_id("fail")
    sup = Supervisor()
    journal: list[tuple[str, str]] = []
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        sup.start(Member("healthy", ctx, node, journal, on_failure=sup.on_failure))
        sup.start(Member("fragile", ctx, node, journal, fail_on_message=True,
                         on_failure=sup.on_failure))
        assert not sup.failed.is_set()
        push.connect(inproc_address(node, "fragile"))
        push.send(encode(Tick()))
        assert sup.wait(timeout=5), "the failure never reached the supervisor"
        assert sup.failed.is_set() and sup.stop_requested.is_set()
        assert sup.failure is not None
        name, exc = sup.failure
        assert name == "fragile" and isinstance(exc, RuntimeError)
        assert sup.actors[0].is_alive()  # the supervisor's caller does the stopping
    finally:
        push.close(0)
        sup.stop_all()
    assert all(not a.is_alive() for a in sup.actors)
    assert journal[-2:] == [("stop", "fragile"), ("stop", "healthy")]


def test_first_failure_is_kept(ctx: zmq.Context) -> None:
    sup = Supervisor()
    a = Member("a", ctx, node_id("first"), [])
    b = Member("b", ctx, node_id("first"), [])
    sup.on_failure(a, ValueError("first"))
    sup.on_failure(b, ValueError("second"))
    assert sup.failure is not None and sup.failure[0] == "a"
    assert str(sup.failure[1]) == "first"


def test_failed_start_raises(ctx: zmq.Context) -> None:
    node = node_id("badstart")
    sup = Supervisor()
    journal: list[tuple[str, str]] = []
    try:
        sup.start(Member("first", ctx, node, journal, on_failure=sup.on_failure))
        with pytest.raises(RuntimeError, match="broken failed to start.*database"):
            sup.start(Member("broken", ctx, node, journal, fail_start=True,
                             on_failure=sup.on_failure))
        assert sup.failed.is_set()
        assert [a.actor_name for a in sup.actors] == ["first", "broken"]
    finally:
        sup.stop_all()
    assert all(not a.is_alive() for a in sup.actors)


def test_start_timeout_raises_and_the_actor_is_still_stopped(ctx: zmq.Context) -> None:
    node = node_id("slow")
    sup = Supervisor()
    release = threading.Event()
    journal: list[tuple[str, str]] = []
    try:
        with pytest.raises(RuntimeError, match="slow did not start within"):
            sup.start(Member("slow", ctx, node, journal, release=release,
                             on_failure=sup.on_failure), timeout=0.05)
        assert journal == []  # on_start is still waiting
    finally:
        release.set()
        sup.stop_all()
    assert not sup.actors[0].is_alive()
    assert journal == [("start", "slow"), ("stop", "slow")]
