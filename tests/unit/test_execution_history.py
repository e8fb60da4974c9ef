"""--execution-history (issue 15): the per-deployment bound travels in the commands that
create executions, so nodes with different flags (or a restore from a snapshot) prune the
same rows; the flag, its environment variable and its default."""

from __future__ import annotations

from click.testing import CliRunner

from actors.api.executions import create_command
from prisn.cli import cli
from prisn.config import ServerConfig
from prisn.fsm.executions import DEFAULT_HISTORY, ExecutionTable, cron_command
from prisn.workloads.cron import Fire
from tests.execfeed import T0, TS, cmd, fire, setup, update
from tests.feeder import Feeder


def store_with(history: int) -> Feeder:
    f = Feeder()
    f.store._executions = ExecutionTable(history=history)  # noqa: SLF001
    f.create(name="j")
    return f


def run_finished(f: Feeder, n: int, history: int | None) -> list[str]:
    for i in range(n):
        extra = {} if history is None else {"history": history}
        assert f.run(cmd("execution.create", id=f"e{i}", ns="default", name="j",
                         **extra))[0] == 201
        update(f, f"e{i}", "Running", node="n1")
        update(f, f"e{i}", "Completed", exit_code=0)
    return [x["id"] for x in f.store.executions(limit=100)["items"]]


def test_the_bound_in_the_command_wins_over_the_table_default() -> None:
    # two nodes whose own tables were built with different defaults apply the same log
    a, b = store_with(2), store_with(50)
    ids_a, ids_b = run_finished(a, 8, 3), run_finished(b, 8, 3)
    assert ids_a == ids_b == ["e7", "e6", "e5"]
    assert a.store._executions.section() == b.store._executions.section()  # noqa: SLF001
    # without the field, the table's default applies (the old behaviour)
    assert run_finished(store_with(2), 5, None) == ["e4", "e3"]


def test_a_restored_snapshot_keeps_rows_beyond_the_default() -> None:
    f = store_with(DEFAULT_HISTORY)
    run_finished(f, 5, 5)
    section = f.store._executions.section()  # noqa: SLF001
    restored = ExecutionTable.from_section(section, [])  # built with the default bound
    assert restored.section() == section  # nothing pruned on restore
    small = ExecutionTable(history=2)
    assert small.history == 2 and len(ExecutionTable.from_section(section, [])) == 5


def test_history_field_is_checked_and_cron_fires_carry_it() -> None:
    f, _j, c = setup()
    for bad in (0, 100_001, "3", True):
        assert f.run(cmd("execution.create", id="x", ns="default", name="j",
                         history=bad))[0] == 400, bad
    fired = cron_command(Fire(c, T0 + 1, None, ()), ts=TS, round_id="r", history=7)
    assert fired["history"] == 7
    assert "history" not in cron_command(Fire(c, T0 + 1, None, ()), ts=TS, round_id="r")
    assert f.run(fired)[0] == 201
    assert fire(f, c, T0 + 2, T0 + 1)[0] == 201


def test_create_command_carries_a_non_default_history() -> None:
    body = {"name": "j"}
    assert "history" not in create_command(body, namespace=None, key=None)[0]
    assert create_command(body, namespace=None, key=None, history=5)[0]["history"] == 5


def test_flag_env_and_default() -> None:
    assert ServerConfig(node_id="n1", data_dir="/tmp/x").execution_history == 1000
    out = CliRunner().invoke(cli, ["server", "--help"])
    assert "--execution-history" in out.output and "PRISN_EXECUTION_HISTORY" in out.output
