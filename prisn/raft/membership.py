"""Cluster membership: the CONFIG entry codec and the configuration history, and
single-server changes (Ongaro thesis 4.1).

The codec functions are pure (any thread); `MembershipMixin` is part of `RaftCore` (raft
actor thread only). Invariants:
- A CONFIG entry's data is the canonical CBOR of `Membership.to_wire()`; `decode_config`
  accepts nothing else (no tags, no trailing bytes, bounded sizes, at least one voter, no
  node both voter and learner) and raises only ValueError.
- `_configs` is (index, Membership) for the snapshot's configuration and every CONFIG
  entry after it, in index order; the one in force is the last, committed or not (T 4.1).
- At most one uncommitted change at a time, and only after the leader committed an entry
  of its term. Adding puts a new node in as a learner; it is promoted once caught up.
- May campaign: a voter, or a server removed by a config entry not yet committed
  (T 4.2.2); never a node whose disk is broken or that has stopped.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import cbor2

from prisn.messages import EntryKind
from prisn.outcomes import Outcome
from prisn.raft.boot import BootState, Membership
from prisn.raft.common import State
from prisn.raft.state import CoreState

# Bounds on what a peer may send (a message beyond them is malformed: dropped and counted)
MAX_CONFIG_BYTES = 1 << 20  # data of one CONFIG entry
MAX_MEMBERS = 1024  # voters + learners of one configuration
MAX_MEMBER_FIELD = 1024  # characters of a node id, an address or a cluster id
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



def configs_from_boot(boot: BootState) -> list[tuple[int, Membership]]:
    """The configuration history at start: the snapshot's membership (if any) at the
    snapshot index, then every CONFIG entry of the recovered log after it, by index.
    RuntimeError for a stored entry `decode_config` refuses (the data dir predates the
    checks of peer input: it must be wiped). Pure."""
    configs: list[tuple[int, Membership]] = []
    if boot.snapshot_membership is not None:
        configs.append((boot.snapshot_index, boot.snapshot_membership))
    for e in boot.entries:
        if e[2] == EntryKind.CONFIG and (e[0] > boot.snapshot_index
                                         or boot.snapshot_membership is None):
            try:
                configs.append((e[0], decode_config(e[3])))
            except ValueError as exc:  # written before peers' entries were checked
                raise RuntimeError(f"the stored log holds an invalid configuration entry "
                                   f"at index {e[0]} ({exc}): wipe this node's data "
                                   f"directory and let it rejoin") from None
    configs.sort(key=lambda c: c[0])
    return configs


def change_problem(m: Membership, kind: str, node_id: str, addr: str
                   ) -> tuple[bool, Outcome, str] | None:
    """Why the single-server change `kind` (add|remove|promote) of `node_id` cannot apply
    to `m`, as (ok, outcome, reason); (True, OK, "already a member") for an add that changes
    nothing; None when it applies (`changed_membership`). Pure."""
    if kind == "add":
        if not node_id or not addr:
            return False, Outcome.INVALID, "node id and address are required"
        if m.voters.get(node_id) == addr or m.learners.get(node_id) == addr:
            return True, Outcome.OK, "already a member"
    elif kind == "remove":
        if node_id not in m.members():
            return False, Outcome.NOT_FOUND, f"unknown node {node_id}"
        if node_id in m.voters and len(m.voters) == 1:
            return False, Outcome.CONFLICT, "would leave no voter"
    elif kind != "promote":
        return False, Outcome.INVALID, f"unknown operation {kind}"
    return None


def changed_membership(m: Membership, kind: str, node_id: str, addr: str) -> Membership:
    """`m` after a change `change_problem` accepted: add puts a new node in as a learner (a
    member keeps its role and gets the new address), remove drops it from either map,
    promote moves a learner to the voters (KeyError if it is none). Pure; `m` unchanged."""
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
    return Membership(cluster=m.cluster, voters=voters, learners=learners)


def prune_configs(configs: list[tuple[int, Membership]], upto: int) -> None:
    """The log is compacted through `upto`: drop, in place, every configuration older than
    the one in force at `upto` (that one and the later ones stay)."""
    k = 0
    while k + 1 < len(configs) and configs[k + 1][0] <= upto:
        k += 1
    if k:
        del configs[:k]


class MembershipMixin(CoreState):
    """Configuration in force and single-server changes of `RaftCore` (see the module doc)."""

    def _init_membership(self, boot: BootState) -> None:
        """The configuration history as recovered (see `configs_from_boot`)."""
        self._configs: list[tuple[int, Membership]] = configs_from_boot(boot)
        self._membership: Membership | None = None
        self._cluster = ""
        self._voters: dict[str, str] = {}  # ordered: iteration must be deterministic
        self._conf_waiters: dict[int, tuple[str, int]] = {}  # entry index -> (origin, rid)

    def _on_config_change(self) -> None:
        m = self._configs[-1][1] if self._configs else None
        self._membership = m
        if m is not None:
            self._cluster = m.cluster
            self._voters = m.voters
        else:
            self._voters = {}
        if self._state is State.LEADER:
            self._sync_progress()
            if self._transfer.target and self._transfer.target not in self._voters:
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
        problem = change_problem(m, kind, node_id, addr)
        if problem is not None:
            return (*problem, 0)
        if self._conf_index() > self._commit:
            return False, Outcome.CONFLICT, "configuration change in progress", 0
        if self._commit < self._term_start:
            return (False, Outcome.UNAVAILABLE,
                    "leader not ready: no entry of its term committed yet", 0)
        new = changed_membership(m, kind, node_id, addr)
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
