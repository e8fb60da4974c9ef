"""The scheduler inside the seeded simulator: real `DeploymentStore`s on every simulated
node, fed by the real Raft cores' Apply, and the real scheduler core on whichever node leads.

`SchedSim` extends `Sim` (every Raft invariant is still checked). Each node's state machine is
a `DeploymentStore` (rebuilt from the log on restart; scenarios run without snapshots, whose
model state is a hash chain). The client proposes real deployment commands (create / scale /
delete of services, fixed ports and none). Every tick, a node that leads runs one scheduler
round on its own applied state (liveness from its core's per-peer `last_contact_ticks`,
with the new-leader grace of `model.contact_ticks`) and proposes the plan as one
``placement.batch``, one round in flight at a time, as the leader's shell will.

Checked on every node after every tick: no two placements with the same fixed port on one
node, and every placement is a replica of a stored service. After the run (faults healed):
the scheduler settles, every replica is placed, every node's store is identical. Then one
node is crashed for good (a quorum stays up): within a bound every replica is placed again,
none on the dead node, and every live node's store is identical.
"""

from __future__ import annotations

import itertools
from typing import Any

import cbor2

from prisn.fsm.commands import CommandFactory
from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.placements import batch_command
from prisn.messages import Propose, ReadIndex
from prisn.workloads.model import contact_ticks, live_nodes
from prisn.workloads.scheduler import Plan, schedule
from tests.raftsim.sim import UNITS_PER_TICK, Sim, SimConfig, SimNode

NODE_DOWN_AFTER = 30  # ticks (election timeout is 10)
ROUND_TIMEOUT = 20  # ticks before a leader gives up waiting for its round to apply
SETTLE_TICKS = 600


class SchedSim(Sim):
    """`Sim` with deployment stores, a deployment client and the scheduler on the leader."""

    def __init__(self, seed: int, cfg: SimConfig | None = None) -> None:
        super().__init__(seed, cfg)
        if self.cfg.snapshots is not None:
            raise ValueError("SchedSim models the state machine without snapshots")
        self.stores: dict[str, DeploymentStore] = {}
        self.lead_since: dict[str, tuple[int, int]] = {}  # node -> (term, tick it began)
        self.round: dict[str, tuple[int, int]] = {}  # node -> (rid in flight, deadline tick)
        ids = (f"dep{n:05d}" for n in itertools.count(1))
        self.factory = CommandFactory(clock=lambda: 1_700_000_000 + self.now / 1000,
                                      new_id=lambda: next(ids))
        n = self.cfg.nodes
        # fixed ports sized so that every replica fits on n - 1 nodes (one may be dead)
        shared = max(0, (n - 1) // 2)
        self.specs: dict[str, tuple[int, int]] = {  # name -> (port, max replicas)
            "free": (0, 4), "web": (8080, n - 1), "api": (8081, shared),
            "alt": (8081, shared), "one": (9000, 1)}
        self.sched_stats = {"rounds": 0, "commands": 0, "refused": 0}
        self.gone: set[str] = set()

    # ------------------------------------------------------------------ state machines
    def start_node(self, n: SimNode) -> None:
        if n.id in self.gone:
            return  # crashed for good: a restart scheduled before that does not happen
        self.stores[n.id] = DeploymentStore()  # replays the whole log (no snapshots)
        self.round.pop(n.id, None)
        self.lead_since.pop(n.id, None)
        super().start_node(n)

    def fsm_step(self, n: SimNode, e: list) -> None:
        super().fsm_step(n, e)
        result = self.stores[n.id].apply(e[0], e[2], bytes(e[3]))
        if result is not None and result[0] == 500:
            self.fail(f"{n.id} store 500 at {e[0]}: {result[1]}")
        if result is not None and "refused" in result[1]:
            self.sched_stats["refused"] += len(result[1]["refused"])

    # ------------------------------------------------------------------ client + scheduler
    def propose(self, n: SimNode, cmd: dict[str, Any]) -> int:
        self.rid += 1
        data = cbor2.dumps({"o": n.id, "r": self.rid, "c": cmd})
        self.step(n, [Propose(rid=self.rid, data=data)])
        return self.rid

    def client(self) -> None:
        rng, cfg = self.rng, self.cfg
        live = self.live()
        if live and rng.random() < cfg.propose_rate * 0.3:
            n = rng.choice(live)
            name = rng.choice(sorted(self.specs))
            port, most = self.specs[name]
            r = rng.random()
            f = self.factory
            if r < 0.4:
                cmd = f.create({"name": name, "source": "x.py", "type": "service", "port": port,
                                "replicas": rng.randint(0, most)})
            elif r < 0.85:
                cmd = f.scale(name, {"replicas": rng.randint(0, most)})
            else:
                cmd = f.delete(name)
            self.propose(n, cmd)
        if live and rng.random() < cfg.read_rate:
            n = rng.choice(live)
            self.rid += 1
            self.reads[(n.id, self.rid)] = self.max_acked_index
            self.step(n, [ReadIndex(rid=self.rid)])
        for n in self.live():
            self.scheduler_round(n)
        self.check_workloads()

    def leader_plan(self, n: SimNode) -> Plan | None:
        """What `n`'s scheduler would propose now (None unless it leads)."""
        core = n.core
        if core is None or not core.is_leader:
            return None
        st = core.status()
        tick = self.now // UNITS_PER_TICK
        since = self.lead_since.get(n.id)
        if since is None or since[0] != st.term:
            since = self.lead_since[n.id] = (st.term, tick)
        ticks = contact_ticks({p: s.last_contact_ticks for p, s in st.progress.items()},
                              tick - since[1], n.id)
        assert st.membership is not None
        live = live_nodes(ticks, st.membership.members(), NODE_DOWN_AFTER)
        services, placements = self.stores[n.id].schedule_view()
        return schedule(services, placements, live, max_commands=self.rng.randint(1, 8))

    def scheduler_round(self, n: SimNode) -> None:
        tick = self.now // UNITS_PER_TICK
        busy = self.round.get(n.id)
        if busy is not None and (n.id, busy[0]) not in self.acked and tick < busy[1]:
            return  # one round in flight at a time
        self.round.pop(n.id, None)
        plan = self.leader_plan(n)
        if plan is None or not plan.commands:
            return
        self.sched_stats["rounds"] += 1
        self.sched_stats["commands"] += len(plan.commands)
        key = f"sched-{n.id}-{self.rid + 1}"
        rid = self.propose(n, batch_command(plan.commands, key=key, ts="2025-01-01T00:00:00.000Z"))
        self.round[n.id] = (rid, tick + ROUND_TIMEOUT)

    def check_workloads(self) -> None:
        for n in self.live():
            store = self.stores[n.id]
            services = {(s.namespace, s.name): s for s in store.schedule_view()[0]}
            ports: set[tuple[str, int]] = set()
            for p in store.placements():
                s = services.get(p.slot.deployment)
                if s is None or p.slot.index >= s.replicas:
                    self.fail(f"{n.id} holds {p.slot} on {p.node}: not a stored replica")
                if s.port:
                    if (p.node, s.port) in ports:
                        self.fail(f"{n.id}: two instances with port {s.port} on {p.node}")
                    ports.add((p.node, s.port))

    # ------------------------------------------------------------------ scenario
    def live_leader(self) -> str | None:
        """A leader that every live voter of its config follows in its term (`stable_leader`
        asks every voter, and a dead one never answers)."""
        for n in self.live():
            core = n.core
            assert core is not None
            if not core.is_leader:
                continue
            st = core.status()
            assert st.membership is not None
            for v in st.membership.voters:
                vn = self.nodes[v].core
                if vn is not None and (vn.status().leader_id != n.id
                                       or vn.status().term != st.term):
                    return None
            return n.id
        return None

    def settled(self, dead: set[str]) -> bool:
        """The leader's scheduler has nothing to do and places every replica on a live
        node, and every live member's store has applied the leader's commit and equals it."""
        lid = self.live_leader()
        if lid is None:
            return False
        leader = self.nodes[lid]
        assert leader.core is not None
        plan = self.leader_plan(leader)
        if plan is None or plan.commands or plan.unschedulable:
            return False
        if lid in self.round and (lid, self.round[lid][0]) not in self.acked:
            return False
        commit = leader.core.commit_index
        want = self.stores[lid].state_hash()
        members = leader.core.status().membership
        assert members is not None
        for n in self.live():
            if n.id not in members.members():
                continue  # removed (and maybe never told): not part of the cluster
            if n.next_apply <= commit or self.stores[n.id].state_hash() != want:
                return False
        services, placements = self.stores[lid].schedule_view()
        placed = {p.slot for p in placements if p.node not in dead}
        return all(slot in placed for s in services for slot in s.slots())

    def full_workload(self) -> bool:
        """Ask the leader (every 20 ticks until its store shows it) for every service at its
        most replicas, so that the crash below has replicas to move. A stop condition."""
        lid = self.live_leader()
        if lid is None:
            return False
        store = self.stores[lid]
        missing = []
        for name, (port, most) in sorted(self.specs.items()):
            dep = store.get("default", name)
            if dep is None or dep["replicas"] != most:
                missing.append((name, port, most, dep))
        if not missing:
            return True
        if self.now % (20 * UNITS_PER_TICK) == 0:
            for name, port, most, dep in missing:
                self.propose(self.nodes[lid], self.factory.create(
                    {"name": name, "source": "x.py", "type": "service", "port": port,
                     "replicas": most}) if dep is None else self.factory.scale(
                    name, {"replicas": most}))
        return False

    def run(self) -> SchedSim:
        super().run()
        self.cfg.propose_rate = 0.0  # the random client stops; the scheduler does not
        if not self.run_until(self.now + SETTLE_TICKS * UNITS_PER_TICK, self.full_workload):
            self.fail("workloads: the final deployments did not apply")
        if self.cfg.membership_rate:  # a removal still in flight may have landed since
            self.readd_all(self.now + SETTLE_TICKS * UNITS_PER_TICK)
        if not self.run_until(self.now + SETTLE_TICKS * UNITS_PER_TICK,
                              lambda: self.settled(set())):
            self.fail("workloads: scheduler did not settle after healing")
        # one node that runs something dies for good, a quorum stays up: its replicas move
        lid = self.live_leader()
        assert lid is not None
        core = self.nodes[lid].core
        assert core is not None and core.status().membership is not None
        voters = core.status().membership.voters
        if len(voters) < 3:
            self.fail(f"workloads: {len(voters)} voters cannot lose one and keep a quorum")
        busy = sorted({p.node for p in self.stores[lid].placements()} & set(voters))
        victim = self.rng.choice(busy)
        self.trace.append(f"{self.now} CRASH FOR GOOD {victim}")
        self.gone.add(victim)
        self.crash(self.nodes[victim])
        if not self.run_until(self.now + SETTLE_TICKS * UNITS_PER_TICK,
                              lambda: self.settled({victim})):
            self.fail(f"workloads: replicas not all placed after {victim} died")
        lid = self.live_leader()
        assert lid is not None
        if any(p.node == victim for p in self.stores[lid].placements()):
            self.fail(f"workloads: a placement stayed on dead {victim}")
        return self
