"""The persistence pipeline of the Raft core: log changes in memory, the StoreAppend that
makes them durable, the messages held until it is synced, and disk faults.

Part of `RaftCore` (a mixin: it reads and writes the core's state); runs on the raft actor's
thread only. Invariants:
- Persist before speak (§5.1 Figure 2, T 3.8): vote grants, a candidate's VoteRequests and
  successful AppendResponses leave only once the StoreSynced covering the write they depend
  on arrived (`_send_durable`, `_held`); an ack that claims entries a truncation or a
  snapshot reset removed is dropped, never released (`_drop_held_acks`).
- One step emits at most one StoreAppend (`_flush`), after any StoreReset/StoreCompact; it
  carries the current term/vote/commit, the entries changed since the last one and the
  lowest truncation point. `_stable` (the durable prefix) only grows on StoreSynced and
  never covers entries that were truncated or reset away.
- Apply only entries that are committed and locally durable (``min(commit, stable)``), in
  order, exactly once, in messages capped by `max_apply_entries`/`max_append_bytes`.
- Membership in force is the latest CONFIG entry in the log, committed or not (T 4.1):
  appending or truncating a CONFIG entry changes it at once.
- Disk faults (`StoreFailed`): the outcome of every write not yet answered `StoreSynced` is
  unknown, so none of it is ever counted or acknowledged: `stable` stays at what was synced,
  held grants/acks are dropped, no StoreAppend is emitted. A leader steps down at once (a
  single voter first drops its unsynced suffix: no other node can have it; proposals only
  in void writes fail for sure (`Outcome.DISK_ERROR`), those in the failed batch may be on
  disk after a reopen and are answered `OUTCOME_UNKNOWN` "may have committed"). DISK_ERROR
  means never applied, ever: a proposal that was in our log as leader (re-queued after
  losing leadership) gets OUTCOME_UNKNOWN. While the disk is broken the node never grants a
  vote, acknowledges an append, campaigns or accepts a proposal (DISK_ERROR); it keeps its
  place in the cluster, follows the leader in memory and forwards reads. On
  `StoreRecovered` it sends `StoreResume` and then one StoreAppend that truncates after the
  durable prefix and rewrites the rest of its log with the current hard state; nothing of
  the void epoch is ever counted as synced. `StoreFatal` (the store cannot be trusted) stops
  the node for good (`status().fatal`).
"""

from __future__ import annotations

from collections import deque

from prisn.messages import (
    AppendResponse,
    Apply,
    EntryKind,
    Msg,
    StoreAppend,
    StoreFailed,
    StoreFatal,
    StoreRecovered,
    StoreResume,
    StoreSynced,
    TimeoutNow,
)
from prisn.outcomes import Outcome
from prisn.raft.common import Request, State
from prisn.raft.membership import decode_config
from prisn.raft.quorum import VoteResult, vote_result
from prisn.raft.state import CoreState

DISK_ERROR = "the log cannot be written"  # Outcome.DISK_ERROR reason prefix (broken disk)


class PersistenceMixin(CoreState):
    """Persistence pipeline and disk faults of `RaftCore` (see the module doc)."""

    def _init_persistence(self) -> None:
        self._store_ops: list[Msg] = []  # StoreReset/StoreCompact, emitted before StoreAppend
        self._fatal = ""
        self._disk_error = ""  # non-empty from StoreFailed until StoreRecovered
        self._maybe_landed = 0  # highest index a failed write may have left on disk
        self.disk_failures = 0
        self._seq = 0  # last StoreAppend seq issued
        self._synced = 0  # highest StoreSynced seq
        self._writes: deque[tuple[int, int]] = deque()  # (seq, last index it makes durable)
        self._unsaved_from = 0  # lowest index changed in memory and not yet sent to the store
        self._trunc_from = 0
        self._hard_dirty = False
        self._hard_seq = 0  # seq of the last write carrying a term/vote change
        self._held: deque[tuple[int, Msg]] = deque()  # (seq that must be synced, message)
        self._held_now: list[Msg] = []

    def _flush(self) -> list[Msg]:
        """End of step: commit, one StoreAppend, held releases, appends, Apply, replies."""
        out: list[Msg] = []
        if self._fatal:
            out.extend(self._out_local)
            self._out_local = []
            self._out_peer = []
            self._held_now = []
            return out
        leader = self._state is State.LEADER
        if leader:
            self._leader_commit()
            leader = self._state is State.LEADER  # self-removal may have stepped us down
        if self._store_ops:
            out.extend(self._store_ops)
            self._store_ops = []
        if self._disk_error:
            # nothing can be persisted: changes stay pending for the StoreAppend after the
            # recovery, and whatever waits for a write is never sent (see _on_store_failed)
            if self._held_now:
                self._drop("unpersisted_reply")
                self._held_now = []
        elif self._unsaved_from or self._trunc_from or self._hard_dirty:
            self._seq += 1
            last = self._log.last_index
            lo = self._unsaved_from
            ents = self._log.slice(lo, last) if lo and lo <= last else []
            out.append(StoreAppend(src="raft", dst="logstore", seq=self._seq, term=self._term,
                                   vote=self._vote, commit=self._commit, entries=ents,
                                   truncate_from=self._trunc_from))
            self._writes.append((self._seq, last))
            if self._hard_dirty:
                self._hard_seq = self._seq
            self._unsaved_from = 0
            self._trunc_from = 0
            self._hard_dirty = False
        peer = self._out_peer
        if self._held_now:
            need = self._seq
            if need <= self._synced:
                peer.extend(self._held_now)
            else:
                self._held.extend((need, m) for m in self._held_now)
            self._held_now = []
        held = self._held
        while held and held[0][0] <= self._synced:
            peer.append(held.popleft()[1])
        if leader:
            self._leader_flush()
        out.extend(peer)
        self._out_peer = []
        hi = min(self._commit, self._stable)
        while hi > self._applied:
            # capped per message: a restart may replay a million entries (frame size cap)
            entries = self._log.slice(self._applied + 1, hi, self.opts.max_apply_entries,
                                      self.opts.max_append_bytes)
            last = entries[-1][0]
            out.append(Apply(src="raft", dst="fsm", entries=entries))
            self._applied = last
            self._settle_own(entries, last)
        out.extend(self._out_local)
        self._out_local = []
        return out

    def _send_durable(self, msg: Msg, index: int) -> None:
        """Emit `msg` once entries up to `index` and the current term/vote are synced.

        Never while the disk is broken: a node that cannot persist does not grant votes or
        acknowledge appends (not even durable ones: the leader would resend them forever)."""
        if self._disk_error:
            self._drop("unpersisted_reply")
            return
        if (index <= self._stable and not self._hard_dirty
                and self._hard_seq <= self._synced):
            self._out_peer.append(msg)
        else:
            self._held_now.append(msg)

    def _append_local(self, entries: list[list]) -> None:
        """Append to the in-memory log; membership takes effect at once (T 4.1)."""
        first = entries[0][0]
        self._log.append(entries)
        if not self._unsaved_from:
            self._unsaved_from = first
        changed = False
        for e in entries:
            if e[2] == EntryKind.CONFIG:
                self._configs.append((e[0], decode_config(e[3])))
                changed = True
        if changed:
            self._on_config_change()

    def _truncate(self, index: int) -> None:
        """Drop uncommitted entries >= index; revert membership; clamp durability marks."""
        if index <= self._commit:
            raise RuntimeError(f"raft: refusing to truncate committed entry {index} "
                               f"(commit {self._commit})")
        self._log.truncate_from(index)
        self._trunc_from = index if not self._trunc_from else min(self._trunc_from, index)
        self._unsaved_from = index if not self._unsaved_from else min(self._unsaved_from, index)
        if self._stable >= index:
            self._stable = index - 1
        self._writes = deque((s, min(last, index - 1)) for s, last in self._writes)
        self._drop_held_acks(index - 1)
        if self._configs and self._configs[-1][0] >= index:
            while self._configs and self._configs[-1][0] >= index:
                self._configs.pop()
            self._on_config_change()

    def _drop_held_acks(self, keep: int) -> None:
        """The log now ends at `keep` (a truncation or a snapshot reset): an acknowledgement
        still held for its sync that claims an entry past `keep` would promise entries this
        node no longer has (persist before speak), so it is dropped, not released later."""
        def stale(m: Msg) -> bool:
            return isinstance(m, AppendResponse) and m.success and m.index > keep

        if any(stale(m) for _, m in self._held) or any(stale(m) for m in self._held_now):
            self._held = deque((s, m) for s, m in self._held if not stale(m))
            self._held_now = [m for m in self._held_now if not stale(m)]
            self._drop("superseded_ack")

    def _on_synced(self, m: StoreSynced) -> None:
        if m.seq <= self._synced:
            return
        self._synced = m.seq
        writes = self._writes
        stable = self._stable
        while writes and writes[0][0] <= m.seq:
            last = writes.popleft()[1]
            if last > stable:
                stable = last
        self._stable = stable
        if (self._state is State.CANDIDATE and not self._hard_dirty and self._hard_seq <= m.seq
                and vote_result(self._votes, len(self._voters)) is VoteResult.WON):
            self._become_leader()  # self-vote alone is a quorum, and it is durable now

    def _disk_message(self) -> str:
        """The DISK_ERROR reason while the disk is broken (the API passes it to the client)."""
        return (f"{DISK_ERROR}: {self._disk_error}; this node refuses writes until it can "
                f"write its log again (it retries by itself); other nodes may accept them")

    def _maybe_committed(self) -> str:
        return (f"{self._disk_message()}; this write was already in the log and may have "
                f"committed: check before retrying")

    def _refuse_write(self, r: Request) -> None:
        """Refuse a proposal while the disk is broken: DISK_ERROR only if it was never in a
        log (it means never applied, ever), OUTCOME_UNKNOWN "may have committed" otherwise."""
        if r.logged:
            self._reply(r.rid, False, Outcome.OUTCOME_UNKNOWN, self._maybe_committed())
        else:
            self._reply(r.rid, False, Outcome.DISK_ERROR, self._disk_message())

    def _on_store_failed(self, m: StoreFailed) -> None:
        """A write failed (disk full, I/O error): its outcome, and that of every write not
        synced yet, is unknown. Keep the node in the cluster but make it promise nothing
        until `StoreRecovered` (see the module doc)."""
        if self._fatal or self._disk_error:
            return  # already broken: the logstore voids everything until StoreResume
        self._disk_error = m.reason or f"store failed at seq {m.seq}"
        self.disk_failures += 1
        # the failed batch (writes up to m.seq) may be on disk after a reopen; later writes
        # are void for sure (the logstore drops them unanswered)
        self._maybe_landed = max([last for s, last in self._writes if s <= m.seq],
                                 default=self._stable)
        self._writes.clear()  # void: never counted as synced
        self._held.clear()
        self._held_now = []
        waiting = [r for r in self._pending if r.kind == "propose"]
        self._pending = deque(r for r in self._pending if r.kind != "propose")
        for r in waiting:  # in no log yet (unless re-queued by a deposed leader)
            self._refuse_write(r)
        if self._state is State.LEADER:
            self._disk_step_down()
        elif self._state is not State.FOLLOWER:
            self._become_follower(self._term, self._leader_id)

    def _disk_step_down(self) -> None:
        """Leader with a broken disk: stop counting itself, hand over, become a follower."""
        log = self._log
        base = min(self._stable, log.last_index)
        if (set(self._voters) == {self.id} and base < log.last_index
                and base >= self._commit):
            # A single voter: the unsynced suffix exists nowhere else (learners do not count
            # and will be overwritten), so drop it now and refuse its proposals for sure.
            for idx in [i for i in self._own if i > base]:
                r = self._own.pop(idx)
                if idx <= self._maybe_landed:
                    # in the failed batch: a reopened store may hold it (and commit it)
                    self._reply(r.rid, False, Outcome.OUTCOME_UNKNOWN, self._maybe_committed())
                else:
                    self._reply(r.rid, False, Outcome.DISK_ERROR, self._disk_message())
            self._truncate(base + 1)
        best, best_match = "", -1
        for v in sorted(self._voters):
            pr = self._progress.get(v)
            if v != self.id and pr is not None and pr.match > best_match:
                best, best_match = v, pr.match
        if best and best_match == log.last_index:
            # an up-to-date voter can take over now instead of after an election timeout
            self._out_peer.append(TimeoutNow(src=self.id, dst=best, cluster=self._cluster,
                                             term=self._term))
        self._become_follower(self._term, "")

    def _on_store_recovered(self, m: StoreRecovered) -> None:
        """The logstore can write again: start a new write epoch with everything after the
        durable prefix (whatever the void writes left on disk after it is truncated)."""
        if self._fatal or not self._disk_error:
            return
        self._disk_error = ""
        base = min(self._stable, self._log.last_index)
        self._trunc_from = base + 1
        self._unsaved_from = base + 1 if base < self._log.last_index else 0
        self._hard_dirty = True
        self._store_ops.insert(0, StoreResume(src="raft", dst="logstore", seq=self._seq + 1))
        self._election_elapsed = 0
        self._reset_election_timeout()

    def _on_store_fatal(self, m: StoreFatal) -> None:
        """The store cannot be trusted (corrupt on reopen): stop acting; the node must exit."""
        self._fatal = f"log store unusable: {m.reason}"
        if self._state is State.LEADER:
            self._lose_leadership()
        self._state = State.FOLLOWER
        self._leader_id = ""
        self._held.clear()
        self._held_now = []
        for r in self._pending:
            self._reply(r.rid, False, Outcome.UNAVAILABLE, "storage failed")
        self._pending.clear()
        for r in self._fwd.values():
            if r.kind != "propose":
                self._reply(r.rid, False, Outcome.UNAVAILABLE, "storage failed")
        self._fwd.clear()
        self._fwd_data.clear()
        self._own = {}
