"""The scheduler core alone: table-driven placements, idempotence, determinism, bounds, and a
seeded randomized property (printed seed) over many rounds."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import pytest

from prisn.workloads.model import (
    Phase,
    Placement,
    Service,
    Slot,
    contact_ticks,
    live_nodes,
    phase_of,
)
from prisn.workloads.scheduler import (
    Place,
    Plan,
    Unplace,
    Unschedulable,
    apply_plan,
    schedule,
)


def S(name: str, replicas: int, port: int = 0, ns: str = "default") -> Service:
    return Service(ns, name, replicas, port)


def P(name: str, index: int, node: str, epoch: int = 1, ns: str = "default") -> Placement:
    return Placement(Slot(ns, name, index), node, epoch)


def sl(name: str, index: int, ns: str = "default") -> Slot:
    return Slot(ns, name, index)


def layout(placements: list[Placement]) -> dict[str, str]:
    return {str(p.slot): p.node for p in placements}


@dataclass
class Case:
    id: str
    services: list[Service]
    placements: list[Placement]
    live: set[str]
    commands: list[object]
    unschedulable: list[Unschedulable] = field(default_factory=list)


N3 = {"n1", "n2", "n3"}
CASES = [
    Case("spread: one replica per node, by node id", [S("web", 3)], [], N3,
         [Place(sl("web", 0), "n1", None), Place(sl("web", 1), "n2", None),
          Place(sl("web", 2), "n3", None)]),
    Case("spread before load: a replica avoids a node with its own replica first",
         [S("a", 3), S("b", 2)], [P("a", 0, "n2"), P("a", 1, "n2"), P("a", 2, "n2")],
         {"n1", "n2"}, [Place(sl("b", 0), "n1", None), Place(sl("b", 1), "n2", None)]),
    Case("ties broken by load then node id",
         [S("a", 2), S("b", 2)], [P("a", 0, "n1"), P("a", 1, "n2")], N3,
         [Place(sl("b", 0), "n3", None), Place(sl("b", 1), "n1", None)]),
    Case("least loaded first", [S("a", 2), S("b", 1)], [P("a", 0, "n1"), P("a", 1, "n2")], N3,
         [Place(sl("b", 0), "n3", None)]),
    Case("more replicas than nodes without a port: shared nodes", [S("w", 4)], [], {"n1", "n2"},
         [Place(sl("w", 0), "n1", None), Place(sl("w", 1), "n2", None),
          Place(sl("w", 2), "n1", None), Place(sl("w", 3), "n2", None)]),
    Case("fixed port: at most one per node, the rest Pending with why",
         [S("web", 3, 8080)], [], {"n1", "n2"},
         [Place(sl("web", 0), "n1", None), Place(sl("web", 1), "n2", None)],
         [Unschedulable(sl("web", 2), "no node without port 8080 in use")]),
    Case("fixed port clashes across deployments", [S("a", 1, 8080), S("b", 2, 8080)],
         [P("a", 0, "n1")], {"n1", "n2"},
         [Place(sl("b", 0), "n2", None)],
         [Unschedulable(sl("b", 1), "no node without port 8080 in use")]),
    Case("different ports share a node", [S("a", 1, 8080), S("b", 1, 8081)],
         [P("a", 0, "n1")], {"n1"}, [Place(sl("b", 0), "n1", None)]),
    Case("no live node", [S("web", 1)], [], set(), [],
         [Unschedulable(sl("web", 0), "no live node")]),
    Case("node down: moved (one command carrying the old node)", [S("web", 2, 8080)],
         [P("web", 0, "n1"), P("web", 1, "n2")], {"n1", "n3"},
         [Place(sl("web", 1), "n3", "n2")]),
    Case("node down and nowhere to go: unplaced, Pending", [S("web", 2, 8080)],
         [P("web", 0, "n1"), P("web", 1, "n2")], {"n1"},
         [Unplace(sl("web", 1), "n2")],
         [Unschedulable(sl("web", 1), "no node without port 8080 in use")]),
    Case("every node down", [S("web", 1)], [P("web", 0, "n1")], set(),
         [Unplace(sl("web", 0), "n1")], [Unschedulable(sl("web", 0), "no live node")]),
    Case("scale up keeps what runs", [S("web", 3)], [P("web", 0, "n2")], N3,
         [Place(sl("web", 1), "n1", None), Place(sl("web", 2), "n3", None)]),
    Case("scale down: the highest indexes go", [S("web", 1)],
         [P("web", 0, "n1"), P("web", 1, "n2"), P("web", 2, "n3")], N3,
         [Unplace(sl("web", 1), "n2"), Unplace(sl("web", 2), "n3")]),
    Case("scale to zero", [S("web", 0)], [P("web", 0, "n1")], N3, [Unplace(sl("web", 0), "n1")]),
    Case("delete", [], [P("web", 0, "n1"), P("web", 1, "n2")], N3,
         [Unplace(sl("web", 0), "n1"), Unplace(sl("web", 1), "n2")]),
    Case("a port change that clashes: the later slot moves", [S("a", 1, 9000), S("b", 1, 9000)],
         [P("a", 0, "n1"), P("b", 0, "n1")], {"n1", "n2"}, [Place(sl("b", 0), "n2", "n1")]),
    Case("unplace first frees the port for a new place", [S("b", 1, 8080)],
         [P("a", 0, "n1")], {"n1"}, [Unplace(sl("a", 0), "n1"), Place(sl("b", 0), "n1", None)]),
    Case("namespaces are separate deployments", [S("w", 1, ns="x"), S("w", 1, ns="y")], [], N3,
         [Place(sl("w", 0, "x"), "n1", None), Place(sl("w", 0, "y"), "n2", None)]),
    Case("a placement on a node not in the live set (ineligible) moves", [S("w", 1)],
         [P("w", 0, "voter-only")], {"n1"}, [Place(sl("w", 0), "n1", "voter-only")]),
    Case("stable: nothing to do", [S("web", 2, 8080)],
         [P("web", 0, "n3"), P("web", 1, "n1")], N3, []),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_table(case: Case) -> None:
    plan = schedule(case.services, case.placements, case.live)
    assert list(plan.commands) == case.commands
    assert list(plan.unschedulable) == case.unschedulable
    assert plan.deferred == 0
    # idempotence: the applied result is stable (no second round of changes)
    after = apply_plan(case.placements, plan.commands, first_epoch=100)
    again = schedule(case.services, after, case.live)
    assert again.commands == ()
    assert again.unschedulable == plan.unschedulable


def test_pending_message_per_deployment() -> None:
    plan = schedule([S("web", 3, 8080), S("api", 1, 8080)], [], {"n1", "n2"})
    assert plan.messages() == {
        ("default", "web"): "2 replicas unschedulable: no node without port 8080 in use"}
    plan = schedule([S("web", 1)], [], set())
    assert plan.messages() == {("default", "web"): "1 replica unschedulable: no live node"}


def test_node_returns_nothing_moves_back() -> None:
    """After a move, the old node coming back changes nothing (no rebalancing)."""
    before = [P("w", 0, "n1"), P("w", 1, "n2")]
    moved = apply_plan(before, schedule([S("w", 2, 8080)], before, {"n1", "n3"}).commands)
    assert layout(moved) == {"default/w/0": "n1", "default/w/1": "n3"}
    assert schedule([S("w", 2, 8080)], moved, {"n1", "n2", "n3"}).commands == ()


def test_determinism_under_permutation() -> None:
    rng = random.Random(7)
    services = [S(f"s{i}", rng.randint(0, 4), rng.choice([0, 0, 8080, 8081])) for i in range(8)]
    placements = [P("s1", 0, "n2"), P("s3", 1, "n4"), P("gone", 0, "n1"), P("s5", 0, "n3")]
    live = ["n1", "n2", "n3", "n4"]
    want = schedule(services, placements, set(live))
    for _ in range(20):
        rng.shuffle(services)
        rng.shuffle(placements)
        rng.shuffle(live)
        assert schedule(services, placements, live) == want


def test_bound_per_round_keeps_a_consistent_prefix() -> None:
    services = [S("w", 10, 8080), S("x", 5)]
    placements = [P("gone", i, f"n{i % 3 + 1}") for i in range(4)]
    live = {f"n{i}" for i in range(1, 13)}
    full = schedule(services, placements, live, max_commands=1000)
    state, rounds = placements, 0
    while True:
        plan = schedule(services, state, live, max_commands=3)
        assert len(plan.commands) <= 3
        if not plan.commands:
            break
        assert plan.deferred == max(0, len(schedule(services, state, live,
                                                    max_commands=1000).commands) - 3)
        state = apply_plan(state, plan.commands)
        rounds += 1
        assert rounds < 20
    assert rounds == -(-len(full.commands) // 3)
    assert layout(state) == layout(apply_plan(placements, full.commands))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        schedule([S("a", 1), S("a", 2)], [], {"n1"})
    with pytest.raises(ValueError):
        schedule([S("a", 1)], [P("a", 0, "n1"), P("a", 0, "n2")], {"n1"})
    with pytest.raises(ValueError):
        schedule([], [], {"n1"}, max_commands=0)


def test_live_nodes() -> None:
    ticks = {"n1": 0, "n2": 49, "n3": 50, "n4": 3}
    assert live_nodes(ticks, ["n1", "n2", "n3", "n5"], 50) == {"n1", "n2"}
    with pytest.raises(ValueError):
        live_nodes(ticks, ["n1"], 0)


def test_a_new_leader_gives_every_member_a_grace() -> None:
    never = 1 << 30
    ticks = contact_ticks({"n2": never, "n3": 2}, leader_ticks=5, self_id="n1")
    assert ticks == {"n1": 0, "n2": 5, "n3": 2}
    assert live_nodes(ticks, ["n1", "n2", "n3"], 50) == {"n1", "n2", "n3"}
    later = contact_ticks({"n2": never, "n3": 2}, leader_ticks=50, self_id="n1")
    assert live_nodes(later, ["n1", "n2", "n3"], 50) == {"n1", "n3"}


def test_phase_of() -> None:
    assert phase_of(0, 0, 0) is Phase.STOPPED
    assert phase_of(2, 0, 0) is Phase.PENDING
    assert phase_of(2, 1, 0) is Phase.DEGRADED
    assert phase_of(2, 2, 0) is Phase.RUNNING
    assert phase_of(2, 1, 1) is Phase.CRASH_LOOP


def _check_invariants(services: list[Service], placements: list[Placement],
                      live: set[str], plan: Plan) -> None:
    """Invariants of a settled state (no commands left)."""
    ports = {(s.namespace, s.name): s.port for s in services}
    seen: set[tuple[str, int]] = set()
    for p in placements:
        assert p.node in live, f"{p.slot} on down node {p.node}"
        port = ports[p.slot.deployment]
        if port:
            assert (p.node, port) not in seen, f"two instances with port {port} on {p.node}"
            seen.add((p.node, port))
    placed = {p.slot for p in placements}
    pending = {u.slot for u in plan.unschedulable}
    for s in services:
        for slot in s.slots():
            assert (slot in placed) != (slot in pending), f"{slot} placed xor pending"
    assert placed <= {slot for s in services for slot in s.slots()}
    # capacity: a slot is pending only if every live node already has its port in use
    # (or there is no live node at all)
    for u in plan.unschedulable:
        port = ports[u.slot.deployment]
        assert not live or (port and all((n, port) in seen for n in live)), u
    # spread: replicas of one deployment differ by at most one per node among the nodes
    # that could take it, when placed from scratch (checked by the caller when relevant)


@pytest.mark.parametrize("seed", [random.Random(1).randrange(1 << 30) for _ in range(30)])
def test_randomized_rounds(seed: int) -> None:
    """Random services, scale changes, deletes, node deaths and returns; after the bounded
    rounds settle, every replica is placed iff capacity allows, never two same-port
    instances on a node, nothing on a down node."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    nodes = [f"n{i}" for i in range(1, rng.randint(2, 6))]
    services: dict[str, Service] = {}
    placements: list[Placement] = []
    live = set(nodes)
    epochs = itertools.count(1)
    for _step in range(40):
        what = rng.random()
        if what < 0.35 or not services:
            name = f"s{rng.randrange(12)}"
            services[name] = S(name, rng.randint(0, 5), rng.choice([0, 0, 8080, 8081, 9000]))
        elif what < 0.5:
            del services[rng.choice(sorted(services))]
        elif what < 0.7:
            live.discard(rng.choice(nodes))
        else:
            live.add(rng.choice(nodes))
        # the store trims at apply: deleted/scaled-down slots vanish without the scheduler
        if rng.random() < 0.5:
            placements = [p for p in placements if p.slot.deployment[1] in services
                          and p.slot.index < services[p.slot.deployment[1]].replicas]
        svc_list = list(services.values())
        for _round in range(100):
            plan = schedule(svc_list, placements, live, max_commands=rng.randint(1, 8))
            if not plan.commands:
                break
            placements = apply_plan(placements, plan.commands, next(epochs) * 1000)
        else:
            pytest.fail(f"seed={seed}: did not settle")
        _check_invariants(svc_list, placements, live, plan)


@pytest.mark.parametrize("seed", range(10))
def test_spread_from_scratch_is_even(seed: int) -> None:
    """Port-less services placed from nothing: each deployment's replicas per node differ
    by at most one, and so do the nodes' total loads."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    nodes = {f"n{i}" for i in range(rng.randint(1, 7))}
    services = [S(f"s{i}", rng.randint(0, 9)) for i in range(rng.randint(1, 8))]
    state: list[Placement] = []
    while (plan := schedule(services, state, nodes, max_commands=5)).commands:
        state = apply_plan(state, plan.commands)
    for s in services:
        per = {n: 0 for n in nodes}
        for p in state:
            if p.slot.name == s.name:
                per[p.node] += 1
        assert max(per.values()) - min(per.values()) <= 1, (s, per)
    load = {n: sum(1 for p in state if p.node == n) for n in nodes}
    assert max(load.values()) - min(load.values()) <= 1, load
