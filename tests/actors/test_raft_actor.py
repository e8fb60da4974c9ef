"""The raft actor shell (`actors.raft.RaftActor`) around a FAKE core, driven without a thread:
routing of outputs (local mailboxes, replicators per peer), `ProposeBatch` expansion, the peer
socket's type filter and drop counters, status republishing and leader-change counting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import cbor2
import pytest
import zmq

import actors.raft as raft_mod
from actors.raft import MAX_ADDR_REPLICATORS, RaftActor
from prisn.messages import (
    REGISTRY,
    AddNode,
    AppendEntries,
    AppendResponse,
    Applied,
    Apply,
    ForwardPropose,
    ForwardProposeBatch,
    ForwardResponse,
    JoinResponse,
    Msg,
    Propose,
    ProposeBatch,
    ReadIndex,
    Reply,
    Role,
    SnapSend,
    StoreAppend,
    StoreSynced,
    Tick,
    VoteRequest,
    VoteResponse,
    to_map,
)
from prisn.raft.boot import Membership
from tests.helpers import unique_id
from tests.procs import wait_for
from transport.codec import encode
from transport.fake import FakeOutbox
from transport.mailbox import Outbox


def node_id(tag: str) -> str:
    return unique_id("raft", tag)


@dataclass(frozen=True)
class FakeStatus:
    role: Role = Role.FOLLOWER
    leader_id: str = ""
    membership: Any = None
    progress: dict = field(default_factory=dict)
    fatal: str = ""
    disk_error: str = ""


class FakeCore:
    """Records every step; returns scripted outputs; status/addresses set by the test."""

    def __init__(self) -> None:
        self.addrs: dict[str, str] = {"n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003"}
        self.steps: list[list[Msg]] = []
        self.replies: list[list[Msg]] = []  # outputs of the next steps, in order
        self.next_status: list[FakeStatus] = []  # statuses after the next steps, in order
        self.st = FakeStatus()
        self.startup_out: list[Msg] = []
        self.startups = 0

    def step(self, batch: list[Msg]) -> list[Msg]:
        self.steps.append(list(batch))
        if self.next_status:
            self.st = self.next_status.pop(0)
        return self.replies.pop(0) if self.replies else []

    def startup(self) -> list[Msg]:
        self.startups += 1
        return list(self.startup_out)

    def status(self) -> FakeStatus:
        return self.st

    def address_of(self, nid: str) -> str | None:
        return self.addrs.get(nid)


class Shell:
    """A RaftActor with a FakeCore and a FakeOutbox, replicator starts recorded."""

    def __init__(self, ctx: zmq.Context, *, real_replicators: bool = False, **kw: Any) -> None:
        self.core = FakeCore()
        self.out = FakeOutbox()
        self.leader_hook_calls = 0
        self.actor = RaftActor(ctx, node_id("shell"), self.core, listen_addr=None,
                               on_leader_change=self._hook, **kw)
        self.actor.outbox = self.out  # type: ignore[assignment]
        self.started: list[tuple[str, str]] = []
        self.stopped: list[str] = []
        if not real_replicators:
            self.actor._start_replicator = self._fake_start  # type: ignore[method-assign]

    def _hook(self) -> None:
        self.leader_hook_calls += 1

    def _fake_start(self, peer: str, addr: str) -> bool:
        self.started.append((peer, addr))
        self.actor._replicators[peer] = SimpleNamespace(  # type: ignore[assignment]
            addr=addr, sent=len(self.started), dropped=0, peer=peer,
            actor_name=f"repl:{peer}", ctl=f"repl:{peer}/ctl", is_alive=lambda: True,
            stop=lambda: self.stopped.append(peer), join=lambda timeout=None: None)
        return True

    def run(self, local: list[Msg] = (), peer: list[bytes] = ()) -> None:  # type: ignore[assignment]
        """One poll batch: local messages, then peer frames, then the batch end."""
        if local:
            self.actor.on_messages(list(local))
        if peer:
            self.actor._peer_frames(list(peer))
        self.actor.on_batch_end()

    def force_stats(self) -> None:
        self.actor._last_stats = float("-inf")  # next publish refreshes the throttled stats


@pytest.fixture
def shell(ctx: zmq.Context) -> Iterator[Shell]:
    s = Shell(ctx)
    yield s
    s.actor.on_stop()


def ae(dst: str, **kw: Any) -> AppendEntries:
    base: dict[str, Any] = dict(src="n1", dst=dst, cluster="c", term=2, prev_index=0,
                                prev_term=0, entries=[], commit=0)
    base.update(kw)
    return AppendEntries(**base)


# --------------------------------------------------------------------------- routing
def test_local_outputs_go_to_their_mailboxes_in_order(shell: Shell) -> None:
    outs: list[Msg] = [
        StoreAppend(src="raft", dst="logstore", seq=1, term=2, vote="n1", commit=0,
                    entries=[[1, 2, 0, b"x"]]),
        Apply(src="raft", dst="fsm", entries=[[1, 2, 1, b""]]),
        Reply(src="raft", dst="api", rid=4, ok=False, code=503, reason="no leader"),
        StoreAppend(src="raft", dst="logstore", seq=2, term=2, vote="n1", commit=1),
    ]
    shell.core.replies = [outs]
    shell.run([Tick()])
    assert shell.out.sent == [(m.dst, m) for m in outs]
    assert shell.started == [] and shell.actor._unroutable == 0


def test_peer_outputs_start_one_replicator_per_peer(shell: Shell) -> None:
    shell.core.replies = [
        [ae("n2"), ae("n3"), VoteRequest(src="n1", dst="n2", cluster="c", term=3,
                                         last_index=0, last_term=0)],
        [ae("n2", commit=1)],
    ]
    shell.run([Tick()])
    shell.run([Tick()])
    assert shell.started == [("n2", "127.0.0.1:7002"), ("n3", "127.0.0.1:7003")]
    assert [(d, type(m).__name__) for d, m in shell.out.sent] == [
        ("repl:n2", "AppendEntries"), ("repl:n3", "AppendEntries"),
        ("repl:n2", "VoteRequest"), ("repl:n2", "AppendEntries")]
    assert shell.out.sent[-1][1] == ae("n2", commit=1)  # encoded as-is for the wire


def test_output_to_an_unknown_peer_is_counted_unroutable(shell: Shell) -> None:
    shell.core.replies = [[ae("stranger"), ae("n2")]]
    shell.run([Tick()])
    assert shell.started == [("n2", "127.0.0.1:7002")]
    assert [d for d, _ in shell.out.sent] == ["repl:n2"]
    assert shell.actor._unroutable == 1
    shell.force_stats()
    shell.run([Tick()])
    assert shell.actor.stats.unroutable == 1


def test_address_destinations_get_bounded_replicators(shell: Shell) -> None:
    n = MAX_ADDR_REPLICATORS + 2
    replies = [[JoinResponse(src="n1", dst=f"@10.0.0.{i}:7332", cluster="c", term=1, ok=False)]
               for i in range(n)]
    shell.core.replies = replies
    for _ in range(n):
        shell.run([Tick()])
    assert shell.started == [(f"@10.0.0.{i}:7332", f"10.0.0.{i}:7332") for i in range(n)]
    assert shell.stopped == ["@10.0.0.0:7332", "@10.0.0.1:7332"]  # the oldest went first
    assert len([p for p in shell.actor._replicators if p.startswith("@")]) == \
        MAX_ADDR_REPLICATORS


def test_membership_change_stops_replicators_of_moved_or_removed_peers(
        shell: Shell, monkeypatch: pytest.MonkeyPatch) -> None:
    m1, m2 = object(), object()
    shell.core.st = FakeStatus(membership=m1)
    shell.actor.status = shell.core.st
    shell.core.replies = [[ae("n2"), ae("n3")], [], [ae("n2")]]
    shell.run([Tick()])
    monkeypatch.setattr(raft_mod, "REMOVED_LINGER_S", 0.0)
    shell.core.addrs = {"n2": "127.0.0.1:9002"}  # n2 moved, n3 removed
    shell.core.next_status = [FakeStatus(membership=m2)]
    shell.run([Tick()])
    assert sorted(shell.stopped) == ["n2", "n3"] and shell.actor._replicators == {}
    shell.run([Tick()])
    assert shell.started[-1] == ("n2", "127.0.0.1:9002")


def test_a_removed_members_replicator_lingers_for_the_answer_to_its_removal(
        shell: Shell, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 item 1: `DELETE /cluster/nodes/<self>` through the node being removed got 503
    although the removal committed: the configuration takes effect when appended, the
    replicator was stopped at once and the leader's answer at commit had no route."""
    shell.core.st = FakeStatus(membership=object())
    shell.actor.status = shell.core.st
    shell.core.replies = [[ae("n2"), ae("n3")]]
    shell.run([Tick()])
    del shell.core.addrs["n3"]  # n3 removed (appended); its removal commits a step later
    answer = ForwardResponse(src="n1", dst="n3", cluster="c", term=2, rid=9, ok=True)
    shell.core.next_status = [FakeStatus(membership=object())]
    shell.core.replies = [[], [answer]]
    shell.run([Tick()])
    shell.out.take()
    shell.run([Tick()])
    assert shell.out.take() == [("repl:n3", answer)] and shell.stopped == []
    # re-added at the same address while lingering: kept
    shell.core.addrs["n3"] = "127.0.0.1:7003"
    shell.core.next_status = [FakeStatus(membership=object())]
    shell.run([Tick()])
    assert shell.actor._lingering == {}
    # removed again; once the linger ends it is stopped
    del shell.core.addrs["n3"]
    shell.core.next_status = [FakeStatus(membership=object())]
    shell.run([Tick()])
    assert shell.stopped == []
    shell.actor._lingering["n3"] = float("-inf")
    shell.run([Tick()])
    assert shell.stopped == ["n3"] and "n3" not in shell.actor._replicators


# --------------------------------------------------------------------------- inputs
def test_propose_batch_is_expanded_in_order_and_bad_items_dropped(shell: Shell) -> None:
    batch = ProposeBatch(src="api", dst="raft", items=[
        [1, b"a"], [2, b"b"], "junk", [3], [True, b"x"], [4, "text"], [5, b"c", 9],
        [6, b"d"],
    ])
    shell.run([Tick(), batch, ReadIndex(src="api", dst="raft", rid=9)])
    assert shell.core.steps == [[
        Tick(),
        Propose(src="api", dst="raft", rid=1, data=b"a"),
        Propose(src="api", dst="raft", rid=2, data=b"b"),
        Propose(src="api", dst="raft", rid=6, data=b"d"),
        ReadIndex(src="api", dst="raft", rid=9),
    ]]
    assert shell.actor.decoder.dropped == 5


def fwd(dst: str, rid: int, data: bytes = b"cmd") -> ForwardPropose:
    return ForwardPropose(src="n1", dst=dst, cluster="c", term=2, rid=rid, data=data)


def test_forwarded_writes_of_one_step_go_as_one_batch_per_leader(shell: Shell) -> None:
    shell.core.replies = [[fwd("n2", 1), ae("n3"), fwd("n2", 2, b"b"), fwd("n3", 7),
                           fwd("n2", 3, b"c")]]
    shell.run([Tick()])
    sent = [(d, m) for d, m in shell.out.sent]
    assert sent == [
        ("repl:n3", ae("n3")),
        ("repl:n2", ForwardProposeBatch(src="n1", dst="n2", cluster="c", term=2,
                                        items=[[1, b"cmd"], [2, b"b"], [3, b"c"]])),
        ("repl:n3", fwd("n3", 7)),  # a lone forward stays a plain ForwardPropose
    ]


def test_forward_batches_are_split_by_bytes(shell: Shell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_mod, "FORWARD_BATCH_BYTES", 10)
    shell.core.replies = [[fwd("n2", i, b"x" * 4) for i in range(1, 6)]]
    shell.run([Tick()])
    sizes = [len(m.items) if isinstance(m, ForwardProposeBatch) else 1
             for _, m in shell.out.sent]
    assert sizes == [2, 2, 1]
    assert shell.out.sent[-1][1] == fwd("n2", 5, b"x" * 4)


def test_a_forward_batch_reaches_the_core_as_single_forwards(shell: Shell) -> None:
    batch = ForwardProposeBatch(src="n2", dst="n1", cluster="c", term=2,
                                items=[[5, b"a"], ["bad", b"b"], [6], [7, b"c"]])
    shell.run(peer=[encode(batch)])
    assert shell.core.steps == [[
        ForwardPropose(src="n2", dst="n1", cluster="c", term=2, rid=5, data=b"a"),
        ForwardPropose(src="n2", dst="n1", cluster="c", term=2, rid=7, data=b"c")]]
    assert shell.actor._peer_dropped == 2


def test_local_and_peer_messages_share_one_step(shell: Shell) -> None:
    resp = AppendResponse(src="n2", dst="n1", cluster="c", term=2, success=True, index=3)
    shell.run([Propose(src="api", rid=1, data=b"p"), StoreSynced(seq=3)], [encode(resp)])
    assert shell.core.steps == [[Propose(src="api", rid=1, data=b"p"), StoreSynced(seq=3), resp]]


def check_peer_filter(shell: Shell) -> None:
    """Non-peer types on the peer socket are dropped and counted, never stepped."""
    intruders: list[Msg] = [
        Propose(src="x", rid=1, data=b"evil"), Tick(), StoreSynced(seq=99),
        ProposeBatch(items=[[1, b"x"]]), Reply(rid=1, ok=True), Apply(entries=[]),
        Applied(index=5), AddNode(rid=1, node_id="x", addr="h:1"),
        StoreAppend(seq=1, term=9, vote="x", commit=0),
    ]
    shell.run(peer=[encode(m) for m in intruders])
    assert shell.core.steps == [], "a non-peer message reached the core"
    assert shell.actor._peer_dropped == len(intruders)
    assert shell.actor.decoder.dropped == 0


def test_non_peer_types_on_the_peer_socket_are_dropped(shell: Shell) -> None:
    check_peer_filter(shell)
    vote = VoteResponse(src="n2", dst="n1", cluster="c", term=2, granted=True)
    shell.run(peer=[encode(vote), encode(Tick())])
    assert shell.core.steps == [[vote]]
    assert shell.actor._peer_dropped == 10


def test_companion_the_peer_filter_check_can_fail(
        shell: Shell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_mod, "PEER_TYPES", frozenset(REGISTRY))
    with pytest.raises(AssertionError, match="reached the core"):
        check_peer_filter(shell)


def test_every_peer_type_is_accepted_on_the_peer_socket(shell: Shell) -> None:
    accepted = {t for t, cls in REGISTRY.items() if "cluster" in cls.__dataclass_fields__}
    assert accepted == raft_mod.PEER_TYPES
    assert "api.propose" not in accepted and "sys.tick" not in accepted


def test_garbage_peer_frames_are_counted(shell: Shell) -> None:
    good = encode(ae("n1"))
    shell.run(peer=[b"\xff\xfe", b"", good[:-3], good + b"", b"\xa1av\x02"])
    assert shell.actor.decoder.dropped == 4
    assert shell.core.steps == [[ae("n1")]]
    shell.force_stats()
    shell.run([Tick()], peer=[encode(Tick())])  # stats are refreshed when the core steps
    # codec drops + type drops together; another major wire version ({"v": 2}) by itself
    assert shell.actor.stats.peer_dropped == 4
    assert shell.actor.stats.peer_drops == {"wire_version": 1}


def test_peer_wire_versions_are_learned_for_members_only(shell: Shell) -> None:
    """Every frame tells which version its sender speaks; strangers are not recorded."""
    shell.core.st = FakeStatus(membership=Membership(cluster="c", voters={"n1": "a", "n2": "b"},
                                                     learners={"n4": "d"}))
    shell.actor.status = shell.core.st
    newer = cbor2.dumps({**to_map(ae("n0", src="n2")), "m": 3, "x_new": [1]})
    other_major = cbor2.dumps({**to_map(ae("n0", src="n4")), "v": 2, "m": 1})
    shell.run(peer=[encode(ae("n0")), newer, encode(ae("n0", src="n9")), other_major])
    assert shell.core.steps == [[ae("n0"), ae("n0", src="n2"), ae("n0", src="n9")]]
    shell.force_stats()
    shell.run([Tick()])
    assert shell.actor.stats.wire_versions == {"n1": "1.0", "n2": "1.3", "n4": "2.1"}
    assert shell.actor.stats.peer_drops == {"wire_version": 1}


def test_empty_batch_does_not_step_or_republish(shell: Shell) -> None:
    before = shell.actor.status
    shell.core.st = FakeStatus(leader_id="n9")
    shell.actor.on_batch_end()
    shell.run(peer=[b"junk"])
    assert shell.core.steps == [] and shell.actor.status is before


# --------------------------------------------------------------------------- status
def test_status_is_republished_after_each_step(shell: Shell) -> None:
    statuses = [FakeStatus(role=Role.CANDIDATE), FakeStatus(role=Role.LEADER, leader_id="x")]
    shell.core.next_status = list(statuses)
    shell.run([Tick()])
    assert shell.actor.status is statuses[0]
    shell.run([Tick()])
    assert shell.actor.status is statuses[1]


def test_leader_changes_are_counted_and_the_hook_called(shell: Shell) -> None:
    leaders = ["", "n2", "n2", "", "n3", "n3", "n2"]
    shell.core.next_status = [FakeStatus(leader_id=lid) for lid in leaders]
    calls = []
    for _ in leaders:
        shell.run([Tick()])
        calls.append(shell.leader_hook_calls)
    # a change to a known leader counts; losing the leader ("") does not
    assert calls == [0, 1, 1, 1, 2, 2, 3]
    assert shell.actor._leader_changes == 3
    shell.force_stats()
    shell.run([Tick()])
    assert shell.actor.stats.leader_changes == 3


def test_on_start_without_listen_addr_dispatches_startup_outputs(shell: Shell) -> None:
    sa = StoreAppend(src="raft", dst="logstore", seq=1, term=1, vote="n1", commit=0,
                     entries=[[1, 1, 2, b"cfg"]])
    shell.core.startup_out = [sa, ae("n2")]
    shell.core.st = FakeStatus(role=Role.CANDIDATE)
    shell.actor.on_start()
    assert shell.core.startups == 1 and shell.actor._sockets == []  # no peer socket
    # peer messages go out before the local ones (each group in the core's order)
    assert shell.out.sent == [("repl:n2", ae("n2")), ("logstore", sa)]
    assert shell.actor.status.role == Role.CANDIDATE


def test_dispatch_sends_peer_messages_before_local_ones_keeping_each_order(shell: Shell) -> None:
    sa1 = StoreAppend(src="raft", dst="logstore", seq=1, term=1, vote="", commit=0,
                      entries=[[1, 1, 2, b"a"]])
    sa2 = StoreAppend(src="raft", dst="logstore", seq=2, term=1, vote="", commit=0,
                      entries=[[2, 1, 2, b"b"]])
    shell.core.st = FakeStatus(role=Role.LEADER, leader_id="n1")
    shell.actor.on_start()
    shell.out.sent.clear()
    shell.actor._dispatch([sa1, ae("n2"), sa2, ae("n3")])
    assert shell.out.sent == [("repl:n2", ae("n2")), ("repl:n3", ae("n3")),
                              ("logstore", sa1), ("logstore", sa2)]


def test_leader_lag_and_replicator_stats(shell: Shell) -> None:
    progress = {"n2": SimpleNamespace(match=1), "n3": SimpleNamespace(match=3)}
    leader = FakeStatus(role=Role.LEADER, leader_id="n1", progress=progress)
    shell.core.st = leader
    shell.actor.status = leader
    shell.core.replies = [[
        StoreAppend(src="raft", dst="logstore", seq=1, term=2, vote="n1", commit=0,
                    entries=[[2, 2, 0, b"a"], [3, 2, 0, b"b"]]),
        ae("n2"), ae("n3"),
    ]]
    shell.force_stats()
    shell.run([Tick()])
    stats = shell.actor.stats
    assert set(stats.lag_seconds) == {"n2", "n3"}
    assert stats.lag_seconds["n3"] == 0.0 and stats.lag_seconds["n2"] >= 0.0
    assert stats.replicators == {"n2": (1, 0), "n3": (2, 0)}
    # a follower keeps no lag
    shell.core.next_status = [FakeStatus(role=Role.FOLLOWER, leader_id="n2")]
    shell.force_stats()
    shell.run([Tick()])
    assert shell.actor.stats.lag_seconds == {} and not shell.actor._appended


def test_a_new_leader_publishes_peer_lags_in_the_turn_it_is_elected(shell: Shell) -> None:
    """The stats throttle (0.1 s) must not hide a role change: a scrape right after an
    election saw a leader listing peers without raft_replication_lag_seconds (CI)."""
    shell.force_stats()
    shell.run([Tick()])  # a follower's stats, refreshed just now: inside the throttle
    assert shell.actor.stats.lag_seconds == {}
    progress = {"n2": SimpleNamespace(match=0), "n3": SimpleNamespace(match=0)}
    shell.core.next_status = [FakeStatus(role=Role.LEADER, leader_id="n1", progress=progress)]
    shell.actor._last_stats = time.monotonic() + 3600  # the throttle alone would skip
    shell.run([Tick()])
    assert set(shell.actor.stats.lag_seconds) == {"n2", "n3"}


# --------------------------------------------------------------------------- bugs
@pytest.mark.parametrize("dst,addr", [("@not-an-address", None), ("evil", "bogus")])
def test_an_unparsable_peer_address_does_not_stop_the_node(dst: str, addr: str | None) -> None:
    ctx = zmq.Context()
    failures: list[tuple[str, BaseException]] = []
    s = Shell(ctx, real_replicators=True,
              on_failure=lambda a, e: failures.append((a.actor_name, e)))
    try:
        if addr is not None:
            s.core.addrs[dst] = addr
        s.core.replies = [[JoinResponse(src="n1", dst=dst, cluster="c", term=1, ok=False)]]
        s.run([Tick()])
        for r in s.actor._replicators.values():
            r.join(5)  # a replicator that failed has ended; a healthy one is still running
        failed = [(name, repr(e)) for name, e in failures]
    finally:
        s.actor.on_stop()
        # connect_peer leaks its socket when the address is refused and the exception's
        # traceback keeps it alive (see test_mailbox): close leftovers or ctx.term() blocks
        for sock in list(ctx._sockets):
            if not sock.closed:
                sock.close(0)
        ctx.term()
    assert failed == []


@pytest.mark.parametrize("node_id,addr", [
    ("evil", "bogus"), ("evil", ":7332"), ("evil", "h:70000"), ("", "h:7332"),
    ("a/b", "h:7332"), ("x" * 129, "h:7332"), ("evil", "::1:7332"),
])
def test_join_requests_with_a_bad_id_or_address_never_reach_the_core(
        shell: Shell, node_id: str, addr: str) -> None:
    """The joiner's id and address would enter the replicated membership: refuse them at
    the shell, before the core persists them in a CONFIG entry."""
    from prisn.messages import JoinRequest

    good = JoinRequest(src="j", dst="n1", cluster="", term=0, node_id="j", addr="h:7332")
    bad = JoinRequest(src="j", dst="n1", cluster="", term=0, node_id=node_id, addr=addr)
    shell.run(peer=[encode(bad), encode(good)])
    assert shell.core.steps == [[good]]
    assert shell.actor._peer_dropped == 1


def test_a_fatal_core_fails_the_actor(shell: Shell) -> None:
    """An unusable log store makes the core fatal: the shell raises so the node exits 1."""
    shell.core.next_status = [FakeStatus(fatal="log store unusable: StorageCorrupt: gap")]
    with pytest.raises(RuntimeError, match="StorageCorrupt"):
        shell.run([Tick()])


def test_a_broken_disk_does_not_stop_the_actor(shell: Shell) -> None:
    """A full disk is not fatal: the status says so and the actor keeps running."""
    shell.core.next_status = [FakeStatus(disk_error="no space left on device"), FakeStatus()]
    shell.run([Tick()])
    assert shell.actor.status.disk_error == "no space left on device"
    shell.run([Tick()])
    assert shell.actor.status.disk_error == "" and shell.actor.failure is None


# --------------------------------------------------------------------------- replicators never stop raft
def test_a_full_replicator_inbox_costs_that_peer_its_messages_never_the_node(
        shell: Shell, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12 item 1: a stalled replicator (inbox full) drops that peer's messages, counted
    and logged once (rate-limited); the other peer and the local actors are served."""
    shell.run([Tick()])  # nothing routed yet
    shell.out.full.add("repl:n2")
    sa = StoreAppend(src="raft", dst="logstore", seq=1, term=2, vote="", commit=0,
                     entries=[], truncate_from=0)
    shell.core.replies = [[ae("n2"), ae("n3"), fwd("n2", 5), sa], [ae("n2"), ae("n2")]]
    with caplog.at_level("WARNING", logger="prisn.raft"):
        shell.run([Tick()])
        shell.run([Tick()])
    assert shell.out.sent == [("repl:n3", ae("n3")), ("logstore", sa)]
    shell.force_stats()
    shell.run([Tick()])
    assert shell.actor.stats.repl_full == 4
    assert shell.actor.stats.replicators["n2"][1] == 4 and shell.actor.stats.replicators["n3"][1] == 0
    warned = [r for r in caplog.records if "not keeping up" in r.getMessage()]
    assert len(warned) == 1 and "n2" in warned[0].getMessage()


def test_a_full_snapshot_control_inbox_drops_the_chunk_request(shell: Shell) -> None:
    shell.out.full.add("repl:n2/ctl")
    req = SnapSend(src="raft", dst="n2", path="/nonexistent", offset=0, length=1, snap_id="0" * 64,
                   cid="c", term=2, index=5, snap_term=2, size=1)
    shell.core.replies = [[req, ae("n2")]]
    shell.run([Tick()])
    assert shell.out.sent == [("repl:n2", ae("n2"))] and shell.actor._repl_full == 1


def test_stopping_a_replicator_closes_its_sockets_and_never_joins_it(shell: Shell) -> None:
    """The raft thread never waits for a stopping replicator; its cached PUSH sockets are
    closed (a later bind of that name would never be reached through them)."""
    shell.core.replies = [[ae("n2")]]
    shell.run([Tick()])
    old = shell.actor._replicators["n2"]
    joined: list[str] = []
    old.join = lambda timeout=None: joined.append("n2")  # type: ignore[method-assign]
    shell.core.addrs["n2"] = "127.0.0.1:9999"  # moved: stopped at once
    shell.core.next_status = [FakeStatus(membership=object())]
    shell.run([Tick()])
    assert shell.stopped == ["n2"] and "n2" not in shell.actor._replicators
    assert shell.out.forgotten == ["repl:n2", "repl:n2/ctl"]
    assert shell.actor._retired == [old] and joined == []  # only on_stop joins it


def test_a_replicator_recreated_for_the_same_peer_gets_its_messages(ctx: zmq.Context) -> None:
    """Issue 12 item 1, the root cause: remove a member, then add it back under the same id.
    The old replicator's inproc inbox is gone; the new one must receive the next messages at
    once (before: the raft actor's cached PUSH to the dead name stayed full and the raft actor
    failed with MailboxFull, stopping the node)."""
    failures: list[BaseException] = []
    s = Shell(ctx, real_replicators=True, on_failure=lambda a, e: failures.append(e))
    outbox = Outbox(ctx, s.actor.node_id, send_timeout_ms=300)
    s.actor.outbox = outbox
    try:
        s.core.addrs["n2"] = "127.0.0.1:1"  # nothing listens: the replicator drops and counts
        s.core.replies = [[ae("n2")]]
        s.run([Tick()])
        first = s.actor._replicators["n2"]
        wait_for(lambda: first.sent + first.dropped >= 1, 10, "the first replicator got it")
        # removed: its replicator stops; the raft thread does not wait for it
        del s.core.addrs["n2"]
        s.core.next_status = [FakeStatus(membership=object())]
        s.run([Tick()])
        s.actor._lingering["n2"] = float("-inf")  # its linger ends
        s.run([Tick()])
        assert "n2" not in s.actor._replicators
        first.join(10)
        assert not first.is_alive()
        # re-added under the same id (and address): a new replicator takes the messages
        s.core.addrs["n2"] = "127.0.0.1:1"
        s.core.replies = [[ae("n2"), ae("n2")]]
        s.run([Tick()])
        second = s.actor._replicators["n2"]
        assert second is not first and second.actor_name != first.actor_name
        wait_for(lambda: second.sent + second.dropped >= 2, 10, "the new replicator got them")
        assert s.actor._repl_full == 0 and failures == []
    finally:
        s.actor.on_stop()
        outbox.close()


def test_replicator_full_drops_are_exported_as_a_peer_drop_reason() -> None:
    from actors.metrics import PeerDropsCollector
    from actors.raft import ShellStats
    fam = next(iter(PeerDropsCollector(lambda: ShellStats(repl_full=3), lambda: None).collect()))
    values = {s.labels["reason"]: s.value for s in fam.samples if s.name.endswith("_total")}
    assert values["replicator_full"] == 3
