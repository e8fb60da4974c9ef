"""Forwarded proposals (follower -> leader) are never stranded (issue 12 items 5 and 6).

- A forward lost on a peer link (a replicator drops what it cannot send at once, e.g. while
  its connection is still being set up) is resent with the same forward id until the leader
  confirms it; the leader appends a copy once and confirms again.
- One the leader never confirms fails within one election timeout with a 503 (the API says
  it may still commit), instead of waiting out the write timeout.
- During a leadership transfer the leader holds forwarded proposals: appended if the transfer
  aborts, refused with NOT_LEADER (so the origin sends them to the new leader) if it succeeds.
"""

from __future__ import annotations

from prisn.messages import (
    ForwardPropose,
    ForwardResponse,
    Propose,
    TimeoutNow,
    TransferLeadership,
)
from prisn.outcomes import Outcome
from prisn.raft.core import ACCEPTED, FORWARD_UNCONFIRMED, NOT_LEADER
from tests.raftsim.manual import OPTS, Cluster


def three() -> Cluster:
    c = Cluster(["a", "b", "c"])
    c.settle()
    c.elect("a")
    c.tick("a", OPTS.heartbeat_ticks)
    c.settle()
    c.queue.clear()
    return c


def copies(c: Cluster, data: bytes) -> dict[str, int]:
    return {nid: [e[3] for e in n.core._log.entries()].count(data) for nid, n in c.nodes.items()}


def commit_round(c: Cluster, leader: str = "a", pred=None) -> None:
    for _ in range(3):
        c.tick(leader, OPTS.heartbeat_ticks)
        c.settle(pred=pred)


def applied(c: Cluster, nid: str, data: bytes) -> bool:
    return any(e[3] == data for e in c.nodes[nid].applied)


def test_a_forward_lost_on_the_link_is_resent_and_commits_once() -> None:
    c = three()
    c.step("b", [Propose(rid=7, data=b"w7")])
    sent = [m for m in c.queue if isinstance(m, ForwardPropose)]
    assert [m.dst for m in sent] == ["a"]
    c.drop(lambda m: isinstance(m, ForwardPropose))  # lost: the link was still connecting
    c.tick("b", OPTS.heartbeat_ticks)
    again = [m for m in c.queue if isinstance(m, ForwardPropose)]
    assert [(m.dst, m.rid, m.data) for m in again] == [("a", sent[0].rid, b"w7")]
    c.settle()
    commit_round(c)
    assert copies(c, b"w7") == {"a": 1, "b": 1, "c": 1}
    assert applied(c, "b", b"w7")
    assert not c.nodes["b"].replies  # the result comes from b's state machine, no 503
    assert not c.nodes["b"].core._unacked


def test_a_resent_forward_whose_confirmation_was_lost_is_appended_once() -> None:
    c = three()
    c.step("b", [Propose(rid=7, data=b"w7")])
    c.deliver(lambda m: isinstance(m, ForwardPropose))  # a appends it and confirms
    acks = [m for m in c.queue if isinstance(m, ForwardResponse)]
    assert [(m.dst, m.ok, m.code) for m in acks] == [("b", True, ACCEPTED)]
    c.drop(lambda m: isinstance(m, ForwardResponse))  # the ack is lost
    c.tick("b", OPTS.heartbeat_ticks)
    assert any(isinstance(m, ForwardPropose) for m in c.queue)  # resent
    c.deliver(lambda m: isinstance(m, ForwardPropose))
    again = [m for m in c.queue if isinstance(m, ForwardResponse)]
    assert [(m.ok, m.code) for m in again] == [(True, ACCEPTED)]  # confirmed again
    c.settle()
    commit_round(c)
    assert copies(c, b"w7") == {"a": 1, "b": 1, "c": 1}
    assert not c.nodes["b"].replies and applied(c, "b", b"w7")


def test_the_entry_reaching_the_follower_confirms_its_forward() -> None:
    """The confirmation may be lost for good; the entry arriving through AppendEntries is
    proof enough that the leader has it."""
    c = three()
    c.step("b", [Propose(rid=7, data=b"w7")])
    c.deliver(lambda m: isinstance(m, ForwardPropose))
    c.drop(lambda m: isinstance(m, ForwardResponse))
    c.settle()
    assert not c.nodes["b"].core._unacked
    assert not any(isinstance(m, ForwardPropose) for m in c.queue)


def test_a_forward_the_leader_never_confirms_fails_within_an_election_timeout() -> None:
    c = three()
    c.step("b", [Propose(rid=7, data=b"w7")])
    for _ in range(OPTS.election_ticks - 1):
        c.drop(lambda m: isinstance(m, ForwardPropose))  # the link to the leader is down
        c.tick("b")
    assert not c.nodes["b"].replies
    c.tick("b")
    [r] = c.nodes["b"].replies
    assert (r.rid, r.ok, r.code, r.reason) == (7, False, Outcome.OUTCOME_UNKNOWN,
                                               FORWARD_UNCONFIRMED)
    assert c.nodes["b"].core.status().drops.get("forward_unconfirmed") == 1
    assert not c.nodes["b"].core._fwd and not c.nodes["b"].core._fwd_data


def test_a_confirmed_forward_waits_for_its_commit_without_a_503() -> None:
    c = three()
    c.step("b", [Propose(rid=7, data=b"w7")])
    c.deliver(lambda m: isinstance(m, ForwardPropose))
    c.deliver(lambda m: isinstance(m, ForwardResponse))
    assert not c.nodes["b"].core._unacked
    c.queue.clear()
    c.tick("b", OPTS.election_ticks + 1)  # no commit yet (nothing delivered)
    assert not c.nodes["b"].replies
    assert not any(isinstance(m, ForwardPropose) for m in c.queue)


def test_forwards_during_an_aborted_transfer_are_appended_when_it_aborts() -> None:
    """Item 6: the leader refused forwards during a transfer; the follower parked them until
    the leader id changed, which never happened when the transfer aborted."""
    c = three()
    to_c = lambda m: m.dst == "c" or isinstance(m, TimeoutNow)  # noqa: E731
    c.step("a", [TransferLeadership(rid=1, target="c")])
    c.drop(to_c)  # c never takes over
    c.step("b", [Propose(rid=7, data=b"w7")])
    c.settle(pred=lambda m: not to_c(m))
    assert c.nodes["a"].core._transfer.target == "c"
    assert copies(c, b"w7")["a"] == 0 and c.nodes["a"].core._held_fwd
    assert not c.nodes["b"].core._unacked  # held is confirmed: b does not fail it
    for _ in range(OPTS.election_ticks):
        c.tick("a")
        c.tick("b")
        c.drop(to_c)
        c.settle(pred=lambda m: not to_c(m))
    assert c.nodes["a"].core._transfer.target == "" and c.leader() == "a"
    commit_round(c, pred=lambda m: not to_c(m))
    assert copies(c, b"w7")["a"] == 1 and applied(c, "b", b"w7")
    assert not c.nodes["b"].replies


def test_forwards_held_during_a_successful_transfer_go_to_the_new_leader() -> None:
    c = three()
    c.step("a", [TransferLeadership(rid=1, target="c")])  # TimeoutNow queued, not delivered
    c.step("b", [Propose(rid=7, data=b"w7")])
    c.deliver(lambda m: isinstance(m, ForwardPropose))
    assert c.nodes["a"].core._held_fwd
    c.settle()  # c catches up, takes over; a refuses the held forward, b re-forwards to c
    assert c.leader() == "c"
    refused = [m for m in c.nodes["a"].sent if isinstance(m, ForwardResponse)
               and m.reason == NOT_LEADER]
    assert [m.dst for m in refused] == ["b"]
    commit_round(c, leader="c")
    assert copies(c, b"w7") == {"a": 1, "b": 1, "c": 1}
    assert applied(c, "b", b"w7") and not c.nodes["b"].replies


def test_a_held_forward_whose_confirmation_was_lost_is_confirmed_again() -> None:
    c = three()
    c.step("a", [TransferLeadership(rid=1, target="c")])  # TimeoutNow queued, not delivered
    c.step("b", [Propose(rid=7, data=b"w7")])
    c.deliver(lambda m: isinstance(m, ForwardPropose))
    c.drop(lambda m: isinstance(m, ForwardResponse))  # the "held" confirmation is lost
    c.tick("b", OPTS.heartbeat_ticks)
    c.deliver(lambda m: isinstance(m, ForwardPropose))  # the resend: held once, confirmed
    assert len(c.nodes["a"].core._held_fwd) == 1
    c.deliver(lambda m: isinstance(m, ForwardResponse))
    assert not c.nodes["b"].core._unacked
