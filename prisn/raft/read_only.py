"""ReadIndex on the leader (Ongaro thesis 6.4): linearizable reads without a log entry.

`ReadOnly` is the queue itself (etcd's `readOnly`): pure, explicit inputs, any thread that
owns it. `ReadOnlyMixin` is its use by `RaftCore` (raft actor thread only). Invariants:
- A read is answered only once this leader committed an entry of its term (its NOOP):
  before that its commit index may be behind the cluster's (`ReadOnly.waiting`).
- A read records (commit index, next heartbeat seq) and is answered with that index once a
  quorum of voters acknowledged a heartbeat round of at least that seq, in arrival order; a
  single voter answers at once.
- Gaining or losing leadership forgets every read; losing it answers each one
  LEADERSHIP_LOST (waiting ones first, then queued ones, in arrival order).
"""

from __future__ import annotations

from collections import deque

from prisn.raft.common import PendingRead
from prisn.raft.quorum import agreed_index
from prisn.raft.state import CoreState


class ReadOnly:
    """The leader's reads: waiting for its term's first commit, or queued for a quorum
    round. `round_due` is set when a queued read needs a new heartbeat round."""

    __slots__ = ("waiting", "queue", "round_due")

    def __init__(self) -> None:
        self.waiting: list[tuple[str, int]] = []  # (origin, rid) until the NOOP commits
        self.queue: deque[PendingRead] = deque()  # ascending seq
        self.round_due = False

    def add(self, index: int, seq: int, origin: str, rid: int) -> None:
        """Queue a read of `index`, confirmed by a quorum ack of heartbeat round `seq`."""
        self.queue.append(PendingRead(index, seq, origin, rid))
        self.round_due = True

    def take_waiting(self) -> list[tuple[str, int]]:
        """The reads that waited for the term's first commit, oldest first; none remain."""
        waiting, self.waiting = self.waiting, []
        return waiting

    def take_round(self) -> bool:
        """Is a heartbeat round due? (It is then no longer due.)"""
        due, self.round_due = self.round_due, False
        return due

    def confirmed(self, acked_seq: int) -> list[PendingRead]:
        """Remove and return the queued reads a quorum ack of round `acked_seq` confirms."""
        out = []
        queue = self.queue
        while queue and queue[0].seq <= acked_seq:
            out.append(queue.popleft())
        return out

    def reset(self) -> list[tuple[str, int]]:
        """Forget every read; return (origin, rid) of each, waiting ones first."""
        dropped = self.waiting + [(r.origin, r.rid) for r in self.queue]
        self.waiting = []
        self.queue.clear()
        self.round_due = False
        return dropped


class ReadOnlyMixin(CoreState):
    """ReadIndex of `RaftCore` over its `ReadOnly` queue (see the module doc)."""

    def _init_read_only(self) -> None:
        self._read_only = ReadOnly()

    def _leader_read(self, origin: str, rid: int) -> None:
        """ReadIndex (T 6.4): record (commit, next heartbeat seq) once the term committed."""
        if self._commit < self._term_start:
            self._read_only.waiting.append((origin, rid))
            return
        if len(self._voters) == 1 and self.id in self._voters:
            self._respond(origin, rid, True, index=self._commit)
            return
        self._read_only.add(self._commit, self._hb_seq + 1, origin, rid)

    def _check_reads(self) -> None:
        """Answer the reads the voters' acknowledged heartbeat rounds confirm."""
        progress = self._progress
        ok_seq = agreed_index(self._voters, self.id, self._hb_seq,
                              lambda v: pr.acked_seq
                              if (pr := progress.get(v)) is not None else 0)
        for r in self._read_only.confirmed(ok_seq):
            self._respond(r.origin, r.rid, True, index=r.index)
