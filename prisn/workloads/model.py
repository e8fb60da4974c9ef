"""Workload data types shared by the scheduler, the placements table and (later) the runner.

A *slot* is one replica of one service: ``(namespace, name, index)`` with ``0 <= index <
replicas``. A *placement* says which node runs a slot, with an `epoch` that the placements
table bumps on every ``placement.set`` it applies (a slot moved away and back is a new epoch,
so a runner can tell "the same instance" from "a new one" without a clock).

Node liveness is an input, never a clock read here: the leader's shell counts, per member,
the ticks since it last heard from it (`live_nodes`).

Pure; immutable values; safe on any thread.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """A deployment's phase, as its ``status.phase`` shows it."""

    PENDING = "Pending"  # desired replicas not (all) placed or none running yet
    RUNNING = "Running"  # every desired replica ready
    DEGRADED = "Degraded"  # some, not all, ready
    CRASH_LOOP = "CrashLoopBackOff"  # an instance exits repeatedly (backoff holds it)
    STOPPED = "Stopped"  # zero replicas desired
    FAILED = "Failed"  # a job that ended in failure (not used for services)


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """One replica of a service; ordered by (namespace, name, index) (the scheduler's and the
    table's deterministic order)."""

    namespace: str
    name: str
    index: int

    @property
    def deployment(self) -> tuple[str, str]:
        """(namespace, name) of the deployment this slot belongs to."""
        return self.namespace, self.name

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}/{self.index}"


@dataclass(frozen=True, slots=True, order=True)
class Placement:
    """`slot` runs on `node`; `epoch` is the table's counter when it was set (>= 1)."""

    slot: Slot
    node: str
    epoch: int


@dataclass(frozen=True, slots=True, order=True)
class Service:
    """What the scheduler needs of a service deployment: its identity, replica count and fixed
    port (0: none, any number of its instances may share a node)."""

    namespace: str
    name: str
    replicas: int
    port: int = 0

    def slots(self) -> list[Slot]:
        return [Slot(self.namespace, self.name, i) for i in range(self.replicas)]


def services_of(deployments: Iterable[Mapping[str, Any]]) -> list[Service]:
    """The `Service` view of stored deployment dicts (only ``type == "service"``), sorted."""
    return sorted(Service(d["namespace"], d["name"], d["replicas"], d["port"] or 0)
                  for d in deployments if d.get("type") == "service")


def live_nodes(ticks_since_contact: Mapping[str, int], eligible: Collection[str],
               node_down_after: int) -> frozenset[str]:
    """The nodes the scheduler may place on: workload-eligible and heard from less than
    `node_down_after` ticks ago. A node missing from `ticks_since_contact` was never heard
    from: down. The leader passes itself with 0.

    The shell must start every member's count at 0 when it becomes leader: a new leader has
    heard from nobody yet, and counting from the last contact its predecessor saw is not
    possible (it has none), so "never heard" from a fresh leader means "not yet", not down."""
    if node_down_after < 1:
        raise ValueError("node_down_after must be at least 1 tick")
    return frozenset(n for n in eligible
                     if (t := ticks_since_contact.get(n)) is not None and t < node_down_after)


def contact_ticks(last_contact: Mapping[str, int], leader_ticks: int,
                  self_id: str) -> dict[str, int]:
    """Ticks since last contact per member, as `live_nodes` wants them, from a leader's view:
    `last_contact` is the Raft core's per-peer count (``PeerStatus.last_contact_ticks``, huge
    for a peer not heard from in this term), `leader_ticks` the ticks since this node became
    leader. A peer counts as heard from at the start of the leadership (the grace a new
    leader must give, see `live_nodes`), itself as heard from now."""
    out = {peer: min(t, leader_ticks) for peer, t in last_contact.items()}
    out[self_id] = 0
    return out


def phase_of(desired: int, ready: int, crash_looping: int) -> Phase:
    """A service's phase from counts: desired replicas, instances ready, instances in
    crash-loop backoff. Crash looping wins over Degraded/Pending (it is what the user has to
    fix); Pending while none is ready (unplaced, or placed and not started yet)."""
    if desired == 0:
        return Phase.STOPPED
    if crash_looping > 0:
        return Phase.CRASH_LOOP
    if ready >= desired:
        return Phase.RUNNING
    if ready > 0:
        return Phase.DEGRADED
    return Phase.PENDING
