"""Founding and join admission in the pure core (issue 12 items 2-4): a discovering founder
founds only after enough fresh answers and never once a peer answers with a cluster; the
leader refuses a wiped voter and an id held at another address; an unadmitted joiner takes
no vote or entry."""

from __future__ import annotations

import random

from prisn.messages import (
    AppendEntries,
    JoinRequest,
    JoinResponse,
    StoreAppend,
    StoreSynced,
    Tick,
    VoteRequest,
)
from prisn.raft.boot import BootState
from prisn.raft.core import RaftCore
from tests.raftsim.manual import OPTS


def _founder(**kw) -> RaftCore:
    core = RaftCore("a", "addr-a", OPTS, random.Random(1), BootState(), bootstrap=True,
                    join=["addr-b", "addr-c"], **kw)
    core.startup()
    return core


def _fresh_answer(src: str) -> JoinResponse:
    return JoinResponse(src=src, dst="a", cluster="", term=0, ok=False, reason="not leader")


def test_static_founder_waits_for_a_majority_of_fresh_answers():
    core = _founder(found_quorum=1)
    assert core.status().membership is None
    for _ in range(5 * OPTS.election_ticks):  # no answer: it never founds on its own
        core.step([Tick()])
    assert core.status().membership is None
    out = core.step([_fresh_answer("b")])
    assert core.status().membership is not None
    assert any(isinstance(m, StoreAppend) for m in out)


def test_a_cluster_answer_vetoes_founding_and_the_node_joins_it():
    core = _founder(found_quorum=1)
    out = core.step([JoinResponse(src="b", dst="a", cluster="c1", term=3, ok=False,
                                  leader="b2", leader_addr="addr-b2", reason="not leader")])
    assert any(isinstance(m, JoinRequest) and m.dst == "@addr-b2" and m.fresh for m in out)
    core.step([_fresh_answer("c")])
    assert core.status().membership is None  # vetoed for good
    assert any("joining it instead of founding" in t for _l, t in core.take_events())


def test_unadmitted_joiner_takes_no_vote_or_entry():
    core = RaftCore("z", "addr-z", OPTS, random.Random(2), BootState(), join=["addr-a"])
    core.startup()
    out = core.step([VoteRequest(src="a", dst="z", cluster="c1", term=4, last_index=9,
                                 last_term=3),
                     AppendEntries(src="a", dst="z", cluster="c1", term=4, prev_index=0,
                                   prev_term=0, entries=[], commit=0)])
    assert not out and core.status().drops == {"not_admitted": 2} and core.term == 0


def test_leader_refuses_a_wiped_voter_and_a_duplicate_id_once():
    core = RaftCore("a", "addr-a", OPTS, random.Random(3), BootState(), bootstrap=True)
    core.startup()
    for _ in range(3):
        core.step([StoreSynced(src="logstore", dst="raft", seq=s) for s in range(1, 5)])
        core.step([Tick()])
    assert core.is_leader

    def join(nid: str, addr: str, fresh: bool) -> JoinResponse:
        out = core.step([JoinRequest(src=nid, dst="a", cluster="", term=0, node_id=nid,
                                     addr=addr, fresh=fresh)])
        (r,) = [m for m in out if isinstance(m, JoinResponse)]
        return r

    r = join("a", "addr-other", True)
    assert not r.ok and "is taken by the member at addr-a" in r.reason
    assert core.status().membership.voters == {"a": "addr-a"}
    r = join("a", "addr-a", True)
    assert not r.ok and "is a voter of cluster" in r.reason and "remove it first" in r.reason
    events = core.take_events()
    assert sum("refused the join" in t for _l, t in events) == 2
    join("a", "addr-a", True)
    assert not any("refused the join" in t for _l, t in core.take_events())  # logged once
