"""The leader's view of its followers: progress per peer, replication sends, heartbeats,
the commit index and check-quorum.

Part of `RaftCore` (a mixin over the core's state); raft actor thread only. The counting
rules themselves are pure functions in `prisn.raft.quorum`. Invariants:
- `_progress` holds exactly the members of the configuration in force other than this
  node (`_sync_progress`), voters and learners; only voters count in any quorum.
- A leader commits only entries of its current term by counting replicas (§5.4.2), and
  counts itself only up to its synced (`stable`) index (T 10.2.1: it sends entries before
  its own write is done).
- A peer's `match` only grows; `next > match`; at most `max_inflight` AppendEntries are in
  flight per peer, one probe at a time in PROBE state, nothing but snapshot chunks in
  SNAPSHOT state. A stale reject (answering an append sent before the match/probe point
  moved) never throws a pipelining follower back to probe.
- Every heartbeat round has a new `seq`; it is also the ReadIndex confirmation round.
- Removing the leader: it keeps leading (not counting itself) until that entry commits,
  then sends TimeoutNow to the most up-to-date voter and steps down (T 4.2.2).
"""

from __future__ import annotations

from prisn.messages import AppendEntries, AppendResponse, TimeoutNow
from prisn.outcomes import Outcome
from prisn.raft.common import SnapRef, State
from prisn.raft.progress import Progress, ProgressState
from prisn.raft.quorum import active_quorum, agreed_index
from prisn.raft.state import CoreState


class TrackerMixin(CoreState):
    """Leader-side progress tracking and replication of `RaftCore` (see the module doc)."""

    def _init_tracker(self) -> None:
        self._progress: dict[str, Progress] = {}
        self._hb_elapsed = 0
        self._check_elapsed = 0
        self._term_start = 0  # index of this leader's NOOP
        self._hb_seq = 0

    def _leader_flush(self) -> None:
        """Leader part of a flush: reads, heartbeat round, AppendEntries per peer."""
        reads = self._read_only
        if reads.waiting and self._commit >= self._term_start:
            for origin, rid in reads.take_waiting():
                self._leader_read(origin, rid)
        if reads.take_round():
            self._broadcast_heartbeat()
        for pid, pr in self._progress.items():
            self._send_to(pid, pr)
        if reads.queue:
            self._check_reads()

    def _sync_progress(self) -> None:
        m = self._membership
        members = m.members() if m else {}
        for pid in list(self._progress):
            if pid not in members:
                del self._progress[pid]
        nxt = self._log.last_index + 1
        for pid in members:
            if pid != self.id and pid not in self._progress:
                self._progress[pid] = Progress(nxt, self._now)

    def _quorum_active(self) -> bool:
        progress = self._progress
        return active_quorum(self._voters, self.id,
                             lambda v: (pr := progress.get(v)) is not None
                             and pr.recent_active)

    def _leader_commit(self) -> None:
        """Advance commit to the quorum match if that entry is of our term (§5.4.2)."""
        voters = self._voters
        progress = self._progress
        idx = agreed_index(voters, self.id, self._stable,
                           lambda v: pr.match
                           if (pr := progress.get(v)) is not None else 0)
        if idx > self._commit and self._log.term_at(idx) == self._term:
            self._commit = idx
            if self._conf_waiters:
                for ci in sorted(i for i in self._conf_waiters if i <= idx):
                    origin, rid = self._conf_waiters.pop(ci)
                    self._respond(origin, rid, True, Outcome.OK, "", ci)
            if self.id not in voters and self._conf_index() <= idx:
                self._step_down_removed()

    def _step_down_removed(self) -> None:
        """Our own removal committed: hand over to the most up-to-date voter and step down."""
        best, best_match = "", -1
        for v in sorted(self._voters):
            pr = self._progress.get(v)
            if pr is not None and pr.match > best_match:
                best, best_match = v, pr.match
        # flush pending appends first so the successor can be complete
        for pid, pr in self._progress.items():
            self._send_to(pid, pr)
        if best and best_match == self._log.last_index:
            self._out_peer.append(TimeoutNow(src=self.id, dst=best, cluster=self._cluster,
                                             term=self._term))
        self._become_follower(self._term, "")

    def _broadcast_heartbeat(self) -> None:
        """One heartbeat round with a new seq (also the ReadIndex confirmation round)."""
        self._hb_seq += 1
        self._hb_elapsed = 0
        commit = self._commit
        term_at = self._log.term_at
        for pid, pr in self._progress.items():
            c = min(commit, pr.match)
            self._out_peer.append(AppendEntries(
                src=self.id, dst=pid, cluster=self._cluster, term=self._term,
                prev_index=pr.match, prev_term=term_at(pr.match) or 0, entries=[], commit=c,
                seq=self._hb_seq))
            if c > pr.commit_sent:
                pr.commit_sent = c

    def _send_to(self, pid: str, pr: Progress) -> None:
        """Send what the caps allow to one peer; else a commit update if it is behind."""
        log = self._log
        last = log.last_index
        opts = self.opts
        sent = False
        if pr.state is ProgressState.SNAPSHOT:
            return
        if pr.next <= log.snap_index and pr.next <= last:
            self._start_snapshot(pid, pr)  # it needs entries we compacted away
            return
        while pr.next <= last and not pr.paused(opts.max_inflight):
            prev = pr.next - 1
            pt = log.term_at(prev)
            if pt is None:
                self._drop("needs_snapshot")
                break
            ents = log.slice(pr.next, last, opts.max_append_entries, opts.max_append_bytes)
            hi = ents[-1][0]
            self._out_peer.append(AppendEntries(
                src=self.id, dst=pid, cluster=self._cluster, term=self._term, prev_index=prev,
                prev_term=pt, entries=ents, commit=self._commit, seq=self._hb_seq))
            sent = True
            c = min(self._commit, hi)
            if c > pr.commit_sent:
                pr.commit_sent = c
            if pr.state is ProgressState.PROBE:
                pr.probe_sent = True
                break
            if not pr.inflight:
                pr.last_progress = self._now
            pr.inflight.append(hi)
            pr.next = hi + 1
        if (not sent and pr.state is ProgressState.PROBE and not pr.probe_sent
                and pr.match < last and pr.next > last):
            # nothing new to send, but the peer lacks entries: an empty probe at next - 1
            # draws a reject with a hint to backtrack from
            prev = pr.next - 1
            pt = log.term_at(prev)
            if pt is not None:
                pr.probe_sent = True
                sent = True
                self._out_peer.append(AppendEntries(
                    src=self.id, dst=pid, cluster=self._cluster, term=self._term,
                    prev_index=prev, prev_term=pt, entries=[], commit=min(self._commit, prev),
                    seq=self._hb_seq))
        if not sent:
            c = min(self._commit, pr.match)
            if c > pr.commit_sent:
                pr.commit_sent = c
                self._out_peer.append(AppendEntries(
                    src=self.id, dst=pid, cluster=self._cluster, term=self._term,
                    prev_index=pr.match, prev_term=log.term_at(pr.match) or 0, entries=[],
                    commit=c, seq=self._hb_seq))

    def _peer_answered(self, peer: str) -> Progress | None:
        """Leader: the progress of a peer that answered us, marked alive for check-quorum;
        None when we do not lead or the peer is not in the configuration."""
        if self._state is not State.LEADER:
            return None
        pr = self._progress.get(peer)
        if pr is not None:
            pr.recent_active = True
            pr.last_contact = 0
        return pr

    def _on_append_response(self, m: AppendResponse) -> None:
        pr = self._peer_answered(m.src)
        if pr is None:
            return
        if m.seq > pr.acked_seq:
            pr.acked_seq = m.seq
        last = self._log.last_index
        if m.success:
            if pr.on_ack(m.index, self._now):
                if pr.state is ProgressState.SNAPSHOT:
                    snap = pr.snap
                    if isinstance(snap, SnapRef) and pr.match >= snap.index:
                        pr.become_probe(pr.match + 1)  # caught up without the snapshot
                elif pr.state is ProgressState.PROBE:
                    pr.become_replicate()
                if self._transfer.target == m.src:
                    self._maybe_timeout_now()
            elif pr.match < last and pr.state is not ProgressState.SNAPSHOT:
                if pr.state is ProgressState.PROBE:
                    pr.probe_sent = False  # the probe may have been lost: resend
                elif pr.inflight and self._now - pr.last_progress >= self.opts.election_ticks:
                    pr.become_probe(pr.match + 1)  # stalled pipeline: messages were lost
        elif pr.state is not ProgressState.SNAPSHOT:
            rej = m.rejected  # 0: a peer that does not say which append it rejects
            if rej and (rej < pr.match if pr.state is ProgressState.REPLICATE
                        else rej != pr.next - 1):
                # stale (etcd's MaybeDecrTo): it answers an append sent before the match or
                # probe point moved; a reordered or duplicated reject must not throw a
                # pipelining follower back to probe. A probe may have been lost: resend.
                # (Unlike etcd's, our heartbeats carry prev = match: a reject AT match is
                # news, e.g. the entry there was compacted away here and it needs a snapshot.)
                self._drop("stale_reject")
                if pr.state is ProgressState.PROBE:
                    pr.probe_sent = False
                return
            k = self._log.find_le_term(m.index, m.hint_term)
            pr.become_probe(min(k + 1, pr.next))
