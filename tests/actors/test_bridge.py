"""The API's bridge to the actors (`actors.api.bridge.RaftNodeClient`), on an asyncio loop in
the test thread with real inproc sockets: one `ProposeBatch` per loop turn, `Applied` and
`Reply` resolving the right waiters, timeouts, the read barrier and the in-flight bound; and
`build_status` for leader, follower and learner views."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
import zmq

from actors.api.bridge import RaftNodeClient, build_status, state_name
from actors.api.errors import BadRequest, Conflict, NotFound, Unavailable
from actors.api.node import NodeInfo, NodeStatus
from prisn.fsm.commands import CommandFactory, decode_entry
from prisn.fsm.deployments import DeploymentStore
from prisn.messages import (
    Applied,
    EntryKind,
    Msg,
    ProposeBatch,
    ReadIndex,
    RemoveNode,
    Reply,
    Role,
    TransferLeadership,
)
from prisn.outcomes import Outcome
from prisn.raft.boot import Membership
from prisn.raft.progress import NEVER
from prisn.raft.status import PeerStatus
from tests.helpers import until
from transport.codec import decode, encode
from transport.mailbox import inproc_address

_ids = itertools.count()


def node_id(tag: str) -> str:
    return f"bridge-{tag}-{os.getpid()}-{next(_ids)}"


def commands(n: int) -> list[dict[str, Any]]:
    ids = (f"id{i:04d}" for i in itertools.count(1))
    cf = CommandFactory(clock=lambda: 1_700_000_000.0, new_id=lambda: next(ids))
    return [cf.create({"name": f"d{i}", "source": "x"}, key=f"k{i}") for i in range(n)]


def raft_status(leader: str = "n1", **kw: Any) -> SimpleNamespace:
    base: dict[str, Any] = dict(role=Role.FOLLOWER, is_learner=False, leader_id=leader,
                                membership=None, progress={}, term=1, commit_index=0,
                                last_index=0, cluster_id="c", quorum_ok=True)
    base.update(kw)
    return SimpleNamespace(**base)


class Rig:
    """The client under test plus the test's ends of its two sockets."""

    def __init__(self, ctx: zmq.Context, **kw: Any) -> None:
        self.ctx = ctx
        self.node = node_id("rig")
        self.raft = ctx.socket(zmq.PULL)  # stands in for the raft actor's inbox
        self.raft.setsockopt(zmq.LINGER, 0)
        self.raft.bind(inproc_address(self.node, "raft"))
        self.to_api = ctx.socket(zmq.PUSH)  # stands in for raft/fsm writing to the api
        self.to_api.setsockopt(zmq.LINGER, 0)
        self.store = DeploymentStore()
        self.st = raft_status()
        self.stats = SimpleNamespace(lag_seconds={}, replicators={})
        kw.setdefault("boot_commit", 0)
        self.client = RaftNodeClient(ctx, self.node, self.store,
                                     raft_status=lambda: self.st, raft_stats=lambda: self.stats,
                                     started_at=time.monotonic(), **kw)

    def open(self) -> None:
        self.client.open()
        self.to_api.connect(inproc_address(self.node, "api"))

    async def from_client(self, timeout: float = 5.0) -> Msg:
        """The next message the client sent to raft (lets the loop run meanwhile)."""
        deadline = time.monotonic() + timeout
        while not self.raft.poll(0):
            assert time.monotonic() < deadline, "the client sent nothing"
            await asyncio.sleep(0.001)
        return decode(self.raft.recv())

    async def nothing_more(self, turns: int = 20) -> None:
        """Let the loop run a few turns, then check the client sent nothing else."""
        for _ in range(turns):
            await asyncio.sleep(0)
        assert not self.raft.poll(0), f"unexpected {decode(self.raft.recv())}"

    def push(self, msg: Msg | bytes) -> None:
        self.to_api.send(msg if isinstance(msg, bytes) else encode(msg))

    def close_sockets(self) -> None:
        self.raft.close(0)
        self.to_api.close(0)


def run(body: Callable[[Rig], Awaitable[None]], **kw: Any) -> Rig:
    """Run `body(rig)` on a fresh asyncio loop with a fresh context and node id."""
    ctx = zmq.Context()
    rig = Rig(ctx, **kw)

    async def main() -> None:
        rig.open()
        try:
            async with asyncio.timeout(20):
                await body(rig)
        finally:
            rig.client.close()
            # collect what a failed body left behind (no "exception never retrieved" noise)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        rig.close_sockets()
        ctx.term()
    return rig


# --------------------------------------------------------------------------- proposals
def test_proposals_of_one_loop_turn_travel_as_one_batch_and_resolve_by_rid() -> None:
    cmds = commands(4)

    async def body(rig: Rig) -> None:
        c = rig.client
        gathered = asyncio.gather(*(c.propose(cmd, timeout=5) for cmd in cmds[:3]))
        batch = await rig.from_client()
        assert isinstance(batch, ProposeBatch) and batch.src == "api" and batch.dst == "raft"
        assert len(batch.items) == 3
        rids = [rid for rid, _ in batch.items]
        assert len(set(rids)) == 3
        for (rid, data), cmd in zip(batch.items, cmds[:3], strict=True):
            assert decode_entry(data) == (rig.node, rid, cmd)
        await rig.nothing_more()
        # a later turn is a new batch
        fourth = asyncio.ensure_future(c.propose(cmds[3], timeout=5))
        second = await rig.from_client()
        assert isinstance(second, ProposeBatch) and len(second.items) == 1
        rid4 = second.items[0][0]
        assert rid4 not in rids
        # results arrive in any order, some in a later Applied, plus a stranger's rid
        rig.push(Applied(src="fsm", dst="api", index=5, results=[
            [rids[2], 409, {"error": "Conflict"}], [999, 201, {}], [rids[0], 201, {"n": 0}]]))
        await until(lambda: rig.client.applied_index == 5, what="the first Applied")
        assert not gathered.done() and not fourth.done()
        rig.push(Applied(src="fsm", dst="api", index=6, results=[
            [rid4, 201, {"n": 3}], [rids[1], 200, {"n": 1}]]))
        results = await gathered
        assert results == [(201, {"n": 0}), (200, {"n": 1}), (409, {"error": "Conflict"})]
        assert await fourth == (201, {"n": 3})
        assert c._waiters == {}

    run(body)


def test_reply_not_ok_503_raises_unavailable() -> None:
    async def body(rig: Rig) -> None:
        task = asyncio.ensure_future(rig.client.propose(commands(1)[0], timeout=5))
        batch = await rig.from_client()
        assert isinstance(batch, ProposeBatch)
        rig.push(Reply(src="raft", dst="api", rid=batch.items[0][0], ok=False, code=503,
                       reason="no leader"))
        with pytest.raises(Unavailable, match="no leader") as info:
            await task
        assert info.value.status == 503 and rig.client._waiters == {}

    run(body)


@pytest.mark.parametrize("code,exc,status", [
    (503, Unavailable, 503), (404, NotFound, 404), (409, Conflict, 409),
    (507, Unavailable, 507), (500, Unavailable, 503), (400, Unavailable, 503),
    # internal consensus outcomes (same node only) are 503s, as the plain 503 was
    (int(Outcome.NOT_LEADER), Unavailable, 503), (int(Outcome.LEADERSHIP_LOST), Unavailable, 503),
    (int(Outcome.OUTCOME_UNKNOWN), Unavailable, 503), (int(Outcome.NO_LEADER), Unavailable, 503),
    (4242, Unavailable, 503),  # garbage: a failure, never a success
])
def test_reply_codes_map_to_api_errors(code: int, exc: type[Exception], status: int) -> None:
    async def body(rig: Rig) -> None:
        task = asyncio.ensure_future(rig.client.remove_node("n3", timeout=5))
        req = await rig.from_client()
        assert isinstance(req, RemoveNode) and req.node_id == "n3"
        rig.push(Reply(src="raft", dst="api", rid=req.rid, ok=False, code=code, reason="why"))
        with pytest.raises(exc) as info:
            await task
        assert info.value.status == status  # type: ignore[attr-defined]

    run(body)


def test_transfer_resolves_on_ok_reply() -> None:
    async def body(rig: Rig) -> None:
        task = asyncio.ensure_future(rig.client.transfer("n2"))
        req = await rig.from_client()
        assert isinstance(req, TransferLeadership) and req.target == "n2"
        rig.push(Reply(src="raft", dst="api", rid=req.rid, ok=True))
        assert await task is None

    run(body)


def test_propose_timeout_raises_unavailable_and_removes_the_waiter() -> None:
    async def body(rig: Rig) -> None:
        c = rig.client
        with pytest.raises(Unavailable, match="not confirmed within 0.05s"):
            await c.propose(commands(1)[0], timeout=0.05)
        assert c._waiters == {}
        batch = await rig.from_client()  # it was sent; the answer just never came
        assert isinstance(batch, ProposeBatch)
        # a late result for it is harmless
        rig.push(Applied(index=1, results=[[batch.items[0][0], 201, {}]]))
        await until(lambda: c.applied_index == 1)
        assert c._waiters == {}

    run(body)


def test_max_inflight_refuses_at_once() -> None:
    async def body(rig: Rig) -> None:
        c = rig.client
        cmds = commands(3)
        pending = [asyncio.ensure_future(c.propose(cmd, timeout=5)) for cmd in cmds[:2]]
        await until(lambda: len(c._waiters) == 2, what="two waiters")
        with pytest.raises(Unavailable, match="too many requests"):
            await c.propose(cmds[2], timeout=5)
        with pytest.raises(Unavailable, match="too many requests"):
            await c.read_barrier(5)
        batch = await rig.from_client()
        assert isinstance(batch, ProposeBatch) and len(batch.items) == 2
        await rig.nothing_more()
        rig.push(Applied(index=2, results=[[rid, 201, {}] for rid, _ in batch.items]))
        assert await asyncio.gather(*pending) == [(201, {}), (201, {})]

    run(body, max_inflight=2)


class FullSocket:
    """A PUSH whose peer queue is full: every NOBLOCK send raises zmq.Again."""

    def send(self, data: bytes, flags: int = 0) -> None:
        assert flags & zmq.NOBLOCK, "the API thread must never block on raft"
        raise zmq.Again()

    def close(self, linger: int | None = None) -> None:
        pass


def test_full_raft_queue_fails_fast_and_removes_waiters() -> None:
    async def body(rig: Rig) -> None:
        c = rig.client
        real, c._to_raft = c._to_raft, FullSocket()  # type: ignore[assignment]
        try:
            results = await asyncio.gather(*(c.propose(cmd, timeout=5) for cmd in commands(2)),
                                           return_exceptions=True)
            assert [type(r) for r in results] == [Unavailable, Unavailable]
            assert "queue is full" in str(results[0])
            with pytest.raises(Unavailable, match="queue is full"):
                await c.read_barrier(5)
            assert c._waiters == {}
        finally:
            c._to_raft = real

    run(body)


def test_close_fails_pending_waiters() -> None:
    async def body(rig: Rig) -> None:
        task = asyncio.ensure_future(rig.client.propose(commands(1)[0], timeout=5))
        await rig.from_client()
        rig.client.close()
        with pytest.raises(Unavailable, match="shutting down"):
            await task

    run(body)


def test_garbage_in_the_api_inbox_is_counted() -> None:
    async def body(rig: Rig) -> None:
        rig.push(b"\xff\x00 junk")
        rig.push(Applied(index=3))
        await until(lambda: rig.client.applied_index == 3)
        assert rig.client._decoder.dropped == 1

    run(body)


# --------------------------------------------------------------------------- read barrier
def test_read_barrier_waits_for_the_read_index_to_be_applied() -> None:
    async def body(rig: Rig) -> None:
        c = rig.client
        task = asyncio.ensure_future(c.read_barrier(5))
        req = await rig.from_client()
        assert isinstance(req, ReadIndex)
        rig.push(Reply(src="raft", dst="api", rid=req.rid, ok=True, index=7))
        await until(lambda: len(c._applied_waiters) == 1, what="the applied wait")
        rig.push(Applied(index=6))
        await until(lambda: c.applied_index == 6)
        assert not task.done()
        rig.push(Applied(index=7))
        assert await task is None
        assert c._applied_waiters == [] and c._waiters == {}

    run(body)


def test_read_barrier_returns_at_once_when_already_applied() -> None:
    async def body(rig: Rig) -> None:
        c = rig.client
        rig.push(Applied(index=10))
        await until(lambda: c.applied_index == 10)
        rig.push(Applied(index=4))  # an older index never moves it back
        task = asyncio.ensure_future(c.read_barrier(5))
        req = await rig.from_client()
        assert isinstance(req, ReadIndex)
        assert c.applied_index == 10
        rig.push(Reply(src="raft", dst="api", rid=req.rid, ok=True, index=9))
        assert await task is None
        assert c._applied_waiters == []

    run(body)


def test_read_barrier_errors() -> None:
    async def body(rig: Rig) -> None:
        c = rig.client
        # no answer at all: the leadership confirmation times out
        with pytest.raises(Unavailable, match="could not confirm leadership"):
            await c.read_barrier(0.05)
        assert c._waiters == {}
        await rig.from_client()
        # refused by raft
        task = asyncio.ensure_future(c.read_barrier(5))
        req = await rig.from_client()
        rig.push(Reply(rid=req.rid, ok=False, code=503))  # type: ignore[attr-defined]
        with pytest.raises(Unavailable, match="no quorum"):
            await task
        # confirmed, but this node never applies that far in time
        task = asyncio.ensure_future(c.read_barrier(0.2))
        req = await rig.from_client()
        rig.push(Reply(rid=req.rid, ok=True, index=50))  # type: ignore[attr-defined]
        with pytest.raises(Unavailable, match="did not apply index 50"):
            await task
        rig.push(Applied(index=50))  # the abandoned wait is skipped without error
        await until(lambda: c.applied_index == 50)
        assert c._applied_waiters == []

    run(body)


# --------------------------------------------------------------------------- status
def test_client_status_ready_latch_and_current_leader() -> None:
    async def body(rig: Rig) -> None:
        c = rig.client
        rig.st = raft_status(leader="")
        assert c.current_leader() is None and not c.status().ready
        rig.st = raft_status(leader="n1")
        assert c.current_leader() == "n1"
        assert not c.status().ready  # boot commit 3 not applied yet
        for i in range(1, 4):
            rig.store.apply(i, int(EntryKind.NOOP), b"")
        st = c.status()
        assert st.ready and st.applied_index == 3 and st.node_id == rig.node
        rig.st = raft_status(leader="")
        assert not c.status().ready  # no leader: not ready, but the latch holds
        rig.st = raft_status(leader="n2")
        assert c.status().ready

    run(body, boot_commit=3)


MEMBERS = Membership(cluster="c1", voters={"n1": "h1:7332", "n2": "h2:7332", "n3": "h3:7332"},
                     learners={"n4": "h4:7332"})
PROGRESS = {
    "n2": PeerStatus(match=10, next=11, inflight=2, state="replicate", last_contact_ticks=5,
                     recent_active=True),
    "n3": PeerStatus(match=4, next=5, inflight=0, state="probe", last_contact_ticks=300,
                     recent_active=False),
    "n4": PeerStatus(match=8, next=9, inflight=1, state="replicate", last_contact_ticks=2,
                     recent_active=True, is_learner=True),
}


def test_build_status_leader_view() -> None:
    st = raft_status(leader="n1", role=Role.LEADER, membership=MEMBERS, progress=PROGRESS,
                     term=3, commit_index=10, last_index=12, cluster_id="c1", quorum_ok=True)
    stats = SimpleNamespace(lag_seconds={"n2": 0.0, "n3": 1.23456},
                            replicators={"n2": (5, 0), "n3": (1, 2)})
    ns = build_status("n1", st, stats, applied=9, ready=True, uptime=12.3456, tick_seconds=0.01)
    assert ns == NodeStatus(
        node_id="n1", state="leader", term=3, leader_id="n1", commit_index=10,
        applied_index=9, cluster_id="c1", healthy=True, ready=True, uptime_seconds=12.346,
        nodes=[
            NodeInfo(id="n1", address="h1:7332", state="leader", voter=True),
            NodeInfo(id="n2", address="h2:7332", state="follower", last_contact_seconds=0.05,
                     lag_entries=2, lag_seconds=0.0, inflight_messages=2, voter=True),
            NodeInfo(id="n3", address="h3:7332", state="unreachable", last_contact_seconds=3.0,
                     lag_entries=8, lag_seconds=1.235, inflight_messages=0, voter=True),
            NodeInfo(id="n4", address="h4:7332", state="learner", last_contact_seconds=0.02,
                     lag_entries=4, lag_seconds=None, inflight_messages=None, voter=False),
        ])
    assert [n.is_voter for n in ns.nodes] == [True, True, True, False]
    # an unreachable learner stays a non-voter
    away = dict(PROGRESS, n4=PeerStatus(match=8, next=9, inflight=1, state="probe",
                                        last_contact_ticks=900, recent_active=False,
                                        is_learner=True))
    ns = build_status("n1", raft_status(leader="n1", role=Role.LEADER, membership=MEMBERS,
                                        progress=away, last_index=12),
                      stats, applied=9, ready=True, uptime=0)
    n4 = ns.nodes[3]
    assert n4.state == "unreachable" and n4.voter is False and not n4.is_voter


def test_build_status_follower_view() -> None:
    st = raft_status(leader="n1", role=Role.FOLLOWER, membership=MEMBERS, progress={},
                     term=3, commit_index=10, cluster_id="c1", quorum_ok=True)
    stats = SimpleNamespace(lag_seconds={}, replicators={})
    ns = build_status("n2", st, stats, applied=10, ready=False, uptime=1.0)
    assert ns.state == "follower" and ns.leader_id == "n1" and ns.healthy and not ns.ready
    assert [(n.id, n.state, n.is_voter) for n in ns.nodes] == [
        ("n1", "leader", True), ("n2", "follower", True), ("n3", "follower", True),
        ("n4", "learner", False)]
    assert all(n.lag_entries is None and n.last_contact_seconds is None for n in ns.nodes)


def test_build_status_learner_candidate_and_unconfigured() -> None:
    stats = SimpleNamespace(lag_seconds={}, replicators={})
    learner = raft_status(leader="n1", is_learner=True, membership=MEMBERS)
    ns = build_status("n4", learner, stats, applied=0, ready=False, uptime=0)
    assert ns.state == "learner"
    assert [(n.id, n.state, n.is_voter) for n in ns.nodes][-1] == ("n4", "learner", False)
    candidate = raft_status(leader="", role=Role.CANDIDATE, membership=MEMBERS, quorum_ok=True)
    ns = build_status("n2", candidate, stats, applied=0, ready=False, uptime=0)
    assert ns.state == "candidate" and ns.leader_id is None and not ns.healthy
    assert {n.state for n in ns.nodes if n.id != "n2"} == {"follower", "learner"}
    bare = raft_status(leader="", membership=None, cluster_id="")
    ns = build_status("n9", bare, stats, applied=0, ready=False, uptime=0)
    assert ns.nodes == [] and ns.cluster_id == "" and ns.state == "follower"
    no_quorum = raft_status(leader="n1", role=Role.LEADER, membership=MEMBERS, quorum_ok=False)
    assert not build_status("n1", no_quorum, stats, applied=0, ready=False, uptime=0).healthy


def test_state_name() -> None:
    assert state_name(raft_status(role=Role.LEADER)) == "leader"
    assert state_name(raft_status(role=Role.CANDIDATE)) == "candidate"
    assert state_name(raft_status(role=Role.FOLLOWER)) == "follower"
    assert state_name(raft_status(role=Role.FOLLOWER, is_learner=True)) == "learner"


def test_unencodable_and_cancelled_proposals_leave_no_waiter() -> None:
    """Issue 17 item 1: every exit from propose() releases its waiter, so a stream of bad
    bodies (a lone surrogate cannot be CBOR-encoded) never saturates max_inflight."""
    async def body(rig: Rig) -> None:
        c = rig.client
        bad = dict(commands(1)[0])
        bad["source"] = "\ud800"
        for _ in range(5):  # more than max_inflight
            with pytest.raises(BadRequest):
                await c.propose(bad, timeout=5)
        assert c._waiters == {}
        for _ in range(5):  # the same through the other requests (election, removal)
            with pytest.raises(BadRequest):
                await c.transfer("\udc80")
            with pytest.raises(BadRequest):
                await c.remove_node("\ud800", timeout=5)
        assert c._waiters == {} and c.inflight == 0
        task = asyncio.ensure_future(c.propose(commands(1)[0], timeout=5))
        await until(lambda: len(c._waiters) == 1, what="one waiter")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert c._waiters == {}
        # the node still takes a proposal
        ok = asyncio.ensure_future(c.propose(commands(1)[0], timeout=5))
        batch = await rig.from_client()
        while not isinstance(batch, ProposeBatch) or len(batch.items) != 1 or \
                batch.items[0][0] not in c._waiters:
            batch = await rig.from_client()
        rig.push(Applied(index=1, results=[[batch.items[0][0], 201, {}]]))
        assert await ok == (201, {})

    run(body, max_inflight=2)


def test_build_status_just_joined_member_is_not_unreachable_and_healthy_agrees() -> None:
    """Issue 12 item 10: a member added a moment ago (never heard from, known for less than
    an election timeout) is a follower or learner being contacted, not "unreachable"; the
    leader's `healthy` is true exactly when a majority of voters is printed reachable."""
    stats = SimpleNamespace(lag_seconds={}, replicators={})
    joining = dict(PROGRESS, n3=PeerStatus(match=0, next=13, inflight=1, state="probe",
                                           last_contact_ticks=NEVER + 3, recent_active=False,
                                           joining=True))
    ns = build_status("n1", raft_status(leader="n1", role=Role.LEADER, membership=MEMBERS,
                                        progress=joining, last_index=12, quorum_ok=False),
                      stats, applied=9, ready=True, uptime=0)
    n3 = ns.nodes[2]
    assert (n3.state, n3.last_contact_seconds) == ("follower", None)
    assert ns.healthy  # n1, n2 and the joining n3 are printed reachable
    # the same peer, an election timeout later and still silent: unreachable
    silent = dict(joining, n2=PeerStatus(match=10, next=11, inflight=0, state="probe",
                                         last_contact_ticks=400, recent_active=False),
                  n3=PeerStatus(match=0, next=13, inflight=1, state="probe",
                                last_contact_ticks=NEVER + 300, recent_active=False))
    ns = build_status("n1", raft_status(leader="n1", role=Role.LEADER, membership=MEMBERS,
                                        progress=silent, last_index=12, quorum_ok=True),
                      stats, applied=9, ready=True, uptime=0)
    assert [n.state for n in ns.nodes[1:3]] == ["unreachable", "unreachable"]
    assert not ns.healthy  # whatever quorum_ok says, it must agree with the printed states


def test_concurrent_read_barriers_share_one_read_index() -> None:
    """Strong reads of one loop turn send one ReadIndex; reads arriving while it is under
    way wait for (and share) the next one, sent only when the first is answered."""
    async def body(rig: Rig) -> None:
        c = rig.client
        first = [asyncio.ensure_future(c.read_barrier(5)) for _ in range(8)]
        req = await rig.from_client()
        assert isinstance(req, ReadIndex)
        second = [asyncio.ensure_future(c.read_barrier(5)) for _ in range(5)]
        await rig.nothing_more()  # one ReadIndex at a time
        assert len(c._waiters) == 1
        rig.push(Reply(src="raft", dst="api", rid=req.rid, ok=True, index=0))
        assert await asyncio.gather(*first) == [None] * 8
        req2 = await rig.from_client()
        assert isinstance(req2, ReadIndex) and req2.rid != req.rid
        rig.push(Reply(src="raft", dst="api", rid=req2.rid, ok=True, index=0))
        assert await asyncio.gather(*second) == [None] * 5
        await rig.nothing_more()
        assert c._waiters == {} and (c.barriers.joins, c.barriers.calls) == (13, 2)


# ---------------------------------------------------------------------- logs (issue 14)
def test_a_log_read_resolves_only_with_the_asked_nodes_reply(tmp_path: Any) -> None:
    """A LogsRequest goes to raft for the member asked, again while unanswered; a LogsReply
    with its rid from any other node (or for a rid nobody waits for) is ignored; the asked
    node's resolves it."""
    from prisn.messages import LogsReply, LogsRequest
    from prisn.raft.boot import Membership

    async def body(rig: Rig) -> None:
        rig.st = raft_status(membership=Membership(cluster="c", voters={
            rig.node: "h:1", "n2": "h:2", "n3": "h:3"}))
        task = asyncio.ensure_future(rig.client.read_logs(
            "n2", "default.web.0.1", offset=5, tail=None, limit=100, timeout=10))
        ask = await rig.from_client()
        assert isinstance(ask, LogsRequest)
        assert (ask.src, ask.dst, ask.cluster, ask.instance, ask.offset, ask.tail,
                ask.limit) == (rig.node, "n2", "c", "default.web.0.1", 5, -1, 100)

        def reply(src: str, rid: int, data: bytes) -> LogsReply:
            return LogsReply(src=src, dst=rig.node, cluster="c", rid=rid, offset=5,
                             next_offset=5 + len(data), data=data, instance="default.web.0.1")

        rig.push(reply("n3", ask.rid, b"forged"))
        rig.push(reply("n2", ask.rid + 1, b"stray"))
        await rig.nothing_more()
        assert not task.done()
        # unanswered (a link still connecting loses it): the same request is sent again
        again = await rig.from_client()
        assert again == ask
        rig.push(reply("n2", ask.rid, b"real"))
        got = await task
        assert got.data == b"real" and rig.client._waiters == {} and rig.client._log_asks == {}

    run(body)


def test_a_peers_log_request_is_answered_from_this_nodes_files(tmp_path: Any) -> None:
    from prisn.messages import LogsReply, LogsRequest
    from prisn.raft.boot import Membership

    d = tmp_path / "instances" / "default.web.0.1"
    d.mkdir(parents=True)
    (d / "output.0.log").write_bytes(b"0123456789")

    async def body(rig: Rig) -> None:
        rig.st = raft_status(membership=Membership(cluster="c", voters={rig.node: "h:1",
                                                                       "n2": "h:2"}))
        rig.client.log_dir = str(tmp_path)
        rig.push(LogsRequest(src="n2", dst=rig.node, cluster="c", rid=41,
                             instance="default.web.0.1", offset=3, limit=4))
        ans = await rig.from_client()
        assert isinstance(ans, LogsReply)
        assert (ans.src, ans.dst, ans.cluster, ans.rid, ans.code, ans.offset, ans.next_offset,
                ans.data) == (rig.node, "n2", "c", 41, 200, 3, 7, b"3456")
        rig.push(LogsRequest(src="n2", dst=rig.node, cluster="c", rid=42, instance="..",
                             limit=4))
        bad = await rig.from_client()
        assert isinstance(bad, LogsReply) and bad.code == 400 and "bad instance id" in bad.reason
        rig.client.log_dir = None
        rig.push(LogsRequest(src="n2", dst=rig.node, cluster="c", rid=43, instance="x",
                             limit=4))
        none = await rig.from_client()
        assert isinstance(none, LogsReply) and none.code == 503

    run(body)
