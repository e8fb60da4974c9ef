"""Replication and commit: §5.3 log matching, §5.4.2 commit rule (Figure 8), fast
backtracking, pipelining/coalescing, T 10.2.1 leader self-durability, heartbeat commit."""

from __future__ import annotations

import random

import pytest

from prisn.messages import (
    AppendEntries,
    AppendResponse,
    EntryKind,
    Propose,
    StoreAppend,
    StoreSynced,
)
from prisn.raft.boot import BootState, Membership
from prisn.raft.core import RaftCore, RaftOptions, encode_config
from prisn.raft.progress import quorum_index
from tests.raftsim.manual import OPTS, Cluster, win

MEM5 = Membership(cluster="c1", voters={f"s{i}": f"S{i}" for i in range(1, 6)})
CONF5 = [1, 1, int(EntryKind.CONFIG), encode_config(MEM5)]


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
        from tests.raftsim.manual import Node
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


# ------------------------------------------------------------------ malformed AppendEntries
def _follower_s3(commit: int = 1) -> RaftCore:
    """s3 following in term 2 with the configuration entry committed."""
    core = RaftCore("s3", "S3", OPTS, random.Random(5),
                    BootState(term=2, commit=commit, entries=[CONF5]))
    core.startup()
    return core


_GOOD = [2, 2, int(EntryKind.NOOP), b""]
_BAD_APPENDS = {
    "empty config data": [_GOOD, [3, 2, int(EntryKind.CONFIG), b""]],
    "config is a list": [_GOOD, [3, 2, int(EntryKind.CONFIG), b"\x82\x01\x02"]],
    "config without voters": [[2, 2, int(EntryKind.CONFIG),
                               encode_config(Membership(cluster="c1"))]],
    "short entry": [[2, 2, int(EntryKind.NOOP)]],
    "entry not a list": [{"i": 2}],
    "gap in indexes": [_GOOD, [4, 2, int(EntryKind.NOOP), b""]],
    "index repeated": [_GOOD, _GOOD],
    "term above the message": [[2, 9, int(EntryKind.NOOP), b""]],
    "term decreasing": [[2, 2, 0, b"x"], [3, 1, 0, b"y"]],
    "term below prev_term": [[2, 0, 0, b"x"]],
    "unknown kind": [[2, 2, 7, b""]],
    "bool kind": [[2, 2, True, b""]],
    "float index": [[2.0, 2, 0, b""]],
    "data not bytes": [[2, 2, 0, "text"]],
}


@pytest.mark.parametrize("case", sorted(_BAD_APPENDS))
def test_malformed_append_is_dropped_whole_counted_and_not_acked(case: str) -> None:
    """A malformed AppendEntries (any entry) changes nothing: no entry appended (not even the
    well-formed ones before the bad one), no ack, no term change; counted as bad_append."""
    core = _follower_s3()
    before = (core.log.entries(), core.commit_index, core.status().membership)
    out = core.step([AppendEntries(src="s1", dst="s3", cluster="c1", term=3, prev_index=1,
                                   prev_term=1, entries=_BAD_APPENDS[case], commit=3)])
    assert not out, out
    st = core.status()
    assert (core.log.entries(), core.commit_index, st.membership) == before
    assert st.term == 2 and st.leader_id == "" and st.drops == {"bad_append": 1}
    # the next well-formed message from that leader is accepted as usual
    out = core.step([AppendEntries(src="s1", dst="s3", cluster="c1", term=3, prev_index=1,
                                   prev_term=1, entries=[[2, 3, 0, b"ok"]], commit=1)])
    assert [m.entries for m in out if isinstance(m, StoreAppend)] == [[[2, 3, 0, b"ok"]]]


def test_malformed_append_header_is_dropped() -> None:
    core = _follower_s3()
    for prev_index, prev_term, commit in [(-1, 0, 0), (1, 4, 0), (1, 1, -5)]:
        out = core.step([AppendEntries(src="s1", dst="s3", cluster="c1", term=3,
                                       prev_index=prev_index, prev_term=prev_term,
                                       entries=[], commit=commit)])
        assert not out
    assert core.status().drops == {"bad_append": 3} and core.term == 2


def test_malformed_append_is_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    core = _follower_s3()
    bad = AppendEntries(src="s1", dst="s3", cluster="c1", term=3, prev_index=1, prev_term=1,
                        entries=[[2, 3, int(EntryKind.CONFIG), b""]], commit=0)
    with caplog.at_level("WARNING", logger="prisn.raft"):
        for _ in range(5):
            core.step([bad])
    lines = [r for r in caplog.records if "malformed raft.append" in r.getMessage()]
    assert len(lines) == 1 and "invalid configuration" in lines[0].getMessage()
    assert core.status().drops["bad_append"] == 5


MEM3 = Membership(cluster="c1", voters={"a": "A", "b": "B", "c": "C"})


def _replicating_leader() -> RaftCore:
    """`a` leads; `b` matched the NOOP (21) and has two pipelined appends in flight."""
    conf = [1, 1, int(EntryKind.CONFIG), encode_config(MEM3)]
    core = RaftCore("a", "A", OPTS, random.Random(1),
                    BootState(term=1, commit=20, entries=[conf] + [
                        [i, 1, int(EntryKind.NOOP), b""] for i in range(2, 21)]))
    core.startup()
    win(core, ["b", "c"])
    ack(core, "b", 21)
    for rid in (1, 2):
        core.step([Propose(rid=rid, data=b"p%d" % rid)])
    pr = core._progress["b"]
    assert (pr.state.value, pr.match, pr.next) == ("replicate", 21, 24)
    return core


def _reject(core: RaftCore, rejected: int, index: int = 21, hint_term: int = 2) -> list:
    return core.step([AppendResponse(src="b", dst="a", cluster="c1", term=core.term,
                                     success=False, index=index, hint_term=hint_term,
                                     rejected=rejected)])


@pytest.mark.parametrize("rejected,state,stale", [
    (10, "replicate", True),  # answers an append from before the match point: stale
    (20, "replicate", True),  # a reordered answer to the first probe (prev 20)
    (21, "probe", False),  # a heartbeat at match refused: news (it may need a snapshot)
    (22, "probe", False),  # a pipelined append really rejected: back to probe
    (0, "probe", False),  # a peer that does not say (older version): as before
])
def test_stale_reject_does_not_throw_a_pipelining_follower_back(
        rejected: int, state: str, stale: bool) -> None:
    """Issue 12 item 9 (etcd's MaybeDecrTo): rejects are filtered by the index they answer."""
    core = _replicating_leader()
    _reject(core, rejected)
    pr = core._progress["b"]
    assert pr.state.value == state
    assert core.status().drops.get("stale_reject", 0) == (1 if stale else 0)
    if not stale:
        assert pr.next == 22 and pr.match == 21


@pytest.mark.parametrize("rejected,next_index,stale", [
    (20, 11, True),  # a late answer to the first probe (prev 20): ignored, probe resent
    (10, 4, False),  # the answer to the probe in flight (prev 10): backtrack to the hint
])
def test_probe_moves_only_on_the_answer_to_its_probe(
        rejected: int, next_index: int, stale: bool) -> None:
    """In probe only a reject of the probe in flight (prev = next - 1) moves `next`."""
    conf = [1, 1, int(EntryKind.CONFIG), encode_config(MEM3)]
    core = RaftCore("a", "A", OPTS, random.Random(1),
                    BootState(term=1, commit=20, entries=[conf] + [
                        [i, 1, int(EntryKind.NOOP), b""] for i in range(2, 21)]))
    core.startup()
    win(core, ["b", "c"])
    pr = core._progress["b"]
    _reject(core, 20, index=10, hint_term=1)  # the first probe (prev 20): b has 10
    assert (pr.state.value, pr.next, pr.probe_sent) == ("probe", 11, True)
    _reject(core, rejected, index=3, hint_term=1)
    assert pr.state.value == "probe" and pr.next == next_index
    assert core.status().drops.get("stale_reject", 0) == (1 if stale else 0)
    assert pr.probe_sent  # resent at once (stale) or the new probe sent


def test_ack_held_for_a_truncated_tail_is_never_released() -> None:
    """Persist before speak across a truncation: a follower holds its ack for a term-3
    append (17..30) until that write syncs; a term-4 append then truncates at 17 before
    the sync. When both writes sync, the ack for 30 must not leave (the node holds 17..19
    of term 4 only): a term-3 leader counting it could commit entries the node dropped."""
    boot = BootState(term=2, commit=15, entries=[[i, 2, int(EntryKind.NOOP), b""]
                                                   for i in range(1, 17)])
    core = RaftCore("n4", "A4", OPTS, random.Random(4), boot)
    core.startup()
    out = core.step([AppendEntries(src="n5", dst="n4", cluster="c1", term=3, prev_index=16,
                                   prev_term=2, commit=15,
                                   entries=[[i, 3, int(EntryKind.NOOP), b""]
                                            for i in range(17, 31)])])
    first = [m.seq for m in out if isinstance(m, StoreAppend)]
    assert first and not [m for m in out if isinstance(m, AppendResponse) and m.success]
    out = core.step([AppendEntries(src="n1", dst="n4", cluster="c1", term=4, prev_index=16,
                                   prev_term=2, commit=15,
                                   entries=[[i, 4, int(EntryKind.NOOP), b""]
                                            for i in range(17, 20)])])
    second = [m for m in out if isinstance(m, StoreAppend)]
    assert second and second[-1].truncate_from == 17
    out = core.step([StoreSynced(seq=first[-1]), StoreSynced(seq=second[-1].seq)])
    acks = [(m.dst, m.index) for m in out if isinstance(m, AppendResponse) and m.success]
    assert acks == [("n1", 19)]
    assert core.status().drops.get("superseded_ack") == 1
