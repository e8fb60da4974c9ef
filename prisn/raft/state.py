"""The state of `RaftCore` declared once, for the type checker and for the reader.

Every part of the core (`core.py` and the mixins in `unstable`, `tracker`, `read_only`,
`forward`, `snapshot`, `membership`, `join`, `transfer`, `validate`, `status`) works on one
set of attributes; each part sets up its own in its `_init_<part>()`. `CoreState` lists
them all with their types, grouped by the part that owns them, and (for the type checker
only) the signature of every method of every part, so a part may call another's methods.
At run time it is an empty base class: nothing here holds state or code.

Generated from the parts' code (see docs/design-notes.md); keep it in step by hand when a
part gains an attribute or a method.
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prisn.messages import (
        AddNode,
        AppendEntries,
        AppendResponse,
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
        SnapChunkAck,
        SnapSendFailed,
        SnapshotTaken,
        StoreFailed,
        StoreFatal,
        StoreRecovered,
        StoreSynced,
        TimeoutNow,
        TransferLeadership,
        VoteRequest,
        VoteResponse,
    )
    from prisn.outcomes import Outcome
    from prisn.raft.boot import BootState, Membership
    from prisn.raft.common import RaftOptions, Request, SnapRef, State
    from prisn.raft.forward import SeenForwards
    from prisn.raft.log import RaftLog
    from prisn.raft.progress import Progress
    from prisn.raft.read_only import ReadOnly
    from prisn.raft.status import RaftStatus
    from prisn.raft.transfer import Transfer


class CoreState:
    """The attributes of `RaftCore` by owning part (see the module doc)."""

    # core.py
    id: str
    addr: str
    opts: RaftOptions
    rng: random.Random
    _started: bool
    _log: RaftLog
    _term: int
    _vote: str
    _commit: int
    _applied: int
    _stable: int
    _state: State
    _leader_id: str
    _now: int
    _election_elapsed: int
    _election_timeout: int
    _leader_contact: int
    _votes: dict[str, bool]
    _events: list[tuple[int, str]]
    _drops: dict[str, int]
    _out_peer: list[Msg]
    _out_local: list[Msg]
    _handlers: dict[type, Any]

    # unstable.py
    _hard_dirty: bool
    _store_ops: list[Msg]
    _fatal: str
    _disk_error: str
    _maybe_landed: int
    disk_failures: int
    _seq: int
    _synced: int
    _writes: deque[tuple[int, int]]
    _unsaved_from: int
    _trunc_from: int
    _hard_seq: int
    _held: deque[tuple[int, Msg]]
    _held_now: list[Msg]

    # tracker.py
    _progress: dict[str, Progress]
    _hb_elapsed: int
    _check_elapsed: int
    _term_start: int
    _hb_seq: int

    # read_only.py
    _read_only: ReadOnly

    # forward.py
    _own: dict[int, Request]
    _pending: deque[Request]
    _fwd: dict[int, Request]
    _fwd_data: dict[bytes, int]
    _fwd_epoch: int
    _fwd_next: int
    _seen_fwd: SeenForwards
    _unacked: dict[int, None]
    _held_fwd: list[ForwardPropose]

    # snapshot.py
    _snap: SnapRef | None
    _install_from: str
    _install_cluster: str
    _force_compact: int
    installs_sent: int
    installs_received: int

    # membership.py
    _conf_waiters: dict[int, tuple[str, int]]
    _configs: list[tuple[int, Membership]]
    _membership: Membership | None
    _cluster: str
    _voters: dict[str, str]

    # join.py
    _bootstrap: bool
    _initial_members: dict[str, str] | None
    _force_new_cluster: str | None
    _join_addrs: list[str]
    _known_addrs: dict[str, str]
    _join_elapsed: int
    _found_quorum: int
    _found_wait: int
    _discovering: bool
    _found_elapsed: int
    _fresh_peers: set[str]
    _admitted: str
    _join_refused: str
    _join_refusals_logged: dict[tuple[str, str], int]
    _removed_logged: bool

    # transfer.py
    _transfer: Transfer

    # validate.py
    _refused_logged: dict[str, int]

    if TYPE_CHECKING:  # the parts' methods, so that each may call the others

        def startup(self) -> list[Msg]:
            raise NotImplementedError

        def step(self, msgs: list[Msg]) -> list[Msg]:
            raise NotImplementedError

        def handle(self, msg: Msg) -> list[Msg]:
            raise NotImplementedError

        def address_of(self, node_id: str) -> str | None:
            raise NotImplementedError

        @property
        def log(self) -> RaftLog:
            raise NotImplementedError

        @property
        def term(self) -> int:
            raise NotImplementedError

        @property
        def commit_index(self) -> int:
            raise NotImplementedError

        @property
        def is_leader(self) -> bool:
            raise NotImplementedError

        @property
        def disk_error(self) -> str:
            raise NotImplementedError

        def _event(self, level: int, text: str) -> None:
            raise NotImplementedError

        def take_events(self) -> list[tuple[int, str]]:
            raise NotImplementedError

        def _drop(self, reason: str) -> None:
            raise NotImplementedError

        def _reply(self, rid: int, ok: bool, code: Outcome = Outcome.OK, reason: str = "",
                   index: int = 0) -> None:
            raise NotImplementedError

        def _respond(self, origin: str, rid: int, ok: bool, code: Outcome = Outcome.OK,
                     reason: str = "", index: int = 0) -> None:
            raise NotImplementedError

        def _reset_election_timeout(self) -> None:
            raise NotImplementedError

        def _set_leader(self, lid: str) -> None:
            raise NotImplementedError

        def _become_follower(self, term: int, leader: str) -> None:
            raise NotImplementedError

        def _lose_leadership(self) -> None:
            raise NotImplementedError

        def _campaign(self, pre: bool, transfer: bool = False) -> None:
            raise NotImplementedError

        def _become_leader(self) -> None:
            raise NotImplementedError

        def _on_tick(self, _m: Msg) -> None:
            raise NotImplementedError

        def _in_lease(self) -> bool:
            raise NotImplementedError

        def _check_term(self, m: Any) -> bool:
            raise NotImplementedError

        def _on_vote_request(self, m: VoteRequest) -> None:
            raise NotImplementedError

        def _on_vote_response(self, m: VoteResponse) -> None:
            raise NotImplementedError

        def _heard_from_leader(self, leader: str) -> None:
            raise NotImplementedError

        def _on_append(self, m: AppendEntries) -> None:
            raise NotImplementedError

        def _on_timeout_now(self, m: TimeoutNow) -> None:
            raise NotImplementedError

        def status(self) -> RaftStatus:
            raise NotImplementedError

        def _init_persistence(self) -> None:
            raise NotImplementedError

        def _flush(self) -> list[Msg]:
            raise NotImplementedError

        def _send_durable(self, msg: Msg, index: int) -> None:
            raise NotImplementedError

        def _append_local(self, entries: list[list]) -> None:
            raise NotImplementedError

        def _truncate(self, index: int) -> None:
            raise NotImplementedError

        def _drop_held_acks(self, keep: int) -> None:
            raise NotImplementedError

        def _on_synced(self, m: StoreSynced) -> None:
            raise NotImplementedError

        def _disk_message(self) -> str:
            raise NotImplementedError

        def _maybe_committed(self) -> str:
            raise NotImplementedError

        def _refuse_write(self, r: Request) -> None:
            raise NotImplementedError

        def _on_store_failed(self, m: StoreFailed) -> None:
            raise NotImplementedError

        def _disk_step_down(self) -> None:
            raise NotImplementedError

        def _on_store_recovered(self, m: StoreRecovered) -> None:
            raise NotImplementedError

        def _on_store_fatal(self, m: StoreFatal) -> None:
            raise NotImplementedError

        def _init_tracker(self) -> None:
            raise NotImplementedError

        def _leader_flush(self) -> None:
            raise NotImplementedError

        def _sync_progress(self) -> None:
            raise NotImplementedError

        def _quorum_active(self) -> bool:
            raise NotImplementedError

        def _leader_commit(self) -> None:
            raise NotImplementedError

        def _step_down_removed(self) -> None:
            raise NotImplementedError

        def _broadcast_heartbeat(self) -> None:
            raise NotImplementedError

        def _send_to(self, pid: str, pr: Progress) -> None:
            raise NotImplementedError

        def _peer_answered(self, peer: str) -> Progress | None:
            raise NotImplementedError

        def _on_append_response(self, m: AppendResponse) -> None:
            raise NotImplementedError

        def _init_read_only(self) -> None:
            raise NotImplementedError

        def _leader_read(self, origin: str, rid: int) -> None:
            raise NotImplementedError

        def _check_reads(self) -> None:
            raise NotImplementedError

        def _init_forward(self, rng: random.Random) -> None:
            raise NotImplementedError

        def _voters_only(self, handler: Any) -> Any:
            raise NotImplementedError

        def _on_propose(self, m: Propose) -> None:
            raise NotImplementedError

        def _on_read_index(self, m: ReadIndex) -> None:
            raise NotImplementedError

        def _on_remove(self, m: RemoveNode) -> None:
            raise NotImplementedError

        def _on_add(self, m: AddNode) -> None:
            raise NotImplementedError

        def _submit(self, r: Request) -> None:
            raise NotImplementedError

        def _serve_local(self, r: Request) -> None:
            raise NotImplementedError

        def _forward(self, r: Request) -> None:
            raise NotImplementedError

        def _check_forwards(self) -> None:
            raise NotImplementedError

        def _confirm_forward(self, fid: int) -> None:
            raise NotImplementedError

        def _forward_pending(self) -> None:
            raise NotImplementedError

        def _drain_pending_local(self) -> None:
            raise NotImplementedError

        def _reforward(self) -> None:
            raise NotImplementedError

        def _expire(self) -> None:
            raise NotImplementedError

        def _settle_own(self, entries: list, hi: int) -> None:
            raise NotImplementedError

        def _append_command(self, data: bytes) -> int:
            raise NotImplementedError

        def _on_forward_propose(self, m: ForwardPropose) -> None:
            raise NotImplementedError

        def _accept_forward(self, m: ForwardPropose) -> None:
            raise NotImplementedError

        def _release_held_forwards(self, accept: bool) -> None:
            raise NotImplementedError

        def _on_forward_read(self, m: ForwardReadIndex) -> None:
            raise NotImplementedError

        def _on_forward_request(self, m: ForwardRequest) -> None:
            raise NotImplementedError

        def _on_forward_response(self, m: ForwardResponse) -> None:
            raise NotImplementedError

        def _init_snapshot(self, boot: BootState) -> None:
            raise NotImplementedError

        def _on_snapshot_taken(self, m: SnapshotTaken) -> None:
            raise NotImplementedError

        def _compact(self, upto: int) -> None:
            raise NotImplementedError

        def _start_snapshot(self, pid: str, pr: Progress) -> None:
            raise NotImplementedError

        def _send_chunk(self, pid: str, pr: Progress, reset_wait: bool = True) -> None:
            raise NotImplementedError

        def _snapshot_timers(self) -> None:
            raise NotImplementedError

        def _on_snap_send_failed(self, m: SnapSendFailed) -> None:
            raise NotImplementedError

        def _on_install_snapshot_response(self, m: InstallSnapshotResponse) -> None:
            raise NotImplementedError

        def _on_install_snapshot(self, m: InstallSnapshot) -> None:
            raise NotImplementedError

        def _on_snap_chunk_ack(self, m: SnapChunkAck) -> None:
            raise NotImplementedError

        def _install_point(self, index: int, term: int, mem: Membership | None,
                           ref: SnapRef) -> None:
            raise NotImplementedError

        def _init_membership(self, boot: BootState) -> None:
            raise NotImplementedError

        def _on_config_change(self) -> None:
            raise NotImplementedError

        def _conf_index(self) -> int:
            raise NotImplementedError

        def _promotable(self) -> bool:
            raise NotImplementedError

        def _leader_change_req(self, origin: str, rid: int, kind: str, node_id: str,
                               addr: str) -> None:
            raise NotImplementedError

        def _leader_change(self, kind: str, node_id: str, addr: str
                           ) -> tuple[bool, Outcome, str, int]:
            raise NotImplementedError

        def _maybe_promote(self) -> None:
            raise NotImplementedError

        def _init_join(self, addr: str, bootstrap: bool, initial_members: dict[str, str] | None,
                       join: list[str] | None, force_new_cluster: str | None, found_quorum: int,
                       found_wait_ticks: int) -> None:
            raise NotImplementedError

        def _do_startup(self) -> None:
            raise NotImplementedError

        def _empty_log(self) -> bool:
            raise NotImplementedError

        def _found(self) -> None:
            raise NotImplementedError

        def _maybe_found(self) -> None:
            raise NotImplementedError

        def _need_join(self) -> bool:
            raise NotImplementedError

        def _send_joins(self) -> None:
            raise NotImplementedError

        def _on_join_request(self, m: JoinRequest) -> None:
            raise NotImplementedError

        def _join_refusal(self, m: JoinRequest) -> str:
            raise NotImplementedError

        def _on_join_response(self, m: JoinResponse) -> None:
            raise NotImplementedError

        def _init_transfer(self) -> None:
            raise NotImplementedError

        def _on_transfer(self, m: TransferLeadership) -> None:
            raise NotImplementedError

        def _leader_transfer(self, origin: str, rid: int, target: str) -> None:
            raise NotImplementedError

        def _maybe_timeout_now(self) -> None:
            raise NotImplementedError

        def _abort_transfer(self, why: str = "it did not take over within an election "
                            "timeout") -> None:
            raise NotImplementedError

        def _init_peer_gate(self) -> None:
            raise NotImplementedError

        def _refuse(self, reason: str, m: Msg, why: str) -> None:
            raise NotImplementedError

        def _on_peer(self, m: Any, handler: Any) -> None:
            raise NotImplementedError
