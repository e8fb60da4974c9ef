"""Elections: vote rules, pre-vote, leader stickiness, check-quorum, persist before speak."""

from __future__ import annotations

import random

import pytest

from prisn.messages import (
    AppendEntries,
    AppendResponse,
    EntryKind,
    Role,
    StoreAppend,
    StoreSynced,
    Tick,
    VoteRequest,
    VoteResponse,
)
from prisn.raft.boot import BootState, Membership
from prisn.raft.core import RaftCore, RaftOptions, encode_config
from tests.raftsim.manual import Cluster

OPTS = RaftOptions(heartbeat_ticks=2, election_ticks=10)
MEM = Membership(cluster="c1", voters={"a": "A", "b": "B", "c": "C"})
CONF = [1, 1, int(EntryKind.CONFIG), encode_config(MEM)]


def follower(entries=None, term=1, vote="", **kw) -> RaftCore:
    ents = [CONF] + (entries or [])
    core = RaftCore("a", "A", RaftOptions(**{**OPTS.__dict__, **kw}), random.Random(1),
                    BootState(term=term, vote=vote, commit=1, entries=ents))
    core.startup()
    return core


def vreq(src="b", term=2, li=1, lt=1, pre=False, transfer=False, cluster="c1"):
    return VoteRequest(src=src, dst="a", cluster=cluster, term=term, last_index=li,
                       last_term=lt, pre=pre, transfer=transfer)


def votes(out):
    return [m for m in out if isinstance(m, VoteResponse)]


def synced(core: RaftCore, out) -> list:
    sas = [m for m in out if isinstance(m, StoreAppend)]
    return core.step([StoreSynced(seq=sas[-1].seq)]) if sas else []


# our log ends at (index 3, term 2); candidate (last_index, last_term) -> granted?
UP_TO_DATE = [
    (3, 2, True),   # identical
    (4, 2, True),   # longer, same last term
    (2, 2, False),  # shorter, same last term
    (1, 3, True),   # higher last term wins even if shorter
    (9, 1, False),  # lower last term loses even if longer
]


@pytest.mark.parametrize("li,lt,granted", UP_TO_DATE)
def test_vote_requires_up_to_date_log(li, lt, granted):
    """§5.4.1: grant only if the candidate's log is at least as up-to-date as ours."""
    core = follower([[2, 2, 0, b"x"], [3, 2, 0, b"y"]], term=2)
    out = core.step([vreq(term=3, li=li, lt=lt)])
    out += synced(core, out)
    (v,) = votes(out)
    assert v.granted is granted and v.term == 3


def test_one_vote_per_term_and_idempotent_regrant():
    """§5.2: at most one vote per term (first come first served); re-asking gets it again."""
    core = follower()
    out = core.step([vreq("b", term=2)])
    out += synced(core, out)
    assert votes(out)[0].granted
    out = core.step([vreq("c", term=2)])
    assert not votes(out)[0].granted
    out = core.step([vreq("b", term=2)])
    out += synced(core, out)
    assert votes(out)[0].granted


def test_vote_grant_held_until_synced():
    """Persist before speak (§5.1 Fig. 2): the grant leaves only after StoreSynced of the
    write carrying the vote; a crash before that loses both."""
    core = follower()
    out = core.step([vreq("b", term=2)])
    (sa,) = [m for m in out if isinstance(m, StoreAppend)]
    assert sa.term == 2 and sa.vote == "b"
    assert not votes(out)
    out = core.step([StoreSynced(seq=sa.seq)])
    assert votes(out)[0].granted


def test_candidate_requests_held_until_own_vote_synced():
    """Persist before speak: a candidate's VoteRequests wait for its term+self-vote write;
    pre-vote requests (T 9.6) change nothing durable and go at once."""
    core = follower()
    out = []
    for _ in range(30):
        out = core.step([Tick()])
        if votes(out) or any(isinstance(m, VoteRequest) for m in out):
            break
    pre = [m for m in out if isinstance(m, VoteRequest)]
    assert pre and all(m.pre and m.term == 2 for m in pre)
    assert core.term == 1 and not any(isinstance(m, StoreAppend) for m in out)
    out = core.step([VoteResponse(src="b", dst="a", cluster="c1", term=2, granted=True,
                                  pre=True)])
    assert core.term == 2
    assert not [m for m in out if isinstance(m, VoteRequest)]
    out = synced(core, out)
    reqs = [m for m in out if isinstance(m, VoteRequest)]
    assert {m.dst for m in reqs} == {"b", "c"} and not reqs[0].pre


def test_prevote_does_not_disturb_term():
    """T 9.6: granting or refusing a pre-vote changes neither term nor vote."""
    core = follower(term=3, vote="c")
    out = core.step([vreq("b", term=4, li=1, lt=1, pre=True)])
    assert votes(out)[0].granted and votes(out)[0].pre
    assert core.term == 3 and core.status().vote == "c"
    assert not any(isinstance(m, StoreAppend) for m in out)


def test_leader_stickiness_refuses_votes_unless_transfer():
    """T 4.2.3 (check-quorum lease): a follower that heard from a live leader ignores
    (pre-)vote requests of higher terms, unless they come from a leadership transfer."""
    core = follower()
    core.step([AppendEntries(src="b", dst="a", cluster="c1", term=1, prev_index=1,
                             prev_term=1, entries=[], commit=1)])
    for req in (vreq("c", term=2), vreq("c", term=2, pre=True)):
        out = core.step([req])
        assert not votes(out) and core.term == 1
    assert core.status().drops.get("vote_in_lease") == 2
    out = core.step([vreq("c", term=2, transfer=True)])
    out += synced(core, out)
    assert votes(out)[0].granted and core.term == 2


def test_stale_term_append_gets_our_term():
    """§5.1: a message with a stale term is rejected; a deposed leader learns our term."""
    core = follower(term=5)
    out = core.step([AppendEntries(src="b", dst="a", cluster="c1", term=4, prev_index=1,
                                   prev_term=1, entries=[], commit=1)])
    (r,) = [m for m in out if isinstance(m, AppendResponse)]
    assert not r.success and r.term == 5


def test_cluster_mismatch_dropped_and_counted():
    """Messages of another cluster are dropped and counted by reason."""
    core = follower()
    out = core.step([vreq("b", term=9, cluster="other")])
    assert not out and core.term == 1
    assert core.status().drops == {"cluster_mismatch": 1}


def test_three_nodes_elect_and_replicate():
    """§5.2/§5.3: one leader per term; every node applies the same entries."""
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    c.step("a", [__import__("prisn.messages").messages.Propose(rid=1, data=b"x")])
    c.settle()
    for _ in range(3):
        c.tick("a", 2)
        c.settle()
    logs = [[e[:2] for e in n.applied] for n in c.nodes.values()]
    assert logs[0] == logs[1] == logs[2] and len(logs[0]) == 3
    st = c.nodes["b"].core.status()
    assert st.leader_id == "a" and st.leader_addr == "addr-a" and st.role == Role.FOLLOWER


def test_check_quorum_leader_steps_down():
    """Check-quorum (T 6.2): a leader that hears from no quorum within an election timeout
    steps down (and its quorum_ok turns false before that)."""
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    c.queue.clear()
    lead = c.nodes["a"].core
    for _ in range(2 * OPTS.election_ticks):
        c.tick("a")
        c.queue.clear()  # the followers are unreachable
    assert not lead.is_leader and lead.status().role == Role.FOLLOWER
    assert lead.term == c.nodes["b"].core.term  # stepping down does not bump the term


def test_partitioned_node_cannot_disrupt_with_prevote():
    """T 9.6: a node cut off keeps failing pre-votes, so its term does not grow and it does
    not depose the leader when it comes back."""
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    term = c.nodes["a"].core.term
    for _ in range(5 * OPTS.election_ticks):
        c.tick("c")
        c.tick("a")
        c.deliver(lambda m: m.src != "c" and m.dst != "c")
        c.drop(lambda m: m.src == "c" or m.dst == "c")
        for nid in c.nodes:
            c.sync(nid)
    assert c.nodes["c"].core.term == term
    c.settle()
    c.tick("a", 2)
    c.settle()
    assert c.nodes["a"].core.is_leader and c.nodes["a"].core.term == term
