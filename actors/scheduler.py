"""The scheduler shell: runs the pure scheduler (`prisn.workloads.scheduler`) on the leader.

Thread: its own actor thread (`prisn-scheduler`), on every node; it does work only while the
Raft status says this node leads. Each step (every `poll_ms`, and on any message) it reads
the published Raft status and the local store (the leader's applied state) and runs a round
when something relevant changed (an applied entry, the live set) or `period` seconds passed:
- liveness: ticks since last contact per member from the status (`PeerStatus.
  last_contact_ticks`), capped by the ticks since this node became leader
  (`model.contact_ticks`: every member gets a full `node_down_after` after an election);
  eligible nodes are the members minus those recorded with ``node.meta`` workloads false;
- the plan's commands go as one ``placement.batch`` through the API's propose path
  (`ApiActor.submit`), one round in flight: the next round waits for its answer (or
  `round_timeout`). Placements are log entries, so a new leader continues from the state
  its predecessor got committed; nothing here survives a leadership change but counters.
Never raises on a failed proposal (logged, the next round recomputes).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from actors.base import Actor
from prisn.fsm.commands import format_ts
from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.placements import batch_command
from prisn.messages import Role
from prisn.workloads.model import contact_ticks, live_nodes
from prisn.workloads.scheduler import schedule

log = logging.getLogger("prisn.scheduler")

Submit = Callable[[dict[str, Any], float], "concurrent.futures.Future | None"]


class SchedulerActor(Actor):
    """See the module doc. Counters are read from any thread (metrics)."""

    poll_ms = 50

    def __init__(self, ctx: zmq.Context, node_id: str, store: DeploymentStore, *,
                 raft_status: Callable[[], Any], submit: Submit, tick_seconds: float,
                 node_down_after: float, period: float = 0.5, round_timeout: float = 5.0,
                 **kw: Any) -> None:
        super().__init__("scheduler", ctx, node_id, **kw)
        self.store = store
        self.raft_status = raft_status
        self.submit = submit
        self.tick_seconds = tick_seconds
        self.down_ticks = max(1, round(node_down_after / tick_seconds))
        self.period = period
        self.round_timeout = round_timeout
        self._lead: tuple[int, float] | None = None  # (term, monotonic start) while leading
        self._inflight: concurrent.futures.Future | None = None
        self._deadline = 0.0
        self._last_round = 0.0
        self._last_view: tuple[int, frozenset[str]] | None = None
        self._keys = itertools.count(1)
        self._incarnation = os.urandom(4).hex()
        # counters / gauges (any thread reads them)
        self.rounds = 0
        self.commands = 0
        self.unplaced = 0  # slots the last round could not place (0 unless leading)
        self.leading = False

    def on_idle(self) -> None:
        self.step()

    def on_batch_end(self) -> None:
        self.step()

    def step(self) -> None:
        """One look at the status; a round if leading, due and none in flight."""
        st = self.raft_status()
        now = time.monotonic()
        if st is None or st.role != Role.LEADER or st.membership is None:
            self._lead, self.leading, self.unplaced = None, False, 0
            return
        if self._lead is None or self._lead[0] != st.term:
            self._lead = (st.term, now)
            self._last_view = None
            log.info("scheduler: active (leader of term %d)", st.term)
        self.leading = True
        fut = self._inflight
        if fut is not None:
            if not fut.done() and now < self._deadline:
                return
            self._inflight = None
            if fut.done():
                try:
                    fut.result()
                except Exception as e:  # noqa: BLE001 - the next round recomputes
                    log.info("scheduler: round not committed: %s", e)
            else:
                fut.cancel()
        leader_ticks = int((now - self._lead[1]) / self.tick_seconds)
        ticks = contact_ticks({p: s.last_contact_ticks for p, s in st.progress.items()},
                              leader_ticks, self.node_id)
        eligible = set(st.membership.members()) - self.store.no_workload_nodes()
        live = live_nodes(ticks, eligible, self.down_ticks)
        view = (self.store.applied_index, live)
        if view == self._last_view and now - self._last_round < self.period:
            return
        self._last_view, self._last_round = view, now
        services, placements = self.store.schedule_view()
        plan = schedule(services, placements, live)
        self.unplaced = len(plan.unschedulable)
        if not plan.commands:
            return
        key = f"sched-{self.node_id}-{self._incarnation}-{st.term}-{next(self._keys)}"
        cmd = batch_command(plan.commands, key=key, ts=format_ts(time.time()))
        try:
            fut = self.submit(cmd, self.round_timeout)
        except Exception:  # a failure to hand it over is retried next round
            log.exception("scheduler: cannot hand a round to the API")
            fut = None
        if fut is None:
            return
        self._inflight, self._deadline = fut, now + self.round_timeout
        self.rounds += 1
        self.commands += len(plan.commands)
        log.debug("scheduler: round %d proposes %d command(s), live %s", self.rounds,
                  len(plan.commands), sorted(live))
