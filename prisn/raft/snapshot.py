"""Snapshots (Raft §7): compaction after a local snapshot, sending one to a lagging follower
in chunks, and installing one on a follower.

Part of `RaftCore` (a mixin over the core's state); raft actor thread only. Invariants:
- The log is compacted only after the state machine reported a durable snapshot
  (`SnapshotTaken`), never past that snapshot's index, never past the previous snapshot's
  index (so a corrupt newest file can fall back to the previous one plus the log), and
  keeping `trailing_logs` entries before it (`compaction_point`); never past what is
  applied and stable.
- A follower that needs compacted entries gets the snapshot file in chunks
  (InstallSnapshot, one chunk in flight, resumable by offset, resent after
  `snapshot_retry_ticks`, abandoned after `snapshot_apply_ticks` on the last chunk).
- A follower answers only what its state machine reported written/installed, and resets
  its log to the snapshot point only after the snapshot file is durably in place
  (`_install_point`), keeping the entries after it when its log holds the snapshot's
  index with the snapshot's term.
- On restart the state machine is rebuilt from the snapshot: entries from
  ``snapshot_index + 1`` up to the recovered commit index are applied again; never an entry
  at or below the snapshot index.
"""

from __future__ import annotations

from collections import deque

from prisn.messages import (
    InstallSnapshot,
    InstallSnapshotResponse,
    SnapChunk,
    SnapChunkAck,
    SnapSend,
    SnapSendFailed,
    SnapshotTaken,
    StoreCompact,
    StoreReset,
)
from prisn.raft.boot import BootState, Membership
from prisn.raft.common import SnapRef, State
from prisn.raft.log import RaftLog
from prisn.raft.membership import prune_configs
from prisn.raft.progress import Progress, ProgressState
from prisn.raft.state import CoreState


def compaction_point(index: int, trailing_logs: int, prev_index: int, force: int
                     ) -> tuple[int, bool]:
    """How far to compact once the snapshot at `index` is durable: keep `trailing_logs`
    entries before it and never go past the previous snapshot (`prev_index`, 0 if none),
    unless a forced compaction through `force` (0: none; force-new-cluster) is due, which
    this snapshot then satisfies (second value True). Never past `index`. Pure; the caller
    still caps it by what is applied and stable (`_compact`)."""
    upto = min(index - trailing_logs, prev_index)
    forced = bool(force) and index >= force
    if forced:
        upto = max(upto, force)
    return min(upto, index), forced


def chunk_length(chunk_bytes: int, size: int, offset: int) -> int:
    """Bytes of the chunk at `offset` of a `size`-byte snapshot (0 at or past its end)."""
    return max(0, min(chunk_bytes, size - offset))


def resume_offset(next_offset: int, size: int) -> int:
    """Where to send from after the follower answered `next_offset`: there, unless it is
    outside the file (complete but not installed: start over at 0)."""
    return next_offset if 0 <= next_offset < size else 0


class SnapshotMixin(CoreState):
    """Snapshot compaction, sending and installing of `RaftCore` (see the module doc)."""

    def _init_snapshot(self, boot: BootState) -> None:
        """The newest durable snapshot we can send, and a follower's install in progress."""
        self._snap: SnapRef | None = None
        if boot.snapshot_id:
            self._snap = SnapRef(boot.snapshot_index, boot.snapshot_term, boot.snapshot_id,
                                 boot.snapshot_file, boot.snapshot_size)
        self._install_from = ""  # leader that sent the chunk being written
        self._install_cluster = ""
        self._force_compact = 0  # compact through this index at the next snapshot
        self.installs_sent = 0
        self.installs_received = 0

    def _on_snapshot_taken(self, m: SnapshotTaken) -> None:
        """A local snapshot is durable: remember it, compact the log behind it (see module doc:
        not past it, not past the previous snapshot, keeping `trailing_logs`)."""
        prev = self._snap
        if prev is not None and m.index <= prev.index:
            return
        t = self._log.term_at(m.index)
        if m.index > self._applied or (t is not None and t != m.term):
            self._drop("bad_snapshot_report")  # a wiring bug; never compact on it
            return
        self._snap = SnapRef(m.index, m.term, m.snap_id, m.path, m.size)
        upto, forced = compaction_point(m.index, self.opts.trailing_logs,
                                        prev.index if prev else 0, self._force_compact)
        if forced:
            self._force_compact = 0
        self._compact(upto)

    def _compact(self, upto: int) -> None:
        log = self._log
        if upto <= log.snap_index or upto > min(log.last_index, self._applied, self._stable):
            return
        log.compact(upto)
        prune_configs(self._configs, upto)  # keep the one in force at the boundary
        self._store_ops.append(StoreCompact(src="raft", dst="logstore", upto=upto))

    def _start_snapshot(self, pid: str, pr: Progress) -> None:
        s = self._snap
        if s is None or s.index < self._log.snap_index:
            self._drop("needs_snapshot")  # cannot happen: compaction follows a snapshot
            return
        pr.become_snapshot(s)
        self._send_chunk(pid, pr)

    def _send_chunk(self, pid: str, pr: Progress, reset_wait: bool = True) -> None:
        s = pr.snap
        assert isinstance(s, SnapRef)
        off = pr.snap_offset
        if reset_wait:
            pr.snap_wait = 0
        self._out_peer.append(SnapSend(
            src=self.id, dst=pid, cid=self._cluster, term=self._term, path=s.path,
            snap_id=s.snap_id, index=s.index, snap_term=s.term, size=s.size, offset=off,
            length=chunk_length(self.opts.snapshot_chunk_bytes, s.size, off)))

    def _snapshot_timers(self) -> None:
        """Leader, every tick: resend an unanswered chunk after `snapshot_retry_ticks`
        (resuming at its offset); give up on the last chunk after `snapshot_apply_ticks`
        (the follower verifies and restores before it answers) and start over."""
        opts = self.opts
        for pid, pr in self._progress.items():
            if pr.state is not ProgressState.SNAPSHOT:
                continue
            s = pr.snap
            assert isinstance(s, SnapRef)
            pr.snap_wait += 1
            last_chunk = pr.snap_offset + opts.snapshot_chunk_bytes >= s.size
            if last_chunk and pr.snap_wait >= opts.snapshot_apply_ticks:
                self._drop("snapshot_apply_timeout")
                pr.become_probe(pr.match + 1)  # the next send starts over, newest snapshot
            elif pr.snap_wait % opts.snapshot_retry_ticks == 0:
                pr.snap_retries += 1
                self._drop("snapshot_chunk_retry")
                self._send_chunk(pid, pr, reset_wait=not last_chunk)

    def _on_snap_send_failed(self, m: SnapSendFailed) -> None:
        pr = self._progress.get(m.peer) if self._state is State.LEADER else None
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        s = pr.snap
        if not isinstance(s, SnapRef) or s.snap_id != m.snap_id:
            return
        self._drop("snapshot_unreadable")
        latest = self._snap
        if latest is not None and latest.snap_id != s.snap_id:
            pr.become_snapshot(latest)  # a newer snapshot replaced it: restart from 0
            self._send_chunk(m.peer, pr)
        else:
            pr.become_probe(pr.match + 1)

    def _on_install_snapshot_response(self, m: InstallSnapshotResponse) -> None:
        pr = self._peer_answered(m.src)
        if pr is None:
            return
        snap = pr.snap if pr.state is ProgressState.SNAPSHOT else None
        assert snap is None or isinstance(snap, SnapRef)
        if m.done:
            if snap is not None and snap.snap_id == m.snap_id:
                self.installs_sent += 1
            if m.index > pr.match and m.index <= self._log.last_index:
                pr.match = m.index
                pr.last_progress = self._now
            if pr.state is ProgressState.SNAPSHOT:
                pr.become_probe(pr.match + 1)
            elif pr.next <= pr.match:
                pr.next = pr.match + 1
            if self._transfer.target == m.src:
                self._maybe_timeout_now()
            return
        if snap is None or snap.snap_id != m.snap_id or m.offset != pr.snap_offset:
            self._drop("stale_snapshot_answer")
            return
        pr.snap_offset = resume_offset(m.next_offset, snap.size)
        self._send_chunk(m.src, pr)

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        """Follower: hand the chunk to the state machine (it writes the file); answer when it
        reports back. A snapshot we already have (committed and durable) is acked at once."""
        if self._state is State.LEADER:
            self._drop("snapshot_to_leader")  # impossible under election safety
            return
        if self._disk_error:
            self._drop("snapshot_disk_error")  # the leader retries after snapshot_retry_ticks
            return
        self._heard_from_leader(m.src)
        have = min(self._commit, self._stable)
        if m.index <= have:
            self._out_peer.append(InstallSnapshotResponse(
                src=self.id, dst=m.src, cluster=m.cluster, term=self._term, snap_id=m.snap_id,
                offset=m.offset, next_offset=m.size, done=True, index=have))
            return
        self._install_from = m.src
        self._install_cluster = m.cluster
        self._out_local.append(SnapChunk(src="raft", dst="fsm", snap_id=m.snap_id,
                                         index=m.index, term=m.snap_term, size=m.size,
                                         offset=m.offset, data=m.data))

    def _on_snap_chunk_ack(self, m: SnapChunkAck) -> None:
        dst = self._install_from
        if m.installed:
            mem = Membership.from_wire(m.membership) if m.membership else None
            self._install_point(m.index, m.term, mem,
                                SnapRef(m.index, m.term, m.snap_id, m.path, m.size))
        if not dst:
            return
        cluster = self._cluster or self._install_cluster
        self._out_peer.append(InstallSnapshotResponse(
            src=self.id, dst=dst, cluster=cluster, term=self._term, snap_id=m.snap_id,
            offset=m.offset, next_offset=m.next_offset, done=m.installed,
            index=max(m.index, min(self._commit, self._stable)) if m.installed else 0))

    def _install_point(self, index: int, term: int, mem: Membership | None,
                       ref: SnapRef) -> None:
        """The state machine now holds the snapshot (`index`, `term`): reset the log to it
        (keeping the entries after it when ours holds `index` with `term`, Raft §7)."""
        if self._snap is None or ref.index > self._snap.index:
            self._snap = ref
        if index <= self._applied:
            return  # the state machine already had it (it did not restore)
        self.installs_received += 1
        log = self._log
        if index <= log.last_index and log.term_at(index) == term:
            log.compact(index)
            cfgs = [c for c in self._configs if c[0] > index]
            if self._unsaved_from and self._unsaved_from <= index:
                self._unsaved_from = index + 1 if index < log.last_index else 0
            if self._trunc_from and self._trunc_from <= index:
                # a truncation in this step at or below the snapshot point: the StoreReset
                # (sent first) drops those entries; truncating them again after it would be
                # refused by the store as compacted (a self-inflicted disk error)
                self._trunc_from = index + 1
        else:
            self._log = RaftLog(index, term)
            self._unsaved_from = 0
            self._trunc_from = 0  # the reset drops every stored entry anyway
            # like _truncate: nothing after the snapshot point is durable any more, and a
            # write still in flight can make durable at most what survives the reset (its
            # entries after `index` are dropped by the StoreReset queued behind it)
            self._stable = index
            self._writes = deque((s, min(last, index)) for s, last in self._writes)
            self._drop_held_acks(index)
            cfgs = []
        if mem is None and self._configs:
            mem = self._configs[-1][1]  # a snapshot without membership: keep ours
        self._configs = ([(index, mem)] if mem is not None else []) + cfgs
        self._commit = max(self._commit, index)
        self._applied = index
        self._stable = max(self._stable, index)  # the snapshot file is durable
        self._hard_dirty = True
        self._store_ops.append(StoreReset(src="raft", dst="logstore", index=index, term=term))
        self._on_config_change()
