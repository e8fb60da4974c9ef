"""ReadIndex (T 6.4), membership changes (T 4.1-4.3), join, leadership transfer (T 3.10)."""

from __future__ import annotations

import random

import pytest

from prisn.messages import (
    AddNode,
    AppendEntries,
    EntryKind,
    ForwardPropose,
    ForwardReadIndex,
    ForwardRequest,
    JoinRequest,
    JoinResponse,
    Propose,
    ReadIndex,
    RemoveNode,
    Reply,
    Role,
    StoreAppend,
    TimeoutNow,
    TransferLeadership,
)
from prisn.outcomes import Outcome
from prisn.raft.boot import BootState, Membership
from prisn.raft.core import RaftCore, encode_config
from tests.raftsim.manual import OPTS, Cluster


def three() -> Cluster:
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    c.tick("a", OPTS.heartbeat_ticks)
    c.settle()
    return c


def heartbeat_rounds(c: Cluster, leader: str = "a", n: int = 3) -> None:
    for _ in range(n):
        c.tick(leader, OPTS.heartbeat_ticks)
        c.settle()


# ------------------------------------------------------------------ ReadIndex
def test_read_index_on_leader_needs_quorum_round():
    """T 6.4: the leader answers with its commit index only after a quorum acked a heartbeat
    sent after the read arrived; all reads waiting share one round."""
    c = three()
    c.queue.clear()
    c.step("a", [ReadIndex(rid=1), ReadIndex(rid=2)])
    hbs = [m for m in c.queue if isinstance(m, AppendEntries)]
    assert {m.dst for m in hbs} == {"b", "c"} and len({m.seq for m in hbs}) == 1
    assert not c.nodes["a"].replies
    c.deliver(lambda m: m.dst == "b")
    c.deliver(lambda m: m.dst == "a")
    lead = c.nodes["a"].core
    assert [(r.rid, r.ok, r.index) for r in c.nodes["a"].replies] == [
        (1, True, lead.commit_index), (2, True, lead.commit_index)]


def test_read_index_on_follower_is_forwarded():
    """T 6.4: a follower asks the leader for the read index and turns the answer into a
    Reply for its API."""
    c = three()
    c.queue.clear()
    c.step("b", [ReadIndex(rid=7)])
    assert any(isinstance(m, ForwardReadIndex) and m.dst == "a" for m in c.queue)
    c.settle()
    (r,) = c.nodes["b"].replies
    assert r.rid == 7 and r.ok and r.index == c.nodes["a"].core.commit_index


def test_read_index_fails_when_leadership_lost():
    """A read pending when the leader loses its quorum fails with 503."""
    c = three()
    c.queue.clear()
    c.step("a", [ReadIndex(rid=3)])
    for _ in range(2 * OPTS.election_ticks):
        c.tick("a")
        c.queue.clear()
    (r,) = c.nodes["a"].replies
    assert not r.ok and r.code is Outcome.LEADERSHIP_LOST


def test_read_index_waits_for_term_commit():
    """T 6.4: a new leader answers reads only after an entry of its term committed."""
    c = Cluster(["a", "b", "c"])
    c.settle()
    core = c.nodes["a"].core
    for _ in range(40):
        c.tick("a")
        c.settle(pred=lambda m: not (isinstance(m, AppendEntries) and m.dst == "b")
                 and not (isinstance(m, AppendEntries) and m.dst == "c"))
        if core.is_leader:
            break
    assert core.is_leader and core.commit_index < core.log.last_index
    c.step("a", [ReadIndex(rid=5)])
    assert not c.nodes["a"].replies
    c.settle()
    c.settle()
    assert [r.rid for r in c.nodes["a"].replies] == [5]


def test_read_index_single_voter_immediate():
    """One voter: the read index is the commit index at once (after the term's NOOP)."""
    c = Cluster(["a"], mode="boot", bootstrap=True)
    c.settle()
    c.step("a", [ReadIndex(rid=1)])
    (r,) = c.nodes["a"].replies
    assert r.ok and r.index == c.nodes["a"].core.commit_index


# ------------------------------------------------------------------ membership
def test_add_learner_then_promote():
    """T 4.2.1: a new server joins as a learner, catches up, then is promoted to voter."""
    c = three()
    c.add("d", mode="empty")
    c.step("a", [AddNode(rid=1, node_id="d", addr="addr-d")])
    mem = c.nodes["a"].core.status().membership
    assert mem.learners == {"d": "addr-d"}
    heartbeat_rounds(c, n=4)
    assert c.nodes["a"].replies[0].ok
    st = c.nodes["a"].core.status()
    assert "d" in st.membership.voters and not st.membership.learners
    d = c.nodes["d"].core.status()
    assert d.cluster_id == st.cluster_id and d.commit_index == st.commit_index


def test_add_is_idempotent():
    c = three()
    c.step("a", [AddNode(rid=1, node_id="b", addr="addr-b")])
    (r,) = c.nodes["a"].replies
    assert r.ok and "already" in r.reason


@pytest.mark.parametrize("target,code", [("zz", 404)])
def test_remove_unknown(target, code):
    c = three()
    c.step("a", [RemoveNode(rid=1, node_id=target)])
    assert c.nodes["a"].replies[0].code == code


def test_remove_last_voter_refused():
    c = Cluster(["a"], mode="boot", bootstrap=True)
    c.settle()
    c.step("a", [RemoveNode(rid=1, node_id="a")])
    r = c.nodes["a"].replies[0]
    assert not r.ok and r.code == 409


def test_one_change_at_a_time():
    """T 4.1: a second change while one is uncommitted is refused (409)."""
    c = three()
    c.step("a", [RemoveNode(rid=1, node_id="c"), RemoveNode(rid=2, node_id="b")])
    r = c.nodes["a"].replies
    assert [(x.rid, x.code) for x in r] == [(2, 409)]
    c.settle()
    assert (1, True) in [(x.rid, x.ok) for x in c.nodes["a"].replies]


def test_remove_follower_forwarded_from_follower():
    """RemoveNode on a follower is forwarded to the leader; the reply comes after commit."""
    c = three()
    c.step("b", [RemoveNode(rid=4, node_id="c")])
    assert any(isinstance(m, ForwardRequest) and m.op == "remove" for m in c.queue)
    c.settle()
    heartbeat_rounds(c)
    (r,) = c.nodes["b"].replies
    assert r.ok and r.index > 0
    assert set(c.nodes["a"].core.status().membership.voters) == {"a", "b"}


def test_remove_leader_commits_then_hands_over():
    """Removing the leader: it commits the new config without counting itself, then sends
    TimeoutNow to the most up-to-date voter and steps down (T 4.2.2)."""
    c = three()
    c.step("a", [RemoveNode(rid=1, node_id="a")])
    c.settle()
    assert any(isinstance(m, TimeoutNow) for m in c.nodes["a"].sent)
    a = c.nodes["a"].core.status()
    assert a.role == Role.FOLLOWER and "a" not in a.membership.voters
    c.settle()
    leaders = [n for n in c.nodes.values() if n.core.is_leader]
    assert [n.id for n in leaders] in (["b"], ["c"])
    for _ in range(5 * OPTS.election_ticks):  # the removed node never campaigns again
        c.tick("a")
    assert c.nodes["a"].core.status().role == Role.FOLLOWER


def test_join_via_bootstrap_node():
    """Join: an empty node asks a listed address; the leader adds it as a learner and
    promotes it; it adopts the cluster id from the config it receives."""
    c = Cluster(["a"], mode="boot", bootstrap=True)
    c.settle()
    c.add("b", mode="join", join=["addr-a"])
    c.add("c", mode="join", join=["addr-a"])
    assert any(isinstance(m, JoinRequest) and m.dst == "@addr-a" and m.cluster == ""
               for m in c.queue)
    c.settle()
    for _ in range(3 * OPTS.election_ticks):  # c's first join hits a change in progress
        for nid in "abc":
            c.tick(nid)
        c.settle()
    st = c.nodes["a"].core.status()
    assert set(st.membership.voters) == {"a", "b", "c"}
    for nid in "bc":
        s = c.nodes[nid].core.status()
        assert s.cluster_id == st.cluster_id and s.leader_id == "a"


def test_join_to_follower_redirects():
    """A non-leader answers JoinRequest with the leader's id and address (to @addr)."""
    c = three()
    c.queue.clear()
    c.step("b", [JoinRequest(src="d", dst="b", cluster="", term=0, node_id="d",
                             addr="addr-d")])
    (r,) = [m for m in c.queue if isinstance(m, JoinResponse)]
    assert r.dst == "@addr-d" and not r.ok and r.leader == "a" and r.leader_addr == "addr-a"


def test_joining_node_never_campaigns_without_config():
    c = Cluster([], mode="x")
    c.add("z", mode="join", join=["addr-nowhere"])
    for _ in range(10 * OPTS.election_ticks):
        c.tick("z")
    st = c.nodes["z"].core.status()
    assert st.role == Role.FOLLOWER and st.term == 0
    assert len([m for m in c.queue if isinstance(m, JoinRequest)]) >= 5


# ------------------------------------------------------------------ transfer
def test_transfer_to_follower():
    """T 3.10: the leader catches the target up, sends TimeoutNow; the target campaigns at
    once (transfer=True, no pre-vote) and wins. The API gets ok at once."""
    c = three()
    c.step("a", [TransferLeadership(rid=1, target="c")])
    assert c.nodes["a"].replies[0].ok
    c.settle()
    assert c.leader() == "c"


def test_transfer_buffers_proposals_and_forwards_them():
    """A leader in transfer buffers new proposals and forwards them to the new leader."""
    c = three()
    c.step("a", [TransferLeadership(rid=1, target="b"), Propose(rid=2, data=b"late")])
    c.settle()
    heartbeat_rounds(c, leader="b")
    assert c.leader() == "b"
    assert any(e[3] == b"late" for e in c.nodes["a"].applied)


@pytest.mark.parametrize("target,code", [("zz", 404), ("d", 409)])
def test_transfer_refused(target, code):
    c = three()
    c.add("d", mode="empty")
    c.step("a", [AddNode(rid=9, node_id="d", addr="addr-d")])
    c.step("a", [TransferLeadership(rid=1, target=target)])
    r = [x for x in c.nodes["a"].replies if x.rid == 1][0]
    assert not r.ok and r.code == code


def test_follower_asks_for_leadership():
    """TransferLeadership(target="") on a follower is forwarded as op="transfer"."""
    c = three()
    c.step("b", [TransferLeadership(rid=3)])
    assert any(isinstance(m, ForwardRequest) and m.op == "transfer" and m.node_id == "b"
               for m in c.queue)
    c.settle()
    assert c.leader() == "b"
    assert c.nodes["b"].replies[0].ok


def test_learner_cannot_ask_for_leadership():
    c = three()
    c.add("d", mode="empty")
    c.step("a", [AddNode(rid=9, node_id="d", addr="addr-d")])
    c.settle()
    c.step("d", [TransferLeadership(rid=3)])
    if c.nodes["d"].core.status().is_learner:
        assert c.nodes["d"].replies[0].code == 409


def test_forward_lost_with_its_leader_is_resent_to_the_next_leader():
    """A proposal forwarded to a leader that then loses leadership without appending it is
    re-sent to the new leader once known (the state machine's idempotency key makes a
    duplicate harmless), so the client does not wait out its timeout."""
    from prisn.messages import ForwardPropose

    c = three()
    c.queue.clear()
    c.step("b", [Propose(rid=9, data=b"cmd-9")])
    first = [m for m in c.queue if isinstance(m, ForwardPropose)]
    assert [m.dst for m in first] == ["a"]
    c.drop(lambda m: isinstance(m, ForwardPropose))  # the old leader never sees it
    c.step("a", [TransferLeadership(rid=1, target="c")])
    c.settle(pred=lambda m: not isinstance(m, ForwardPropose) or m.dst == "c")
    assert c.leader() == "c"
    c.tick("c", OPTS.heartbeat_ticks)
    c.settle()
    logs = {nid: [e[3] for e in n.core._log.entries()] for nid, n in c.nodes.items()}
    for nid, datas in logs.items():
        assert datas.count(b"cmd-9") == 1, (nid, datas)


def test_deposed_leader_proposes_its_uncommitted_commands_again():
    """A leader cut off with an uncommitted proposal of its own loses it when the new
    leader's log overwrites it; it proposes it again through the new leader instead of
    letting the client wait out its timeout."""
    from prisn.messages import ForwardPropose

    c = three()
    c.queue.clear()
    c.step("a", [Propose(rid=5, data=b"cmd-5")])
    c.drop(lambda m: m.src == "a")  # partition a: its append never arrives
    for _ in range(4 * OPTS.election_ticks):
        for nid in ("b", "c"):
            c.tick(nid)
        c.drop(lambda m: m.src == "a" or m.dst == "a")
        c.settle(pred=lambda m: m.src != "a" and m.dst != "a")
        if any(c.nodes[n].core.is_leader for n in ("b", "c")):
            break
    new = next(n for n in ("b", "c") if c.nodes[n].core.is_leader)
    c.tick(new, OPTS.heartbeat_ticks)  # heal: the new leader's heartbeat deposes a
    c.settle()
    assert not c.nodes["a"].core.is_leader
    assert any(isinstance(m, ForwardPropose) and m.data == b"cmd-5" for m in c.nodes["a"].sent)
    c.tick(new, OPTS.heartbeat_ticks)
    c.settle()
    for nid, n in c.nodes.items():
        datas = [e[3] for e in n.core._log.entries()]
        assert datas.count(b"cmd-5") == 1, (nid, datas)


# ------------------------------------------------------------------ invalid configurations
def test_joiner_refuses_an_invalid_configuration_entry():
    """A fresh joining node given a CONFIG entry whose data does not decode (found by
    fuzzing: it crashed in _on_append -> _append_local -> decode_config) drops the whole
    message, counts it, does not ack and keeps term 0; a valid one is then accepted."""
    core = RaftCore("z", "addr-z", OPTS, random.Random(9), BootState(), join=["addr-a"])
    core.startup()
    core.step([JoinResponse(src="a", dst="z", cluster="c1", term=5, ok=True, leader="a",
                            leader_addr="addr-a")])  # admitted: it now takes c1's entries
    for data in [b"", b"\x82\x01\x02", encode_config(Membership(cluster="c1"))[:-1]]:
        out = core.step([AppendEntries(src="a", dst="z", cluster="c1", term=5, prev_index=0,
                                       prev_term=0, entries=[[1, 5, EntryKind.CONFIG, data]],
                                       commit=1)])
        assert not out
    st = core.status()
    assert st.term == 0 and st.last_index == 0 and st.membership is None
    assert st.drops == {"bad_append": 3} and st.cluster_id == ""
    mem = Membership(cluster="c1", voters={"a": "addr-a"}, learners={"z": "addr-z"})
    out = core.step([AppendEntries(src="a", dst="z", cluster="c1", term=5, prev_index=0,
                                   prev_term=0, entries=[[1, 5, EntryKind.CONFIG,
                                                          encode_config(mem)]], commit=1)])
    assert any(isinstance(m, StoreAppend) for m in out)
    assert core.status().membership == mem and core.term == 5


def test_invalid_configuration_in_the_stored_log_is_a_clear_boot_error():
    """An entry stored before peers' entries were checked: a one-line RuntimeError (the
    server prints it and exits 1), not a traceback from the decoder."""
    boot = BootState(term=2, commit=1, entries=[[1, 2, int(EntryKind.CONFIG), b"\xa0"]])
    with pytest.raises(RuntimeError, match="invalid configuration entry at index 1"):
        RaftCore("z", "addr-z", OPTS, random.Random(9), boot)


def test_new_member_is_joining_for_one_election_timeout():
    """Issue 12 item 10: the leader reports a member it has not heard from yet as `joining`
    (shown as a follower or learner, not unreachable) for one election timeout only."""
    c = three()
    c.add("d", mode="empty")
    c.step("a", [AddNode(rid=1, node_id="d", addr="addr-d")])
    p = c.nodes["a"].core.status().progress["d"]
    assert p.joining and not p.recent_active
    c.tick("a", OPTS.election_ticks)  # d never answers (nothing is delivered)
    p = c.nodes["a"].core.status().progress["d"]
    assert not p.joining and not p.recent_active


def test_only_voters_may_forward_and_a_learner_refuses_requests_at_once():
    """Issue 17 item 2: the leader drops forwards from a stranger and from a learner (counted
    as forward_from_non_voter, nothing appended); a learner answers its own API's requests
    with a 503 at once instead of forwarding them into a drop."""
    c = three()
    c.add("d", mode="empty")
    c.step("a", [AddNode(rid=1, node_id="d", addr="addr-d")])
    a = c.nodes["a"].core
    last = a.status().last_index
    cid = a.status().cluster_id
    for src in ("stranger", "d"):
        c.step("a", [ForwardPropose(src=src, dst="a", cluster=cid, term=a.term, rid=5,
                                    data=b"x"),
                     ForwardRequest(src=src, dst="a", cluster=cid, term=a.term, rid=6,
                                    op="transfer", node_id=src, addr="")])
    assert a.status().last_index == last
    assert a.status().drops.get("forward_from_non_voter") == 4
    mem = Membership(cluster="c1", voters={"a": "addr-a"}, learners={"d": "addr-d"})
    learner = RaftCore("d", "addr-d", OPTS, random.Random(1),
                       BootState(term=2, commit=1,
                                 entries=[[1, 1, int(EntryKind.CONFIG), encode_config(mem)]]))
    learner.startup()
    learner.step([AppendEntries(src="a", dst="d", cluster="c1", term=2, prev_index=1,
                                prev_term=1, entries=[], commit=1)])
    assert learner.status().leader_id == "a"
    out = learner.step([Propose(src="api", dst="raft", rid=77, data=b"w")])
    assert not [m for m in out if isinstance(m, ForwardPropose)]
    assert [(r.rid, r.ok, r.code) for r in out if isinstance(r, Reply)] == [(77, False, 503)]


def test_a_removed_node_never_rejoins_with_its_old_data():
    """A removed node that keeps running (or restarts with its old data dir) and has
    --peers must not come back by itself: it stops sending joins once it holds a committed
    configuration without itself, and a leader refuses a join from a non-member whose data
    dir is not empty (the docs: wipe it before adding it back)."""
    c = Cluster(["a"], mode="boot", bootstrap=True)
    c.settle()
    c.add("b", mode="join", join=["addr-a"])
    c.add("c", mode="join", join=["addr-a"])
    for _ in range(3 * OPTS.election_ticks):
        for nid in "abc":
            c.tick(nid)
        c.settle()
    assert set(c.nodes["a"].core.status().membership.voters) == {"a", "b", "c"}
    c.step("a", [RemoveNode(rid=5, node_id="c")])
    heartbeat_rounds(c, n=4)
    assert "c" not in c.nodes["a"].core.status().membership.members()
    cid = c.nodes["a"].core.status().cluster_id
    # the leader refuses c's join: not a member, data dir not empty
    out = c.nodes["a"].core.step([JoinRequest(src="c", dst="a", cluster=cid, term=0,
                                              node_id="c", addr="addr-c", fresh=False)])
    resp = [m for m in out if isinstance(m, JoinResponse)]
    assert resp and not resp[0].ok and "not a member" in resp[0].reason
    assert "c" not in c.nodes["a"].core.status().membership.members()
    # a wiped c (fresh) is let in again
    out = c.nodes["a"].core.step([JoinRequest(src="c", dst="a", cluster="", term=0,
                                              node_id="c", addr="addr-c", fresh=True)])
    assert [m.ok for m in out if isinstance(m, JoinResponse)] == [True]


# ------------------------------------------------------------------ pure parts (membership.py)
from prisn.raft.membership import (  # noqa: E402 - the pure parts, tested by table
    MAX_CONFIG_BYTES,
    MAX_MEMBER_FIELD,
    MAX_MEMBERS,
    change_problem,
    changed_membership,
    decode_config,
    prune_configs,
)

M3 = Membership(cluster="c1", voters={"a": "A", "b": "B"}, learners={"l": "L"})


@pytest.mark.parametrize("kind,node,addr,want", [
    ("add", "x", "X", None),
    ("add", "", "X", (False, Outcome.INVALID, "node id and address are required")),
    ("add", "x", "", (False, Outcome.INVALID, "node id and address are required")),
    ("add", "a", "A", (True, Outcome.OK, "already a member")),
    ("add", "l", "L", (True, Outcome.OK, "already a member")),
    ("add", "a", "A2", None),                   # a new address for a member
    ("remove", "a", "", None),
    ("remove", "l", "", None),
    ("remove", "x", "", (False, Outcome.NOT_FOUND, "unknown node x")),
    ("promote", "l", "", None),
    ("rename", "a", "", (False, Outcome.INVALID, "unknown operation rename")),
])
def test_change_problem(kind, node, addr, want) -> None:
    assert change_problem(M3, kind, node, addr) == want


def test_change_problem_keeps_a_voter() -> None:
    one = Membership(cluster="c1", voters={"a": "A"}, learners={"l": "L"})
    assert change_problem(one, "remove", "a", "") == (False, Outcome.CONFLICT,
                                                      "would leave no voter")
    assert change_problem(one, "remove", "l", "") is None


@pytest.mark.parametrize("kind,node,addr,voters,learners", [
    ("add", "x", "X", {"a": "A", "b": "B"}, {"l": "L", "x": "X"}),   # joins as a learner
    ("add", "a", "A2", {"a": "A2", "b": "B"}, {"l": "L"}),            # keeps its role
    ("add", "l", "L2", {"a": "A", "b": "B"}, {"l": "L2"}),
    ("remove", "b", "", {"a": "A"}, {"l": "L"}),
    ("remove", "l", "", {"a": "A", "b": "B"}, {}),
    ("promote", "l", "", {"a": "A", "b": "B", "l": "L"}, {}),
])
def test_changed_membership(kind, node, addr, voters, learners) -> None:
    new = changed_membership(M3, kind, node, addr)
    assert (new.cluster, new.voters, new.learners) == ("c1", voters, learners)
    assert M3.voters == {"a": "A", "b": "B"} and M3.learners == {"l": "L"}  # unchanged


@pytest.mark.parametrize("indexes,upto,left", [
    ([], 5, []),
    ([1], 5, [1]),
    ([1, 4, 9], 5, [4, 9]),        # the one in force at 5 (4) stays
    ([1, 4, 9], 4, [4, 9]),
    ([1, 4, 9], 3, [1, 4, 9]),
    ([1, 4, 9], 9, [9]),
    ([1, 4, 9], 100, [9]),         # the newest always stays
])
def test_prune_configs(indexes, upto, left) -> None:
    cfgs = [(i, M3) for i in indexes]
    prune_configs(cfgs, upto)
    assert [i for i, _ in cfgs] == left


def _cbor(wire) -> bytes:
    import cbor2
    return cbor2.dumps(wire)


GOOD = {"cluster": "c1", "voters": {"a": "A"}, "learners": {}}


@pytest.mark.parametrize("data,problem", [
    (encode_config(M3), ""),
    (_cbor(GOOD), ""),
    ("not bytes", "not bytes"),
    (b"\xff", "not CBOR"),
    (_cbor(GOOD) + b"\x00", "trailing bytes"),
    (b"\xd9\x0f\xa0" + _cbor(GOOD), "tag 4000"),  # a tag around a good map
    (b"x" * (MAX_CONFIG_BYTES + 1), "too large"),
    (_cbor([1, 2]), "not a map"),
    (_cbor({**GOOD, "extra": 1}), "keys must be"),
    (_cbor({**GOOD, "cluster": ""}), "cluster id must be"),
    (_cbor({**GOOD, "voters": {}}), "no voter"),
    (_cbor({**GOOD, "voters": []}), "must be a map"),
    (_cbor({**GOOD, "voters": {"a": 1}}), "address of"),
    (_cbor({**GOOD, "voters": {"": "A"}}), "node id"),
    (_cbor({**GOOD, "voters": {"a" * (MAX_MEMBER_FIELD + 1): "A"}}), "node id"),
    (_cbor({**GOOD, "learners": {"a": "A"}}), "as voter and learner"),
    (_cbor({**GOOD, "learners": {f"n{i}": "X" for i in range(MAX_MEMBERS)}}),
     "more than"),
])
def test_decode_config(data, problem) -> None:
    if not problem:
        got = decode_config(data)
        assert encode_config(got) == encode_config(decode_config(encode_config(got)))
        return
    with pytest.raises(ValueError, match=problem):
        decode_config(data)
