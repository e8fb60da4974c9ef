"""Running executions: the leader's assignment plan and the log form of execution updates.

Pure: no clock, no threads (the callers pass time and the live set); any thread.

The leader (`actors.scheduler`) runs `assign_plan` every round over the unfinished
executions: a Pending execution without a node is assigned (Pending -> Pending with a node)
to the live node that has the fewest unfinished executions (ties: the smallest node id); an
unfinished execution whose node is not live is recorded `Lost` (never re-run silently). A
retry (an execution the table queued again after a Failed or Lost attempt, `retries` > 0)
goes preferably to a live node none of its earlier attempts ran on. The
node's controller (`actors.workloads`) reports Running and the terminal statuses itself.
Every update names the attempt it is about, so a stale plan is refused by the table (409).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from prisn.fsm.commands import COMMAND_VERSION, check_key
from prisn.fsm.executions import LOST, PENDING, Execution

MAX_ASSIGN = 256  # updates one round proposes at most (the rest next round)


@dataclass(frozen=True, slots=True)
class Update:
    """One ``execution.update`` the plan wants: `status` for attempt `attempt` of `id`."""

    id: str
    attempt: int
    status: str
    node: str | None = None
    error: str | None = None


def assign_plan(unfinished: Iterable[Execution], live: Collection[str], *,
                max_updates: int = MAX_ASSIGN) -> list[Update]:
    """The updates bringing unfinished executions onto live nodes (module doc).
    Deterministic in its inputs; at most `max_updates`."""
    todo = list(unfinished)
    load = {n: 0 for n in live}
    for e in todo:
        if e.node is not None and e.node in load:
            load[e.node] += 1
    out: list[Update] = []
    for e in todo:
        if len(out) >= max_updates:
            break
        if e.node is not None:
            if e.node not in load:
                out.append(Update(e.id, e.attempt, LOST, error=f"node {e.node} went down"))
            continue
        if e.status != PENDING or not load:
            continue
        tried = {a[1] for a in e.past}  # a retry prefers a node it has not failed on
        node = min(load, key=lambda n: (n in tried, load[n], n))
        load[node] += 1
        out.append(Update(e.id, e.attempt, PENDING, node=node))
    return out


def update_command(exec_id: str, attempt: int, status: str, *, key: str, ts: str,
                   **fields: Any) -> dict[str, Any]:
    """The log form of an ``execution.update`` (`fields`: exit_code, node, started_at,
    completed_at, error; None values are left out)."""
    cmd: dict[str, Any] = {"v": COMMAND_VERSION, "op": "execution.update",
                           "key": check_key(key), "ts": ts, "id": exec_id, "status": status,
                           "attempt": attempt}
    cmd.update({k: v for k, v in fields.items() if v is not None})
    return cmd
