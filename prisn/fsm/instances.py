"""Replicated workload observations: instance status per replica slot, and node metadata.

Both tables are applied by `DeploymentStore` under its lock and travel in its dedup table and
snapshots (format 4 "tables": "instances", "nodes"). Command formats (envelope as for every
command: `v`, `op`, `key`, `ts`):

    {"v": 1, "op": "instance.report", "key": K, "ts": T, "node": NODE,
     "reports": [{"ns", "name", "i", "epoch", "state", "pid", "started_at", "exit_code",
                  "restarts", "message", "generation"?}, ...]}   (1..MAX_REPORTS)
    {"v": 1, "op": "node.meta", "key": K, "ts": T, "node": NODE, "workloads": BOOL}

`instance.report` is proposed by the node that runs the instances (batched and rate-bounded
by `actors.workloads`); a report is recorded only while its slot is placed on that node with
that epoch, otherwise dropped (a late report of a moved or deleted instance changes nothing).
After every other command the store prunes rows whose placement no longer matches, so the
table never describes an instance that should not exist. `node.meta` records whether a node
runs workloads (`--no-workloads` nodes propose ``false`` at start); a node never recorded is
eligible.

Each row also keeps the runner generation the instance runs (`generation`, 0 when a report
carries none) and `at`, the command's `ts` in Unix ms: with `started_at` (the same node's
clock) it tells how long the instance had been up when it was reported, which the
cluster-wide roll (`prisn.workloads.roll`) reads from the log, never from a local clock.

Threads: no lock; the owner calls it under its lock. Rows are immutable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prisn.fsm.commands import COMMAND_VERSION
from prisn.fsm.placements import MAX_NODE_ID, PlacementCommandError, _parse_decision
from prisn.fsm.results import Result
from prisn.fsm.tokens import TokenCommandError, ts_millis
from prisn.fsm.validation import is_int
from prisn.outcomes import Outcome
from prisn.workloads.model import Placement, Slot
from prisn.workloads.runner import STATES

INSTANCE_OPS: tuple[str, ...] = ("instance.report", "node.meta")
MAX_REPORTS = 256
MAX_MESSAGE = 512  # characters of a report's message kept
MAX_INT = (1 << 63) - 1

PlacementOf = Callable[[Slot], Placement | None]


class InstanceCommandError(ValueError):
    """A malformed instance or node command (400; changes nothing)."""


@dataclass(frozen=True, slots=True)
class InstanceRow:
    """The last reported status of the instance of one slot (`node`, `epoch` as placed)."""

    node: str
    epoch: int
    state: str
    pid: int | None
    started_at: int | None  # Unix ms
    exit_code: int | None
    restarts: int
    message: str
    generation: int = 0  # the runner generation it runs
    at: int | None = None  # Unix ms: the ts of the command that recorded it

    def to_json(self, slot: Slot) -> dict[str, Any]:
        return {"id": instance_id(slot, self.epoch), "index": slot.index, "node": self.node,
                "state": self.state, "pid": self.pid, "started_at": self.started_at,
                "exit_code": self.exit_code, "restarts": self.restarts,
                "message": self.message, "generation": self.generation}


def instance_id(slot: Slot, epoch: int) -> str:
    """The id of the instance of `slot` placed with `epoch` (also the runner's id)."""
    return f"{slot.namespace}.{slot.name}.{slot.index}.{epoch}"


def _opt_int(v: Any, what: str, lo: int = -MAX_INT) -> int | None:
    if v is None:
        return None
    if not is_int(v) or not lo <= v <= MAX_INT:
        raise InstanceCommandError(f"{what} must be an integer or null")
    return int(v)


def _node(v: Any) -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_NODE_ID:
        raise InstanceCommandError(f"node must be a string of 1..{MAX_NODE_ID} characters")
    return v


def _parse_row(raw: Any, node: str, at: int | None = None) -> tuple[Slot, InstanceRow]:
    if type(raw) is not dict:
        raise InstanceCommandError("a report must be a map")
    try:
        _, slot, _, _ = _parse_decision({"do": "clear", "ns": raw.get("ns"),
                                         "name": raw.get("name"), "i": raw.get("i"),
                                         "prev": node})
    except PlacementCommandError as exc:
        raise InstanceCommandError(str(exc)) from None
    epoch: Any = raw.get("epoch")
    state: Any = raw.get("state")
    if not is_int(epoch) or not 1 <= epoch <= MAX_INT:
        raise InstanceCommandError("report epoch must be a positive integer")
    if state not in STATES:
        raise InstanceCommandError(f"report state must be one of {', '.join(STATES)}")
    restarts: Any = raw.get("restarts", 0)
    if not is_int(restarts) or not 0 <= restarts <= MAX_INT:
        raise InstanceCommandError("report restarts must be a non-negative integer")
    message = raw.get("message", "")
    if type(message) is not str:
        raise InstanceCommandError("report message must be a string")
    generation: Any = raw.get("generation", 0)
    if not is_int(generation) or not 0 <= generation <= MAX_INT:
        raise InstanceCommandError("report generation must be a non-negative integer")
    return slot, InstanceRow(node, int(epoch), state, _opt_int(raw.get("pid"), "pid", 0),
                             _opt_int(raw.get("started_at"), "started_at", 0),
                             _opt_int(raw.get("exit_code"), "exit_code"), int(restarts),
                             message[:MAX_MESSAGE], int(generation), at)


class InstanceTable:
    """Instance status by slot plus node metadata. Deterministic."""

    def __init__(self) -> None:
        self._rows: dict[Slot, InstanceRow] = {}
        self._nodes: dict[str, bool] = {}  # node -> runs workloads

    def __len__(self) -> int:
        return len(self._rows) + len(self._nodes)

    def apply(self, cmd: dict[str, Any], placement_of: PlacementOf) -> Result:
        """Run one command of INSTANCE_OPS; InstanceCommandError if malformed."""
        if cmd.get("v") != COMMAND_VERSION:
            raise InstanceCommandError(f"unsupported command version {cmd.get('v')!r}")
        node = _node(cmd.get("node"))
        if cmd.get("op") == "node.meta":
            workloads = cmd.get("workloads")
            if type(workloads) is not bool:
                raise InstanceCommandError("workloads must be true or false")
            self._nodes[node] = workloads
            return Outcome.OK, {"node": node, "workloads": workloads}
        reports = cmd.get("reports")
        if type(reports) is not list or not 0 < len(reports) <= MAX_REPORTS:
            raise InstanceCommandError(f"reports must be a list of 1..{MAX_REPORTS} maps")
        try:
            at: int | None = ts_millis(cmd.get("ts"))
        except TokenCommandError:
            at = None  # no usable ts: the row cannot prove how long it ran
        parsed = [_parse_row(r, node, at) for r in reports]  # all checked before any change
        recorded = dropped = 0
        for slot, row in parsed:
            p = placement_of(slot)
            if p is None or p.node != node or p.epoch != row.epoch:
                dropped += 1
                continue
            self._rows[slot] = row
            recorded += 1
        return Outcome.OK, {"recorded": recorded, "dropped": dropped}

    def prune(self, placement_of: PlacementOf) -> None:
        """Drop the rows whose slot is no longer placed where they were reported."""
        if not self._rows:
            return
        gone = [s for s, r in self._rows.items()
                if (p := placement_of(s)) is None or p.node != r.node or p.epoch != r.epoch]
        for s in gone:
            del self._rows[s]

    # ------------------------------------------------------------------ queries
    def of(self, namespace: str, name: str, replicas: int) -> list[tuple[Slot, InstanceRow]]:
        """The recorded instances of one deployment, by index. O(replicas)."""
        out = []
        for i in range(replicas):
            s = Slot(namespace, name, i)
            r = self._rows.get(s)
            if r is not None:
                out.append((s, r))
        return out

    def all(self) -> list[tuple[Slot, InstanceRow]]:
        return [(s, self._rows[s]) for s in sorted(self._rows)]

    def runs_workloads(self, node: str) -> bool:
        return self._nodes.get(node, True)

    def no_workload_nodes(self) -> frozenset[str]:
        return frozenset(n for n, w in self._nodes.items() if not w)

    # ------------------------------------------------------------------ snapshots
    def sections(self) -> dict[str, Any]:
        """The non-empty snapshot tables: "instances" rows by slot ``[ns, name, index, node,
        epoch, state, pid, started_at, exit_code, restarts, message, generation, at]`` and "nodes" rows
        ``[node, workloads]`` by node."""
        out: dict[str, Any] = {}
        if self._rows:
            out["instances"] = [[s.namespace, s.name, s.index, r.node, r.epoch, r.state,
                                 r.pid, r.started_at, r.exit_code, r.restarts, r.message,
                                 r.generation, r.at]
                                for s, r in self.all()]
        if self._nodes:
            out["nodes"] = [[n, self._nodes[n]] for n in sorted(self._nodes)]
        return out

    @classmethod
    def from_sections(cls, instances: Any, nodes: Any, placement_of: PlacementOf
                      ) -> InstanceTable:
        """A table from `sections()` (None: absent); ValueError for what apply could not
        have stored (a row whose slot is not placed on its node with its epoch)."""
        table = cls()
        for raw in instances if instances is not None else []:
            if type(raw) is not list or len(raw) != 13:
                raise ValueError("an instance row is not [ns, name, index, node, epoch, state, "
                                 "pid, started_at, exit_code, restarts, message, generation, "
                                 "at]")
            ns, name, i, node, epoch, state, pid, st, code, restarts, msg, gen, at = raw
            try:
                slot, row = _parse_row({"ns": ns, "name": name, "i": i, "epoch": epoch,
                                        "state": state, "pid": pid, "started_at": st,
                                        "exit_code": code, "restarts": restarts,
                                        "message": msg, "generation": gen}, _node(node),
                                       _opt_int(at, "at", 0))
            except InstanceCommandError as exc:
                raise ValueError(str(exc)) from None
            p = placement_of(slot)
            if p is None or p.node != row.node or p.epoch != row.epoch or slot in table._rows:
                raise ValueError(f"instance row {slot} does not match its placement")
            table._rows[slot] = row
        for raw in nodes if nodes is not None else []:
            if type(raw) is not list or len(raw) != 2 or type(raw[1]) is not bool:
                raise ValueError("a node row is not [node, workloads]")
            try:
                n = _node(raw[0])
            except InstanceCommandError as exc:
                raise ValueError(str(exc)) from None
            if n in table._nodes:
                raise ValueError(f"node row {n} is a duplicate")
            table._nodes[n] = raw[1]
        if instances is not None and not table._rows or nodes is not None and not table._nodes:
            raise ValueError("an instances or nodes table must not be empty")
        return table


def report_command(node: str, reports: list[dict[str, Any]], *, key: str, ts: str
                   ) -> dict[str, Any]:
    """An ``instance.report`` command (1..MAX_REPORTS reports; ValueError otherwise)."""
    if not 0 < len(reports) <= MAX_REPORTS:
        raise ValueError(f"an instance report holds 1 to {MAX_REPORTS} reports")
    return {"v": COMMAND_VERSION, "op": "instance.report", "key": key, "ts": ts,
            "node": node, "reports": reports}


def node_meta_command(node: str, workloads: bool, *, key: str, ts: str) -> dict[str, Any]:
    """A ``node.meta`` command: whether `node` runs workloads."""
    return {"v": COMMAND_VERSION, "op": "node.meta", "key": key, "ts": ts, "node": node,
            "workloads": workloads}
