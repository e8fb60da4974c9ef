"""The output tails an execution's terminal update carries (issue 15: logs survive the loss
of the node): checked, stored while terminal, kept out of the list and get shapes, carried
by snapshots (a snapshot without them still loads), and bounded in all, the oldest dropped
first on every node alike."""

from __future__ import annotations

import cbor2
import pytest

from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.executions import MAX_OUTPUT
from tests.execfeed import cmd, setup, update


def finished(f, exec_id: str, **out: object) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    assert f.run(cmd("execution.create", id=exec_id, ns="default", name="j"))[0] == 201
    assert update(f, exec_id, "Running", node="n1")[0] == 200
    return update(f, exec_id, "Failed", exit_code=3, **out)


def test_a_terminal_update_stores_the_output_out_of_the_json() -> None:
    f, _j, _c = setup()
    st, body = finished(f, "e1", stdout="out\n", stderr="err é\n", stderr_truncated=True)
    assert st == 200 and "stdout" not in body and "stderr" not in body
    e = f.store.execution("e1")
    assert e is not None and e.output() == {"stdout": "out\n", "stderr": "err é\n",
                                            "stdout_truncated": False,
                                            "stderr_truncated": True}
    assert e.output_bytes == len("out\n") + len("err é\n".encode())
    page = f.store.executions()
    assert "stdout" not in page["items"][0] and "stderr" not in page["items"][0]
    # an update without output leaves none (older nodes)
    finished(f, "e2")
    e2 = f.store.execution("e2")
    assert e2 is not None and not e2.has_output


@pytest.mark.parametrize("bad", [
    {"stdout": 5},
    {"stdout": "x" * (MAX_OUTPUT + 1)},
    {"stderr": "é" * (MAX_OUTPUT // 2 + 1)},  # characters fit, UTF-8 bytes do not
    {"stdout": "x", "stdout_truncated": "yes"},
    {"stdout_truncated": True},  # a flag without text
])
def test_bad_output_is_refused_and_changes_nothing(bad: dict) -> None:
    f, _j, _c = setup()
    assert f.run(cmd("execution.create", id="e1", ns="default", name="j"))[0] == 201
    assert update(f, "e1", "Running", node="n1")[0] == 200
    before = f.store.execution("e1")
    st, err = update(f, "e1", "Failed", exit_code=1, **bad)
    assert st == 400 and set(err) == {"error", "message"}
    assert f.store.execution("e1") == before


def test_only_a_terminal_update_carries_output_and_a_retry_drops_it() -> None:
    f, _j, _c = setup()
    assert f.run(cmd("execution.create", id="e1", ns="default", name="j"))[0] == 201
    assert update(f, "e1", "Running", node="n1", stdout="early")[0] == 400
    assert update(f, "e1", "Running", node="n1")[0] == 200
    assert update(f, "e1", "Failed", exit_code=1, stdout="attempt 1")[0] == 200
    assert update(f, "e1", "Pending", attempt=2)[0] == 200  # a retry
    e = f.store.execution("e1")
    assert e is not None and e.status == "Pending" and not e.has_output
    assert f.store._executions.output_total == 0


def test_snapshots_carry_the_output_and_older_rows_still_load() -> None:
    f, _j, _c = setup()
    finished(f, "e1", stdout="a" * 10, stderr="b")
    finished(f, "e2")
    snap = f.store.snapshot()
    rows = cbor2.loads(snap)["tables"]["executions"]["rows"]
    assert [len(r) for r in rows] == [18, 17]  # a row without output is the older row
    assert rows[0][-1] == {"stdout": "a" * 10, "stderr": "b", "stdout_truncated": False,
                           "stderr_truncated": False}
    again = DeploymentStore()
    again.restore(snap)
    assert again.snapshot() == snap and again.state_hash() == f.store.state_hash()
    e = again.execution("e1")
    assert e is not None and (e.stdout, e.stderr) == ("a" * 10, "b")
    assert again._executions.output_total == 11
    # a row with output fields but no text is not one apply could store
    bad = cbor2.loads(snap)
    for out in ({"stdout": None, "stderr": None}, {"stdout": "x", "stdout_truncated": 1},
                {"stdout": "x", "extra": 1}, {}):
        bad["tables"]["executions"]["rows"][0][-1] = out
        with pytest.raises(ValueError, match="invalid snapshot"):
            DeploymentStore().restore(cbor2.dumps(bad, canonical=True))


def test_the_total_bound_drops_the_oldest_output_first_everywhere() -> None:
    stores = []
    for restore_midway in (False, True):
        f, _j, _c = setup()
        f.store._executions.max_output = 100
        for i in range(6):
            if restore_midway and i == 3:  # a node that installed a snapshot goes on alike
                snap = f.store.snapshot()
                f.store.restore(snap)
                f.store._executions.max_output = 100
            finished(f, f"e{i}", stdout="x" * 30)
        stores.append(f.store)
    for s in stores:
        held = [i for i in range(6) if (e := s.execution(f"e{i}")) and e.has_output]
        assert held == [3, 4, 5] and s._executions.output_total == 90
        assert s.execution("e0").exit_code == 3  # the result itself stays
    a, b = (cbor2.loads(s.snapshot())["tables"]["executions"]["rows"] for s in stores)
    assert a == b
