"""ReadIndex on the leader (Ongaro thesis 6.4): linearizable reads without a log entry.

Part of `RaftCore` (a mixin over the core's state); raft actor thread only. Invariants:
- A read is answered only once this leader committed an entry of its term (its NOOP):
  before that its commit index may be behind the cluster's (`_reads_wait`).
- A read records (commit index, next heartbeat seq) and is answered with that index once a
  quorum of voters acknowledged a heartbeat round of at least that seq, in arrival order; a
  single voter answers at once.
- Losing leadership answers every waiting read LEADERSHIP_LOST (in `_lose_leadership`).
"""

from __future__ import annotations

from collections import deque

from prisn.raft.common import (
    PendingRead,
)
from prisn.raft.quorum import agreed_index


class ReadOnlyMixin:
    """ReadIndex of `RaftCore` (see the module doc)."""

    def _init_read_only(self) -> None:
        self._reads_wait: list[tuple[str, int]] = []  # until the term's NOOP commits
        self._reads: deque[PendingRead] = deque()
        self._read_round = False  # a heartbeat round is due at the end of this step

    def _leader_read(self, origin: str, rid: int) -> None:
        """ReadIndex (T 6.4): record (commit, next heartbeat seq) once the term committed."""
        if self._commit < self._term_start:
            self._reads_wait.append((origin, rid))
            return
        if len(self._voters) == 1 and self.id in self._voters:
            self._respond(origin, rid, True, index=self._commit)
            return
        self._reads.append(PendingRead(self._commit, self._hb_seq + 1, origin, rid))
        self._read_round = True

    def _check_reads(self) -> None:
        progress = self._progress
        ok_seq = agreed_index(self._voters, self.id, self._hb_seq,
                              lambda v: pr.acked_seq
                              if (pr := progress.get(v)) is not None else 0)
        reads = self._reads
        while reads and reads[0].seq <= ok_seq:
            r = reads.popleft()
            self._respond(r.origin, r.rid, True, index=r.index)
