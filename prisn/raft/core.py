"""The pure Raft core: no I/O, no clock, no threads; driven by `RaftCore.step(messages)`.

One `step()` handles a batch of inputs and returns every output, coalesced: at most one
StoreAppend, as few AppendEntries per peer as the caps allow, then Apply and replies.

This module holds the driver (step, tick), the role transitions (become_*) and the
per-role rules for votes and appends (Raft paper = §, Ongaro thesis = T). The rest lives
in parts, each with its invariants in its module doc (layout: docs/design-notes.md):
`unstable` (persistence pipeline, held messages, disk faults), `tracker` and `quorum`
(progress, commit index, check-quorum), `membership` (config codec and history), `join`
(founding, joining), `read_only` (ReadIndex), `forward` (local and forwarded requests),
`transfer` (leadership transfer), `snapshot` (send and install), `validate` (peer input),
`status` (`status()`); `state.CoreState` declares every attribute and method of all parts.
The core is driven from the raft actor's thread only.

Invariants kept here:
- Election safety (§5.2): at most one vote per term, for a log at least as up-to-date as
  ours (§5.4.1); a pre-vote (T 9.6) changes no term and no vote; leader stickiness (T
  4.2.3): no vote while we heard from a live leader within an election timeout, unless the
  request comes from a leadership transfer.
- Term rules (§5.1): a higher term makes us a follower of that term before anything else;
  a lower one is refused (a deposed leader is told our term).
- Each term opens with a NOOP entry (T 6.4); a leader that lost quorum contact for an
  election timeout steps down (check-quorum).
- Append (§5.3): the committed prefix is never truncated; a conflicting suffix is
  truncated before the leader's entries are appended; the ack waits for their sync.
- Answers are typed (`prisn.outcomes.Outcome`), never HTTP codes: the local API gets the
  outcome as it is (internal ones such as NOT_LEADER, LEADERSHIP_LOST, OUTCOME_UNKNOWN,
  NO_LEADER included); a peer gets `Outcome.wire()`, the code older nodes sent (503), so
  mixed versions interoperate. A peer's code is read with `Outcome.from_wire`.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from prisn.messages import (
    AddNode,
    AppendEntries,
    AppendResponse,
    EntryKind,
    ForwardPropose,
    ForwardReadIndex,
    ForwardRequest,
    ForwardResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    JoinRequest,
    JoinResponse,
    Msg,
    Propose,
    ReadIndex,
    RemoveNode,
    Reply,
    SnapChunkAck,
    SnapSendFailed,
    SnapshotTaken,
    StoreFailed,
    StoreFatal,
    StoreRecovered,
    StoreSynced,
    Tick,
    TimeoutNow,
    TransferLeadership,
    VoteRequest,
    VoteResponse,
)
from prisn.outcomes import Outcome
from prisn.raft.boot import BootState
from prisn.raft.common import MAX_EVENTS, NO_LEADER, NOT_LEADER, RaftOptions, SnapRef, State
from prisn.raft.forward import ACCEPTED, FORWARD_UNCONFIRMED, HELD, SEEN_FORWARDS, ForwardMixin
from prisn.raft.join import JoinMixin
from prisn.raft.log import RaftLog
from prisn.raft.membership import (
    MAX_CONFIG_BYTES,
    MAX_MEMBER_FIELD,
    MAX_MEMBERS,
    MembershipMixin,
    decode_config,
    encode_config,
    membership_from_wire,
    static_cluster_id,
)
from prisn.raft.quorum import VoteResult, vote_result
from prisn.raft.read_only import ReadOnlyMixin
from prisn.raft.snapshot import SnapshotMixin
from prisn.raft.status import StatusMixin
from prisn.raft.tracker import TrackerMixin
from prisn.raft.transfer import TransferMixin
from prisn.raft.unstable import DISK_ERROR, PersistenceMixin
from prisn.raft.validate import (
    MAX_SNAPSHOT_SIZE,
    REFUSED_LOG_TICKS,
    PeerGateMixin,
    append_problem,
    install_problem,
)

__all__ = [
    "ACCEPTED", "DISK_ERROR", "FORWARD_UNCONFIRMED", "HELD", "MAX_CONFIG_BYTES", "MAX_EVENTS",
    "MAX_MEMBERS", "MAX_MEMBER_FIELD", "MAX_SNAPSHOT_SIZE", "NO_LEADER", "NOT_LEADER",
    "REFUSED_LOG_TICKS", "SEEN_FORWARDS", "RaftCore", "RaftOptions", "SnapRef",
    "append_problem", "decode_config", "encode_config", "install_problem",
    "membership_from_wire", "static_cluster_id",
]


class RaftCore(StatusMixin, PersistenceMixin, TrackerMixin, ReadOnlyMixin, ForwardMixin, SnapshotMixin,
               MembershipMixin, JoinMixin, TransferMixin, PeerGateMixin):
    """One Raft node's decisions. Not thread-safe; call from the owning actor only.

    The parts are mixins over this object's state (one set of attributes, set up in
    `__init__`): each is read and tested alone, and subclasses (the simulator's broken
    cores) may override any hook."""

    def __init__(self, node_id: str, addr: str, opts: RaftOptions, rng: random.Random,
                 boot: BootState, *, bootstrap: bool = False,
                 initial_members: dict[str, str] | None = None,
                 join: list[str] | None = None, force_new_cluster: str | None = None,
                 found_quorum: int = 0, found_wait_ticks: int = 0) -> None:
        """`bootstrap` with `join` addresses and `found_quorum`/`found_wait_ticks` set: on an
        empty log, ask those peers first (JoinRequests) and found a new cluster only once
        `found_quorum` distinct peers answered that they hold no cluster (or, with
        `found_wait_ticks`, that many ticks passed without a cluster answering); a peer that
        answers with a cluster id vetoes founding for good and this node joins that cluster."""
        self.id = node_id
        self.addr = addr
        self.opts = opts
        self.rng = rng
        self._started = False

        # durable state (as recovered) and the log view
        li, lt = boot.log_start
        self._log = RaftLog(li, lt, boot.entries)
        self._term = boot.term
        self._vote = boot.vote
        self._commit = max(boot.commit, boot.snapshot_index)
        self._applied = boot.snapshot_index
        self._stable = self._log.last_index  # highest index known durable (prefix-wise)

        # volatile role state
        self._state = State.FOLLOWER
        self._leader_id = ""
        self._now = 0
        self._election_elapsed = 0
        self._election_timeout = opts.election_ticks
        self._leader_contact = 1 << 30  # ticks since we heard from a leader of our term
        self._votes: dict[str, bool] = {}
        self._events: list[tuple[int, str]] = []  # (logging level, text) for the shell
        self._drops: dict[str, int] = {}

        # each part's own state (see its module doc)
        self._init_membership(boot)
        self._init_snapshot(boot)
        self._init_persistence()
        self._init_tracker()
        self._init_read_only()
        self._init_transfer()
        self._init_forward(rng)  # draws the forward epoch: before the election timeout
        self._init_join(addr, bootstrap, initial_members, join, force_new_cluster,
                        found_quorum, found_wait_ticks)
        self._init_peer_gate()

        # per-step output buffers
        self._out_peer: list[Msg] = []
        self._out_local: list[Msg] = []

        self._on_config_change()
        self._reset_election_timeout()
        self._handlers: dict[type, Any] = {
            Tick: self._on_tick,
            StoreSynced: self._on_synced,
            StoreFailed: self._on_store_failed,
            StoreRecovered: self._on_store_recovered,
            StoreFatal: self._on_store_fatal,
            Propose: self._on_propose,
            ReadIndex: self._on_read_index,
            TransferLeadership: self._on_transfer,
            RemoveNode: self._on_remove,
            AddNode: self._on_add,
            VoteRequest: self._on_vote_request,
            VoteResponse: self._on_vote_response,
            AppendEntries: self._on_append,
            AppendResponse: self._on_append_response,
            TimeoutNow: self._on_timeout_now,
            ForwardPropose: self._voters_only(self._on_forward_propose),
            ForwardReadIndex: self._voters_only(self._on_forward_read),
            ForwardRequest: self._voters_only(self._on_forward_request),
            ForwardResponse: self._on_forward_response,
            JoinRequest: self._on_join_request,
            JoinResponse: self._on_join_response,
            SnapshotTaken: self._on_snapshot_taken,
            SnapSendFailed: self._on_snap_send_failed,
            SnapChunkAck: self._on_snap_chunk_ack,
            InstallSnapshot: self._on_install_snapshot,
            InstallSnapshotResponse: self._on_install_snapshot_response,
        }

    def startup(self) -> list[Msg]:
        """Outputs due at start: bootstrap/static/force-new-cluster entries, replay Apply,
        first JoinRequests. Idempotent (a second call only flushes)."""
        if not self._started:
            self._started = True
            self._do_startup()
        return self._flush()

    def step(self, msgs: list[Msg]) -> list[Msg]:
        """Handle a batch of inputs; return all outputs (StoreAppend first)."""
        if not self._started:
            self._started = True
            self._do_startup()
        handlers = self._handlers
        for m in msgs:
            h = handlers.get(type(m))
            if h is None:
                self._drop("unknown_type")
                continue
            if self._fatal and not isinstance(m, (Propose, ReadIndex, TransferLeadership,
                                                  RemoveNode, AddNode)):
                continue
            if hasattr(m, "cluster"):
                self._on_peer(m, h)
            else:
                h(m)
        return self._flush()

    def handle(self, msg: Msg) -> list[Msg]:
        return self.step([msg])

    def address_of(self, node_id: str) -> str | None:
        """Advertised raft address of `node_id` (membership first, then join redirects)."""
        if node_id == self.id:
            return self.addr
        m = self._membership
        if m is not None:
            a = m.address_of(node_id)
            if a:
                return a
        return self._known_addrs.get(node_id)

    @property
    def log(self) -> RaftLog:
        return self._log

    @property
    def term(self) -> int:
        return self._term

    @property
    def commit_index(self) -> int:
        return self._commit

    @property
    def is_leader(self) -> bool:
        return self._state is State.LEADER

    @property
    def disk_error(self) -> str:
        """Why the log cannot be written ("" while it can)."""
        return self._disk_error

    def _event(self, level: int, text: str) -> None:
        """A cluster event for the shell to log once (the core itself does no I/O here)."""
        if len(self._events) >= MAX_EVENTS:
            del self._events[0]
        self._events.append((level, text))

    def take_events(self) -> list[tuple[int, str]]:
        """Cluster events since the last call, oldest first: (logging level, text)."""
        ev, self._events = self._events, []
        return ev

    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def _reply(self, rid: int, ok: bool, code: Outcome = Outcome.OK, reason: str = "",
               index: int = 0) -> None:
        """Answer the local API: `code` as it is (internal outcomes included: same node)."""
        self._out_local.append(Reply(src="raft", dst="api", rid=rid, ok=ok, code=code,
                                     reason=reason, index=index))

    def _respond(self, origin: str, rid: int, ok: bool, code: Outcome = Outcome.OK,
                 reason: str = "", index: int = 0) -> None:
        """Answer a request from the local API (`origin` == self) or a forwarding peer; a
        peer gets `code.wire()` (an internal outcome as the code older nodes sent)."""
        if origin == self.id:
            self._reply(rid, ok, code, reason, index)
        else:
            self._out_peer.append(ForwardResponse(
                src=self.id, dst=origin, cluster=self._cluster, term=self._term, rid=rid,
                ok=ok, code=int(code.wire()), reason=reason, index=index))

    def _reset_election_timeout(self) -> None:
        et = self.opts.election_ticks
        self._election_timeout = et + self.rng.randrange(et)

    def _set_leader(self, lid: str) -> None:
        old = self._leader_id
        self._leader_id = lid
        watched = self._transfer.new_leader(lid)
        if watched is not None:
            w, done = watched
            if done:
                self._event(logging.INFO, f"leadership transfer to {w} done (term "
                            f"{self._term})")
            else:
                self._event(logging.WARNING, f"leadership transfer to {w} aborted: {lid} "
                            f"leads term {self._term}")
        if lid and lid != old and lid != self.id:
            self._reforward()
            if self._pending:
                self._forward_pending()

    def _become_follower(self, term: int, leader: str) -> None:
        was_leader = self._state is State.LEADER
        if was_leader:
            self._transfer.stepped_down()  # done once the target leads (see _set_leader)
        if term != self._term:
            self._term = term
            self._vote = ""
            self._hard_dirty = True
        self._state = State.FOLLOWER
        self._votes = {}
        if was_leader:
            self._lose_leadership()
        self._election_elapsed = 0
        self._reset_election_timeout()
        self._set_leader(leader)

    def _lose_leadership(self) -> None:
        for origin, rid in self._read_only.reset():
            self._respond(origin, rid, False, Outcome.LEADERSHIP_LOST, "leadership lost")
        for _idx, (origin, rid) in self._conf_waiters.items():
            self._respond(origin, rid, False, Outcome.OUTCOME_UNKNOWN,
                          "leadership lost; outcome unknown")
        self._conf_waiters = {}
        self._progress = {}
        self._transfer.target = ""
        self._leader_id = ""
        if self._held_fwd:
            self._release_held_forwards(accept=False)
        if self._own:
            # Our proposals not known committed may be lost with our term: propose them again
            # through the next leader (a copy that does commit is a no-op by idempotency key).
            for own in self._own.values():
                own.logged = True  # it may have been replicated: DISK_ERROR no longer true
            self._pending.extendleft(reversed(list(self._own.values())))
            self._own = {}

    def _campaign(self, pre: bool, transfer: bool = False) -> None:
        """Start a (pre-)election (§5.2, T 9.6). A pre-vote changes nothing durable."""
        if not self._promotable():
            return
        self._election_elapsed = 0
        self._reset_election_timeout()
        if self._state is State.LEADER:
            self._lose_leadership()
        self._leader_id = ""
        self._votes = {self.id: True} if self.id in self._voters else {}
        won = vote_result(self._votes, len(self._voters)) is VoteResult.WON
        if pre:
            self._state = State.PRE_CANDIDATE
            if won:
                self._campaign(pre=False)
                return
            term = self._term + 1
        else:
            self._state = State.CANDIDATE
            self._term += 1
            self._vote = self.id
            self._hard_dirty = True
            if won:
                return  # a single voter wins once its term and vote are synced (_on_synced)
            term = self._term
        li, lt = self._log.last_index, self._log.last_term
        for v in self._voters:
            if v == self.id:
                continue
            req = VoteRequest(src=self.id, dst=v, cluster=self._cluster, term=term,
                              last_index=li, last_term=lt, pre=pre, transfer=transfer)
            if pre:
                self._out_peer.append(req)
            else:
                self._send_durable(req, 0)

    def _become_leader(self) -> None:
        self._state = State.LEADER
        self._leader_id = self.id
        self._leader_contact = 0
        self._votes = {}
        self._progress = {}
        self._sync_progress()
        self._hb_elapsed = 0
        self._check_elapsed = 0
        self._transfer.target = ""
        self._read_only.reset()
        self._term_start = self._log.last_index + 1
        self._append_local([[self._term_start, self._term, int(EntryKind.NOOP), b""]])
        self._reforward()
        self._drain_pending_local()

    def _on_tick(self, _m: Msg) -> None:
        self._now += 1
        if self._leader_contact < (1 << 30):
            self._leader_contact += 1
        opts = self.opts
        if self._state is State.LEADER:
            self._leader_contact = 0
            for pr in self._progress.values():
                pr.last_contact += 1
            self._check_elapsed += 1
            if self._check_elapsed >= opts.election_ticks:
                self._check_elapsed = 0
                if opts.check_quorum and not self._quorum_active():
                    self._become_follower(self._term, "")
                    self._expire()
                    return
                for pr in self._progress.values():
                    pr.recent_active = False
            if self._transfer.target and self._transfer.tick(opts.election_ticks):
                self._abort_transfer()
            self._hb_elapsed += 1
            if self._hb_elapsed >= opts.heartbeat_ticks:
                self._broadcast_heartbeat()
            self._maybe_promote()
            self._snapshot_timers()
        else:
            self._election_elapsed += 1
            if self._election_elapsed >= self._election_timeout:
                self._election_elapsed = 0
                if self._promotable():
                    self._campaign(pre=opts.pre_vote)
                else:
                    self._reset_election_timeout()
            if self._discovering:
                self._found_elapsed += 1
                self._maybe_found()
            if self._join_addrs:
                self._join_elapsed += 1
                if self._join_elapsed >= opts.election_ticks and self._need_join():
                    self._send_joins()
        if self._unacked:
            self._check_forwards()
        self._expire()

    def _in_lease(self) -> bool:
        """Leader stickiness (T 4.2.3): we heard from a live leader within election_ticks."""
        if not self.opts.check_quorum or not self._leader_id:
            return False
        return self._state is State.LEADER or self._leader_contact < self.opts.election_ticks

    def _check_term(self, m: Any) -> bool:
        """§5.1 term rules plus pre-vote/lease exceptions; False means stop processing."""
        t = m.term
        if t > self._term:
            tp = type(m)
            if tp is VoteRequest:
                if self._in_lease() and not m.transfer:
                    self._drop("vote_in_lease")
                    return False
                if m.pre:
                    return True
                self._become_follower(t, "")
                return True
            if tp is VoteResponse and m.pre and m.granted:
                return True
            self._become_follower(t, m.src if tp in (AppendEntries, TimeoutNow, InstallSnapshot)
                                  else "")
            return True
        if t < self._term:
            tp = type(m)
            if tp is AppendEntries:
                # a deposed leader: tell it our term so it steps down (T 9.6 with pre-vote)
                self._out_peer.append(AppendResponse(
                    src=self.id, dst=m.src, cluster=m.cluster, term=self._term,
                    success=False, index=0, seq=m.seq))
            elif tp is VoteRequest and m.pre:
                self._out_peer.append(VoteResponse(src=self.id, dst=m.src, cluster=m.cluster,
                                                   term=self._term, granted=False, pre=True))
            self._drop("stale_term")
            return False
        return True

    def _on_vote_request(self, m: VoteRequest) -> None:
        """§5.2/§5.4.1 vote rules; pre-votes (T 9.6) grant without changing term or vote."""
        can_vote = (self._vote == m.src or (not self._vote and not self._leader_id)
                    or (m.pre and m.term > self._term)) and not self._disk_error
        if can_vote and self._log.is_up_to_date(m.last_index, m.last_term):
            if m.pre:
                self._out_peer.append(VoteResponse(src=self.id, dst=m.src, cluster=m.cluster,
                                                   term=m.term, granted=True, pre=True))
            else:
                if self._vote != m.src:
                    self._vote = m.src
                    self._hard_dirty = True
                self._election_elapsed = 0
                self._send_durable(VoteResponse(src=self.id, dst=m.src, cluster=m.cluster,
                                                term=self._term, granted=True), 0)
        else:
            self._out_peer.append(VoteResponse(src=self.id, dst=m.src, cluster=m.cluster,
                                               term=self._term, granted=False, pre=m.pre))

    def _on_vote_response(self, m: VoteResponse) -> None:
        if m.pre:
            if self._state is not State.PRE_CANDIDATE or (m.granted and m.term != self._term + 1):
                return
        elif self._state is not State.CANDIDATE or m.term != self._term:
            return
        if m.src not in self._voters:
            return
        self._votes[m.src] = m.granted
        result = vote_result(self._votes, len(self._voters))
        if result is VoteResult.WON:
            if m.pre:
                self._campaign(pre=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self._term, "")

    def _heard_from_leader(self, leader: str) -> None:
        """A message of the current term's leader (§5.2): follow it and reset the timers.
        Callers have already refused it on a leader (impossible under election safety)."""
        if self._state is not State.FOLLOWER:
            self._become_follower(self._term, leader)
        elif self._leader_id != leader:
            self._set_leader(leader)
        self._election_elapsed = 0
        self._leader_contact = 0

    def _on_append(self, m: AppendEntries) -> None:
        """§5.3 consistency check, conflict truncation, commit; ack after sync."""
        if self._state is State.LEADER:
            self._drop("append_to_leader")  # impossible under election safety
            return
        self._heard_from_leader(m.src)
        log = self._log
        prev, prev_term, ents = m.prev_index, m.prev_term, m.entries
        last_new = prev + len(ents)
        if prev < self._commit:
            # the committed prefix matches the leader's by Log Matching: skip it
            skip = self._commit - prev
            if skip >= len(ents):
                self._send_durable(AppendResponse(
                    src=self.id, dst=m.src, cluster=m.cluster, term=self._term,
                    success=True, index=self._commit, seq=m.seq), self._commit)
                return
            ents = ents[skip:]
            prev = self._commit
            prev_term = log.term_at(prev) or 0
        t = log.term_at(prev)
        if t is None or t != prev_term:
            hi, ht = log.reject_hint(prev, prev_term)
            self._out_peer.append(AppendResponse(
                src=self.id, dst=m.src, cluster=m.cluster, term=self._term, success=False,
                index=hi, hint_term=ht, seq=m.seq, rejected=m.prev_index))
            return
        if ents:
            c = log.find_conflict(ents)
            if c:
                if c <= log.last_index:
                    self._truncate(c)
                new = ents[c - ents[0][0]:]
                self._append_local(new)
                if self._unacked:  # a forward whose entry reached us did reach the leader
                    by_data, cmd = self._fwd_data, int(EntryKind.COMMAND)
                    for e in new:
                        if e[2] == cmd:
                            fid = by_data.get(e[3])
                            if fid is not None:
                                self._confirm_forward(fid)
        nc = min(m.commit, last_new)
        if nc > self._commit:
            self._commit = nc
        self._send_durable(AppendResponse(
            src=self.id, dst=m.src, cluster=m.cluster, term=self._term, success=True,
            index=last_new, seq=m.seq), last_new)

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        """T 3.10: campaign at once, skipping pre-vote, with transfer=True."""
        if self._state is State.LEADER or not self._promotable():
            return
        self._campaign(pre=False, transfer=True)
