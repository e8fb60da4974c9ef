"""Replication and commit: §5.3 log matching, §5.4.2 commit rule (Figure 8), fast
backtracking, pipelining/coalescing, T 10.2.1 leader self-durability, heartbeat commit."""

from __future__ import annotations

import random

from prisn.messages import (
    AppendEntries,
    AppendResponse,
    EntryKind,
    Propose,
    StoreAppend,
    StoreSynced,
    Tick,
    VoteResponse,
)
from prisn.raft.boot import BootState, Membership
from prisn.raft.core import RaftCore, RaftOptions, encode_config
from prisn.raft.progress import quorum_index
from tests.sim.manual import OPTS, Cluster

MEM5 = Membership(cluster="c1", voters={f"s{i}": f"S{i}" for i in range(1, 6)})
CONF5 = [1, 1, int(EntryKind.CONFIG), encode_config(MEM5)]


def win(core: RaftCore, others: list[str]) -> None:
    """Drive `core` through pre-vote and vote to leadership with grants from `others`."""
    for _ in range(40):
        core.step([Tick()])
        if core.status().pre_candidate:
            break
    term = core.term + 1
    out = core.step([VoteResponse(src=o, dst=core.id, cluster="c1", term=term, granted=True,
                                  pre=True) for o in others])
    seqs = [m.seq for m in out if isinstance(m, StoreAppend)]
    core.step([StoreSynced(seq=seqs[-1])])
    out = core.step([VoteResponse(src=o, dst=core.id, cluster="c1", term=term, granted=True)
                     for o in others])
    assert core.is_leader
    seqs = [m.seq for m in out if isinstance(m, StoreAppend)]
    core.step([StoreSynced(seq=seqs[-1])])  # the NOOP is durable on the leader


def ack(core: RaftCore, src: str, index: int) -> list:
    return core.step([AppendResponse(src=src, dst=core.id, cluster="c1", term=core.term,
                                     success=True, index=index)])


class NoTermCheck(RaftCore):
    """A deliberately broken leader: commits by counting replicas of any term."""

    def _leader_commit(self) -> None:
        ms = [self._stable if v == self.id else self._progress[v].match for v in self._voters]
        idx = quorum_index(ms, len(self._voters))
        if idx > self._commit:
            self._commit = idx


def figure8_leader(cls=RaftCore) -> RaftCore:
    """S1 of Figure 8 (c): term-2 entry at index 2 uncommitted, re-elected in term 4."""
    boot = BootState(term=3, vote="", commit=1, entries=[CONF5, [2, 2, 0, b"from-term-2"]])
    core = cls("s1", "S1", OPTS, random.Random(3), boot)
    core.startup()
    win(core, ["s2", "s3"])
    assert core.term == 4
    return core


def test_figure8_old_term_entry_not_committed_by_counting():
    """§5.4.2 / Figure 8: a majority storing an entry of an earlier term does not commit it;
    it commits only together with an entry of the current term."""
    core = figure8_leader()
    assert core.log.term_at(3) == 4  # the NOOP of term 4
    ack(core, "s2", 2)
    ack(core, "s3", 2)  # s1, s2, s3 hold (2, term 2): a majority
    assert core.commit_index == 1
    ack(core, "s2", 3)
    ack(core, "s3", 3)
    assert core.commit_index == 3  # the term-4 NOOP commits, and index 2 with it


def test_figure8_check_can_fail():
    """The test above would catch a leader that skips the §5.4.2 term check."""
    core = figure8_leader(NoTermCheck)
    ack(core, "s2", 2)
    ack(core, "s3", 2)
    assert core.commit_index == 2  # the unsafe commit the real core refuses


def test_leader_counts_itself_only_when_synced():
    """T 10.2.1: the leader sends entries before its own write is durable, but counts itself
    in the commit quorum only up to its synced index."""
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    c.step("a", [Propose(rid=1, data=b"x")])
    idx = c.nodes["a"].core.log.last_index
    assert any(isinstance(m, AppendEntries) and m.entries for m in c.queue)
    c.deliver(lambda m: m.dst == "b")
    c.sync("b")
    c.deliver(lambda m: m.dst == "a" and m.src == "b")
    assert c.nodes["a"].core.commit_index < idx  # only b has it durably
    c.sync("a")
    assert c.nodes["a"].core.commit_index == idx


def test_follower_ack_held_until_synced():
    """Persist before speak: a successful AppendResponse leaves after the follower's sync."""
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    c.step("a", [Propose(rid=1, data=b"x")])
    c.deliver(lambda m: m.dst == "b" and isinstance(m, AppendEntries))
    assert not [m for m in c.queue if isinstance(m, AppendResponse) and m.src == "b"]
    c.sync("b")
    acks = [m for m in c.queue if isinstance(m, AppendResponse) and m.src == "b"]
    assert acks and acks[-1].success


def test_coalescing_one_write_few_messages():
    """One step with many proposals: one StoreAppend; per peer AppendEntries capped by
    max_append_entries and pipelined (replicate state)."""
    opts = RaftOptions(heartbeat_ticks=2, election_ticks=10, max_append_entries=40)
    c = Cluster(["a", "b", "c"], opts=opts)
    c.settle()
    c.elect("a")
    c.tick("a", 2)
    c.settle()
    c.queue.clear()
    out = c.step("a", [Propose(rid=i, data=b"p%d" % i) for i in range(100)])
    assert len([m for m in out if isinstance(m, StoreAppend)]) == 1
    for peer in ("b", "c"):
        msgs = [m for m in out if isinstance(m, AppendEntries) and m.dst == peer]
        assert [len(m.entries) for m in msgs] == [40, 40, 20]
    c.settle()
    assert c.nodes["b"].core.log.last_index == c.nodes["a"].core.log.last_index


def test_fast_backtracking_uses_hint():
    """§5.3 optimisation: with the follower's (index, hint_term), the leader skips a whole
    conflicting term per round trip instead of one entry."""
    mem = Membership(cluster="c1", voters={"a": "A", "b": "B", "c": "C"})
    conf = [1, 1, int(EntryKind.CONFIG), encode_config(mem)]
    lead_log = [conf] + [[i, 3, 0, b"L"] for i in range(2, 30)]
    stale = [conf] + [[i, 2, 0, b"S"] for i in range(2, 80)]
    c = Cluster([], opts=OPTS)
    c.addrs.update({"a": "A", "b": "B", "c": "C"})
    for nid, ents, term in (("a", lead_log, 3), ("b", lead_log, 3), ("c", stale, 2)):
        core = RaftCore(nid, c.addrs[nid], OPTS, random.Random(nid),
                        BootState(term=term, commit=1, entries=ents))
        from tests.sim.manual import Node
        c.nodes[nid] = Node(nid, core)
        c.nodes[nid].disk.entries = list(ents)
        c.route(c.nodes[nid], core.startup())
    c.elect("a")
    c.tick("a", 2)
    c.settle()
    rejects = [m for m in c.nodes["c"].sent if isinstance(m, AppendResponse) and not m.success]
    assert len(rejects) <= 2
    assert c.nodes["c"].core.log.entries() == c.nodes["a"].core.log.entries()


def test_heartbeat_commit_capped_at_match():
    """Heartbeats carry commit = min(leader commit, peer match) and a fresh seq."""
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    c.step("a", [Propose(rid=1, data=b"x")])
    c.deliver(lambda m: m.dst == "b")
    c.drop(lambda m: m.dst == "c")
    c.settle(pred=lambda m: m.dst != "c" and m.src != "c")
    lead = c.nodes["a"].core
    assert lead.commit_index == lead.log.last_index
    c.queue.clear()
    c.tick("a", OPTS.heartbeat_ticks)
    hb = {m.dst: m for m in c.queue if isinstance(m, AppendEntries) and not m.entries}
    match_c = lead.status().progress["c"].match
    assert hb["c"].commit == min(lead.commit_index, match_c) < lead.commit_index
    assert hb["b"].commit == lead.commit_index and hb["b"].seq > 0


def test_restart_loses_unsynced_and_rejoins():
    """A follower crash loses unsynced entries (never acked); the leader re-sends them."""
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    c.step("a", [Propose(rid=1, data=b"x")])
    c.deliver(lambda m: m.dst == "b")
    c.restart("b")  # b's write never synced
    for _ in range(2 * OPTS.election_ticks // OPTS.heartbeat_ticks):  # stall detection
        c.tick("a", OPTS.heartbeat_ticks)
        c.settle()
    assert c.nodes["b"].core.log.entries() == c.nodes["a"].core.log.entries()
