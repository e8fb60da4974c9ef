"""Table-driven tests of the pure majority rules (`prisn.raft.quorum`)."""

from __future__ import annotations

import pytest

from prisn.raft.quorum import VoteResult, active_quorum, agreed_index, vote_result

W, L, P = VoteResult.WON, VoteResult.LOST, VoteResult.PENDING


@pytest.mark.parametrize("voters,own,peers,want", [
    (["a"], 7, {}, 7),                                  # a single voter: its own value
    (["a", "b", "c"], 5, {"b": 3, "c": 1}, 3),          # the median of three
    (["a", "b", "c"], 1, {"b": 9, "c": 9}, 9),          # a majority without us
    (["a", "b", "c"], 9, {}, 0),                        # unknown voters count as 0
    (["a", "b", "c", "d"], 4, {"b": 4, "c": 2, "d": 1}, 2),  # 4 voters need 3
    (["b", "c"], 9, {"b": 5, "c": 6}, 5),               # we are not a voter (removed)
    (["a", "b", "c"], 1, {"b": 9, "x": 9}, 1),          # a stranger's value never counts
    ([], 5, {}, 0),                                     # no voter: nothing agreed
])
def test_agreed_index(voters, own, peers, want) -> None:
    assert agreed_index(voters, "a", own, lambda v: peers.get(v, 0)) == want


@pytest.mark.parametrize("voters,active,want", [
    (["a"], set(), True),
    (["a", "b", "c"], {"b"}, True),
    (["a", "b", "c"], set(), False),
    (["a", "b", "c", "d"], {"b"}, False),
    (["a", "b", "c", "d"], {"b", "c"}, True),
    (["b", "c", "d"], {"b"}, False),          # we do not count when not a voter
    (["b", "c", "d"], {"b", "c"}, True),
    (["a", "b", "c"], {"x", "y"}, False),     # strangers do not count
])
def test_active_quorum(voters, active, want) -> None:
    assert active_quorum(voters, "a", lambda v: v in active) is want


@pytest.mark.parametrize("votes,voters,want", [
    ({"a": True}, 1, W),
    ({}, 1, P),
    ({"a": True}, 3, P),
    ({"a": True, "b": True}, 3, W),
    ({"a": True, "b": False}, 3, P),
    ({"a": True, "b": False, "c": False}, 3, L),
    ({"b": False, "c": False}, 3, L),
    ({"a": True, "b": False}, 2, L),          # two voters: one refusal loses
    ({"a": True, "b": True, "c": False}, 4, P),
    ({"a": True, "b": False, "c": False}, 4, L),
    ({}, 0, L),                               # no voters: never won
])
def test_vote_result(votes, voters, want) -> None:
    assert vote_result(votes, voters) is want
