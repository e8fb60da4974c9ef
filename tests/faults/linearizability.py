"""A linearizability checker for register histories (Wing & Gong search, Lowe's refinements).

Model: one register per key. A write sets the value; a read returns it. Histories are split by
key (linearizability is compositional, Herlihy & Wing's locality / P-compositionality), and each
key is searched on its own.

Operations carry invoke and return times (any monotonic clock). An operation whose return time
is None is *unknown*: a write that failed or timed out may or may not have taken effect, at any
moment after its invoke. Unknown writes may be linearized anywhere after their invoke, or not at
all; unknown reads are dropped (they change nothing).

The search is the one of Wing & Gong (1993) with the just-in-time linearization and memoization
of Lowe (2017) as Porcupine implements it: walk a doubly linked list of call/return events;
at a call, try to linearize that operation now (the model accepts it and the pair (set of
linearized ops, model state) was not seen before), then restart from the head; at a return
whose operation is not linearized yet, backtrack. The search succeeds once every completed
operation is linearized. A step budget bounds it: past the budget the answer is "unknown"
(neither proof nor violation).

Pruning (exact, not heuristic): an unknown write whose value no read returned can always be
left out (a linearization that contains it stays valid without it, since no read depends on
it), so it is dropped before the search. Values written must be unique per key for the
diagnostics to name the writer; the search itself does not need it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

READ = "read"
WRITE = "write"

DEFAULT_BUDGET = 2_000_000


@dataclass(frozen=True)
class Op:
    """One client operation. `ret` None: unknown outcome (a write that may or may not apply)."""

    key: str
    kind: str  # READ or WRITE
    value: Hashable  # the value written, or the value the read returned
    invoke: float
    ret: float | None
    client: int = 0
    node: str = ""
    id: int = 0

    def __post_init__(self) -> None:
        if self.kind not in (READ, WRITE):
            raise ValueError(f"kind must be {READ!r} or {WRITE!r}, not {self.kind!r}")
        if self.ret is not None and self.ret < self.invoke:
            raise ValueError(f"op {self.id}: returns ({self.ret}) before it is invoked "
                             f"({self.invoke})")

    def describe(self) -> str:
        end = "?" if self.ret is None else f"{self.ret:.4f}"
        return (f"#{self.id} c{self.client}@{self.node or '-'} {self.kind} {self.key}="
                f"{self.value!r} [{self.invoke:.4f}, {end}]")


@dataclass
class KeyResult:
    key: str
    ok: bool | None  # True linearizable, False not, None budget exhausted
    ops: int  # operations searched (after pruning)
    pruned: int  # unknown writes dropped as unobservable
    steps: int
    reason: str = ""
    linearization: list[Op] = field(default_factory=list)  # a witness (ok) or deepest prefix


@dataclass
class Result:
    per_key: dict[str, KeyResult]

    @property
    def ok(self) -> bool | None:
        """True if every key is linearizable, False if any is not, None if undecided."""
        if any(r.ok is False for r in self.per_key.values()):
            return False
        if any(r.ok is None for r in self.per_key.values()):
            return None
        return True

    @property
    def ops(self) -> int:
        return sum(r.ops for r in self.per_key.values())

    def violations(self) -> list[KeyResult]:
        return [r for r in self.per_key.values() if r.ok is False]

    def summary(self) -> str:
        lines = []
        for k in sorted(self.per_key):
            r = self.per_key[k]
            verdict = {True: "linearizable", False: "NOT LINEARIZABLE", None: "UNDECIDED"}[r.ok]
            lines.append(f"  key {k}: {verdict} ({r.ops} ops, {r.pruned} pruned, "
                         f"{r.steps} steps){': ' + r.reason if r.reason else ''}")
        return "\n".join(lines)


class _Entry:
    __slots__ = ("op", "idx", "is_call", "match", "prev", "next")

    def __init__(self, op: Op | None, idx: int, is_call: bool) -> None:
        self.op = op
        self.idx = idx
        self.is_call = is_call
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _lift(e: _Entry) -> None:
    """Remove a call entry and its return entry (if any) from the list."""
    e.prev.next = e.next  # type: ignore[union-attr]
    if e.next is not None:
        e.next.prev = e.prev
    m = e.match
    if m is not None:
        m.prev.next = m.next  # type: ignore[union-attr]
        if m.next is not None:
            m.next.prev = m.prev


def _unlift(e: _Entry) -> None:
    """Undo `_lift` (entries go back exactly where they were)."""
    m = e.match
    if m is not None:
        m.prev.next = m  # type: ignore[union-attr]
        if m.next is not None:
            m.next.prev = m
    e.prev.next = e  # type: ignore[union-attr]
    if e.next is not None:
        e.next.prev = e


def prune(ops: list[Op]) -> tuple[list[Op], int]:
    """Drop unknown reads and unknown writes whose value no completed read returned."""
    read_values = {op.value for op in ops if op.kind == READ and op.ret is not None}
    kept = [op for op in ops
            if op.ret is not None or (op.kind == WRITE and op.value in read_values)]
    pruned = sum(1 for op in ops if op.kind == WRITE and op.ret is None) - sum(
        1 for op in kept if op.kind == WRITE and op.ret is None)
    return kept, pruned


def check_key(ops: list[Op], init: Hashable = None, budget: int = DEFAULT_BUDGET,
              key: str = "") -> KeyResult:
    """Search for a linearization of one key's register history."""
    ops, pruned = prune(ops)
    n = len(ops)
    if n == 0:
        return KeyResult(key, True, 0, pruned, 0)
    events: list[tuple[float, int, int, _Entry]] = []
    for i, op in enumerate(ops):
        call = _Entry(op, i, True)
        events.append((op.invoke, 0, i, call))  # calls sort before returns at equal times
        if op.ret is not None:
            ret = _Entry(op, i, False)
            call.match = ret
            ret.match = call
            events.append((op.ret, 1, i, ret))
    events.sort(key=lambda t: (t[0], t[1], t[2]))
    head = _Entry(None, -1, True)
    prev = head
    for _, _, _, e in events:
        prev.next = e
        e.prev = prev
        prev = e

    remaining = sum(1 for op in ops if op.ret is not None)
    linearized = 0
    state: Hashable = init
    stack: list[tuple[_Entry, Hashable]] = []
    seen: set[tuple[int, Hashable]] = set()
    steps = 0
    best: list[_Entry] = []
    entry = head.next
    while remaining:
        steps += 1
        if steps > budget:
            return KeyResult(key, None, n, pruned, steps,
                             f"search budget of {budget} steps exhausted",
                             [e.op for e, _ in stack])  # type: ignore[misc]
        if entry is None:  # only unknown calls left, yet completed ops remain: impossible
            raise AssertionError("internal: ran off the event list")
        if entry.is_call:
            op = entry.op
            assert op is not None
            if op.kind == WRITE:
                ok, new_state = True, op.value
            else:
                ok, new_state = op.value == state, state
            if ok:
                lin = linearized | (1 << entry.idx)
                if (lin, new_state) not in seen:
                    seen.add((lin, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, lin
                    _lift(entry)
                    if op.ret is not None:
                        remaining -= 1
                    if len(stack) > len(best):
                        best = [e for e, _ in stack]
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not stack:
                blocked = entry.op
                assert blocked is not None
                return KeyResult(key, False, n, pruned, steps,
                                 _explain(ops, best, init, blocked),
                                 [e.op for e in best])  # type: ignore[misc]
            top, state = stack.pop()
            linearized &= ~(1 << top.idx)
            _unlift(top)
            if top.op is not None and top.op.ret is not None:
                remaining += 1
            entry = top.next
    return KeyResult(key, True, n, pruned, steps, "", [e.op for e, _ in stack])  # type: ignore[misc]


def _explain(ops: list[Op], best: list[_Entry], init: Hashable, blocked: Op) -> str:
    """A human hint for a violation: the deepest linearized prefix and what could not follow."""
    written = {op.value for op in ops if op.kind == WRITE}
    bad_reads = [op for op in ops if op.kind == READ and op.value not in written
                 and op.value != init]
    hints = []
    if bad_reads:
        hints.append("read of a value never written: " + bad_reads[0].describe())
    prefix = [e.op for e in best]
    state = init
    for op in prefix:
        if op is not None and op.kind == WRITE:
            state = op.value
    done = {id(op) for op in prefix}
    stuck = [op for op in ops if id(op) not in done and op.ret is not None]
    stuck.sort(key=lambda o: o.ret)  # type: ignore[arg-type,return-value]
    hints.append(f"deepest linearization has {len(prefix)} of {len(ops)} ops, ending in state "
                 f"{state!r}")
    if prefix:
        hints.append("last linearized: " + "; ".join(
            op.describe() for op in prefix[-3:] if op is not None))
    if stuck:
        hints.append("first op that cannot be placed: " + stuck[0].describe())
    return " | ".join(hints)


def check(ops: Iterable[Op], init: dict[str, Any] | Hashable = None,
          budget: int = DEFAULT_BUDGET) -> Result:
    """Check a whole history, key by key. `init`: one initial value, or a dict per key."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    out = {}
    for k, kops in by_key.items():
        start = init.get(k) if isinstance(init, dict) else init
        out[k] = check_key(kops, start, budget, key=k)
    return Result(out)
