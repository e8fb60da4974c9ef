"""Majority rules of the Raft core, as pure functions over explicit inputs (etcd's
`quorum/`). Any thread; no state.

Invariants:
- Only voters count; a learner or a stranger never makes or breaks a quorum, and a voter
  we know nothing of counts as 0 / inactive / not granted.
- `agreed_index` is the highest value a majority of the voters has reached (`quorum_index`):
  used for the commit index (values: durable matches, our own `stable`) and for ReadIndex
  (values: acknowledged heartbeat seqs, our own current seq).
- A vote is WON once a majority granted, LOST once a majority can no longer be reached,
  else PENDING; with 0 voters it is never WON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import Enum

from prisn.raft.progress import quorum_index, quorum_size

__all__ = ["VoteResult", "active_quorum", "agreed_index", "quorum_index", "quorum_size",
           "vote_result"]


class VoteResult(Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def agreed_index(voters: Iterable[str], self_id: str, own: int,
                 peer: Callable[[str], int]) -> int:
    """The highest value a majority of `voters` reached: `own` for `self_id`, `peer(v)`
    for every other voter (0 for one unknown)."""
    vs = list(voters)
    return quorum_index([own if v == self_id else peer(v) for v in vs], len(vs))


def active_quorum(voters: Iterable[str], self_id: str, active: Callable[[str], bool]) -> bool:
    """Check-quorum: do a majority of `voters` count as active (we always are)?"""
    vs = list(voters)
    n = sum(1 for v in vs if v == self_id or active(v))
    return n >= quorum_size(len(vs))


def vote_result(votes: Mapping[str, bool], voters: int) -> VoteResult:
    """The outcome of an election among `voters` voters given the answers so far
    (`votes`: node id -> granted; the caller records only voters' answers)."""
    granted = sum(1 for g in votes.values() if g)
    q = quorum_size(voters)
    if granted >= q:
        return VoteResult.WON
    if len(votes) - granted > voters - q:
        return VoteResult.LOST
    return VoteResult.PENDING
