"""The pure Raft core: no I/O, no clock, no threads; driven by `RaftCore.step(messages)`.

One `step()` handles a batch of inputs and returns every output, coalesced: at most one
StoreAppend, as few AppendEntries per peer as the caps allow, then Apply and replies.

Safety rules this module keeps (Raft paper = §, Ongaro thesis = T):
- Persist before speak (§5.1 Figure 2, T 3.8): vote grants, a candidate's VoteRequests and
  successful AppendResponses are held until the StoreSynced covering the write they depend on.
  A leader sends entries before its own write is done (T 10.2.1) but counts itself in the
  commit quorum only up to its synced (`stable`) index.
- A leader commits only entries of its current term by counting replicas (§5.4.2); each term
  opens with a NOOP entry (T 6.4).
- Apply only entries that are committed and locally durable, in order, exactly once.
- Membership in force is the latest CONFIG entry in the log, committed or not (T 4.1); at most
  one uncommitted change at a time, and only after the leader committed an entry of its term.
- Removing the leader: the leader appends the config without itself, keeps leading (not
  counting itself) until that entry commits, then sends TimeoutNow to the most up-to-date voter
  and steps down (T 4.2.2).
- On restart the state machine is rebuilt from the snapshot: entries from
  ``snapshot_index + 1`` up to the recovered commit index are applied again; never an entry
  at or below the snapshot index.
- Snapshots (§7): the log is compacted only after the state machine reported a durable
  snapshot (`SnapshotTaken`), never past that snapshot's index, never past the previous
  snapshot's index (so a corrupt newest file can fall back to the previous one plus the log),
  and keeping `trailing_logs` entries before it. A follower that needs compacted entries gets
  the snapshot file in chunks (InstallSnapshot, one chunk in flight, resumable by offset);
  it answers only what its state machine reported written/installed, and resets its log to
  the snapshot point only after the snapshot file is durably in place.
- Disk faults (`StoreFailed`): the outcome of every write not yet answered `StoreSynced` is
  unknown, so none of it is ever counted or acknowledged: `stable` stays at what was synced,
  held grants/acks are dropped, no StoreAppend is emitted. A leader steps down at once (a
  single voter first drops its unsynced suffix: no other node can have it; proposals only
  in void writes fail for sure (`Outcome.DISK_ERROR`), those in the failed batch may be on
  disk after a reopen and are answered `OUTCOME_UNKNOWN` "may have committed"). DISK_ERROR
  means never applied, ever: a proposal that was in our log as leader (re-queued after
  losing leadership) gets OUTCOME_UNKNOWN. While the disk is broken the node never grants a
  vote, acknowledges an append, campaigns or accepts a proposal (DISK_ERROR); it
  keeps its place in the cluster, follows the leader in memory and forwards reads. On
  `StoreRecovered` it sends `StoreResume` and then one StoreAppend that truncates after the
  durable prefix and rewrites the rest of its log with the current hard state; nothing of
  the void epoch is ever counted as synced. `StoreFatal` (the store cannot be trusted) stops
  the node for good (`status().fatal`).
- Answers are typed (`prisn.outcomes.Outcome`), never HTTP codes: the local API gets the
  outcome as it is (internal ones such as NOT_LEADER, LEADERSHIP_LOST, OUTCOME_UNKNOWN,
  NO_LEADER included); a peer gets `Outcome.wire()`, the code older nodes sent (503), so
  mixed versions interoperate. A peer's code is read with `Outcome.from_wire`.
- Malformed peer input changes nothing: an AppendEntries whose entries are not contiguous
  ``[index, term, kind, data]`` lists with sane terms, or that carries a CONFIG entry
  `decode_config` refuses, and an InstallSnapshot chunk outside its snapshot are dropped
  whole before the term rules (no append, no ack, no term change), counted in
  `status().drops` (``bad_append``, ``bad_snapshot_chunk``) and logged (rate-limited in
  ticks). So an invalid configuration never enters the log.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import re
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import cbor2

from prisn.messages import (
    AddNode,
    AppendEntries,
    AppendResponse,
    Apply,
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
    Role,
    SnapChunk,
    SnapChunkAck,
    SnapSend,
    SnapSendFailed,
    SnapshotRequest,
    SnapshotTaken,
    StoreAppend,
    StoreCompact,
    StoreFailed,
    StoreFatal,
    StoreRecovered,
    StoreReset,
    StoreResume,
    StoreSynced,
    Tick,
    TimeoutNow,
    TransferLeadership,
    VoteRequest,
    VoteResponse,
)
from prisn.outcomes import Outcome
from prisn.raft.boot import BootState, Membership
from prisn.raft.log import RaftLog
from prisn.raft.progress import NEVER, Progress, ProgressState, quorum_index, quorum_size
from prisn.raft.status import PeerStatus, RaftStatus

log = logging.getLogger("prisn.raft")

NOT_LEADER = "not leader"  # ForwardResponse reason that makes the origin retry elsewhere
# A leader's ForwardResponse(ok, code ACCEPTED) to a forwarded proposal: it is in the leader's
# log (or queued there while a leadership transfer runs). The result still comes through the
# origin's own state machine; the ack only stops the origin's resends (see _check_forwards).
ACCEPTED = Outcome.ACCEPTED
HELD = -1  # `_seen_fwd` mark of a forward held during a leadership transfer
FORWARD_UNCONFIRMED = ("the leader did not confirm the forwarded write within an election "
                       "timeout")
DISK_ERROR = "the log cannot be written"  # Outcome.DISK_ERROR reason prefix (broken disk)
NO_LEADER = "no leader or quorum"
SEEN_FORWARDS = 65536  # forwarded proposals remembered to drop network duplicates
# Bounds on what a peer may send (a message beyond them is malformed: dropped and counted)
MAX_CONFIG_BYTES = 1 << 20  # data of one CONFIG entry
MAX_MEMBERS = 1024  # voters + learners of one configuration
MAX_MEMBER_FIELD = 1024  # characters of a node id, an address or a cluster id
MAX_SNAPSHOT_SIZE = 1 << 40  # bytes of one snapshot file (InstallSnapshot `size`)
REFUSED_LOG_TICKS = 100  # log a malformed peer message at most once per reason this often
MAX_EVENTS = 256  # cluster events buffered for the shell between two steps (oldest dropped)
_SNAP_ID = re.compile(r"[0-9a-f]{64}")
_ENTRY_KINDS = frozenset(int(k) for k in EntryKind)


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


class _State(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


_ROLE = {_State.FOLLOWER: Role.FOLLOWER, _State.PRE_CANDIDATE: Role.CANDIDATE,
         _State.CANDIDATE: Role.CANDIDATE, _State.LEADER: Role.LEADER}


@dataclass(slots=True)
class _Req:
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
class _Read:
    """A ReadIndex in flight on the leader: answer `index` once a quorum acked `seq`."""

    index: int
    seq: int
    origin: str
    rid: int


def encode_config(m: Membership) -> bytes:
    """Deterministic CBOR of a membership (the data of a CONFIG entry)."""
    return cbor2.dumps(m.to_wire(), canonical=True)


def _refuse_tag(_decoder: Any, tag: Any) -> Any:
    raise ValueError(f"CBOR tag {tag.tag} in a configuration")


def _members(value: Any, what: str) -> dict[str, str]:
    """A voters/learners map: node id -> address, both non-empty bounded strings."""
    if type(value) is not dict:
        raise ValueError(f"configuration {what} must be a map, not {type(value).__name__}")
    if len(value) > MAX_MEMBERS:
        raise ValueError(f"configuration has more than {MAX_MEMBERS} {what}")
    for k, v in value.items():
        if type(k) is not str or not 0 < len(k) <= MAX_MEMBER_FIELD:
            raise ValueError(f"configuration {what}: node id {k!r:.80} is not a string of 1 "
                             f"to {MAX_MEMBER_FIELD} characters")
        if type(v) is not str or not 0 < len(v) <= MAX_MEMBER_FIELD:
            raise ValueError(f"configuration {what}: address of {k!r:.80} is not a string of "
                             f"1 to {MAX_MEMBER_FIELD} characters")
    return dict(value)


def membership_from_wire(wire: Any) -> Membership:
    """A `Membership` from its wire map (`Membership.to_wire()`), checked strictly: exactly
    the keys cluster (non-empty string), voters (at least one) and learners (maps of node
    id -> address strings), no node in both, bounded sizes. ValueError for anything else.

    Pure; any thread. Used for CONFIG entries (`decode_config`) and snapshot headers."""
    if type(wire) is not dict:
        raise ValueError(f"configuration is not a map but {type(wire).__name__}")
    if set(wire) != {"cluster", "voters", "learners"}:
        raise ValueError(f"configuration keys must be cluster, voters, learners; got "
                         f"{sorted(map(repr, wire))!s:.200}")
    cluster = wire["cluster"]
    if type(cluster) is not str or not 0 < len(cluster) <= MAX_MEMBER_FIELD:
        raise ValueError(f"configuration cluster id must be a string of 1 to "
                         f"{MAX_MEMBER_FIELD} characters")
    voters = _members(wire["voters"], "voters")
    learners = _members(wire["learners"], "learners")
    if not voters:
        raise ValueError("configuration has no voter")
    if len(voters) + len(learners) > MAX_MEMBERS:
        raise ValueError(f"configuration has more than {MAX_MEMBERS} members")
    both = voters.keys() & learners.keys()
    if both:
        raise ValueError(f"configuration lists {sorted(both)[0]!r:.80} as voter and learner")
    return Membership(cluster=cluster, voters=voters, learners=learners)


def decode_config(data: bytes) -> Membership:
    """The membership in the data of a CONFIG entry; ValueError (and only that) for
    anything malformed: not bytes, too large, not CBOR, CBOR tags, trailing bytes, or a map
    `membership_from_wire` refuses. Pure; any thread."""
    if type(data) is not bytes:
        raise ValueError(f"configuration data is {type(data).__name__}, not bytes")
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"configuration data of {len(data)} bytes is too large")
    buf = io.BytesIO(data)
    try:
        wire = cbor2.CBORDecoder(buf, tag_hook=_refuse_tag).decode()
    except Exception as e:  # noqa: BLE001 - cbor2 raises several types on garbage
        raise ValueError(f"configuration data is not CBOR: {e}") from None
    if buf.tell() != len(data):
        raise ValueError("configuration data has trailing bytes after its map")
    return membership_from_wire(wire)


def static_cluster_id(members: dict[str, str]) -> str:
    """Cluster id of a static member list: first 16 hex chars of sha256 over the canonical
    CBOR of the sorted ``[id, addr]`` pairs (identical on every node given the same list)."""
    blob = cbor2.dumps([[k, v] for k, v in sorted(members.items())], canonical=True)
    return hashlib.sha256(blob).hexdigest()[:16]


_JOIN_TYPES = (JoinRequest, JoinResponse)
_TERM_TYPES = (VoteRequest, VoteResponse, AppendEntries, AppendResponse, TimeoutNow,
               InstallSnapshot, InstallSnapshotResponse)


def _is_int(v: Any) -> bool:
    return type(v) is int or (isinstance(v, int) and not isinstance(v, bool))


def append_problem(m: AppendEntries) -> str:
    """Why an AppendEntries is malformed ("" when it is well-formed). The codec checked
    the field types; here every entry is checked: ``[index, term, kind, data]`` with
    contiguous indexes from ``prev_index + 1``, terms never decreasing, from ``prev_term`` up
    to the message's term, a known kind, bytes data, and a CONFIG entry's data must decode
    (`decode_config`): an invalid configuration must never enter the log. Pure."""
    term = m.term
    if m.prev_index < 0 or not 0 <= m.prev_term <= term or m.commit < 0 or term < 0:
        return "negative index or term, or prev_term above the message's term"
    last_term = m.prev_term
    index = m.prev_index
    for e in m.entries:
        index += 1
        if type(e) is not list or len(e) != 4:
            return f"entry {index} is not [index, term, kind, data]"
        ei, et, kind, data = e
        if not _is_int(ei) or ei != index:
            return f"entry {index} has index {ei!r:.40} (entries must be contiguous)"
        if not _is_int(et) or not last_term <= et <= term:
            return (f"entry {index} has term {et!r:.40} (terms never decrease and never "
                    f"exceed the message's term {term})")
        if not _is_int(kind) or kind not in _ENTRY_KINDS:
            return f"entry {index} has an unknown kind {kind!r:.40}"
        if type(data) is not bytes:
            return f"entry {index} data is {type(data).__name__}, not bytes"
        if kind == EntryKind.CONFIG:
            try:
                decode_config(data)
            except ValueError as exc:
                return f"entry {index} is an invalid configuration: {exc}"
        last_term = et
    return ""


def install_problem(m: InstallSnapshot) -> str:
    """Why an InstallSnapshot chunk is malformed ("" when it is well-formed): a snapshot
    id of 64 lowercase hex digits, index >= 1, 0 <= snap_term <= term, 0 < size <=
    MAX_SNAPSHOT_SIZE and the chunk inside it (0 <= offset, offset + len(data) <= size). Pure."""
    if not _SNAP_ID.fullmatch(m.snap_id):
        return f"bad snapshot id {m.snap_id!r:.80}"
    if m.index < 1 or not 0 <= m.snap_term <= m.term:
        return f"bad snapshot index {m.index} or term {m.snap_term}"
    if not 0 < m.size <= MAX_SNAPSHOT_SIZE:
        return f"snapshot size {m.size} outside 1..{MAX_SNAPSHOT_SIZE}"
    if m.offset < 0 or m.offset + len(m.data) > m.size:
        return f"chunk at {m.offset} of {len(m.data)} bytes is outside the snapshot's {m.size}"
    return ""


_PEER_CHECKS: dict[type, Any] = {AppendEntries: append_problem, InstallSnapshot: install_problem}
_PEER_CHECK_DROPS: dict[type, str] = {AppendEntries: "bad_append",
                                      InstallSnapshot: "bad_snapshot_chunk"}


class RaftCore:
    """One Raft node's decisions. Not thread-safe; call from the owning actor only."""

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
        self._bootstrap = bootstrap
        self._initial_members = dict(initial_members) if initial_members else None
        self._force_new_cluster = force_new_cluster
        self._join_addrs = [a for a in (join or []) if a and a != addr]
        self._started = False

        # durable state (as recovered) and the log view
        li, lt = boot.log_start
        self._log = RaftLog(li, lt, boot.entries)
        self._term = boot.term
        self._vote = boot.vote
        self._commit = max(boot.commit, boot.snapshot_index)
        self._applied = boot.snapshot_index
        self._stable = self._log.last_index  # highest index known durable (prefix-wise)

        # membership: (index, Membership) for the snapshot and every CONFIG entry in the log
        self._configs: list[tuple[int, Membership]] = []
        if boot.snapshot_membership is not None:
            self._configs.append((boot.snapshot_index, boot.snapshot_membership))
        for e in boot.entries:
            if e[2] == EntryKind.CONFIG and (e[0] > boot.snapshot_index
                                             or boot.snapshot_membership is None):
                try:
                    self._configs.append((e[0], decode_config(e[3])))
                except ValueError as exc:  # written before peers' entries were checked
                    raise RuntimeError(f"the stored log holds an invalid configuration entry "
                                       f"at index {e[0]} ({exc}): wipe this node's data "
                                       f"directory and let it rejoin") from None
        self._configs.sort(key=lambda c: c[0])
        # snapshots: the newest durable one we can send, the one before it (compaction
        # floor), and a follower's install in progress
        self._snap: SnapRef | None = None
        if boot.snapshot_id:
            self._snap = SnapRef(boot.snapshot_index, boot.snapshot_term, boot.snapshot_id,
                                 boot.snapshot_file, boot.snapshot_size)
        self._install_from = ""  # leader that sent the chunk being written
        self._install_cluster = ""
        self._force_compact = 0  # compact through this index at the next snapshot
        self._store_ops: list[Msg] = []  # StoreReset/StoreCompact, emitted before StoreAppend
        self.installs_sent = 0
        self.installs_received = 0
        self._membership: Membership | None = None
        self._cluster = ""
        self._voters: dict[str, str] = {}  # ordered: iteration must be deterministic
        self._known_addrs: dict[str, str] = {}

        # volatile role state
        self._state = _State.FOLLOWER
        self._leader_id = ""
        self._now = 0
        self._election_elapsed = 0
        self._election_timeout = opts.election_ticks
        self._leader_contact = 1 << 30  # ticks since we heard from a leader of our term
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, Progress] = {}
        self._hb_elapsed = 0
        self._check_elapsed = 0
        self._term_start = 0  # index of this leader's NOOP
        self._hb_seq = 0
        self._reads_wait: list[tuple[str, int]] = []
        self._reads: deque[_Read] = deque()
        self._read_round = False
        self._conf_waiters: dict[int, tuple[str, int]] = {}
        self._transferee = ""
        self._transfer_elapsed = 0
        self._timeout_now_sent = False
        self._pending: deque[_Req] = deque()
        self._fwd: dict[int, _Req] = {}  # forward id -> request, in forwarding order
        self._fwd_data: dict[bytes, int] = {}  # forwarded proposal payload -> forward id
        self._own: dict[int, _Req] = {}  # leader: index -> own proposal not yet committed
        # forward ids are unique per attempt (and across restarts, with a random epoch), so a
        # leader can tell a network duplicate from a retry
        self._fwd_epoch = rng.getrandbits(31) << 32
        self._fwd_next = 0
        # recent forwarded (src, rid) -> index appended at (0: refused, HELD: held), FIFO
        self._seen_fwd: dict[tuple[str, int], int] = {}
        self._unacked: dict[int, None] = {}  # forward ids of proposals the leader has not
        # confirmed yet, in forwarding order (entries may be stale: checked against _fwd)
        self._held_fwd: list[ForwardPropose] = []  # leader: forwards held during a transfer
        self._join_elapsed = 0
        # founding and joining (join/bootstrap paths only)
        self._found_quorum = found_quorum
        self._found_wait = found_wait_ticks
        self._discovering = False  # bootstrap deferred until peers answered (see __init__)
        self._found_elapsed = 0
        self._fresh_peers: set[str] = set()  # ids of peers that answered: no cluster
        self._admitted = ""  # cluster whose leader accepted our JoinRequest
        self._join_refused = ""  # last refusal reason logged by this joiner
        self._join_refusals_logged: dict[tuple[str, str], int] = {}  # leader side, bounded
        self._transfer_watch = ""  # stepped down while transferring to this node
        self._events: list[tuple[int, str]] = []  # (logging level, text) for the shell
        self._drops: dict[str, int] = {}
        self._refused_logged: dict[str, int] = {}  # reason -> tick of its last log line
        self._fatal = ""
        self._disk_error = ""  # non-empty from StoreFailed until StoreRecovered
        self._maybe_landed = 0  # highest index a failed write may have left on disk
        self.disk_failures = 0

        # persistence pipeline
        self._seq = 0  # last StoreAppend seq issued
        self._synced = 0  # highest StoreSynced seq
        self._writes: deque[tuple[int, int]] = deque()  # (seq, last index it makes durable)
        self._unsaved_from = 0  # lowest index changed in memory and not yet sent to the store
        self._trunc_from = 0
        self._hard_dirty = False
        self._hard_seq = 0  # seq of the last write carrying a term/vote change
        self._held: deque[tuple[int, Msg]] = deque()  # (seq that must be synced, message)
        self._held_now: list[Msg] = []
        self._removed_logged = False

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

    def _voters_only(self, handler: Any) -> Any:
        """Wrap a forward handler: only a voter of the current configuration may forward
        a request (a proposal, a read, a membership or transfer request). Anything else (a
        stranger on an unkeyed peer port, a removed node, a learner not yet promoted) is
        dropped and counted as `forward_from_non_voter`, before it can change anything."""
        def guarded(m: Msg) -> None:
            if m.src not in self._voters:
                self._drop("forward_from_non_voter")
                return
            handler(m)
        return guarded

    # ================================================================== public API
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

    def status(self) -> RaftStatus:
        """Immutable snapshot; cheap enough to call after every step."""
        st = self._state
        m = self._membership
        progress: dict[str, PeerStatus] = {}
        et = self.opts.election_ticks
        if st is _State.LEADER:
            learners = m.learners if m else {}
            for pid, pr in self._progress.items():
                progress[pid] = PeerStatus(
                    match=pr.match, next=pr.next, inflight=len(pr.inflight),
                    state=pr.state.value, last_contact_ticks=pr.last_contact,
                    recent_active=pr.last_contact < et, is_learner=pid in learners,
                    joining=pr.last_contact >= NEVER and self._now - pr.created < et)
            active = sum(1 for v in self._voters
                         if v == self.id or (v in progress and progress[v].recent_active))
            quorum_ok = active >= quorum_size(len(self._voters))
        else:
            quorum_ok = bool(self._leader_id) and self._leader_contact < et
        return RaftStatus(
            node_id=self.id, addr=self.addr, role=_ROLE[st],
            is_learner=bool(m and self.id in m.learners), term=self._term, vote=self._vote,
            leader_id=self._leader_id, leader_addr=self.address_of(self._leader_id) or ""
            if self._leader_id else "",
            commit_index=self._commit, applied_index=self._applied, stable_index=self._stable,
            last_index=self._log.last_index, last_term=self._log.last_term,
            cluster_id=self._cluster, membership=m, progress=progress, quorum_ok=quorum_ok,
            transferee=self._transferee, drops=dict(self._drops),
            ticks_since_leader_contact=0 if st is _State.LEADER else self._leader_contact,
            pending=len(self._pending), pre_candidate=st is _State.PRE_CANDIDATE,
            fatal=self._fatal, disk_error=self._disk_error, snapshot_index=self._snap.index if self._snap else 0,
            snapshot_size=self._snap.size if self._snap else 0,
            log_start=self._log.snap_index + 1, snapshot_installs_sent=self.installs_sent,
            snapshot_installs_received=self.installs_received,
            snapshots_sending=sum(1 for pr in self._progress.values()
                                  if pr.state is ProgressState.SNAPSHOT)
            if st is _State.LEADER else 0,
            term_start=self._term_start if st is _State.LEADER else 0)

    # read-only views for tests and the simulator
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
        return self._state is _State.LEADER

    @property
    def disk_error(self) -> str:
        """Why the log cannot be written ("" while it can)."""
        return self._disk_error

    # ================================================================== startup
    def _do_startup(self) -> None:
        empty = self._empty_log()
        if (empty and self._bootstrap and self._join_addrs
                and (self._found_quorum > 0 or self._found_wait > 0)):
            self._discovering = True
            when = (f"{self._found_quorum} of them answer that they hold none"
                    if self._found_quorum else
                    f"{self._found_wait} ticks pass with no cluster answering")
            self._event(logging.INFO, f"empty data dir: asking {len(self._join_addrs)} listed "
                        f"peer(s) whether a cluster exists before founding one (founds once "
                        f"{when})")
        elif empty and (self._bootstrap or self._initial_members):
            self._found()
        elif self._force_new_cluster:
            cur = self._membership
            fid = self._force_new_cluster
            if not (cur and cur.cluster == fid and set(cur.voters) == {self.id}
                    and not cur.learners):
                # a fresh term that only we can lead: we vote for ourselves in the same write
                self._term += 1
                self._vote = self.id
                self._hard_dirty = True
                m = Membership(cluster=fid, voters={self.id: self.addr})
                idx = self._log.last_index + 1
                self._append_local([[idx, self._term, int(EntryKind.CONFIG), encode_config(m)]])
                if idx > 1:
                    # joiners must get a snapshot of this point, not the old cluster's
                    # configuration entries: snapshot as soon as it applies, compact through it
                    self._force_compact = idx
                    self._out_local.append(SnapshotRequest(src="raft", dst="fsm", index=idx))
                self._state = _State.CANDIDATE
                self._votes = {self.id: True}  # leader once this write is synced
        if self._need_join():
            self._send_joins()

    def _empty_log(self) -> bool:
        return self._log.last_index == 0 and self._log.snap_index == 0

    def _found(self) -> None:
        """Write the first configuration of a new cluster (bootstrap or static list)."""
        self._discovering = False
        if self._bootstrap:
            cid = f"{self.rng.getrandbits(64):016x}"
            m = Membership(cluster=cid, voters={self.id: self.addr})
        else:
            members = self._initial_members or {}
            m = Membership(cluster=static_cluster_id(members), voters=dict(members))
        if self._term < 1:
            self._term = 1
            self._hard_dirty = True
        self._append_local([[1, 1, int(EntryKind.CONFIG), encode_config(m)]])
        self._event(logging.INFO, f"founded a new cluster {m.cluster} with voters "
                    f"{', '.join(sorted(m.voters))}")
        if self._bootstrap:
            self._campaign(pre=self.opts.pre_vote)

    def _maybe_found(self) -> None:
        """Discovering: found once enough peers said they hold no cluster (or time is up)."""
        if not self._discovering or not self._empty_log():
            return
        if ((self._found_quorum > 0 and len(self._fresh_peers) >= self._found_quorum)
                or (self._found_wait > 0 and self._found_elapsed >= self._found_wait)):
            self._found()

    def _event(self, level: int, text: str) -> None:
        """A cluster event for the shell to log once (the core itself does no I/O here)."""
        if len(self._events) >= MAX_EVENTS:
            del self._events[0]
        self._events.append((level, text))

    def take_events(self) -> list[tuple[int, str]]:
        """Cluster events since the last call, oldest first: (logging level, text)."""
        ev, self._events = self._events, []
        return ev

    # ================================================================== flush
    def _flush(self) -> list[Msg]:
        """End of step: commit, one StoreAppend, held releases, appends, Apply, replies."""
        out: list[Msg] = []
        if self._fatal:
            out.extend(self._out_local)
            self._out_local = []
            self._out_peer = []
            self._held_now = []
            return out
        leader = self._state is _State.LEADER
        if leader:
            self._leader_commit()
            leader = self._state is _State.LEADER  # self-removal may have stepped us down
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

    def _settle_own(self, entries: list, hi: int) -> None:
        """Forget our proposals that are now committed: forwarded ones (matched by payload)
        and the ones we appended as leader (by index). Whatever is left when leadership
        changes is proposed again (`_reforward`, `_lose_leadership`)."""
        if self._fwd_data:
            fwd, by_data, cmd = self._fwd, self._fwd_data, int(EntryKind.COMMAND)
            for e in entries:
                if e[2] == cmd:
                    fid = by_data.pop(e[3], None)
                    if fid is not None:
                        fwd.pop(fid, None)
        own = self._own
        while own:
            idx = next(iter(own))
            if idx > hi:
                break
            del own[idx]

    def _leader_flush(self) -> None:
        """Leader part of a flush: reads, heartbeat round, AppendEntries per peer."""
        if self._reads_wait and self._commit >= self._term_start:
            waiting = self._reads_wait
            self._reads_wait = []
            for origin, rid in waiting:
                self._leader_read(origin, rid)
        if self._read_round:
            self._read_round = False
            self._broadcast_heartbeat()
        for pid, pr in self._progress.items():
            self._send_to(pid, pr)
        if self._reads:
            self._check_reads()

    # ================================================================== helpers: output
    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def _refuse(self, reason: str, m: Msg, why: str) -> None:
        """Drop a malformed peer message before it changes anything: counted under
        `reason` in `status().drops`, logged at most once per REFUSED_LOG_TICKS per reason
        (ticks, not a clock: the core stays deterministic)."""
        self._drop(reason)
        last = self._refused_logged.get(reason)
        if last is None or self._now - last >= REFUSED_LOG_TICKS:
            self._refused_logged[reason] = self._now
            log.warning("raft: dropped a malformed %s from %.64r: %.300s (%d dropped so far)",
                        m.T, m.src, why, self._drops[reason])

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

    # ================================================================== helpers: log
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

    def _on_config_change(self) -> None:
        m = self._configs[-1][1] if self._configs else None
        self._membership = m
        if m is not None:
            self._cluster = m.cluster
            self._voters = m.voters
        else:
            self._voters = {}
        if self._state is _State.LEADER:
            self._sync_progress()
            if self._transferee and self._transferee not in self._voters:
                self._abort_transfer("it is no longer a voter")

    def _conf_index(self) -> int:
        return self._configs[-1][0] if self._configs else 0

    def _promotable(self) -> bool:
        """May we campaign? Voters may; so may a server removed by a config entry that is not
        committed yet (T 4.2.2): it may hold the only up-to-date log the new config needs."""
        if self._fatal or self._disk_error or not self._cluster:
            return False
        if self.id in self._voters:
            return True
        cfgs = self._configs
        return (len(cfgs) >= 2 and cfgs[-1][0] > self._commit
                and self.id in cfgs[-2][1].voters)

    def _need_join(self) -> bool:
        """Send join requests? Only a node that has no configuration yet, or whose newest
        configuration is not committed and leaves it out. A node whose log holds a
        committed configuration without it was removed (or is being caught up after its
        admission): it never rejoins by itself, not even after a restart with its old data
        dir — the docs' rule is to wipe a removed node before adding it back."""
        m = self._membership
        if not self._join_addrs:
            return False
        if m is None:
            return True
        if self.id in m.members():
            return False
        if self._conf_index() <= self._commit:
            if not self._removed_logged and not self._admitted:
                self._removed_logged = True
                self._event(logging.WARNING, f"this node is not in the committed "
                            f"configuration of cluster {m.cluster} it holds (it was removed?): "
                            f"it does not rejoin by itself; if it was removed, stop it, wipe "
                            f"its data dir and start it again to add it back")
            return False
        return True

    # ================================================================== roles
    def _reset_election_timeout(self) -> None:
        et = self.opts.election_ticks
        self._election_timeout = et + self.rng.randrange(et)

    def _set_leader(self, lid: str) -> None:
        old = self._leader_id
        self._leader_id = lid
        if lid and self._transfer_watch:
            w, self._transfer_watch = self._transfer_watch, ""
            if lid == w:
                self._event(logging.INFO, f"leadership transfer to {w} done (term "
                            f"{self._term})")
            else:
                self._event(logging.WARNING, f"leadership transfer to {w} aborted: {lid} "
                            f"leads term {self._term}")
        if lid and lid != old and lid != self.id:
            self._reforward()
            if self._pending:
                self._forward_pending()

    def _reforward(self) -> None:
        """A new leader is known: send it every outstanding forward that went to another node.

        The old leader may have died with them (no answer would ever come). A proposal that
        did reach the log under the old leader may now be appended twice; the state machine
        applies a command once per idempotency key, so the copy changes nothing and returns
        the first answer. Each resend keeps the request's original age (`since`).
        """
        lid = self._leader_id
        stale = [fid for fid, r in self._fwd.items() if r.to != lid]
        for fid in stale:
            r = self._fwd.pop(fid)
            if self._fwd_data.get(r.data) == fid:
                del self._fwd_data[r.data]
            if lid == self.id:
                self._serve_local(r)
            else:
                self._forward(r)

    def _become_follower(self, term: int, leader: str) -> None:
        was_leader = self._state is _State.LEADER
        if was_leader and self._transferee:
            self._transfer_watch = self._transferee  # done once it leads (see _set_leader)
        if term != self._term:
            self._term = term
            self._vote = ""
            self._hard_dirty = True
        self._state = _State.FOLLOWER
        self._votes = {}
        if was_leader:
            self._lose_leadership()
        self._election_elapsed = 0
        self._reset_election_timeout()
        self._set_leader(leader)

    def _lose_leadership(self) -> None:
        for _origin, rid in self._reads_wait:
            self._respond(_origin, rid, False, Outcome.LEADERSHIP_LOST, "leadership lost")
        for r in self._reads:
            self._respond(r.origin, r.rid, False, Outcome.LEADERSHIP_LOST, "leadership lost")
        self._reads_wait = []
        self._reads.clear()
        self._read_round = False
        for _idx, (origin, rid) in self._conf_waiters.items():
            self._respond(origin, rid, False, Outcome.OUTCOME_UNKNOWN,
                          "leadership lost; outcome unknown")
        self._conf_waiters = {}
        self._progress = {}
        self._transferee = ""
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
        if self._state is _State.LEADER:
            self._lose_leadership()
        self._leader_id = ""
        self._votes = {self.id: True} if self.id in self._voters else {}
        won = len(self._votes) >= quorum_size(len(self._voters))
        if pre:
            self._state = _State.PRE_CANDIDATE
            if won:
                self._campaign(pre=False)
                return
            term = self._term + 1
        else:
            self._state = _State.CANDIDATE
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
        self._state = _State.LEADER
        self._leader_id = self.id
        self._leader_contact = 0
        self._votes = {}
        self._progress = {}
        self._sync_progress()
        self._hb_elapsed = 0
        self._check_elapsed = 0
        self._transferee = ""
        self._reads_wait = []
        self._reads.clear()
        self._read_round = False
        self._term_start = self._log.last_index + 1
        self._append_local([[self._term_start, self._term, int(EntryKind.NOOP), b""]])
        self._reforward()
        self._drain_pending_local()

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

    # ================================================================== tick
    def _on_tick(self, _m: Msg) -> None:
        self._now += 1
        if self._leader_contact < (1 << 30):
            self._leader_contact += 1
        opts = self.opts
        if self._state is _State.LEADER:
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
            if self._transferee:
                self._transfer_elapsed += 1
                if self._transfer_elapsed >= opts.election_ticks:
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

    def _quorum_active(self) -> bool:
        n = 0
        for v in self._voters:
            if v == self.id:
                n += 1
            else:
                pr = self._progress.get(v)
                if pr is not None and pr.recent_active:
                    n += 1
        return n >= quorum_size(len(self._voters))

    def _expire(self) -> None:
        """Fail buffered requests older than pending_ticks (NO_LEADER); forget forwarded ones."""
        limit = self._now - self.opts.pending_ticks
        pending = self._pending
        while pending and pending[0].since <= limit:
            r = pending.popleft()
            self._reply(r.rid, False, Outcome.NO_LEADER,
                        f"{NO_LEADER}: timed out waiting for a leader")
        if self._fwd:
            expired = []
            for fid, r in self._fwd.items():
                if r.since > limit:
                    break
                expired.append(fid)
            for fid in expired:
                r = self._fwd.pop(fid)
                if self._fwd_data.get(r.data) == fid:
                    del self._fwd_data[r.data]
                if r.kind != "propose":  # a forwarded proposal may have committed: no answer
                    self._reply(r.rid, False, Outcome.NO_LEADER, "timed out waiting for the leader")

    def _send_joins(self) -> None:
        self._join_elapsed = 0
        for a in self._join_addrs:
            self._out_peer.append(JoinRequest(src=self.id, dst="@" + a, cluster=self._cluster,
                                              term=self._term, node_id=self.id,
                                              addr=self.addr, fresh=self._empty_log()))

    # ================================================================== persistence inputs
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
        if (self._state is _State.CANDIDATE and not self._hard_dirty and self._hard_seq <= m.seq
                and sum(1 for g in self._votes.values() if g)
                >= quorum_size(len(self._voters))):
            self._become_leader()  # self-vote alone is a quorum, and it is durable now

    def _disk_message(self) -> str:
        """The DISK_ERROR reason while the disk is broken (the API passes it to the client)."""
        return (f"{DISK_ERROR}: {self._disk_error}; this node refuses writes until it can "
                f"write its log again (it retries by itself); other nodes may accept them")

    def _maybe_committed(self) -> str:
        return (f"{self._disk_message()}; this write was already in the log and may have "
                f"committed: check before retrying")

    def _refuse_write(self, r: _Req) -> None:
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
        if self._state is _State.LEADER:
            self._disk_step_down()
        elif self._state is not _State.FOLLOWER:
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
        if self._state is _State.LEADER:
            self._lose_leadership()
        self._state = _State.FOLLOWER
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

    # ================================================================== snapshots
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
        upto = min(m.index - self.opts.trailing_logs, prev.index if prev else 0)
        if self._force_compact and m.index >= self._force_compact:
            upto = max(upto, self._force_compact)
            self._force_compact = 0
        self._compact(min(upto, m.index))

    def _compact(self, upto: int) -> None:
        log = self._log
        if upto <= log.snap_index or upto > min(log.last_index, self._applied, self._stable):
            return
        log.compact(upto)
        cfgs = self._configs  # keep the configuration in force at the boundary and later
        k = 0
        while k + 1 < len(cfgs) and cfgs[k + 1][0] <= upto:
            k += 1
        if k:
            del cfgs[:k]
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
            length=max(0, min(self.opts.snapshot_chunk_bytes, s.size - off))))

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
        pr = self._progress.get(m.peer) if self._state is _State.LEADER else None
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
            if self._transferee == m.src:
                self._maybe_timeout_now()
            return
        if snap is None or snap.snap_id != m.snap_id or m.offset != pr.snap_offset:
            self._drop("stale_snapshot_answer")
            return
        nxt = m.next_offset
        if not 0 <= nxt < snap.size:
            nxt = 0  # complete but not installed: start over
        pr.snap_offset = nxt
        self._send_chunk(m.src, pr)

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        """Follower: hand the chunk to the state machine (it writes the file); answer when it
        reports back. A snapshot we already have (committed and durable) is acked at once."""
        if self._state is _State.LEADER:
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

    # ================================================================== local requests
    def _on_propose(self, m: Propose) -> None:
        self._submit(_Req("propose", m.rid, self._now, data=m.data))

    def _on_read_index(self, m: ReadIndex) -> None:
        self._submit(_Req("read", m.rid, self._now))

    def _on_transfer(self, m: TransferLeadership) -> None:
        target = m.target or self.id
        mem = self._membership
        if target == self.id and mem is not None and self.id in mem.learners:
            self._reply(m.rid, False, Outcome.CONFLICT, "a learner cannot lead")
            return
        if target == self.id and self._disk_error:
            self._reply(m.rid, False, Outcome.DISK_ERROR, self._disk_message())
            return
        if (target == self.id and self._state is not _State.LEADER and not self._leader_id
                and self._promotable()):
            self._campaign(pre=self.opts.pre_vote)  # no leader known: just start an election
            self._reply(m.rid, True, Outcome.OK, "election started")
            return
        self._submit(_Req("transfer", m.rid, self._now, node_id=target))

    def _on_remove(self, m: RemoveNode) -> None:
        self._submit(_Req("remove", m.rid, self._now, node_id=m.node_id))

    def _on_add(self, m: AddNode) -> None:
        self._submit(_Req("add", m.rid, self._now, node_id=m.node_id, addr=m.addr))

    def _submit(self, r: _Req) -> None:
        if self._fatal:
            self._reply(r.rid, False, Outcome.UNAVAILABLE, f"node stopped: {self._fatal}")
            return
        if self._disk_error and r.kind == "propose":
            self._refuse_write(r)
            return
        if self._state is _State.LEADER and not (self._transferee and r.kind == "propose"):
            self._serve_local(r)
            return
        m = self._membership
        if m is not None and self.id in m.learners:
            # the leader drops forwards from non-voters: say so now instead of a timeout
            self._reply(r.rid, False, Outcome.UNAVAILABLE, "this node is a learner (still "
                        "catching up, not yet a voter) and does not take requests; send "
                        "them to another member")
            return
        lid = self._leader_id
        if lid and lid != self.id:
            self._forward(r)
            return
        if len(self._pending) >= self.opts.max_pending:
            self._reply(r.rid, False, Outcome.NO_LEADER, f"{NO_LEADER}: too many pending requests")
            return
        self._pending.append(r)

    def _serve_local(self, r: _Req) -> None:
        """Leader: handle a local request now."""
        k = r.kind
        if k == "propose":
            self._own[self._append_command(r.data)] = r
        elif k == "read":
            self._leader_read(self.id, r.rid)
        elif k == "transfer":
            self._leader_transfer(self.id, r.rid, r.node_id)
        else:
            self._leader_change_req(self.id, r.rid, k, r.node_id, r.addr)

    def _forward(self, r: _Req) -> None:
        lid = self._leader_id
        self._fwd_next += 1
        fid = self._fwd_epoch | self._fwd_next
        base: dict[str, Any] = {"src": self.id, "dst": lid, "cluster": self._cluster,
                                "term": self._term,
                "rid": fid}
        k = r.kind
        msg: Msg
        if k == "propose":
            msg = ForwardPropose(data=r.data, **base)
            self._fwd_data[r.data] = fid
            self._unacked[fid] = None
        elif k == "read":
            msg = ForwardReadIndex(**base)
        else:
            msg = ForwardRequest(op=k, node_id=r.node_id, addr=r.addr, **base)
        self._out_peer.append(msg)
        r.to = lid
        r.first = r.sent = self._now
        self._fwd[fid] = r

    def _check_forwards(self) -> None:
        """Forwarded proposals the leader has not confirmed (on every tick, any role).

        A forward can be lost on a peer link that is still connecting (replicators drop what
        they cannot send at once) and nothing else would ever resend it. So each one is sent
        again, with the same forward id, every heartbeat interval: the leader drops a copy of
        one it has seen (`_seen_fwd`) and confirms it again. One not confirmed within an
        election timeout of its first send to this leader is failed with a 503 that says it
        may still commit (the client retries with its idempotency key)."""
        unacked = self._unacked
        now, opts = self._now, self.opts
        retry = max(1, opts.heartbeat_ticks)
        for fid in list(unacked):
            r = self._fwd.get(fid)
            if r is None:
                del unacked[fid]
                continue
            age = now - r.first
            if age < retry:
                break  # forwarding order: every later one is younger
            if age >= opts.election_ticks:
                del unacked[fid]
                del self._fwd[fid]
                if self._fwd_data.get(r.data) == fid:
                    del self._fwd_data[r.data]
                self._drop("forward_unconfirmed")
                self._reply(r.rid, False, Outcome.OUTCOME_UNKNOWN, FORWARD_UNCONFIRMED)
            elif now - r.sent >= retry and r.to == self._leader_id and r.to != self.id:
                r.sent = now
                self._out_peer.append(ForwardPropose(
                    src=self.id, dst=r.to, cluster=self._cluster, term=self._term, rid=fid,
                    data=r.data))

    def _confirm_forward(self, fid: int) -> None:
        self._unacked.pop(fid, None)

    def _forward_pending(self) -> None:
        pending = self._pending
        self._pending = deque()
        for r in pending:
            self._forward(r)

    def _drain_pending_local(self) -> None:
        pending = self._pending
        self._pending = deque()
        for r in pending:
            self._submit(r)

    # ================================================================== leader operations
    def _append_command(self, data: bytes) -> int:
        idx = self._log.last_index + 1
        self._append_local([[idx, self._term, int(EntryKind.COMMAND), data]])
        return idx

    def _leader_read(self, origin: str, rid: int) -> None:
        """ReadIndex (T 6.4): record (commit, next heartbeat seq) once the term committed."""
        if self._commit < self._term_start:
            self._reads_wait.append((origin, rid))
            return
        if len(self._voters) == 1 and self.id in self._voters:
            self._respond(origin, rid, True, index=self._commit)
            return
        self._reads.append(_Read(self._commit, self._hb_seq + 1, origin, rid))
        self._read_round = True

    def _check_reads(self) -> None:
        acked = [self._hb_seq if v == self.id else
                 (self._progress[v].acked_seq if v in self._progress else 0)
                 for v in self._voters]
        ok_seq = quorum_index(acked, len(self._voters))
        reads = self._reads
        while reads and reads[0].seq <= ok_seq:
            r = reads.popleft()
            self._respond(r.origin, r.rid, True, index=r.index)

    def _leader_transfer(self, origin: str, rid: int, target: str) -> None:
        """Leadership transfer (T 3.10): catch the target up, then TimeoutNow."""
        m = self._membership
        if target and target != self.id and (m is None or target not in m.members()):
            self._respond(origin, rid, False, Outcome.NOT_FOUND, f"unknown node {target}")
            return
        if m is not None and len(m.voters) < 2:
            self._respond(origin, rid, False, Outcome.CONFLICT,
                          f"no other voter to transfer to: {self.id} "
                          f"is the only voter of cluster {m.cluster}")
            return
        if not target or target == self.id:
            self._respond(origin, rid, True, Outcome.OK, "already leader")
            return
        assert m is not None  # a target other than self is a member (checked above)
        if target not in m.voters:
            self._respond(origin, rid, False, Outcome.CONFLICT, f"{target} is a learner")
            return
        self._transferee = target
        self._transfer_elapsed = 0
        self._timeout_now_sent = False
        self._event(logging.INFO, f"leadership transfer to {target} started (term "
                    f"{self._term})")
        self._maybe_timeout_now()
        self._respond(origin, rid, True, Outcome.OK, f"transferring leadership to {target}")

    def _maybe_timeout_now(self) -> None:
        t = self._transferee
        pr = self._progress.get(t)
        if pr is not None and not self._timeout_now_sent and pr.match == self._log.last_index:
            self._timeout_now_sent = True
            self._transfer_elapsed = 0  # give the target a full election timeout to win
            self._out_peer.append(TimeoutNow(src=self.id, dst=t, cluster=self._cluster,
                                             term=self._term))

    def _abort_transfer(self, why: str = "it did not take over within an election "
                        "timeout") -> None:
        if self._transferee:
            self._event(logging.WARNING, f"leadership transfer to {self._transferee} "
                        f"aborted: {why}")
        self._transferee = ""
        self._timeout_now_sent = False
        if self._state is _State.LEADER:
            self._release_held_forwards(accept=True)
            self._drain_pending_local()

    def _leader_change_req(self, origin: str, rid: int, kind: str, node_id: str,
                           addr: str) -> None:
        ok, code, reason, idx = self._leader_change(kind, node_id, addr)
        if ok and idx:
            self._conf_waiters[idx] = (origin, rid)
        else:
            self._respond(origin, rid, ok, code, reason)

    def _leader_change(self, kind: str, node_id: str, addr: str
                       ) -> tuple[bool, Outcome, str, int]:
        """Single-server membership change (T 4.1). Returns (ok, code, reason, entry index)."""
        m = self._membership
        if m is None:
            return False, Outcome.UNAVAILABLE, "no configuration", 0
        if kind == "add":
            if not node_id or not addr:
                return False, Outcome.INVALID, "node id and address are required", 0
            if m.voters.get(node_id) == addr or m.learners.get(node_id) == addr:
                return True, Outcome.OK, "already a member", 0
        elif kind == "remove":
            if node_id not in m.members():
                return False, Outcome.NOT_FOUND, f"unknown node {node_id}", 0
            if node_id in m.voters and len(m.voters) == 1:
                return False, Outcome.CONFLICT, "would leave no voter", 0
        elif kind != "promote":
            return False, Outcome.INVALID, f"unknown operation {kind}", 0
        if self._conf_index() > self._commit:
            return False, Outcome.CONFLICT, "configuration change in progress", 0
        if self._commit < self._term_start:
            return (False, Outcome.UNAVAILABLE,
                    "leader not ready: no entry of its term committed yet", 0)
        voters = dict(m.voters)
        learners = dict(m.learners)
        if kind == "add":
            if node_id in voters:
                voters[node_id] = addr
            else:
                learners[node_id] = addr
        elif kind == "remove":
            voters.pop(node_id, None)
            learners.pop(node_id, None)
        else:
            voters[node_id] = learners.pop(node_id)
        new = Membership(cluster=m.cluster, voters=voters, learners=learners)
        idx = self._log.last_index + 1
        self._append_local([[idx, self._term, int(EntryKind.CONFIG), encode_config(new)]])
        return True, Outcome.OK, "", idx

    def _maybe_promote(self) -> None:
        m = self._membership
        if (m is None or not m.learners or self._conf_index() > self._commit
                or self._commit < self._term_start):
            return
        floor = self._commit - self.opts.promote_lag
        et = self.opts.election_ticks
        for lid in m.learners:
            pr = self._progress.get(lid)
            if pr is not None and pr.last_contact < et and pr.match >= floor:
                self._leader_change("promote", lid, "")
                return

    def _leader_commit(self) -> None:
        """Advance commit to the quorum match if that entry is of our term (§5.4.2)."""
        voters = self._voters
        matches = [self._stable if v == self.id else
                   (self._progress[v].match if v in self._progress else 0) for v in voters]
        idx = quorum_index(matches, len(voters))
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

    # ================================================================== peer messages
    def _on_peer(self, m: Any, handler: Any) -> None:
        if self._cluster and m.cluster != self._cluster:
            if not (m.cluster == "" and type(m) is JoinRequest):
                self._drop("cluster_mismatch")
                return
        elif (not self._cluster and self._join_addrs and type(m) not in _JOIN_TYPES
              and (not self._admitted or m.cluster != self._admitted)):
            # A joiner (or a founder still asking its peers) takes no vote, entry or snapshot
            # before a leader accepted it into that very cluster: a wiped voter must not
            # vote again or re-acknowledge entries under its old id, and a joiner never ends
            # up in a cluster it did not join.
            self._drop("not_admitted")
            return
        check = _PEER_CHECKS.get(type(m))
        if check is not None:  # before the term rules: a malformed message changes nothing
            why = check(m)
            if why:
                self._refuse(_PEER_CHECK_DROPS[type(m)], m, why)
                return
        if isinstance(m, _TERM_TYPES) and not self._check_term(m):
            return
        handler(m)

    def _in_lease(self) -> bool:
        """Leader stickiness (T 4.2.3): we heard from a live leader within election_ticks."""
        if not self.opts.check_quorum or not self._leader_id:
            return False
        return self._state is _State.LEADER or self._leader_contact < self.opts.election_ticks

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
            if self._state is not _State.PRE_CANDIDATE or (m.granted and m.term != self._term + 1):
                return
        elif self._state is not _State.CANDIDATE or m.term != self._term:
            return
        if m.src not in self._voters:
            return
        self._votes[m.src] = m.granted
        granted = sum(1 for g in self._votes.values() if g)
        rejected = len(self._votes) - granted
        n = len(self._voters)
        q = quorum_size(n)
        if granted >= q:
            if m.pre:
                self._campaign(pre=False)
            else:
                self._become_leader()
        elif rejected > n - q:
            self._become_follower(self._term, "")

    def _heard_from_leader(self, leader: str) -> None:
        """A message of the current term's leader (§5.2): follow it and reset the timers.
        Callers have already refused it on a leader (impossible under election safety)."""
        if self._state is not _State.FOLLOWER:
            self._become_follower(self._term, leader)
        elif self._leader_id != leader:
            self._set_leader(leader)
        self._election_elapsed = 0
        self._leader_contact = 0

    def _on_append(self, m: AppendEntries) -> None:
        """§5.3 consistency check, conflict truncation, commit; ack after sync."""
        if self._state is _State.LEADER:
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

    def _peer_answered(self, peer: str) -> Progress | None:
        """Leader: the progress of a peer that answered us, marked alive for check-quorum;
        None when we do not lead or the peer is not in the configuration."""
        if self._state is not _State.LEADER:
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
                if self._transferee == m.src:
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

    def _on_timeout_now(self, m: TimeoutNow) -> None:
        """T 3.10: campaign at once, skipping pre-vote, with transfer=True."""
        if self._state is _State.LEADER or not self._promotable():
            return
        self._campaign(pre=False, transfer=True)

    def _on_forward_propose(self, m: ForwardPropose) -> None:
        """Append a follower's proposal. `rid` is the origin's per-attempt forward id: one seen
        before (appended or rejected) is a network duplicate and is dropped, so a retry after
        a reject can never be appended twice."""
        key = (m.src, m.rid)
        seen = self._seen_fwd
        leader = self._state is _State.LEADER
        if key in seen:
            self._drop("duplicate_forward")
            idx = seen[key]
            if leader and idx:  # the origin resent it: our confirmation was lost
                self._respond(m.src, m.rid, True, ACCEPTED,
                              "held during a leadership transfer" if idx == HELD else "appended",
                              max(idx, 0))
            return
        seen[key] = 0
        if len(seen) > SEEN_FORWARDS:
            del seen[next(iter(seen))]
        if not leader:
            self._respond(m.src, m.rid, False, Outcome.NOT_LEADER, NOT_LEADER)
            return
        if self._transferee:
            # Hold it until the transfer ends: appended if it aborts, refused with NOT_LEADER
            # (the origin re-forwards to the new leader) if it succeeds (_lose_leadership).
            if len(self._held_fwd) >= self.opts.max_pending:
                self._respond(m.src, m.rid, False, Outcome.NOT_LEADER, NOT_LEADER)
                return
            self._held_fwd.append(m)
            seen[key] = HELD
            self._respond(m.src, m.rid, True, ACCEPTED, "held during a leadership transfer")
            return
        self._accept_forward(m)

    def _accept_forward(self, m: ForwardPropose) -> None:
        """Leader: append a forwarded proposal and confirm it to its origin."""
        idx = self._append_command(m.data)
        key = (m.src, m.rid)
        if key in self._seen_fwd:
            self._seen_fwd[key] = idx
        self._respond(m.src, m.rid, True, ACCEPTED, "appended", idx)

    def _release_held_forwards(self, accept: bool) -> None:
        """The transfer ended: append the held forwards if it aborted and we still lead
        (`accept`), else refuse them with NOT_LEADER so their origins send them to the next
        leader."""
        held, self._held_fwd = self._held_fwd, []
        seen = self._seen_fwd
        for m in held:
            if accept:
                self._accept_forward(m)
            else:
                if (m.src, m.rid) in seen:
                    seen[m.src, m.rid] = 0
                self._respond(m.src, m.rid, False, Outcome.NOT_LEADER, NOT_LEADER)

    def _on_forward_read(self, m: ForwardReadIndex) -> None:
        if self._state is not _State.LEADER:
            self._respond(m.src, m.rid, False, Outcome.NOT_LEADER, NOT_LEADER)
            return
        self._leader_read(m.src, m.rid)

    def _on_forward_request(self, m: ForwardRequest) -> None:
        if self._state is not _State.LEADER:
            self._respond(m.src, m.rid, False, Outcome.NOT_LEADER, NOT_LEADER)
            return
        if m.op == "transfer":
            self._leader_transfer(m.src, m.rid, m.node_id or m.src)
        else:
            self._leader_change_req(m.src, m.rid, m.op, m.node_id, m.addr)

    def _on_forward_response(self, m: ForwardResponse) -> None:
        if m.ok and m.code == ACCEPTED:
            r = self._fwd.get(m.rid)
            if r is not None and r.kind == "propose":
                self._confirm_forward(m.rid)  # the result comes with the entry's commit
            return
        self._unacked.pop(m.rid, None)
        r = self._fwd.pop(m.rid, None)
        if r is None:
            return
        if self._fwd_data.get(r.data) == m.rid:
            del self._fwd_data[r.data]
        if not m.ok and m.reason == NOT_LEADER:
            # the node we forwarded to does not lead: retry with the next leader we learn
            lid = self._leader_id
            if lid and lid != m.src and lid != self.id:
                self._forward(r)
            elif self._state is _State.LEADER:
                self._submit(r)
            else:
                self._pending.append(r)
            return
        if r.kind != "propose":
            self._reply(r.rid, m.ok, Outcome.from_wire(m.code), m.reason, m.index)

    def _on_join_request(self, m: JoinRequest) -> None:
        dst = "@" + m.addr
        if self._discovering and not m.cluster and m.fresh and m.node_id != self.id:
            self._fresh_peers.add(m.node_id)  # a fresh peer asking us: it holds no cluster
            self._maybe_found()
        if self._state is _State.LEADER:
            refusal = self._join_refusal(m)
            if refusal:
                key = (m.node_id[:128] + "@" + m.addr[:256], refusal)
                if key not in self._join_refusals_logged:  # once per joiner and reason
                    if len(self._join_refusals_logged) >= MAX_EVENTS:
                        self._join_refusals_logged.clear()
                    self._join_refusals_logged[key] = self._now
                    self._event(logging.WARNING, f"refused the join of {m.node_id!r:.130} at "
                                f"{m.addr!r:.260}: {refusal}")
                ok, reason = False, refusal
            else:
                ok, _code, reason, idx = self._leader_change("add", m.node_id, m.addr)
                if ok and idx:
                    self._event(logging.INFO, f"adding {m.node_id} at {m.addr} as a learner "
                                f"(config entry {idx}); it is promoted once caught up")
            self._out_peer.append(JoinResponse(
                src=self.id, dst=dst, cluster=self._cluster, term=self._term, ok=ok,
                leader=self.id, leader_addr=self.addr, reason=reason))
            return
        lid = self._leader_id
        self._out_peer.append(JoinResponse(
            src=self.id, dst=dst, cluster=self._cluster, term=self._term, ok=False, leader=lid,
            leader_addr=(self.address_of(lid) or "") if lid else "", reason=NOT_LEADER))

    def _join_refusal(self, m: JoinRequest) -> str:
        """Leader: why `m` must not be admitted ("" to admit). A node id held by a member at
        another address is refused (two hosts with one hostname must not share a member
        entry); so is a voter whose data dir is empty (wiped): it lost its vote and the
        entries it acknowledged, and letting it back under its old id could lose committed
        writes. It is let in again once removed (docs/design-notes.md). A non-member whose
        data dir is not empty (a removed node restarted or still running, a data dir of
        another cluster) is refused too: its old log and vote must not come back."""
        mem = self._membership
        if mem is None:
            return ""
        nid = m.node_id
        cur = mem.members().get(nid)
        if cur is not None and cur != m.addr:
            return (f"node id {nid} is taken by the member at {cur} (cluster {mem.cluster}); "
                    f"give this node a unique --node-id")
        if cur is None and not m.fresh:
            return (f"node {nid} is not a member of cluster {mem.cluster} but its data dir "
                    f"is not empty (was it removed?): a removed node never rejoins with its "
                    f"old data; wipe its data dir, then start it again to add it back")
        if m.fresh and nid in mem.voters:
            return (f"node {nid} is a voter of cluster {mem.cluster} but its data dir is "
                    f"empty; remove it first (prisn cluster remove {nid}), then start it "
                    f"again to rejoin")
        return ""

    def _on_join_response(self, m: JoinResponse) -> None:
        if m.leader and m.leader_addr:
            self._known_addrs[m.leader] = m.leader_addr
        if self._discovering:
            if not m.cluster:
                if m.src != self.id:
                    self._fresh_peers.add(m.src)
                self._maybe_found()
                return
            self._discovering = False  # a cluster exists: join it, never found a second one
            self._event(logging.WARNING, f"peer {m.src} belongs to cluster {m.cluster}: "
                        f"joining it instead of founding a new cluster")
        if not self._need_join():
            return
        if m.ok:
            if self._admitted and m.cluster != self._admitted:
                self._drop("join_other_cluster")
                return
            if not self._admitted and m.cluster:
                self._admitted = m.cluster
                self._join_refused = ""
                self._event(logging.INFO, f"joined cluster {m.cluster} through leader "
                            f"{m.leader or m.src}; catching up as a learner")
            return
        if m.reason and m.reason != NOT_LEADER and m.leader == m.src:
            if m.reason != self._join_refused:
                self._join_refused = m.reason
                self._event(logging.ERROR, f"join refused by leader {m.src} of cluster "
                            f"{m.cluster}: {m.reason}")
            return
        if m.leader and m.leader != m.src and m.leader_addr and m.leader_addr != self.addr:
            self._out_peer.append(JoinRequest(src=self.id, dst="@" + m.leader_addr,
                                              cluster=self._cluster, term=self._term,
                                              node_id=self.id, addr=self.addr,
                                              fresh=self._empty_log()))
