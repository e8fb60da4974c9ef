"""Checks of peer input before it reaches the Raft rules.

The `*_problem` functions are pure (any thread); `PeerGateMixin` is part of `RaftCore`
(raft actor thread only). Invariants:
- Malformed peer input changes nothing: an AppendEntries whose entries are not contiguous
  ``[index, term, kind, data]`` lists with sane terms, or that carries a CONFIG entry
  `decode_config` refuses, and an InstallSnapshot chunk outside its snapshot are dropped
  whole before the term rules (no append, no ack, no term change), counted in
  `status().drops` (``bad_append``, ``bad_snapshot_chunk``) and logged (rate-limited in
  ticks). So an invalid configuration never enters the log.
- A message of another cluster is dropped; a joiner takes no vote, entry or snapshot before
  a leader admitted it into that very cluster.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from prisn.messages import (
    AppendEntries,
    AppendResponse,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    JoinRequest,
    JoinResponse,
    Msg,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from prisn.raft.membership import decode_config
from prisn.raft.state import CoreState

log = logging.getLogger("prisn.raft")
MAX_SNAPSHOT_SIZE = 1 << 40  # bytes of one snapshot file (InstallSnapshot `size`)
REFUSED_LOG_TICKS = 100  # log a malformed peer message at most once per reason this often
_SNAP_ID = re.compile(r"[0-9a-f]{64}")
_ENTRY_KINDS = frozenset(int(k) for k in EntryKind)
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



class PeerGateMixin(CoreState):
    """The peer input gate of `RaftCore` (see the module doc)."""

    def _init_peer_gate(self) -> None:
        self._refused_logged: dict[str, int] = {}  # reason -> tick of its last log line

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
