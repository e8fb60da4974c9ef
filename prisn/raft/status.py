"""The immutable status snapshot a RaftCore publishes for other threads. Pure data.

Everything here is a copy or an immutable object shared with the core (`membership` is the
very Membership object in force, so `is` tells whether it changed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prisn.messages import Role
from prisn.raft.boot import Membership


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """Leader's view of one peer."""

    match: int
    next: int
    inflight: int
    state: str  # "probe" | "replicate" | "snapshot"
    last_contact_ticks: int
    recent_active: bool
    is_learner: bool = False
    # never heard from yet, and known for less than an election timeout: a member that has
    # just been added (or a peer of a leader just elected) is being contacted, not unreachable
    joining: bool = False


@dataclass(frozen=True, slots=True)
class RaftStatus:
    """One consistent snapshot of a core, taken at the end of a step."""

    node_id: str
    addr: str
    role: Role
    is_learner: bool
    term: int
    vote: str
    leader_id: str
    leader_addr: str
    commit_index: int
    applied_index: int
    stable_index: int
    last_index: int
    last_term: int
    cluster_id: str
    membership: Membership | None
    progress: dict[str, PeerStatus] = field(default_factory=dict)
    quorum_ok: bool = False
    transferee: str = ""
    drops: dict[str, int] = field(default_factory=dict)
    ticks_since_leader_contact: int = 0
    pending: int = 0  # requests buffered while no leader is known
    pre_candidate: bool = False
    fatal: str = ""  # non-empty after StoreFatal (store unusable): the node must stop
    disk_error: str = ""  # non-empty while the log cannot be written (writes answer 507)
    snapshot_index: int = 0  # newest durable snapshot (0: none)
    snapshot_size: int = 0  # its file size in bytes
    log_start: int = 1  # first index still in the log (compaction point + 1)
    snapshot_installs_sent: int = 0  # leader: snapshots followers reported installed
    snapshot_installs_received: int = 0  # snapshots this node installed from a leader
    snapshots_sending: int = 0  # leader: peers currently receiving a snapshot
    term_start: int = 0  # leader: index of the no-op that opened its term (0 otherwise)

    @property
    def voters(self) -> dict[str, str]:
        return dict(self.membership.voters) if self.membership else {}

    @property
    def learners(self) -> dict[str, str]:
        return dict(self.membership.learners) if self.membership else {}
