"""Single-node path: bootstrap, campaign, propose, persist, commit, apply, restart."""

from __future__ import annotations

import random

import cbor2

from prisn.messages import (
    Apply,
    EntryKind,
    Propose,
    ReadIndex,
    Reply,
    Role,
    StoreAppend,
    StoreFatal,
    StoreSynced,
    Tick,
)
from prisn.outcomes import Outcome
from prisn.raft.boot import BootState, Membership
from prisn.raft.core import RaftCore, RaftOptions, static_cluster_id
from tests.raftsim.sim import Disk

OPTS = RaftOptions(heartbeat_ticks=2, election_ticks=10)


def only(out, cls):
    got = [m for m in out if isinstance(m, cls)]
    return got


def run_synced(core: RaftCore, disk: Disk, msgs) -> list:
    """Step, then sync every StoreAppend produced (repeatedly); return all outputs."""
    out = core.step(msgs)
    allout = list(out)
    while True:
        sas = only(out, StoreAppend)
        if not sas:
            return allout
        for sa in sas:
            disk.write(sa)
        out = core.step([StoreSynced(seq=sas[-1].seq)])
        allout += out


def test_bootstrap_creates_config_and_leads():
    """Bootstrap: CONFIG entry [1, 1, CONFIG, membership] at term 1, then a campaign (§5.2);
    the vote must be durable before the single voter acts as leader (persist before speak)."""
    core = RaftCore("n1", "a1", OPTS, random.Random(7), BootState(), bootstrap=True)
    out = core.startup()
    (sa,) = only(out, StoreAppend)
    assert sa.entries[0][:3] == [1, 1, EntryKind.CONFIG]
    m = Membership.from_wire(cbor2.loads(sa.entries[0][3]))
    assert m.voters == {"n1": "a1"} and len(m.cluster) == 16
    assert sa.entries[0][3] == cbor2.dumps(m.to_wire(), canonical=True)
    assert sa.term == 2 and sa.vote == "n1"
    assert core.status().role == Role.CANDIDATE  # not leader until the vote is synced
    out = core.step([StoreSynced(seq=sa.seq)])
    assert core.status().role == Role.LEADER
    (sa2,) = only(out, StoreAppend)
    assert sa2.entries == [[2, 2, EntryKind.NOOP, b""]]  # a NOOP opens the term (T 6.4)


def test_single_node_propose_commit_apply_and_restart():
    """Commit needs the leader's own durable write (T 10.2.1); Apply only committed+synced
    entries, in order, once; restart from BootState re-elects and re-applies everything."""
    disk = Disk()
    core = RaftCore("n1", "a1", OPTS, random.Random(1), BootState(), bootstrap=True)
    out = core.startup()
    for sa in only(out, StoreAppend):
        disk.write(sa)
    first = run_synced(core, disk, [StoreSynced(seq=1)])
    assert core.is_leader
    assert [e[0] for a in only(first, Apply) for e in a.entries] == [1, 2]
    out = core.step([Propose(rid=1, data=b"a"), Propose(rid=2, data=b"b")])
    (sa,) = only(out, StoreAppend)  # coalesced: one write for both proposals
    assert [e[3] for e in sa.entries] == [b"a", b"b"]
    assert not only(out, Apply)  # not durable yet
    disk.write(sa)
    out = core.step([StoreSynced(seq=sa.seq)])
    (ap,) = only(out, Apply)
    assert [e[0] for e in ap.entries] == [3, 4]
    assert core.status().commit_index == 4
    # restart: lose nothing that was synced; re-elect; re-apply from the start
    core2 = RaftCore("n1", "a1", OPTS, random.Random(2), disk.boot(), bootstrap=True)
    out = core2.startup()
    applied = [e for a in only(out, Apply) for e in a.entries]
    assert [e[0] for e in applied] == list(range(1, disk.commit + 1))
    assert not only(out, StoreAppend)  # bootstrap is ignored with a non-empty log
    allout = []
    for _ in range(40):
        allout += run_synced(core2, disk, [Tick()])
        if core2.is_leader:
            break
    allout += run_synced(core2, disk, [])
    assert core2.is_leader and core2.term == 3
    applied += [e for a in only(allout, Apply) for e in a.entries]
    assert [e[0] for e in applied] == list(range(1, 6))
    assert [e[3] for e in applied if e[2] == EntryKind.COMMAND] == [b"a", b"b"]


def test_static_members_identical_entry():
    """Static form: every node builds the same CONFIG entry; the cluster id is the first 16
    hex chars of sha256 over the sorted members."""
    members = {"n2": "b", "n1": "a", "n3": "c"}
    outs = []
    for nid in members:
        core = RaftCore(nid, members[nid], OPTS, random.Random(nid), BootState(),
                        initial_members=members)
        (sa,) = only(core.startup(), StoreAppend)
        outs.append(sa.entries)
        assert core.status().role == Role.FOLLOWER  # waits for an election timeout
    assert outs[0] == outs[1] == outs[2]
    m = Membership.from_wire(cbor2.loads(outs[0][0][3]))
    assert m.cluster == static_cluster_id(members) == static_cluster_id(dict(sorted(members.items())))


def test_force_new_cluster_keeps_log():
    """force_new_cluster: keep the log, append a CONFIG with only self and the new cluster id,
    lead it once that write is synced."""
    old = Membership(cluster="old", voters={"n1": "a", "n2": "b", "n3": "c"})
    from prisn.raft.core import encode_config
    boot = BootState(term=5, vote="n2", commit=2,
                     entries=[[1, 1, 2, encode_config(old)], [2, 5, 0, b"x"], [3, 5, 0, b"y"]])
    disk = Disk()
    core = RaftCore("n1", "a", OPTS, random.Random(1), boot, force_new_cluster="fresh")
    out = core.startup()
    (sa,) = only(out, StoreAppend)
    assert sa.term == 6 and sa.vote == "n1"
    assert sa.entries[0][:3] == [4, 6, EntryKind.CONFIG]
    assert core.status().cluster_id == "fresh"
    disk.entries = list(boot.entries)
    disk.write(sa)
    out = run_synced(core, disk, [StoreSynced(seq=sa.seq)])
    assert core.is_leader
    assert core.status().commit_index == 5  # the old uncommitted tail commits with it
    assert core.status().membership.voters == {"n1": "a"}


def test_store_fatal_is_fatal():
    """StoreFatal (an untrustworthy store; a full disk is StoreFailed, see
    test_raft_diskfault): the node stops acting (no outputs but 503 replies) and says so."""
    core = RaftCore("n1", "a1", OPTS, random.Random(1), BootState(), bootstrap=True)
    core.startup()
    core.step([StoreFatal(reason="StorageCorrupt: gap")])
    st = core.status()
    assert st.fatal and st.role == Role.FOLLOWER
    out = core.step([Propose(rid=9, data=b"x"), ReadIndex(rid=10), Tick()])
    assert [(m.rid, m.ok, m.code) for m in only(out, Reply)] == [(9, False, 503), (10, False, 503)]
    assert not only(out, StoreAppend)


def test_pending_without_leader_times_out_and_overflows():
    """Proposals wait for a leader up to pending_ticks, bounded by max_pending (503)."""
    opts = RaftOptions(election_ticks=10, max_pending=2, pending_ticks=5)
    core = RaftCore("n1", "a1", opts, random.Random(1), BootState(),
                    initial_members={"n1": "a1", "n2": "a2", "n3": "a3"})
    core.startup()
    out = core.step([Propose(rid=1, data=b"a"), Propose(rid=2, data=b"b"),
                     Propose(rid=3, data=b"c")])
    assert [(r.rid, r.code) for r in only(out, Reply)] == [(3, Outcome.NO_LEADER)]
    replies = []
    for _ in range(6):
        replies += only(core.step([Tick()]), Reply)
    assert sorted(r.rid for r in replies) == [1, 2]
    assert all(r.code is Outcome.NO_LEADER and "leader" in r.reason for r in replies)
