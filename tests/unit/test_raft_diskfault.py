"""Disk faults in the Raft core: `StoreFailed` (a log write failed: its outcome is unknown),
`StoreRecovered` (the logstore can write again), `StoreFatal` is in test_raft_single.

Invariants checked here (see the module doc of prisn/raft/unstable.py):
- a leader whose write fails steps down at once and never counts the failed write;
- while the disk is broken: no StoreAppend, no vote granted, no append acknowledged, no
  campaign, proposals answered 507 with the reason;
- the recovery sends StoreResume, then ONE StoreAppend that truncates after the durable
  prefix and rewrites everything after it with the current hard state; the node then
  catches up and acknowledges again.
"""

from __future__ import annotations

import random

from prisn.messages import (
    AppendEntries,
    AppendResponse,
    ForwardReadIndex,
    Msg,
    Propose,
    ReadIndex,
    Reply,
    Role,
    StoreAppend,
    StoreFailed,
    StoreRecovered,
    StoreResume,
    StoreSynced,
    Tick,
    TimeoutNow,
    TransferLeadership,
    VoteRequest,
    VoteResponse,
)
from prisn.outcomes import Outcome
from prisn.raft.boot import BootState
from prisn.raft.core import DISK_ERROR, RaftCore
from tests.raftsim.manual import OPTS, Cluster
from tests.raftsim.sim import Disk

NO_SPACE = "no space left on device"


def of(out: list[Msg], cls: type) -> list:
    return [m for m in out if isinstance(m, cls)]


def fail(c: Cluster, nid: str, land: bool = False) -> list[Msg]:
    """`nid`'s logstore fails its pending writes (landing them first when `land`)."""
    n = c.nodes[nid]
    seq = n.unsynced[-1].seq if n.unsynced else 0
    if land:
        for sa in n.unsynced:
            n.disk.write(sa)
    n.unsynced = []
    return c.step(nid, [StoreFailed(seq=seq, reason=NO_SPACE)])


def recover(c: Cluster, nid: str) -> list[Msg]:
    return c.step(nid, [StoreRecovered(reason=NO_SPACE)])


def assert_resume(out: list[Msg], core: RaftCore, durable: int) -> StoreAppend:
    """StoreResume first, then one StoreAppend: truncate after `durable`, rewrite the rest."""
    kinds = [type(m) for m in out if isinstance(m, StoreResume | StoreAppend)]
    assert kinds == [StoreResume, StoreAppend], kinds
    (resume,) = of(out, StoreResume)
    (sa,) = of(out, StoreAppend)
    assert resume.seq == sa.seq
    assert sa.truncate_from == durable + 1
    assert [e[:2] for e in sa.entries] == [e[:2] for e in core.log.entries()
                                          if e[0] > durable]
    assert (sa.term, sa.vote) == (core.term, core.status().vote)
    return sa


def three() -> Cluster:
    c = Cluster(["n1", "n2", "n3"])
    c.elect("n1")
    c.settle()
    return c


# --------------------------------------------------------------------------- leader
def test_leader_write_failure_steps_down_without_counting_itself():
    c = three()
    n1 = c.nodes["n1"].core
    commit = n1.commit_index
    c.step("n1", [Propose(rid=1, data=b"w1")])
    idx = n1.log.last_index
    # only n2 gets and acks the entry: a commit now needs n1's own durable copy
    c.deliver(lambda m: m.dst == "n2")
    c.sync("n2")
    c.deliver(lambda m: isinstance(m, AppendResponse) and m.dst == "n1")
    assert n1.commit_index == commit  # n1's write is not synced: not counted
    out = fail(c, "n1")
    st = n1.status()
    assert st.role == Role.FOLLOWER and not n1.is_leader and st.disk_error == NO_SPACE
    assert n1.commit_index == commit and st.stable_index < idx
    assert not of(out, StoreAppend)
    # n2 holds everything n1 has: it is told to take over at once
    assert [m.dst for m in of(out, TimeoutNow)] == ["n2"]
    # a late ack changes nothing: n1 no longer leads
    c.step("n1", [AppendResponse(src="n3", dst="n1", cluster=st.cluster_id, term=st.term,
                                 success=True, index=idx)])
    assert n1.commit_index == commit


def test_broken_node_refuses_proposals_with_507_and_does_not_campaign():
    c = three()
    n1 = c.nodes["n1"].core
    c.step("n1", [Propose(rid=1, data=b"w1")])
    fail(c, "n1")
    c.queue.clear()
    out = c.step("n1", [Propose(rid=2, data=b"w2")])
    (r,) = of(out, Reply)
    assert (r.rid, r.ok, r.code) == (2, False, 507)
    assert r.reason.startswith(f"{DISK_ERROR}: {NO_SPACE};"), r.reason
    for _ in range(6 * OPTS.election_ticks):
        out = c.step("n1", [Tick()])
        assert not of(out, VoteRequest) and not of(out, StoreAppend)
    assert n1.status().role == Role.FOLLOWER and not n1.status().pre_candidate
    # a transfer to itself is refused too (it could not persist its vote)
    (r,) = of(c.step("n1", [TransferLeadership(rid=3, target="n1")]), Reply)
    assert (r.ok, r.code) == (False, 507)


def test_new_leader_elected_while_old_one_is_broken_then_old_one_catches_up():
    c = three()
    n1 = c.nodes["n1"].core
    c.step("n1", [Propose(rid=1, data=b"w1")])
    c.deliver()  # the followers get w1 and persist it; n1's own write is still pending
    c.sync("n2")
    c.sync("n3")
    c.deliver()
    fail(c, "n1", land=True)  # the failed write did reach the disk (unknown outcome)
    c.deliver(lambda m: isinstance(m, TimeoutNow))  # n1 hands over to an up-to-date voter
    c.settle()
    n2 = c.nodes["n2"].core
    lid = c.leader()  # whichever voter n1 picked
    n2 = c.nodes[lid].core
    assert lid != "n1" and n2.term == n1.term
    for rid in range(10, 15):
        c.step(lid, [Propose(rid=rid, data=f"x{rid}".encode())])
    sent_by_n1 = len(c.nodes["n1"].sent)
    c.settle()
    assert n2.commit_index == n2.log.last_index  # n2 + n3 commit without n1
    new = c.nodes["n1"].sent[sent_by_n1:]
    assert not [m for m in new if isinstance(m, AppendResponse) and m.success]
    assert not c.nodes["n1"].unsynced  # nothing was persisted meanwhile
    assert n1.status().leader_id == lid  # it stays in the cluster, following the leader
    assert n1.status().applied_index < n2.commit_index  # but applies only what is durable
    out = recover(c, "n1")
    assert_resume(out, n1, n1.status().stable_index)
    c.sync("n1")
    for _ in range(OPTS.heartbeat_ticks):
        c.tick(lid)
    c.settle()
    assert n1.status().disk_error == ""
    assert n2.status().progress["n1"].match == n2.log.last_index  # n1 acks again
    assert n1.status().applied_index == n2.status().applied_index == n2.commit_index
    assert [e[:2] for e in c.nodes["n1"].disk.entries] == [e[:2] for e in n2.log.entries()]


# --------------------------------------------------------------------------- follower
def test_follower_with_broken_disk_neither_acks_nor_grants():
    c = three()
    n1, n2 = c.nodes["n1"].core, c.nodes["n2"].core
    fail(c, "n2")
    c.step("n1", [Propose(rid=1, data=b"w1")])
    before = len(c.nodes["n2"].sent)
    c.settle()
    assert n1.commit_index == n1.log.last_index  # n1 + n3 are a quorum
    new = c.nodes["n2"].sent[before:]
    assert not [m for m in new if isinstance(m, AppendResponse) and m.success], new
    assert not c.nodes["n2"].unsynced
    # not even a heartbeat about entries it holds durably is answered: the leader would
    # resend what follows forever, and the brief is simple: no acks until it can write
    st = n1.status()
    hb = AppendEntries(src="n1", dst="n2", cluster=st.cluster_id, term=st.term,
                       prev_index=n2.status().stable_index,
                       prev_term=n2.log.term_at(n2.status().stable_index) or 0, entries=[],
                       commit=n2.status().stable_index, seq=5)
    assert not of(c.step("n2", [hb]), AppendResponse)
    # writes sent to it are refused; reads are still forwarded to the leader
    (r,) = of(c.step("n2", [Propose(rid=7, data=b"w7")]), Reply)
    assert (r.ok, r.code) == (False, 507) and NO_SPACE in r.reason
    assert of(c.step("n2", [ReadIndex(rid=8)]), ForwardReadIndex)
    # a vote (even for a transfer, which ignores leader stickiness) is not granted
    st = n2.status()
    out = c.step("n2", [VoteRequest(src="n3", dst="n2", cluster=st.cluster_id,
                                    term=st.term + 1, last_index=n1.log.last_index,
                                    last_term=n1.log.last_term, transfer=True)])
    (v,) = of(out, VoteResponse)
    assert not v.granted and not of(out, StoreAppend)


def test_held_acks_of_a_failed_write_are_never_sent():
    c = three()
    st = c.nodes["n1"].core.status()
    n2 = c.nodes["n2"].core
    last = n2.log.last_index
    ae = AppendEntries(src="n1", dst="n2", cluster=st.cluster_id, term=st.term,
                       prev_index=last, prev_term=n2.log.last_term,
                       entries=[[last + 1, st.term, 0, b"e"]], commit=st.commit_index, seq=0)
    out = c.step("n2", [ae])
    assert of(out, StoreAppend) and not of(out, AppendResponse)  # held for the sync
    out = fail(c, "n2") + recover(c, "n2")
    (sa,) = of(out, StoreAppend)
    assert sa.truncate_from == last + 1 and [e[0] for e in sa.entries] == [last + 1]
    out = c.step("n2", [StoreSynced(seq=sa.seq)])
    assert not of(out, AppendResponse)  # the ack of the void epoch is gone for good
    out = c.step("n2", [ae])  # the leader resends: now it is acknowledged
    (resp,) = of(out, AppendResponse)
    assert resp.success and resp.index == last + 1


def test_failed_while_broken_and_recovered_while_healthy_are_ignored():
    c = three()
    n2 = c.nodes["n2"].core
    assert not of(recover(c, "n2"), StoreResume)
    fail(c, "n2")
    assert n2.disk_failures == 1
    out = c.step("n2", [StoreFailed(seq=99, reason="another")])
    assert n2.disk_error == NO_SPACE and n2.disk_failures == 1 and not out
    assert len(of(recover(c, "n2"), StoreResume)) == 1
    assert not of(recover(c, "n2"), StoreResume)


# --------------------------------------------------------------------------- single voter
def synced(core: RaftCore, disk: Disk, out: list[Msg]) -> None:
    """Make every StoreAppend in `out` (and in what syncing it produces) durable."""
    while sas := of(out, StoreAppend):
        for sa in sas:
            disk.write(sa)
        out = core.step([StoreSynced(seq=sas[-1].seq)])


def test_single_voter_drops_its_unsynced_suffix_and_recovers():
    core = RaftCore("n1", "a1", OPTS, random.Random(1), BootState(), bootstrap=True)
    disk = Disk()
    synced(core, disk, core.startup())
    assert core.is_leader
    synced(core, disk, core.step([Propose(rid=0, data=b"first")]))
    durable = core.status().stable_index
    assert core.commit_index == durable == core.log.last_index
    out = core.step([Propose(rid=1, data=b"a"), Propose(rid=2, data=b"b")])
    (sa,) = of(out, StoreAppend)
    (sa2,) = of(core.step([Propose(rid=4, data=b"d")]), StoreAppend)
    disk.write(sa)  # the failed write landed after all: the resume must remove it
    out = core.step([StoreFailed(seq=sa.seq, reason=NO_SPACE)])
    # 1 and 2 were in the failed batch: a reopened store may hold and commit them (503);
    # 4 is only in a later write, void for sure: never applied (507)
    replies = sorted((r.rid, r.code) for r in of(out, Reply))
    assert replies == [(1, Outcome.OUTCOME_UNKNOWN), (2, Outcome.OUTCOME_UNKNOWN),
                       (4, Outcome.DISK_ERROR)], replies
    assert "may have committed" in [r for r in of(out, Reply) if r.rid == 1][0].reason
    assert core.log.last_index == durable and not core.is_leader
    for _ in range(5 * OPTS.election_ticks):
        assert not of(core.step([Tick()]), StoreAppend)
    assert not core.is_leader
    out = core.step([StoreRecovered(reason=NO_SPACE)])
    sa = assert_resume(out, core, durable)
    disk.write(sa)
    assert [e[:2] for e in disk.entries] == [e[:2] for e in core.log.entries()]
    core.step([StoreSynced(seq=sa.seq)])
    for _ in range(5 * OPTS.election_ticks):
        synced(core, disk, core.step([Tick()]))
        if core.is_leader:
            break
    assert core.is_leader
    synced(core, disk, core.step([Propose(rid=3, data=b"c")]))
    assert core.commit_index == core.log.last_index == core.status().applied_index
    assert [e[:2] for e in disk.entries] == [e[:2] for e in core.log.entries()]


def test_deposed_leader_answers_503_for_its_replicated_proposals():
    """Issue 12 item 8: a deposed leader re-queues its own proposals; one already replicated
    (the next leader commits it) is answered 503 "may have committed" when its disk then
    fails, not 507; a proposal that never reached a log still gets 507."""
    c = three()
    n1 = c.nodes["n1"].core
    c.step("n1", [Propose(rid=1, data=b"w1")])
    c.deliver(lambda m: m.dst == "n2")  # n2 holds w1; not committed yet
    c.queue.clear()
    st = n1.status()
    c.step("n1", [VoteRequest(src="n2", dst="n1", cluster=st.cluster_id, term=st.term + 1,
                              last_index=n1.log.last_index, last_term=n1.log.last_term,
                              transfer=True)])
    assert not n1.is_leader and not n1.status().leader_id  # w1 waits in pending
    c.step("n1", [Propose(rid=2, data=b"w2")])  # waits too, in no log
    c.queue.clear()
    fail(c, "n1")
    replies = {r.rid: (r.code, r.reason) for r in c.nodes["n1"].replies}
    assert replies[1][0] is Outcome.OUTCOME_UNKNOWN and "may have committed" in replies[1][1]
    assert replies[2][0] == 507, replies
