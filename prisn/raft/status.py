"""The immutable status snapshot a RaftCore publishes for other threads.

`RaftStatus`/`PeerStatus` are pure data; `StatusMixin.status()` (part of `RaftCore`, raft
actor thread) builds one from the core's state. Everything here is a copy or an immutable object shared with the core (`membership` is the
very Membership object in force, so `is` tells whether it changed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prisn.messages import Role
from prisn.raft.boot import Membership
from prisn.raft.common import ROLE, State
from prisn.raft.progress import NEVER, ProgressState
from prisn.raft.quorum import active_quorum
from prisn.raft.state import CoreState


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


class StatusMixin(CoreState):
    """`RaftCore.status()`: the core's state as an immutable `RaftStatus`."""

    def status(self) -> RaftStatus:
        """Immutable snapshot; cheap enough to call after every step."""
        st = self._state
        m = self._membership
        progress: dict[str, PeerStatus] = {}
        et = self.opts.election_ticks
        if st is State.LEADER:
            learners = m.learners if m else {}
            for pid, pr in self._progress.items():
                progress[pid] = PeerStatus(
                    match=pr.match, next=pr.next, inflight=len(pr.inflight),
                    state=pr.state.value, last_contact_ticks=pr.last_contact,
                    recent_active=pr.last_contact < et, is_learner=pid in learners,
                    joining=pr.last_contact >= NEVER and self._now - pr.created < et)
            quorum_ok = active_quorum(self._voters, self.id,
                                      lambda v: v in progress and progress[v].recent_active)
        else:
            quorum_ok = bool(self._leader_id) and self._leader_contact < et
        return RaftStatus(
            node_id=self.id, addr=self.addr, role=ROLE[st],
            is_learner=bool(m and self.id in m.learners), term=self._term, vote=self._vote,
            leader_id=self._leader_id, leader_addr=self.address_of(self._leader_id) or ""
            if self._leader_id else "",
            commit_index=self._commit, applied_index=self._applied, stable_index=self._stable,
            last_index=self._log.last_index, last_term=self._log.last_term,
            cluster_id=self._cluster, membership=m, progress=progress, quorum_ok=quorum_ok,
            transferee=self._transfer.target, drops=dict(self._drops),
            ticks_since_leader_contact=0 if st is State.LEADER else self._leader_contact,
            pending=len(self._pending), pre_candidate=st is State.PRE_CANDIDATE,
            fatal=self._fatal, disk_error=self._disk_error,
            snapshot_index=self._snap.index if self._snap else 0,
            snapshot_size=self._snap.size if self._snap else 0,
            log_start=self._log.snap_index + 1, snapshot_installs_sent=self.installs_sent,
            snapshot_installs_received=self.installs_received,
            snapshots_sending=sum(1 for pr in self._progress.values()
                                  if pr.state is ProgressState.SNAPSHOT)
            if st is State.LEADER else 0,
            term_start=self._term_start if st is State.LEADER else 0)
