"""Types and constants shared by the parts of the Raft core (`prisn.raft.core`).

Pure data; any thread. `State` is a node's role as the core sees it (PRE_CANDIDATE is
reported as a candidate, `ROLE`); `Request` is a local API request waiting for a leader,
`PendingRead` a ReadIndex in flight on the leader.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from prisn.messages import Role

NOT_LEADER = "not leader"  # ForwardResponse reason that makes the origin retry elsewhere
NO_LEADER = "no leader or quorum"
MAX_EVENTS = 256  # cluster events buffered for the shell between two steps (oldest dropped)


@dataclass(frozen=True)
class RaftOptions:
    """Tunables, in ticks (one tick = 10 ms by default)."""

    heartbeat_ticks: int = 5
    election_ticks: int = 15  # randomized timeout drawn from [election_ticks, 2*election_ticks)
    max_append_entries: int = 1024  # per AppendEntries message
    max_append_bytes: int = 1 << 20
    max_inflight: int = 64  # AppendEntries messages in flight per peer
    pre_vote: bool = True
    check_quorum: bool = True
    max_pending: int = 10000  # proposals/reads buffered while no leader is known
    pending_ticks: int = 500  # how long a buffered proposal/read waits (then NO_LEADER)
    promote_lag: int = 0  # learner promoted when match >= leader commit - promote_lag
    max_apply_entries: int = 4096  # per Apply message (replay after a restart is split)
    trailing_logs: int = 10240  # entries kept before a snapshot for slow followers
    snapshot_chunk_bytes: int = 1 << 20  # InstallSnapshot chunk size
    snapshot_retry_ticks: int = 100  # resend an unanswered chunk (the transfer timeout)
    snapshot_apply_ticks: int = 3000  # wait for the last chunk's answer (verify + restore)


@dataclass(frozen=True, slots=True)
class SnapRef:
    """A durable snapshot file this node can send: what it covers and where it is."""

    index: int
    term: int
    snap_id: str
    path: str
    size: int


class State(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


ROLE = {State.FOLLOWER: Role.FOLLOWER, State.PRE_CANDIDATE: Role.CANDIDATE,
         State.CANDIDATE: Role.CANDIDATE, State.LEADER: Role.LEADER}


@dataclass(slots=True)
class Request:
    """A local API request waiting for a leader (kind: propose|read|transfer|remove|add)."""

    kind: str
    rid: int
    since: int
    data: bytes = b""
    node_id: str = ""
    addr: str = ""
    to: str = ""  # the leader it was last forwarded to
    first: int = 0  # tick it was forwarded to `to` (a resend keeps it)
    sent: int = 0  # tick of the last (re)send to `to`
    logged: bool = False  # was in our log as leader: may commit, never answered 507


@dataclass(slots=True)
class PendingRead:
    """A ReadIndex in flight on the leader: answer `index` once a quorum acked `seq`."""

    index: int
    seq: int
    origin: str
    rid: int
