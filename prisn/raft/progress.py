"""Per-peer replication progress (leader side) and quorum math. Pure.

A peer is in PROBE (one AppendEntries at a time, until a response or a heartbeat response
unpauses it; entered on leader start and after a reject), REPLICATE (optimistic pipelining:
`next` advances when sending, at most `max_inflight` messages unacknowledged) or SNAPSHOT
(it needs entries the leader compacted away: no AppendEntries with entries, one
InstallSnapshot chunk in flight at a time; left when the follower reports the snapshot
installed, or on a timeout/failure back to PROBE).

Invariants: ``0 <= match < next``; `inflight` holds the last index of each unacknowledged
AppendEntries in ascending order, all ``>= match``.
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


NEVER = 1 << 30  # `last_contact` of a peer never heard from


class Progress:
    """What the leader knows about one follower or learner."""

    __slots__ = ("match", "next", "state", "inflight", "probe_sent", "recent_active",
                 "last_contact", "acked_seq", "commit_sent", "last_progress", "snap",
                 "snap_offset", "snap_wait", "snap_retries", "created")

    def __init__(self, next_index: int, now: int = 0) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.inflight: deque[int] = deque()
        self.probe_sent = False
        self.recent_active = False  # heard from since the last check-quorum round
        self.last_contact = NEVER  # ticks since we last heard from the peer
        self.created = now  # tick at which this leader started tracking the peer
        self.acked_seq = 0  # highest AppendEntries.seq echoed in this term (ReadIndex)
        self.commit_sent = 0  # highest commit index told to the peer
        self.last_progress = now  # tick at which match last advanced (stall detection)
        self.snap: object | None = None  # SNAPSHOT: the snapshot being sent (core's SnapRef)
        self.snap_offset = 0  # SNAPSHOT: offset of the chunk in flight (acked bytes before it)
        self.snap_wait = 0  # SNAPSHOT: ticks since that chunk was sent
        self.snap_retries = 0

    def become_snapshot(self, snap: object) -> None:
        """Start sending `snap` from offset 0."""
        self.state = ProgressState.SNAPSHOT
        self.inflight.clear()
        self.probe_sent = False
        self.snap = snap
        self.snap_offset = 0
        self.snap_wait = 0
        self.snap_retries = 0

    def become_probe(self, next_index: int) -> None:
        """Back to one-at-a-time probing from `next_index` (> match)."""
        self.state = ProgressState.PROBE
        self.next = max(next_index, self.match + 1)
        self.inflight.clear()
        self.probe_sent = False
        self.snap = None

    def become_replicate(self) -> None:
        """Matching point found: pipeline from match + 1."""
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.inflight.clear()
        self.probe_sent = False

    def paused(self, max_inflight: int) -> bool:
        """True when no more AppendEntries with entries may be sent now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= max_inflight

    def on_ack(self, index: int, now: int) -> bool:
        """A success response up to `index`; True if match advanced."""
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()
        if index <= self.match:
            return False
        self.match = index
        self.last_progress = now
        if self.next <= index:
            self.next = index + 1
        return True


def quorum_size(voters: int) -> int:
    """Smallest majority of `voters` (0 voters: 1, which can never be reached)."""
    return voters // 2 + 1


def quorum_index(matches: list[int], voters: int) -> int:
    """The highest index that a majority of `voters` has (missing voters count as 0)."""
    q = quorum_size(voters)
    if len(matches) < q:
        return 0
    return sorted(matches, reverse=True)[q - 1]
