"""The replicated placements table: which node runs which service replica (issue 14).

Filled by the leader's scheduler (`prisn.workloads.scheduler`) through Raft commands, applied
by `DeploymentStore` under its lock, in its dedup table and snapshots. Command formats (maps
in the log entry payload; envelope as for deployments: `v`, `op`, `key`, `ts`):

    {"v": 1, "op": "placement.set",   "key": K, "ts": T, "ns": NS, "name": N, "i": I,
     "node": NODE, "prev": NODE | None}
    {"v": 1, "op": "placement.clear", "key": K, "ts": T, "ns": NS, "name": N, "i": I,
     "prev": NODE}
    {"v": 1, "op": "placement.batch", "key": K, "ts": T, "decisions": [D, ...]}

where a decision D is ``{"do": "set", "ns", "name", "i", "node", "prev"}`` or ``{"do":
"clear", "ns", "name", "i", "prev"}`` (at most `MAX_BATCH`; one scheduler round is one batch).

Apply checks every decision against the state at that point of the batch (in order) and
either applies it or refuses it, deterministically; refusals are not errors (200 with
``refused``), since a decision made on a view older than the log is expected after a leader
change or a concurrent delete. A decision is refused when:
- the slot's deployment is not a service, is gone, or the index is not below its replicas;
- the slot is not where the decision says it is now (`prev`: compare-and-set, so a stale
  scheduler cannot undo a newer move);
- (set) the target node already runs another slot whose service has the same fixed port.
A malformed command (wrong types, unknown fields, too many decisions) is a 400 and changes
nothing: every decision is parsed before the first is applied.

Deleting a deployment or reducing its replicas (or turning it into a non-service) drops its
extra placements *at apply* (`drop`, `trim`, called by the store in the same apply), so no
node ever sees a placement of a slot that is not desired, whether or not a leader is there
to clear it; the scheduler's unplace of such slots only sweeps what a stale view left.

Every successful set takes the next value of the table's counter `seq` as the placement's
epoch: same entries, same epochs, on every node.

Threads: no lock; the owner (`DeploymentStore`) calls it under its lock. Placement values
are immutable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prisn.fsm.commands import COMMAND_VERSION, check_key
from prisn.fsm.results import Result
from prisn.fsm.validation import MAX_REPLICAS, ValidationError, is_int, validate_name
from prisn.outcomes import Outcome
from prisn.workloads.model import Placement, Slot
from prisn.workloads.scheduler import Command, Place

PLACEMENT_OPS: tuple[str, ...] = ("placement.set", "placement.clear", "placement.batch")
MAX_BATCH = 256
MAX_NODE_ID = 128  # as `prisn server --node-id` allows
MAX_SEQ = (1 << 63) - 1
MAX_TS = 64  # as for deployment commands

Lookup = Callable[[str, str], dict[str, Any] | None]  # (namespace, name) -> deployment

_SET_KEYS = frozenset({"do", "ns", "name", "i", "node", "prev"})
_CLEAR_KEYS = frozenset({"do", "ns", "name", "i", "prev"})
_ENVELOPE = frozenset({"v", "op", "key", "ts"})


class PlacementCommandError(ValueError):
    """A placement command in the log that is malformed (400; changes nothing)."""


def _node(value: Any, field: str) -> str:
    if (type(value) is not str or not 0 < len(value) <= MAX_NODE_ID
            or any(c.isspace() or c in "/@" for c in value)):
        raise PlacementCommandError(f"placement field {field!r} must be a node id")
    return value


def _parse_decision(raw: Any) -> tuple[str, Slot, str | None, str | None]:
    """(do, slot, node or None, prev or None) of one decision map; PlacementCommandError."""
    if type(raw) is not dict:
        raise PlacementCommandError("a placement decision must be a map")
    do = raw.get("do")
    keys = _SET_KEYS if do == "set" else _CLEAR_KEYS if do == "clear" else None
    if keys is None:
        raise PlacementCommandError("placement decision 'do' must be set or clear")
    if raw.keys() != keys:
        raise PlacementCommandError(f"a {do} decision has exactly {', '.join(sorted(keys))}")
    try:
        ns = validate_name(raw["ns"], "namespace")
        name = validate_name(raw["name"])
    except ValidationError as exc:
        raise PlacementCommandError(f"placement {exc.message}") from None
    index = raw["i"]
    if not is_int(index) or not 0 <= index < MAX_REPLICAS:
        raise PlacementCommandError(f"placement field 'i' must be 0..{MAX_REPLICAS - 1}")
    slot = Slot(ns, name, index)
    if do == "set":
        prev = raw["prev"]
        return "set", slot, _node(raw["node"], "node"), None if prev is None else _node(prev,
                                                                                       "prev")
    return "clear", slot, None, _node(raw["prev"], "prev")


def _decisions(cmd: dict[str, Any]) -> list[tuple[str, Slot, str | None, str | None]]:
    ts = cmd.get("ts")
    if type(ts) is not str or not 0 < len(ts) <= MAX_TS:
        raise PlacementCommandError(f"command field 'ts' must be a string of 1 to {MAX_TS} "
                                    "characters")
    op = cmd.get("op")
    if op == "placement.batch":
        if cmd.keys() != _ENVELOPE | {"decisions"}:
            raise PlacementCommandError("placement.batch has exactly v, op, key, ts, decisions")
        raw = cmd["decisions"]
        if type(raw) is not list or not 0 < len(raw) <= MAX_BATCH:
            raise PlacementCommandError(f"decisions must be a list of 1 to {MAX_BATCH}")
        return [_parse_decision(d) for d in raw]
    if op not in ("placement.set", "placement.clear"):
        raise PlacementCommandError(f"unknown placement op {op!r}")
    body = {k: v for k, v in cmd.items() if k not in _ENVELOPE}
    body["do"] = op.removeprefix("placement.")
    return [_parse_decision(body)]


class PlacementTable:
    """Placements by slot, with per-node and per-deployment indexes. Deterministic."""

    def __init__(self) -> None:
        self._by_slot: dict[Slot, Placement] = {}
        self._by_node: dict[str, set[Slot]] = {}
        self._by_dep: dict[tuple[str, str], set[Slot]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._by_slot)

    @property
    def seq(self) -> int:
        """The epoch of the last set applied (0: never used)."""
        return self._seq

    # ------------------------------------------------------------------ mutation
    def _put(self, p: Placement) -> None:
        old = self._by_slot.get(p.slot)
        if old is not None:
            self._unindex(old)
        self._by_slot[p.slot] = p
        self._by_node.setdefault(p.node, set()).add(p.slot)
        self._by_dep.setdefault(p.slot.deployment, set()).add(p.slot)

    def _unindex(self, p: Placement) -> None:
        for table, k in ((self._by_node, p.node), (self._by_dep, p.slot.deployment)):
            slots = table[k]  # type: ignore[index]
            slots.discard(p.slot)
            if not slots:
                del table[k]  # type: ignore[arg-type]

    def _pop(self, slot: Slot) -> None:
        p = self._by_slot.pop(slot)
        self._unindex(p)

    def drop(self, namespace: str, name: str) -> int:
        """Remove every placement of the deployment (it was deleted); how many."""
        return self.trim(namespace, name, 0)

    def trim(self, namespace: str, name: str, replicas: int) -> int:
        """Remove the deployment's placements with index >= `replicas`; how many."""
        extra = [s for s in self._by_dep.get((namespace, name), ()) if s.index >= replicas]
        for slot in extra:
            self._pop(slot)
        return len(extra)

    def apply(self, cmd: dict[str, Any], lookup: Lookup) -> Result:
        """Run one placement command (`op` in PLACEMENT_OPS); `lookup` gives the stored
        deployment of (namespace, name). Raises `PlacementCommandError` for a malformed
        command (nothing changed); otherwise 200 with counts and the refused decisions."""
        if cmd.get("v") != COMMAND_VERSION:
            raise PlacementCommandError(f"unsupported command version {cmd.get('v')!r}")
        decisions = _decisions(cmd)
        placed = cleared = 0
        refused: list[dict[str, str]] = []
        for do, slot, node, prev in decisions:
            why = self._refusal(do, slot, node, prev, lookup)
            if why is not None:
                refused.append({"slot": str(slot), "reason": why})
            elif do == "set":
                assert node is not None
                self._seq += 1
                self._put(Placement(slot, node, self._seq))
                placed += 1
            else:
                self._pop(slot)
                cleared += 1
        return Outcome.OK, {"placed": placed, "cleared": cleared, "refused": refused}

    def _refusal(self, do: str, slot: Slot, node: str | None, prev: str | None,
                 lookup: Lookup) -> str | None:
        cur = self._by_slot.get(slot)
        at = cur.node if cur is not None else None
        if at != prev:
            return f"slot is {'on ' + at if at else 'unplaced'}, not {'on ' + prev if prev else 'unplaced'}"
        if do == "clear":
            return None
        dep = lookup(slot.namespace, slot.name)
        if dep is None:
            return f"deployment {slot.namespace}/{slot.name} not found"
        if dep["type"] != "service":
            return f"deployment {slot.namespace}/{slot.name} is not a service"
        if slot.index >= dep["replicas"]:
            return f"replica {slot.index} is beyond replicas {dep['replicas']}"
        port = dep["port"]
        if port and node is not None:
            for other in sorted(self._by_node.get(node, ())):
                if other == slot:
                    continue
                odep = lookup(other.namespace, other.name)
                if odep is not None and odep["port"] == port:
                    return f"port {port} is in use on {node} by {other}"
        return None

    # ------------------------------------------------------------------ queries
    def get(self, slot: Slot) -> Placement | None:
        return self._by_slot.get(slot)

    def all(self) -> list[Placement]:
        """Every placement, by slot."""
        return [self._by_slot[s] for s in sorted(self._by_slot)]

    def on_node(self, node: str) -> list[Placement]:
        """The placements on `node`, by slot (what its runner should run)."""
        return [self._by_slot[s] for s in sorted(self._by_node.get(node, ()))]

    def of(self, namespace: str, name: str) -> list[Placement]:
        """The deployment's placements, by replica index."""
        return [self._by_slot[s] for s in sorted(self._by_dep.get((namespace, name), ()))]

    def nodes(self) -> list[str]:
        """The nodes holding at least one placement, sorted."""
        return sorted(self._by_node)

    # ------------------------------------------------------------------ snapshots
    def section(self) -> dict[str, Any]:
        """The snapshot section: ``{"seq": N, "rows": [[ns, name, index, node, epoch]...]}``
        with rows by slot (deterministic)."""
        return {"seq": self._seq,
                "rows": [[p.slot.namespace, p.slot.name, p.slot.index, p.node, p.epoch]
                         for p in self.all()]}

    @classmethod
    def from_section(cls, raw: Any, lookup: Lookup) -> PlacementTable:
        """A table from `section()`, checked against the snapshot's deployments (`lookup`):
        ValueError for anything apply could not have stored (a placement of a missing or
        non-service deployment, an index beyond replicas, an epoch above `seq`, duplicates)."""
        if type(raw) is not dict or raw.keys() != {"seq", "rows"}:
            raise ValueError("placements must be a map of seq and rows")
        seq, rows = raw["seq"], raw["rows"]
        if not is_int(seq) or not 0 <= seq <= MAX_SEQ:
            raise ValueError(f"placements seq must be an integer 0..{MAX_SEQ}")
        if type(rows) is not list:
            raise ValueError("placement rows must be a list")
        table = cls()
        table._seq = seq
        epochs: set[int] = set()
        for row in rows:
            if type(row) is not list or len(row) != 5:
                raise ValueError("a placement row is not [ns, name, index, node, epoch]")
            ns, name, index, node, epoch = row
            try:
                _, slot, _, _ = _parse_decision({"do": "clear", "ns": ns, "name": name,
                                                 "i": index, "prev": node})
            except PlacementCommandError as exc:
                raise ValueError(str(exc)) from None
            if not is_int(epoch) or not 1 <= epoch <= seq or epoch in epochs:
                raise ValueError(f"placement {slot} epoch must be unique and 1..seq")
            dep = lookup(ns, name)
            if dep is None or dep["type"] != "service" or index >= dep["replicas"]:
                raise ValueError(f"placement {slot} is not a replica of a stored service")
            if slot in table._by_slot:
                raise ValueError(f"placement {slot} is a duplicate")
            epochs.add(epoch)
            table._put(Placement(slot, node, epoch))
        return table


# ---------------------------------------------------------------------- proposer side
def decision(c: Command) -> dict[str, Any]:
    """The log form of one scheduler command."""
    s = c.slot
    if isinstance(c, Place):
        return {"do": "set", "ns": s.namespace, "name": s.name, "i": s.index,
                "node": c.node, "prev": c.prev}
    return {"do": "clear", "ns": s.namespace, "name": s.name, "i": s.index, "prev": c.prev}


def batch_command(commands: Iterable[Command], *, key: str, ts: str) -> dict[str, Any]:
    """A ``placement.batch`` command carrying one scheduler round (1..MAX_BATCH commands;
    ValueError otherwise). `key` and `ts` are the proposer's, as for every command (a
    deterministic key such as ``sched-<term>-<n>`` lets a resend deduplicate)."""
    ds = [decision(c) for c in commands]
    if not 0 < len(ds) <= MAX_BATCH:
        raise ValueError(f"a placement batch holds 1 to {MAX_BATCH} decisions")
    return {"v": COMMAND_VERSION, "op": "placement.batch", "key": check_key(key), "ts": ts,
            "decisions": ds}
