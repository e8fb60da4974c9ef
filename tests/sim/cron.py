"""The cron core inside the seeded simulator: real `DeploymentStore`s on every simulated node,
fed by the real Raft cores' Apply, and the real `cron_plan` on whichever node believes it
leads (a deposed leader on the minority side of a partition keeps planning and proposing
from its own, older, applied state, as a real one would until it steps down).

One ``@every 1s`` cron job; a simulated second is one tick, and each node's clock is off
by its own few seconds. Every tick, a node that leads runs one cron round on its applied
state at its clock and proposes the plan's commands, one round in flight at a time; it also
reports now and then that the pending runs started and completed (so ``forbid`` and
``replace`` have something to act on).

Checked after the run (faults healed, the cron clocks stopped a little later, the leader
caught up with them, every live store identical): every scheduled time after the job's creation, up to the mark, has
exactly one fire or one recorded miss, never both and never two; a fire's execution id is
the one derived from its key.
"""

from __future__ import annotations

import itertools
from typing import Any

import cbor2

from prisn.fsm.commands import CommandFactory
from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.executions import cron_command, fire_id
from prisn.fsm.tokens import ts_millis
from prisn.messages import Propose
from prisn.workloads.cron import CONCURRENCY, CronJob, cron_plan, parse_schedule
from tests.raftsim.sim import UNITS_PER_TICK, Sim, SimConfig, SimNode

BASE = 1_780_000_000  # epoch seconds at simulated time 0
ROUND_TIMEOUT = 20  # ticks before a leader gives up waiting for its round to apply
SETTLE_TICKS = 600
TS = "2026-06-01T00:00:00.000Z"


class CronSim(Sim):
    """`Sim` with deployment stores and the cron plan on every node that believes it leads."""

    def __init__(self, seed: int, cfg: SimConfig | None = None) -> None:
        super().__init__(seed, cfg)
        if self.cfg.snapshots is not None:
            raise ValueError("CronSim models the state machine without snapshots")
        self.stores: dict[str, DeploymentStore] = {}
        self.round: dict[str, tuple[int, int]] = {}  # node -> (rid in flight, deadline tick)
        self.skew: dict[str, int] = {}
        ids = (f"dep{n:05d}" for n in itertools.count(1))
        self.factory = CommandFactory(clock=lambda: float(BASE + self.now // UNITS_PER_TICK),
                                      new_id=lambda: next(ids))
        self.concurrency = CONCURRENCY[seed % 3]  # every policy and deadline across seeds
        self.deadline = (60, 3, 0)[seed // 3 % 3]
        self.cron_stats = {"rounds": 0, "fires": 0, "misses": 0, "refused": 0}
        self.schedule = parse_schedule("@every 1s")
        self.reports = itertools.count(1)
        self.stop_at: int | None = None  # after healing: clocks stop advancing for cron

    # ------------------------------------------------------------------ state machines
    def start_node(self, n: SimNode) -> None:
        self.stores[n.id] = DeploymentStore()  # replays the whole log (no snapshots)
        self.round.pop(n.id, None)
        super().start_node(n)

    def fsm_step(self, n: SimNode, e: list) -> None:
        super().fsm_step(n, e)
        result = self.stores[n.id].apply(e[0], e[2], bytes(e[3]))
        if result is not None and result[0] == 500:
            self.fail(f"{n.id} store 500 at {e[0]}: {result[1]}")
        if result is not None and result[0] == 409 and self.stores[n.id].last_origin[0] == n.id:
            self.cron_stats["refused"] += 1  # counted once: on the node that proposed it

    def clock(self, n: SimNode) -> int:
        """`n`'s wall clock in epoch seconds (a tick is a second; each node is a few off)."""
        skew = self.skew.setdefault(n.id, self.rng.choice([-2, -1, 0, 0, 1, 2]))
        t = BASE + self.now // UNITS_PER_TICK + skew
        return t if self.stop_at is None else min(t, self.stop_at)

    # ------------------------------------------------------------------ client + cron
    def propose(self, n: SimNode, cmd: dict[str, Any]) -> int:
        self.rid += 1
        data = cbor2.dumps({"o": n.id, "r": self.rid, "c": cmd})
        self.step(n, [Propose(rid=self.rid, data=data)])
        return self.rid

    def client(self) -> None:
        live = self.live()
        if live and self.now % (20 * UNITS_PER_TICK) == 0:
            leaders = [n for n in live if n.core is not None and n.core.is_leader]
            for n in leaders:
                if self.stores[n.id].get("default", "tick") is None:
                    self.propose(n, self.factory.create(
                        {"name": "tick", "source": "x.py", "schedule": "@every 1s"},
                        key="create-tick"))
        for n in self.live():
            self.cron_round(n)

    def jobs(self, store: DeploymentStore) -> list[CronJob]:
        deps, _, _ = store.cron_view()
        return [CronJob(d["id"], parse_schedule(d["schedule"]), self.concurrency,
                        self.deadline, since=ts_millis(d["created_at"]) // 1000)
                for d in deps]

    def cron_round(self, n: SimNode) -> None:
        core = n.core
        if core is None or not core.is_leader:
            return
        tick = self.now // UNITS_PER_TICK
        busy = self.round.get(n.id)
        if busy is not None and (n.id, busy[0]) not in self.acked and tick < busy[1]:
            return  # one round in flight at a time
        self.round.pop(n.id, None)
        store = self.stores[n.id]
        _, marks, running = store.cron_view()
        rnd = f"{n.id}.{core.status().term}.{self.rid + 1}"
        cmds = [cron_command(c, ts=TS, round_id=rnd) for c in cron_plan(
            self.jobs(store), marks, running, self.clock(n),
            max_commands=self.rng.choice([2, 8, 64]))]
        for ids in running.values() if self.stop_at is None else ():  # the runner's reports
            for exec_id in ids:
                e = store.execution(exec_id)
                if e is None or self.rng.random() > 0.3:
                    continue
                status = "Running" if e.status == "Pending" else "Completed"
                cmds.append({"v": 1, "op": "execution.update", "key": f"r{next(self.reports)}",
                             "ts": TS, "id": exec_id, "status": status, "attempt": e.attempt,
                             "node": n.id})
        if not cmds:
            return
        self.cron_stats["rounds"] += 1
        rid = 0
        for c in cmds:
            rid = self.propose(n, c)
        self.round[n.id] = (rid, tick + ROUND_TIMEOUT)

    # ------------------------------------------------------------------ checks
    def caught_up(self) -> bool:
        """The stable leader's plan is empty at its clock, its round applied, and every live
        member's store has applied its commit and equals it."""
        lid = self.stable_leader()
        if lid is None:
            return False
        leader = self.nodes[lid]
        assert leader.core is not None
        store = self.stores[lid]
        jobs = self.jobs(store)
        if not jobs:
            return False
        _, marks, running = store.cron_view()
        if cron_plan(jobs, marks, running, self.clock(leader)):
            return False
        if lid in self.round and (lid, self.round[lid][0]) not in self.acked:
            return False
        commit = leader.core.commit_index
        want = store.state_hash()
        members = leader.core.status().membership
        assert members is not None
        return all(n.next_apply > commit and self.stores[n.id].state_hash() == want
                   for n in self.live() if n.id in members.members())

    def check_exactly_once(self, store: DeploymentStore) -> int:
        """Every scheduled time of every cron job up to its mark: one fire or one miss.
        How many scheduled times were checked."""
        _, marks, _ = store.cron_view()
        table = store._executions  # noqa: SLF001 - the table's own records
        checked = 0
        for job in self.jobs(store):
            dep = job.deployment_id
            fired: dict[int, int] = {}
            for page in itertools.count():
                items = store.executions(deployment_id=dep, limit=500,
                                         offset=500 * page)["items"]
                if not items:
                    break
                for x in items:
                    at = ts_millis(x["scheduled_at"]) // 1000
                    if x["id"] != fire_id(dep, at):
                        self.fail(f"cron: execution {x['id']} is not the fire of {at}")
                    fired[at] = fired.get(at, 0) + 1
            missed: dict[int, int] = {}
            for first, last, count, _ in table.miss_ranges(dep):
                if count != last - first + 1:
                    self.fail(f"cron: miss {first}..{last} counts {count}")
                for t in range(first, last + 1):
                    missed[t] = missed.get(t, 0) + 1
            total, _ = table.misses(dep)
            if total != sum(missed.values()):
                self.fail("cron: miss records were dropped (raise MAX_MISSES for the sim)")
            mark = marks.get(dep, job.since)
            for t in range(job.since + 1, mark + 1):
                if fired.get(t, 0) + missed.get(t, 0) != 1:
                    self.fail(f"cron: scheduled time {t} has {fired.get(t, 0)} fires and "
                              f"{missed.get(t, 0)} misses")
            if set(fired) | set(missed) != set(range(job.since + 1, mark + 1)):
                self.fail("cron: a fire or miss outside (since, mark]")
            self.cron_stats["fires"] = len(fired)
            self.cron_stats["misses"] = len(missed)
            checked += mark - job.since
        return checked

    def run(self) -> CronSim:
        super().run()
        self.cfg.propose_rate = 0.0
        # stop the cron clocks a little later, so that the plan can run dry and settle
        self.stop_at = BASE + self.now // UNITS_PER_TICK + 10
        if not self.run_until(self.now + SETTLE_TICKS * UNITS_PER_TICK, self.caught_up):
            self.fail("cron: the leader did not catch up with its clock after healing")
        checked = 0
        for n in self.live():
            checked = self.check_exactly_once(self.stores[n.id])
        self.cron_stats["checked"] = checked
        return self
