"""The leader's execution assignment plan (`prisn.workloads.jobs.assign_plan`): Pending
executions go to the least-loaded live node (ties: smallest id), executions of a node that is
not live become Lost, nothing is planned without live nodes, bounded, deterministic; and the
log form of an update."""

from __future__ import annotations

from prisn.fsm.executions import LOST, PENDING, RUNNING, Execution
from prisn.workloads.jobs import Update, assign_plan, update_command


def ex(i: str, status: str = PENDING, node: str | None = None, attempt: int = 1) -> Execution:
    return Execution(i, "d", "default", "j", status, None, node, None, attempt,
                     "2026-06-01T12:00:00.000Z", None, None, None, None, {}, [], 600)


def test_pending_go_to_the_least_loaded_live_node() -> None:
    todo = [ex("a", RUNNING, "n2"), ex("b"), ex("c"), ex("d")]
    assert assign_plan(todo, {"n1", "n2", "n3"}) == [
        Update("b", 1, PENDING, node="n1"), Update("c", 1, PENDING, node="n3"),
        Update("d", 1, PENDING, node="n1")]


def test_executions_of_a_down_node_are_lost_and_nothing_is_placed_without_nodes() -> None:
    todo = [ex("a", RUNNING, "gone"), ex("b", PENDING, "gone", attempt=2), ex("c")]
    assert assign_plan(todo, set()) == [
        Update("a", 1, LOST, error="node gone went down"),
        Update("b", 2, LOST, error="node gone went down")]
    assert assign_plan([ex("a", RUNNING, "n1"), ex("b", PENDING, "n1")], {"n1"}) == []


def test_bounded_and_deterministic() -> None:
    todo = [ex(f"e{i}") for i in range(10)]
    first = assign_plan(todo, {"n1", "n2"}, max_updates=4)
    assert len(first) == 4 and first == assign_plan(todo, {"n2", "n1"}, max_updates=4)


def test_update_command_leaves_out_none() -> None:
    cmd = update_command("e1", 2, LOST, key="k", ts="2026-06-01T12:00:00.000Z", node=None,
                         error="x")
    assert cmd == {"v": 1, "op": "execution.update", "key": "k",
                   "ts": "2026-06-01T12:00:00.000Z", "id": "e1", "status": LOST,
                   "attempt": 2, "error": "x"}
