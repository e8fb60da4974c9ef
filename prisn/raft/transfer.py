"""Leadership transfer (Ongaro thesis 3.10).

`Transfer` is the state of one transfer (pure; its owner's thread); `TransferMixin` is its
use by `RaftCore` (raft actor thread only). Invariants:
- Only to a voter of the configuration in force; the leader catches the target up and sends
  it TimeoutNow once its match is the leader's last index, at most once per transfer.
- A transfer not done within an election timeout is aborted (the clock restarts when
  TimeoutNow is sent: the target gets a full election timeout to win); while one runs the
  leader holds new proposals (`forward.py`) and releases them when it ends.
- A leader that steps down during a transfer watches for the next leader and reports the
  transfer done (that target leads) or aborted (another node leads) exactly once.
"""

from __future__ import annotations

import logging

from prisn.messages import TimeoutNow, TransferLeadership
from prisn.outcomes import Outcome
from prisn.raft.common import Request, State
from prisn.raft.state import CoreState


class Transfer:
    """The leader's transfer in progress (`target`, "" for none), and the target it was
    transferring to when it stepped down (`watch`, until the next leader is known)."""

    __slots__ = ("target", "elapsed", "timeout_now_sent", "watch")

    def __init__(self) -> None:
        self.target = ""
        self.elapsed = 0  # leader ticks since it started or since TimeoutNow was sent
        self.timeout_now_sent = False
        self.watch = ""

    def start(self, target: str) -> None:
        self.target = target
        self.elapsed = 0
        self.timeout_now_sent = False

    def tick(self, limit: int) -> bool:
        """A leader tick during a transfer: has it run for `limit` ticks (time to abort)?"""
        self.elapsed += 1
        return self.elapsed >= limit

    def timeout_now_due(self, match: int, last_index: int) -> bool:
        """Send TimeoutNow now? Once per transfer, when the target has the whole log (its
        `match` is the leader's `last_index`); restarts the clock when it says yes."""
        if self.timeout_now_sent or match != last_index:
            return False
        self.timeout_now_sent = True
        self.elapsed = 0
        return True

    def stop(self) -> str:
        """End the transfer (aborted); return its target ("" if none ran)."""
        target, self.target = self.target, ""
        self.timeout_now_sent = False
        return target

    def stepped_down(self) -> None:
        """The leader steps down: watch for who leads next if a transfer was running."""
        if self.target:
            self.watch = self.target

    def new_leader(self, leader: str) -> tuple[str, bool] | None:
        """`leader` leads now: (watched target, whether it is the one that leads) once
        after stepping down during a transfer, else None."""
        if not leader or not self.watch:
            return None
        watched, self.watch = self.watch, ""
        return watched, watched == leader


class TransferMixin(CoreState):
    """Leadership transfer of `RaftCore` over its `Transfer` (see the module doc)."""

    def _init_transfer(self) -> None:
        self._transfer = Transfer()

    def _on_transfer(self, m: TransferLeadership) -> None:
        target = m.target or self.id
        mem = self._membership
        if target == self.id and mem is not None and self.id in mem.learners:
            self._reply(m.rid, False, Outcome.CONFLICT, "a learner cannot lead")
            return
        if target == self.id and self._disk_error:
            self._reply(m.rid, False, Outcome.DISK_ERROR, self._disk_message())
            return
        if (target == self.id and self._state is not State.LEADER and not self._leader_id
                and self._promotable()):
            self._campaign(pre=self.opts.pre_vote)  # no leader known: just start an election
            self._reply(m.rid, True, Outcome.OK, "election started")
            return
        self._submit(Request("transfer", m.rid, self._now, node_id=target))

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
        self._transfer.start(target)
        self._event(logging.INFO, f"leadership transfer to {target} started (term "
                    f"{self._term})")
        self._maybe_timeout_now()
        self._respond(origin, rid, True, Outcome.OK, f"transferring leadership to {target}")

    def _maybe_timeout_now(self) -> None:
        t = self._transfer.target
        pr = self._progress.get(t)
        if pr is not None and self._transfer.timeout_now_due(pr.match, self._log.last_index):
            self._out_peer.append(TimeoutNow(src=self.id, dst=t, cluster=self._cluster,
                                             term=self._term))

    def _abort_transfer(self, why: str = "it did not take over within an election "
                        "timeout") -> None:
        target = self._transfer.stop()
        if target:
            self._event(logging.WARNING, f"leadership transfer to {target} aborted: {why}")
        if self._state is State.LEADER:
            self._release_held_forwards(accept=True)
            self._drain_pending_local()
