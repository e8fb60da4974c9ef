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
- executions (`prisn.workloads.jobs.assign_plan`): Pending ones are assigned to a live node,
  those of a node that is down are recorded Lost, as ``execution.update`` commands (a Lost
  attempt with retries left comes back Pending from the table and is placed again);
- cron (`prisn.workloads.cron.cron_plan` over `DeploymentStore.cron_view`, the leader's
  clock, UTC): fires and misses as ``cron.fire`` / ``cron.miss`` commands, chained on the
  mark they were planned on (a stale plan changes nothing).
Each kind has one round in flight. Never raises on a failed proposal (logged, the next round recomputes).
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
from prisn.fsm.executions import DEFAULT_HISTORY, cron_command
from prisn.fsm.placements import batch_command
from prisn.fsm.tokens import ts_millis
from prisn.messages import Role
from prisn.workloads.cron import CronJobCache, cron_plan
from prisn.workloads.jobs import assign_plan, update_command
from prisn.workloads.model import contact_ticks, live_nodes
from prisn.workloads.scheduler import schedule

log = logging.getLogger("prisn.scheduler")


def _created_s(dep: Any) -> int:
    """A cronjob deployment's `created_at`, epoch seconds (its cron `since`);
    TokenCommandError (a ValueError) or KeyError if it has none usable."""
    return ts_millis(dep["created_at"]) // 1000

Submit = Callable[[dict[str, Any], float], "concurrent.futures.Future | None"]


class SchedulerActor(Actor):
    """See the module doc. Counters are read from any thread (metrics)."""

    poll_ms = 50

    def __init__(self, ctx: zmq.Context, node_id: str, store: DeploymentStore, *,
                 raft_status: Callable[[], Any], submit: Submit, tick_seconds: float,
                 node_down_after: float, period: float = 0.5, round_timeout: float = 5.0,
                 execution_history: int = DEFAULT_HISTORY, **kw: Any) -> None:
        super().__init__("scheduler", ctx, node_id, **kw)
        self.store = store
        self.raft_status = raft_status
        self.submit = submit
        self.tick_seconds = tick_seconds
        self.down_ticks = max(1, round(node_down_after / tick_seconds))
        self.period = period
        self.round_timeout = round_timeout
        self.execution_history = execution_history  # carried in every cron fire
        self._lead: tuple[int, float] | None = None  # (term, monotonic start) while leading
        # round name -> (its proposals, deadline): one round of each kind in flight
        self._rounds: dict[str, tuple[list[concurrent.futures.Future], float]] = {}
        self._bad_cron: dict[str, str] = {}  # deployment id -> last planning error logged
        # parsed schedules and created_at per cronjob deployment version (cron thread)
        self._cron_jobs = CronJobCache(_created_s)
        self._last_round = 0.0
        self._cron_second = 0  # the wall second (UTC epoch) of the last cron round
        self._last_view: tuple[int, frozenset[str]] | None = None
        self._keys = itertools.count(1)
        self._incarnation = os.urandom(4).hex()
        # counters / gauges (any thread reads them)
        self.rounds = 0
        self.commands = 0
        self.unplaced = 0  # slots the last round could not place (0 unless leading)
        self.leading = False
        self.exec_updates = 0  # execution assignments / Lost records proposed
        self.cron_commands = 0  # cron fires and misses proposed

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
        leader_ticks = int((now - self._lead[1]) / self.tick_seconds)
        ticks = contact_ticks({p: s.last_contact_ticks for p, s in st.progress.items()},
                              leader_ticks, self.node_id)
        eligible = set(st.membership.members()) - self.store.no_workload_nodes()
        live = live_nodes(ticks, eligible, self.down_ticks)
        view = (self.store.applied_index, live)
        due = view != self._last_view or now - self._last_round >= self.period
        second = int(time.time())
        if not due:
            # cron times are whole seconds of this clock: plan them as soon as one begins
            # (within poll_ms), not up to `period` later on a quiet cluster
            if second != self._cron_second:
                self._cron_second = second
                self._cron_round(now, st.term)
            return
        self._last_view, self._last_round, self._cron_second = view, now, second
        self._placement_round(now, st.term, live)
        self._jobs_round(now, st.term, live)
        self._cron_round(now, st.term)

    def _busy(self, name: str, now: float) -> bool:
        """Whether round `name` still waits for its proposals (errors logged once done)."""
        futs, deadline = self._rounds.get(name, ([], 0.0))
        if any(not f.done() for f in futs) and now < deadline:
            return True
        for f in futs:
            if not f.done():
                f.cancel()
                continue
            try:
                f.result()
            except Exception as e:  # noqa: BLE001 - the next round recomputes
                log.info("scheduler: %s round not committed: %s", name, e)
        self._rounds.pop(name, None)
        return False

    def _propose(self, name: str, now: float, cmds: list[dict[str, Any]]) -> int:
        """Hand `cmds` to the API in order (one round of `name`); how many were taken."""
        futs = []
        for cmd in cmds:
            try:
                fut = self.submit(cmd, self.round_timeout)
            except Exception:  # a failure to hand it over is retried next round
                log.exception("scheduler: cannot hand a %s round to the API", name)
                fut = None
            if fut is None:
                break
            futs.append(fut)
        if futs:
            self._rounds[name] = (futs, now + self.round_timeout)
        return len(futs)

    def _key(self, what: str, term: int) -> str:
        return f"{what}-{self.node_id}-{self._incarnation}-{term}-{next(self._keys)}"

    def _placement_round(self, now: float, term: int, live: frozenset[str]) -> None:
        if self._busy("placement", now):
            return
        services, placements = self.store.schedule_view()
        plan = schedule(services, placements, live)
        self.unplaced = len(plan.unschedulable)
        if not plan.commands:
            return
        cmd = batch_command(plan.commands, key=self._key("sched", term),
                            ts=format_ts(time.time()))
        if self._propose("placement", now, [cmd]):
            self.rounds += 1
            self.commands += len(plan.commands)
            log.debug("scheduler: round %d proposes %d command(s), live %s", self.rounds,
                      len(plan.commands), sorted(live))

    def _jobs_round(self, now: float, term: int, live: frozenset[str]) -> None:
        """Assign Pending executions to live nodes; record those of dead nodes Lost."""
        if self._busy("jobs", now):
            return
        ups = assign_plan(self.store.unfinished_executions(), live)
        ts = format_ts(time.time())
        cmds = [update_command(u.id, u.attempt, u.status, key=self._key("exec", term), ts=ts,
                               node=u.node, error=u.error) for u in ups]
        self.exec_updates += self._propose("jobs", now, cmds)

    def _cron_round(self, now: float, term: int) -> None:
        """Fire (or record missed) the cron times due by the leader's clock (UTC)."""
        if self._busy("cron", now):
            return
        deps, marks, running = self.store.cron_view()
        jobs, bad = self._cron_jobs.jobs(deps)
        for dep, e in bad:
            if self._bad_cron.get(dep.get("id", "")) != str(e):
                self._bad_cron[str(dep.get("id", ""))] = str(e)
                log.warning("scheduler: cron job %s/%s cannot be planned: %s",
                            dep.get("namespace"), dep.get("name"), e)
        if not jobs:
            return
        plan = cron_plan(jobs, marks, running, int(time.time()))
        if not plan:
            return
        ts = format_ts(time.time())
        round_id = f"{self.node_id}.{self._incarnation}.{term}.{next(self._keys)}"
        cmds = [cron_command(c, ts=ts, round_id=round_id, history=self.execution_history)
                for c in plan]
        self.cron_commands += self._propose("cron", now, cmds)
