"""The scheduler: a pure, level-triggered reconciler from desired services to placements.

`schedule(services, placements, live)` looks at the whole state each time and returns the
commands that close the gap between "every replica of every service runs somewhere" and the
placements table, plus the slots it cannot place and why. It reads no clock, no randomness
and no global state: the leader's shell (issue 14) feeds it the service deployments and the
placements table as applied on the leader, and the set of live nodes (`model.live_nodes`), and
proposes the commands through Raft (`prisn.fsm.placements.batch_command`).

Rules, in this order of precedence:
1. A placement whose slot is no longer desired (deployment deleted, no longer a service,
   index beyond `replicas`) is removed (`Unplace`). The store also drops these at apply
   (`PlacementTable.trim`), so this only sweeps what a stale view left behind.
2. A placement stays where it is while its node is live and no other kept placement on that
   node uses the same fixed port: stable placements are never rebalanced (moving a running
   instance to even out load costs a restart; Nomad and Kubernetes do not either).
3. A slot that is unplaced, on a down node, or clashing on a port is placed on the live node
   that (a) does not have its fixed port in use by any other kept or newly placed instance,
   then (b) runs the fewest replicas of the same deployment (spread), then (c) runs the
   fewest instances overall (least loaded), then (d) has the smallest node id (ties).
   A move is one `Place` carrying the node it replaces (`prev`), not an unplace and a place.
4. A slot that has no such node is reported `Unschedulable` with a message naming why
   ("no live node", "no node without port 8080 in use"); if it was on a down node or
   clashing it is also unplaced (an instance on a dead node is not running; two instances
   on one port never are).

Commands come out as all unplaces of rule 1 (slot order), then every place or move (slot
order); each command depends only on the ones before it, so the bound (`max_commands`) keeps
a prefix and the next round, seeing the applied prefix, continues: running `schedule` again on
its own applied result yields no commands.

Determinism: every iteration is over sorted inputs; the result does not depend on the order of
`services`, `placements` or `live`. Pure; any thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from prisn.workloads.model import Placement, Service, Slot

DEFAULT_MAX_COMMANDS = 64  # per round (one Raft entry); the rest waits for the next round


@dataclass(frozen=True, slots=True)
class Place:
    """Run `slot` on `node`. `prev` is the node it is on now (None: unplaced); the table
    applies it only if that is still so (a compare-and-set against a stale view)."""

    slot: Slot
    node: str
    prev: str | None


@dataclass(frozen=True, slots=True)
class Unplace:
    """Stop running `slot` (on `prev`, where the scheduler saw it)."""

    slot: Slot
    prev: str


Command = Place | Unplace


@dataclass(frozen=True, slots=True)
class Unschedulable:
    """A desired slot no live node can take, and why (a sentence for ``status.message``)."""

    slot: Slot
    message: str


@dataclass(frozen=True, slots=True)
class Plan:
    """One round's output. `deferred`: commands computed but left for the next round."""

    commands: tuple[Command, ...]
    unschedulable: tuple[Unschedulable, ...]
    deferred: int

    def messages(self) -> dict[tuple[str, str], str]:
        """Per deployment (namespace, name) with unschedulable slots: one status message,
        e.g. ``"1 of 3 replicas unschedulable: no node without port 8080 in use"``; the
        reason is the lowest slot's. Deployments absent here have nothing unschedulable."""
        by_dep: dict[tuple[str, str], list[Unschedulable]] = {}
        for u in self.unschedulable:
            by_dep.setdefault(u.slot.deployment, []).append(u)
        return {dep: f"{len(us)} replica{'s' if len(us) > 1 else ''} unschedulable: "
                     f"{us[0].message}" for dep, us in by_dep.items()}


def schedule(services: Iterable[Service], placements: Iterable[Placement],
             live: Collection[str], *, max_commands: int = DEFAULT_MAX_COMMANDS) -> Plan:
    """The commands that bring `placements` to one live node per replica of `services`
    (see the module docstring for the rules). ValueError for two services with the same
    (namespace, name) or two placements of one slot (a caller bug, not a state)."""
    if max_commands < 1:
        raise ValueError("max_commands must be at least 1")
    svcs: dict[tuple[str, str], Service] = {}
    for s in sorted(services):
        if (s.namespace, s.name) in svcs:
            raise ValueError(f"service {s.namespace}/{s.name} given twice")
        svcs[(s.namespace, s.name)] = s
    current: dict[Slot, Placement] = {}
    for p in sorted(placements):
        if p.slot in current:
            raise ValueError(f"slot {p.slot} placed twice")
        current[p.slot] = p
    nodes = sorted(set(live))

    load: Counter[str] = Counter()
    spread: Counter[tuple[tuple[str, str], str]] = Counter()
    ports: dict[str, set[int]] = {n: set() for n in nodes}
    unplaces: list[Command] = []
    to_place: list[tuple[Slot, str | None]] = []  # (slot, node it is on now)

    def keep(svc: Service, node: str) -> None:
        load[node] += 1
        spread[((svc.namespace, svc.name), node)] += 1
        if svc.port:
            ports[node].add(svc.port)

    for slot in sorted(current):  # rule 1 and 2
        p = current[slot]
        svc = svcs.get(slot.deployment)
        if svc is None or slot.index >= svc.replicas:
            unplaces.append(Unplace(slot, p.node))
        elif p.node not in ports or (svc.port and svc.port in ports[p.node]):
            to_place.append((slot, p.node))
        else:
            keep(svc, p.node)
    for svc in svcs.values():
        to_place.extend((slot, None) for slot in svc.slots() if slot not in current)
    to_place.sort(key=lambda t: t[0])

    commands: list[Command] = list(unplaces)
    unschedulable: list[Unschedulable] = []
    for slot, prev in to_place:  # rules 3 and 4
        svc = svcs[slot.deployment]
        dep = slot.deployment
        free = [n for n in nodes if not (svc.port and svc.port in ports[n])]
        if not free:
            why = "no live node" if not nodes else f"no node without port {svc.port} in use"
            unschedulable.append(Unschedulable(slot, why))
            if prev is not None:
                commands.append(Unplace(slot, prev))
            continue
        node = min(free, key=lambda n: (spread[(dep, n)], load[n], n))
        keep(svc, node)
        commands.append(Place(slot, node, prev))
    deferred = max(0, len(commands) - max_commands)
    return Plan(tuple(commands[:max_commands]), tuple(unschedulable), deferred)


def apply_plan(placements: Iterable[Placement], commands: Iterable[Command],
               first_epoch: int = 1) -> list[Placement]:
    """The placements after `commands` (a model of the table's apply without the checks the
    store makes against deployments: tests and the simulator use it). New placements get
    epochs `first_epoch`, `first_epoch + 1`, ... in command order. Pure."""
    by_slot = {p.slot: p for p in placements}
    epoch = first_epoch
    for c in commands:
        cur = by_slot.get(c.slot)
        if isinstance(c, Place):
            if (cur.node if cur else None) == c.prev:
                by_slot[c.slot] = Placement(c.slot, c.node, epoch)
                epoch += 1
        elif cur is not None and cur.node == c.prev:
            del by_slot[c.slot]
    return sorted(by_slot.values())
