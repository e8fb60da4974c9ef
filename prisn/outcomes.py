"""Typed outcomes: what consensus, the state machine and the API say about a request.

Pure module (any thread). Consensus (`prisn.raft`) and the state machine (`prisn.fsm`) answer
with `Outcome` members and never with HTTP codes; only `actors.api.outcomes` maps an outcome
to an HTTP status and error string.

Invariants:
- A member whose value is below `INTERNAL_BASE` is a *wire* outcome: its value is what travels
  in peer messages (`ForwardResponse.code`) and what snapshots and the dedup table store
  (``[key, fingerprint, status, body]``). These values are frozen: they equal the HTTP status
  codes older nodes and older snapshots used, so mixed-version clusters and old snapshots
  keep working, byte for byte.
- A member at or above `INTERNAL_BASE` is *internal*: a finer reason that older nodes folded
  into one code. It never leaves the node as such: `wire()` turns it into the code older
  nodes sent (its `_WIRE` entry, 503 for every consensus outcome) before it goes to a peer or
  into a persisted table, and `from_wire` reads any code a peer or a snapshot holds.
- Local messages between the actors of one node (`Reply.code`, `Applied.results`) may carry
  internal values: both ends run the same code.
"""

from __future__ import annotations

from enum import IntEnum

INTERNAL_BASE = 1000  # values at or above it never go on the wire nor into a table


class Outcome(IntEnum):
    """The result of a request. Wire values are frozen (see the module doc)."""

    # --- success
    OK = 200
    CREATED = 201
    ACCEPTED = 202  # a forwarded proposal is in the leader's log (or held there)
    DELETED = 204
    # --- the request is wrong (changes nothing)
    INVALID = 400  # malformed or failed validation
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    METHOD_NOT_ALLOWED = 405
    CONFLICT = 409  # the state forbids it: exists already, change in progress, learner
    TOO_LARGE = 413
    UNSUPPORTED_MEDIA = 415
    MISDIRECTED = 421  # a Host that is not this node's
    KEY_REUSED = 422  # Idempotency-Key already used for a different request
    RATE_LIMITED = 429
    # --- the node cannot do it
    INTERNAL_ERROR = 500  # a bug
    UNAVAILABLE = 503  # no quorum, timed out, node stopping, a learner, ...
    DISK_ERROR = 507  # the log cannot be written: never applied, ever
    # --- internal (never on the wire: see `wire`)
    NOT_LEADER = 1001  # the node asked does not lead; the origin retries elsewhere
    LEADERSHIP_LOST = 1002  # the leader stepped down before the request finished
    OUTCOME_UNKNOWN = 1003  # a write that may or may not commit (retry with its key)
    NO_LEADER = 1004  # no leader or quorum within the wait, or too many requests wait
    QUOTA_EXCEEDED = 1005  # a namespace quota (refused by the API before proposing)

    @property
    def internal(self) -> bool:
        """Whether this outcome must be translated before it leaves the node."""
        return self.value >= INTERNAL_BASE

    def wire(self) -> Outcome:
        """The outcome as peers and persisted tables hold it: itself for a wire outcome,
        the code older nodes used for an internal one."""
        return _WIRE.get(self, self)

    @classmethod
    def parse(cls, code: int) -> Outcome:
        """The outcome for `code` from a local message (`Reply.code`, `Applied.results`:
        internal values allowed); an unknown value is `UNAVAILABLE`, never a success."""
        try:
            return cls(code)
        except ValueError:
            return cls.UNAVAILABLE

    @classmethod
    def from_wire(cls, code: int) -> Outcome:
        """The outcome for `code` read from a peer message or a table: its member if it is a
        wire value, else `UNAVAILABLE` (an unknown or internal value from a peer is a
        failure of that peer, never a success)."""
        if type(code) is cls:
            return code.wire()
        try:
            member = cls(code)
        except ValueError:
            return cls.UNAVAILABLE
        return member.wire() if member.internal else member


_WIRE: dict[Outcome, Outcome] = {
    Outcome.NOT_LEADER: Outcome.UNAVAILABLE,
    Outcome.LEADERSHIP_LOST: Outcome.UNAVAILABLE,
    Outcome.OUTCOME_UNKNOWN: Outcome.UNAVAILABLE,
    Outcome.NO_LEADER: Outcome.UNAVAILABLE,
    Outcome.QUOTA_EXCEEDED: Outcome.DISK_ERROR,
}
assert all(m in _WIRE for m in Outcome if m.internal), "every internal outcome has a wire form"

WIRE_OUTCOMES: frozenset[Outcome] = frozenset(m for m in Outcome if not m.internal)
