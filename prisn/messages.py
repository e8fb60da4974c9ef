"""Every message that crosses an actor or node boundary, as frozen dataclasses.

Pure module: no I/O. The codec (`transport.codec`) is the only place where bytes become these
objects; it checks each field against the annotation below, so a field may only use the types
the codec knows: int, bool, str, bytes, None, and list/dict of those (see `FIELD_KINDS`).

Envelope (one CBOR map per ZeroMQ frame 0): `v` major wire version, `m` minor wire version
(omitted while 0), `t` message type, then the message's own fields (never named v, m or t).
Compatibility rule (docs/operations.md, "Rolling upgrade"): a minor version only adds
optional fields or new message types, which older nodes ignore or drop; anything else is a
new major version, which nodes of another major refuse. `src`/`dst` are node ids on peer messages and actor names inside a node.

Log entries travel as `Entry` tuples ``[index, term, kind, data]`` (see `EntryKind`); `data` is
opaque bytes to Raft and decoded only by the state machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar, TypeVar, dataclass_transform

WIRE_VERSION = 1  # major: a peer with another one is refused (dropped, counted, logged)
WIRE_MINOR = 0  # minor: optional additions only; 0 is not written (byte-identical frames)

# [index, term, kind, data]
Entry = list


class EntryKind(IntEnum):
    """What an entry's `data` holds."""

    COMMAND = 0  # CBOR {"o": origin node, "r": rid, "c": command map}
    NOOP = 1  # empty; opens every leader term
    CONFIG = 2  # CBOR Membership.to_wire()


class Role(IntEnum):
    """Raft role; the values are the seed's `raft_state` metric values (learner reports 0)."""

    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2


REGISTRY: dict[str, type[Msg]] = {}


_M = TypeVar("_M", bound="Msg")


@dataclass_transform(kw_only_default=True, frozen_default=True)
def message(type_name: str) -> Callable[[type[_M]], type[_M]]:
    """Class decorator: a frozen, slotted, keyword-only dataclass registered under `type_name`."""

    def wrap(cls: type[_M]) -> type[_M]:
        cls.T = type_name
        dc = dataclass(frozen=True, slots=True, kw_only=True)(cls)
        if type_name in REGISTRY:
            raise ValueError(f"duplicate message type {type_name}")
        REGISTRY[type_name] = dc
        return dc

    return wrap


@dataclass(frozen=True, slots=True, kw_only=True)
class Msg:
    """Base of every message. `src`/`dst`: node ids on peer messages, actor names locally."""

    T: ClassVar[str] = ""
    src: str = ""
    dst: str = ""


# --------------------------------------------------------------------------- system
@message("sys.tick")
class Tick(Msg):
    """Timer -> raft, every tick interval. The raft core counts ticks; it never reads a clock."""


@message("sys.stop")
class Stop(Msg):
    """Supervisor -> any actor: finish the current batch and leave the loop."""

    reason: str = ""


# --------------------------------------------------------------------------- api <-> raft
@message("api.propose")
class Propose(Msg):
    """API -> local raft. `data` is the encoded command entry payload (see EntryKind.COMMAND)."""

    rid: int
    data: bytes


@message("api.propose_batch")
class ProposeBatch(Msg):
    """API -> local raft: many proposals gathered in one IOLoop turn, ``[[rid, data], ...]``.

    The raft shell expands it into `Propose` messages before stepping the core; it exists
    only to save a thread hop per request under load."""

    items: list


@message("api.read_index")
class ReadIndex(Msg):
    """API -> local raft: ask for a linearizable read index (ReadIndex, Raft thesis 6.4)."""

    rid: int


@message("api.transfer")
class TransferLeadership(Msg):
    """API -> local raft: make `target` the leader (empty target: the local node asks for it)."""

    rid: int
    target: str = ""


@message("api.remove_node")
class RemoveNode(Msg):
    """API -> local raft: remove `node_id` from the configuration (forwarded to the leader)."""

    rid: int
    node_id: str


@message("api.add_node")
class AddNode(Msg):
    """API/raft -> leader raft: add `node_id` at `addr` as a learner (promoted once caught up)."""

    rid: int
    node_id: str
    addr: str


@message("raft.reply")
class Reply(Msg):
    """Raft -> API: the outcome of a request that is not a committed command.

    `ok` False carries `code` (a `prisn.outcomes.Outcome` value, internal ones included: this
    message never leaves the node; the API maps it to HTTP) and `reason`. For ReadIndex,
    `index` is the read index the API must wait to have applied before reading.
    """

    rid: int
    ok: bool
    code: int = 200
    reason: str = ""
    index: int = 0


# --------------------------------------------------------------------------- raft <-> logstore
@message("store.append")
class StoreAppend(Msg):
    """Raft -> logstore: persist in one synced batch, then answer `StoreSynced(seq)`.

    Order inside the batch: delete entries with index >= `truncate_from` (if not 0), put
    `entries`, put the hard state (`term`, `vote`, `commit`). An empty `entries` with a changed
    hard state is a valid request (a vote). The logstore may merge several requests into one
    write (group commit) and answer each seq, or only the highest (answers are cumulative).
    """

    seq: int
    term: int
    vote: str
    commit: int
    entries: list = field(default_factory=list)
    truncate_from: int = 0


@message("store.synced")
class StoreSynced(Msg):
    """Logstore -> raft: every StoreAppend with seq <= `seq` is durably on disk."""

    seq: int


@message("store.failed")
class StoreFailed(Msg):
    """Logstore -> raft: the write of requests up to `seq` failed (disk full, I/O error)."""

    seq: int
    reason: str


@message("store.recovered")
class StoreRecovered(Msg):
    """Logstore -> raft: after a `StoreFailed`, the store was reopened and a probe write
    succeeded. Nothing is written until the core answers `StoreResume` (requests that arrive
    before it are void: the core re-sends what it still needs persisted)."""

    reason: str = ""  # the failure it recovered from


@message("store.resume")
class StoreResume(Msg):
    """Raft -> logstore: the core learned of the failure and of the recovery; every request
    from here on is new. Deferred StoreCompact/StoreReset run first, then `seq` (the first
    request of the new epoch: the unsynced suffix and the current hard state) follows."""

    seq: int


@message("store.fatal")
class StoreFatal(Msg):
    """Logstore -> raft: the store cannot be trusted any more (corruption or lost synced data
    found on reopen). The node must stop (exit 1) and be repaired by an operator."""

    reason: str


# --------------------------------------------------------------------------- raft <-> fsm
@message("fsm.apply")
class Apply(Msg):
    """Raft -> state machine: apply these committed entries, in order, exactly once each."""

    entries: list


@message("fsm.applied")
class Applied(Msg):
    """State machine -> API: applied through `index`; `results` for commands this node proposed.

    Each result is ``[rid, outcome, body]`` with `outcome` a wire `prisn.outcomes.Outcome`
    value (its number is the HTTP status the API answers) and `body` the JSON-able answer.
    """

    index: int
    results: list = field(default_factory=list)


# --------------------------------------------------------------------------- raft <-> raft (peers)
@message("raft.vote")
class VoteRequest(Msg):
    """Candidate -> peer. `pre` marks a pre-vote (term not yet incremented); `transfer` marks a
    campaign started by TimeoutNow, which peers grant even while they hear from a leader."""

    cluster: str
    term: int
    last_index: int
    last_term: int
    pre: bool = False
    transfer: bool = False


@message("raft.vote_resp")
class VoteResponse(Msg):
    cluster: str
    term: int
    granted: bool
    pre: bool = False


@message("raft.append")
class AppendEntries(Msg):
    """Leader -> follower. Empty `entries` is a heartbeat. `seq` is echoed in the response and
    confirms leadership for ReadIndex rounds."""

    cluster: str
    term: int
    prev_index: int
    prev_term: int
    entries: list
    commit: int
    seq: int = 0


@message("raft.append_resp")
class AppendResponse(Msg):
    """Follower -> leader. On success `index` is the follower's match index; on reject it is
    the hint where the leader should retry (`hint_term` the follower's term at that index) and
    `rejected` the prev_index it answers, so the leader can ignore stale rejects."""

    cluster: str
    term: int
    success: bool
    index: int
    hint_term: int = 0
    seq: int = 0
    rejected: int = 0  # on reject: prev_index of the AppendEntries answered (0: unknown)


@message("raft.timeout_now")
class TimeoutNow(Msg):
    """Leader -> transfer target: start an election now (leadership transfer)."""

    cluster: str
    term: int


@message("raft.forward")
class ForwardPropose(Msg):
    """Follower -> leader: append `data` as a command on behalf of `src` (answer via fsm)."""

    cluster: str
    term: int
    rid: int
    data: bytes


@message("raft.forward_batch")
class ForwardProposeBatch(Msg):
    """Follower -> leader: the ForwardPropose messages of one raft step to one leader, as
    ``[[rid, data], ...]``. Only the raft shell (`actors/raft.py`) packs and unpacks it: the
    core sees single ForwardPropose messages. One frame and one decode per step instead of
    one per forwarded write."""

    cluster: str
    term: int
    items: list


@message("raft.forward_read")
class ForwardReadIndex(Msg):
    """Follower -> leader: ask for a read index for request `rid` of node `src`."""

    cluster: str
    term: int
    rid: int


@message("raft.forward_req")
class ForwardRequest(Msg):
    """Follower -> leader: a membership or transfer request (`op` "remove", "transfer", "add")."""

    cluster: str
    term: int
    rid: int
    op: str
    node_id: str = ""
    addr: str = ""


@message("raft.forward_resp")
class ForwardResponse(Msg):
    """Leader -> follower: outcome of a forwarded proposal/read/request (`index` for reads).

    `code` is a wire `prisn.outcomes.Outcome` value (never an internal one: the sender sends
    `Outcome.wire()`, e.g. 503 for not leader). For a proposal, ok with code 202
    (`Outcome.ACCEPTED`) only confirms that the leader has it (appended at
    `index`, or held during a leadership transfer); its result comes from the origin's own
    state machine once the entry commits."""

    cluster: str
    term: int
    rid: int
    ok: bool
    code: int = 200
    reason: str = ""
    index: int = 0


@message("raft.join")
class JoinRequest(Msg):
    """New node -> any listed peer address: please add me. `cluster` is empty for a new node;
    `fresh`: the sender's log and snapshot are empty (a wiped voter is refused)."""

    cluster: str
    term: int
    node_id: str
    addr: str
    fresh: bool = False


@message("raft.join_resp")
class JoinResponse(Msg):
    """Peer -> joining node: `ok` (added as learner), or redirect to `leader`/`leader_addr`."""

    cluster: str
    term: int
    ok: bool
    leader: str = ""
    leader_addr: str = ""
    reason: str = ""


# --------------------------------------------------------------------------- snapshots
@message("store.compact")
class StoreCompact(Msg):
    """Raft -> logstore: delete log entries <= `upto` (a durable snapshot covers them).

    Ordered with StoreAppend in the same inbox; no answer (a failure is a StoreFailed)."""

    upto: int


@message("store.reset")
class StoreReset(Msg):
    """Raft -> logstore: an installed snapshot (`index`, `term`) replaces the log. Keep the
    entries after `index` if the stored log holds `index` with `term`, else drop them all; the
    log then starts at `index + 1`. No answer (a failure is a StoreFailed)."""

    index: int
    term: int


@message("snap.taken")
class SnapshotTaken(Msg):
    """State machine -> raft: a snapshot through `index` (of `term`) is durable at `path`."""

    index: int
    term: int
    snap_id: str
    path: str
    size: int


@message("snap.request")
class SnapshotRequest(Msg):
    """Raft -> state machine: take a snapshot as soon as `index` is applied (even below the
    threshold); used after --force-new-cluster so that joiners get a snapshot, not old
    configuration entries."""

    index: int


@message("snap.send")
class SnapSend(Msg):
    """Raft -> the replicator of peer `dst` (its control inbox): read `length` bytes at
    `offset` of the snapshot file `path` and send them to the peer as one InstallSnapshot.
    `cid` is the cluster id; `term` the leader's term."""

    cid: str
    term: int
    path: str
    snap_id: str
    index: int
    snap_term: int
    size: int
    offset: int
    length: int


@message("snap.send_failed")
class SnapSendFailed(Msg):
    """Replicator -> raft: the snapshot file could not be read (pruned, I/O error)."""

    peer: str
    snap_id: str
    reason: str = ""


@message("snap.chunk")
class SnapChunk(Msg):
    """Raft (follower) -> state machine: write this InstallSnapshot chunk; answer
    SnapChunkAck. When the file is complete the state machine verifies, installs and
    restores it before answering."""

    snap_id: str
    index: int
    term: int
    size: int
    offset: int
    data: bytes


@message("snap.chunk_ack")
class SnapChunkAck(Msg):
    """State machine -> raft: the next offset it needs of `snap_id`; `installed` once the
    snapshot file is in place and the state machine holds its state (then `index`, `term`,
    `membership`, `path`, `size` describe it). `error` non-empty: the transfer must restart
    from `next_offset` (0 after a checksum failure)."""

    snap_id: str
    offset: int
    next_offset: int
    installed: bool = False
    index: int = 0
    term: int = 0
    membership: dict = field(default_factory=dict)
    path: str = ""
    size: int = 0
    error: str = ""


@message("raft.snap")
class InstallSnapshot(Msg):
    """Leader -> follower: bytes `offset`.. of snapshot file `snap_id` (`size` bytes in all)
    covering the log through `index` (of term `snap_term`)."""

    cluster: str
    term: int
    index: int
    snap_term: int
    snap_id: str
    size: int
    offset: int
    data: bytes


@message("raft.snap_resp")
class InstallSnapshotResponse(Msg):
    """Follower -> leader: the next offset of `snap_id` it needs; `done` once installed (or
    not needed): the follower then holds the log through `index`."""

    cluster: str
    term: int
    snap_id: str
    offset: int  # the chunk this answers (lets the leader ignore stale answers)
    next_offset: int
    done: bool = False
    index: int = 0


# --------------------------------------------------------------------------- workloads: runner
@message("runner.desired")
class RunnerDesired(Msg):
    """-> runner: the FULL list of instances this node should run (level-triggered). Each is a
    map {id, deployment, namespace, generation, runtime, source, cwd, env, args, port}.
    `stop_grace_ms` >= 0 shortens the stop grace while fenced (negative: the node's)."""

    instances: list
    stop_grace_ms: int = -1


@message("runner.status")
class RunnerStatus(Msg):
    """Runner -> its `report_to` actor: changed instance reports of `node`, batched, each a map
    {id, node, deployment, namespace, generation, state, pid, started_at (Unix ms),
    exit_code, restarts, message}."""

    node: str
    reports: list

# --------------------------------------------------------------------------- workloads: logs
@message("logs.request")
class LogsRequest(Msg):
    """API of node `src` -> node `dst` (over the peer link, relayed by both raft shells): read
    up to `limit` bytes of `instance`'s output `stream` (stdout | stderr; absent, from an
    older node: stdout) from `offset`, or its last `tail` bytes (-1: not given). Bounds:
    `prisn.workloads.logfetch.request_error`."""

    cluster: str
    rid: int
    instance: str
    offset: int = -1
    tail: int = -1
    limit: int = 1 << 20
    stream: str = "stdout"


@message("logs.reply")
class LogsReply(Msg):
    """Node `src` -> the asking node `dst`: the answer to LogsRequest `rid`. `code` 200 with
    bytes [`offset`, `next_offset`) in `data` (at most 1 MiB), else an HTTP status and
    `reason`. `truncated`: the asked offset was older than what the files keep."""

    cluster: str
    rid: int
    code: int = 200
    reason: str = ""
    instance: str = ""
    offset: int = 0
    next_offset: int = 0
    truncated: bool = False
    data: bytes = b""


PEER_TYPES = frozenset(
    t for t, c in REGISTRY.items() if any(f.name == "cluster" for f in fields(c))
)


def fields_of(cls: type[Msg]) -> tuple[str, ...]:
    """Names of the wire fields of `cls`, in declaration order (cached on the class)."""
    cached = _FIELDS.get(cls)
    if cached is None:
        cached = tuple(f.name for f in fields(cls))
        _FIELDS[cls] = cached
    return cached


_FIELDS: dict[type, tuple[str, ...]] = {}


def to_map(msg: Msg) -> dict[str, Any]:
    """The envelope map of `msg` (not yet CBOR)."""
    d: dict[str, Any] = {"v": WIRE_VERSION, "t": msg.T}
    if WIRE_MINOR:
        d["m"] = WIRE_MINOR
    for name in fields_of(type(msg)):
        d[name] = getattr(msg, name)
    return d
