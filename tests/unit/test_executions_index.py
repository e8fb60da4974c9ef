"""The executions table's index of unfinished executions (`_open`): under seeded random
creates, fires, updates (retries, Lost, cancels), evictions and snapshot restores,
`unfinished()` and `running()` equal a full scan of every held execution, oldest first."""

from __future__ import annotations

import random

import pytest

from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.executions import ADHOC_GROUP, Execution, ExecutionTable
from tests.execfeed import T0, cmd, fire, update
from tests.feeder import Feeder


def scan(table: ExecutionTable) -> tuple[list[Execution], dict[str, tuple[str, ...]]]:
    """The reference: every held row, by deployment id, then creation order."""
    rows = table._rows  # noqa: SLF001
    by_dep = table._by_dep  # noqa: SLF001
    unfinished = [rows[i] for dep in sorted(by_dep) for i in by_dep[dep]
                  if not rows[i].terminal]
    running = {dep: ids for dep in sorted(by_dep) if not dep.startswith(ADHOC_GROUP)
               for ids in [tuple(i for i in by_dep[dep] if not rows[i].terminal)] if ids}
    return unfinished, running


def check(store: DeploymentStore) -> None:
    table = store._executions  # noqa: SLF001
    want_unfinished, want_running = scan(table)
    assert table.unfinished() == want_unfinished
    assert table.running() == want_running
    counts = {d: n for d, n in ((d, sum(1 for e in want_unfinished if e.group == d))
                                for d in {e.group for e in want_unfinished})}
    assert table._active == counts  # noqa: SLF001


@pytest.mark.parametrize("seed", range(6))
def test_unfinished_index_equals_a_full_scan(seed: int) -> None:
    rng = random.Random(seed)
    store = DeploymentStore()
    store._executions = ExecutionTable(history=5, max_executions=12)  # noqa: SLF001
    f = Feeder(store)
    names = ["a", "b", "c"]
    for n in names:
        f.create(name=n)
    _, cj = f.create(name="cj", schedule="@every 1s")
    ids: list[str] = []
    attempts: dict[str, int] = {}
    mark: int | None = None
    for step in range(400):
        r = rng.random()
        if r < 0.3:
            exec_id = f"e{step}"
            if f.run(cmd("execution.create", id=exec_id, ns="default",
                         name=rng.choice(names)))[0] == 201:
                ids.append(exec_id)
                attempts[exec_id] = 1
        elif r < 0.4:
            at = T0 + step
            st, body = fire(f, cj["id"], at, mark)
            if st == 201:
                mark = at
                ids.append(body["id"])
                attempts[body["id"]] = 1
        elif ids and r < 0.9:
            exec_id = rng.choice(ids)
            a = attempts[exec_id]
            change = rng.choice(["Running", "Completed", "Failed", "Lost", "retry", "cancel"])
            if change == "cancel":
                f.run(cmd("execution.cancel", id=exec_id))
            elif change == "retry":
                if update(f, exec_id, "Pending", attempt=a + 1)[0] == 200:
                    attempts[exec_id] = a + 1
            elif change == "Running":
                update(f, exec_id, "Running", attempt=a, node=rng.choice(["n1", "n2"]))
            else:
                update(f, exec_id, change, attempt=a)
        elif r >= 0.97:
            snap = store.snapshot()
            again = DeploymentStore()
            again.restore(snap)
            assert again.snapshot() == snap
            check(again)
            store = again
            f = Feeder(store)
        check(store)
    assert store._executions._open  # noqa: SLF001  (the run left some unfinished)
