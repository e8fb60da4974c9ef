"""Leadership transfer (Ongaro thesis 3.10).

Part of `RaftCore` (a mixin over the core's state); raft actor thread only. Invariants:
- Only to a voter of the configuration in force; the leader catches the target up and sends
  it TimeoutNow once its match is the leader's last index, at most once per transfer.
- A transfer not done within an election timeout is aborted; while one runs the leader
  holds new proposals (`forward.py`) and releases them when it ends.
"""

from __future__ import annotations

import logging

from prisn.messages import TimeoutNow, TransferLeadership
from prisn.outcomes import Outcome
from prisn.raft.common import Request, State
from prisn.raft.state import CoreState


class TransferMixin(CoreState):
    """Leadership transfer of `RaftCore` (see the module doc)."""

    def _init_transfer(self) -> None:
        self._transferee = ""
        self._transfer_elapsed = 0
        self._timeout_now_sent = False
        self._transfer_watch = ""  # stepped down while transferring to this node

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
        if self._state is State.LEADER:
            self._release_held_forwards(accept=True)
            self._drain_pending_local()
