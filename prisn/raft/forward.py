"""Local requests (proposals, reads, membership and transfer requests): served by the
leader, forwarded to it by any other voter, or buffered while no leader is known.

Part of `RaftCore` (a mixin over the core's state); raft actor thread only. Invariants:
- Only a voter of the configuration in force may forward a request; anything else is
  dropped (`forward_from_non_voter`) before it changes anything.
- Forward ids are unique per attempt (a random epoch in the high bits, a counter below), so
  the leader tells a network duplicate (`_seen_fwd`, bounded by SEEN_FORWARDS) from a retry:
  one forwarded proposal is appended at most once per forward id.
- An unconfirmed forwarded proposal is resent with the same id every heartbeat interval and
  failed OUTCOME_UNKNOWN (may still commit) after an election timeout; a forwarded
  proposal is never answered by the leader's ACCEPTED: its result comes from the origin's
  own state machine when the entry commits.
- While a leadership transfer runs, forwarded proposals are held: appended if it aborts,
  refused NOT_LEADER (the origin forwards to the next leader) if it succeeds.
- Buffered requests wait at most `pending_ticks` and at most `max_pending` of them
  (NO_LEADER); a new leader gets every outstanding forward that went elsewhere.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from prisn.messages import (
    AddNode,
    EntryKind,
    ForwardPropose,
    ForwardReadIndex,
    ForwardRequest,
    ForwardResponse,
    Msg,
    Propose,
    ReadIndex,
    RemoveNode,
)
from prisn.outcomes import Outcome
from prisn.raft.common import NO_LEADER, NOT_LEADER, Request, State
from prisn.raft.state import CoreState

# A leader's ForwardResponse(ok, code ACCEPTED) to a forwarded proposal: it is in the leader's
# log (or queued there while a leadership transfer runs). The result still comes through the
# origin's own state machine; the ack only stops the origin's resends (see _check_forwards).
ACCEPTED = Outcome.ACCEPTED
HELD = -1  # `_seen_fwd` mark of a forward held during a leadership transfer
FORWARD_UNCONFIRMED = ("the leader did not confirm the forwarded write within an election "
                       "timeout")
SEEN_FORWARDS = 65536  # forwarded proposals remembered to drop network duplicates


def confirmation(mark: int) -> tuple[str, int] | None:
    """What a leader answers again (reason, index) to a duplicate of a forward it marked
    `mark` (an index: appended there; HELD: held during a transfer; 0: refused, so no
    confirmation, None). Pure."""
    if not mark:
        return None
    return ("held during a leadership transfer" if mark == HELD else "appended", max(mark, 0))


class SeenForwards:
    """The forwarded proposals a leader saw recently, (origin, forward id) -> mark (see
    `confirmation`), oldest first, at most `limit` (the oldest is forgotten first). Pure."""

    __slots__ = ("_marks", "limit")

    def __init__(self, limit: int = SEEN_FORWARDS) -> None:
        self._marks: dict[tuple[str, int], int] = {}
        self.limit = limit

    def __len__(self) -> int:
        return len(self._marks)

    def mark_of(self, key: tuple[str, int]) -> int | None:
        """The mark of a forward seen (None: not seen, or forgotten)."""
        return self._marks.get(key)

    def add(self, key: tuple[str, int]) -> None:
        """Remember a new forward, marked 0 (refused) until `mark` says otherwise."""
        marks = self._marks
        marks[key] = 0
        if len(marks) > self.limit:
            del marks[next(iter(marks))]

    def mark(self, key: tuple[str, int], mark: int) -> None:
        """Set the mark of a remembered forward (one forgotten stays forgotten)."""
        if key in self._marks:
            self._marks[key] = mark


class ForwardMixin(CoreState):
    """Local requests and forwarding of `RaftCore` (see the module doc)."""

    def _init_forward(self, rng: random.Random) -> None:
        self._pending: deque[Request] = deque()
        self._fwd: dict[int, Request] = {}  # forward id -> request, in forwarding order
        self._fwd_data: dict[bytes, int] = {}  # forwarded proposal payload -> forward id
        self._own: dict[int, Request] = {}  # leader: index -> own proposal not yet committed
        # forward ids are unique per attempt (and across restarts, with a random epoch), so a
        # leader can tell a network duplicate from a retry
        self._fwd_epoch = rng.getrandbits(31) << 32
        self._fwd_next = 0
        self._seen_fwd = SeenForwards()  # recent forwarded (src, rid): duplicates
        self._unacked: dict[int, None] = {}  # forward ids of proposals the leader has not
        # confirmed yet, in forwarding order (entries may be stale: checked against _fwd)
        self._held_fwd: list[ForwardPropose] = []  # leader: forwards held during a transfer

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

    def _on_propose(self, m: Propose) -> None:
        self._submit(Request("propose", m.rid, self._now, data=m.data))

    def _on_read_index(self, m: ReadIndex) -> None:
        self._submit(Request("read", m.rid, self._now))

    def _on_remove(self, m: RemoveNode) -> None:
        self._submit(Request("remove", m.rid, self._now, node_id=m.node_id))

    def _on_add(self, m: AddNode) -> None:
        self._submit(Request("add", m.rid, self._now, node_id=m.node_id, addr=m.addr))

    def _submit(self, r: Request) -> None:
        if self._fatal:
            self._reply(r.rid, False, Outcome.UNAVAILABLE, f"node stopped: {self._fatal}")
            return
        if self._disk_error and r.kind == "propose":
            self._refuse_write(r)
            return
        if (self._state is State.LEADER
                and not (self._transfer.target and r.kind == "propose")):
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

    def _serve_local(self, r: Request) -> None:
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

    def _forward(self, r: Request) -> None:
        lid = self._leader_id
        self._fwd_next += 1
        fid = self._fwd_epoch | self._fwd_next
        base: dict[str, Any] = {"src": self.id, "dst": lid, "cluster": self._cluster,
                                "term": self._term, "rid": fid}
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

    def _append_command(self, data: bytes) -> int:
        idx = self._log.last_index + 1
        self._append_local([[idx, self._term, int(EntryKind.COMMAND), data]])
        return idx

    def _on_forward_propose(self, m: ForwardPropose) -> None:
        """Append a follower's proposal. `rid` is the origin's per-attempt forward id: one seen
        before (appended or rejected) is a network duplicate and is dropped, so a retry after
        a reject can never be appended twice."""
        key = (m.src, m.rid)
        seen = self._seen_fwd
        leader = self._state is State.LEADER
        mark = seen.mark_of(key)
        if mark is not None:
            self._drop("duplicate_forward")
            again = confirmation(mark)
            if leader and again is not None:  # the origin resent it: our confirmation was lost
                self._respond(m.src, m.rid, True, ACCEPTED, *again)
            return
        seen.add(key)
        if not leader:
            self._respond(m.src, m.rid, False, Outcome.NOT_LEADER, NOT_LEADER)
            return
        if self._transfer.target:
            # Hold it until the transfer ends: appended if it aborts, refused with NOT_LEADER
            # (the origin re-forwards to the new leader) if it succeeds (_lose_leadership).
            if len(self._held_fwd) >= self.opts.max_pending:
                self._respond(m.src, m.rid, False, Outcome.NOT_LEADER, NOT_LEADER)
                return
            self._held_fwd.append(m)
            seen.mark(key, HELD)
            self._respond(m.src, m.rid, True, ACCEPTED, "held during a leadership transfer")
            return
        self._accept_forward(m)

    def _accept_forward(self, m: ForwardPropose) -> None:
        """Leader: append a forwarded proposal and confirm it to its origin."""
        idx = self._append_command(m.data)
        key = (m.src, m.rid)
        self._seen_fwd.mark(key, idx)
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
                seen.mark((m.src, m.rid), 0)
                self._respond(m.src, m.rid, False, Outcome.NOT_LEADER, NOT_LEADER)

    def _on_forward_read(self, m: ForwardReadIndex) -> None:
        if self._state is not State.LEADER:
            self._respond(m.src, m.rid, False, Outcome.NOT_LEADER, NOT_LEADER)
            return
        self._leader_read(m.src, m.rid)

    def _on_forward_request(self, m: ForwardRequest) -> None:
        if self._state is not State.LEADER:
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
            elif self._state is State.LEADER:
                self._submit(r)
            else:
                self._pending.append(r)
            return
        if r.kind != "propose":
            self._reply(r.rid, m.ok, Outcome.from_wire(m.code), m.reason, m.index)
