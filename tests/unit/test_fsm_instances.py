"""The replicated instance-status and node tables inside `DeploymentStore`: reports recorded
only for the slot's current placement, pruned when the slot moves or goes, node metadata,
the derived deployment status, snapshots (format 4 tables) with a golden digest."""

from __future__ import annotations

import hashlib

import cbor2
import pytest

from prisn.fsm.deployments import SNAPSHOT_FORMAT_TABLES, DeploymentStore
from prisn.fsm.instances import instance_id, node_meta_command, report_command
from prisn.fsm.placements import batch_command
from prisn.workloads.model import Slot
from prisn.workloads.roll import SlotReport
from prisn.workloads.scheduler import Place
from tests.feeder import Feeder

TS = "2025-01-01T00:00:00.000Z"


def rep(i: int, epoch: int, state: str = "Running", **kw) -> dict:
    return {"ns": "default", "name": "web", "i": i, "epoch": epoch, "state": state,
            "pid": kw.get("pid", 100 + i), "started_at": kw.get("started_at", 1_700_000_000_000),
            "exit_code": kw.get("exit_code"), "restarts": kw.get("restarts", 0),
            "message": kw.get("message", "")}


def setup() -> Feeder:
    f = Feeder()
    f.create(name="web", type="service", replicas=2, port=0)
    f.run(batch_command([Place(Slot("default", "web", 0), "n1", None),
                         Place(Slot("default", "web", 1), "n2", None)], key="pl", ts=TS))
    return f


def test_reports_recorded_only_for_the_current_placement() -> None:
    f = setup()
    st, body = f.run(report_command("n1", [rep(0, 1), rep(1, 2)], key="r1", ts=TS))
    assert body == {"recorded": 1, "dropped": 1}  # slot 1 is on n2, not n1
    st, body = f.run(report_command("n2", [rep(1, 2, "CrashLoopBackOff", restarts=5,
                                               message="exited with 1")], key="r2", ts=TS))
    assert body == {"recorded": 1, "dropped": 0}
    dep = f.store.with_status(f.store.get("default", "web"))
    s = dep["status"]
    assert s["phase"] == "CrashLoopBackOff" and s["ready_replicas"] == 1
    assert s["restarts"] == 5 and "exited with 1" in s["message"]
    assert [(i["id"], i["node"], i["state"]) for i in s["instances"]] == [
        (instance_id(Slot("default", "web", 0), 1), "n1", "Running"),
        (instance_id(Slot("default", "web", 1), 2), "n2", "CrashLoopBackOff")]


def test_rows_pruned_on_move_scale_and_delete() -> None:
    f = setup()
    f.run(report_command("n1", [rep(0, 1)], key="r1", ts=TS))
    f.run(report_command("n2", [rep(1, 2)], key="r2", ts=TS))
    f.run(batch_command([Place(Slot("default", "web", 0), "n3", "n1")], key="mv", ts=TS))
    s = f.store.with_status(f.store.get("default", "web"))["status"]
    assert [(i["node"], i["state"]) for i in s["instances"]] == [("n3", "Pending"),
                                                                  ("n2", "Running")]
    # a late report from the old node is dropped
    assert f.run(report_command("n1", [rep(0, 1)], key="r3", ts=TS))[1]["dropped"] == 1
    f.run(f.cf.scale("web", {"replicas": 1}))
    s = f.store.with_status(f.store.get("default", "web"))["status"]
    assert len(s["instances"]) == 1 and s["desired_replicas"] == 1
    assert s["phase"] == "Pending"
    f.run(f.cf.delete("web"))
    assert f.store._instances.all() == []


def test_unplaced_replicas_named_in_the_message() -> None:
    f = Feeder()
    f.create(name="web", type="service", replicas=2, port=8080)
    s = f.store.with_status(f.store.get("default", "web"))["status"]
    assert s["phase"] == "Pending" and "2 of 2 replicas not placed" in s["message"]
    assert "port 8080" in s["message"]
    f.create(name="job")
    assert "status" not in f.store.with_status(f.store.get("default", "job"))
    f.run(f.cf.scale("web", {"replicas": 0}))
    assert f.store.with_status(f.store.get("default", "web"))["status"]["phase"] == "Stopped"


def test_node_meta() -> None:
    f = Feeder()
    assert f.store.runs_workloads("n9")
    f.run(node_meta_command("n9", False, key="m1", ts=TS))
    assert not f.store.runs_workloads("n9") and f.store.no_workload_nodes() == {"n9"}
    f.run(node_meta_command("n9", True, key="m2", ts=TS))
    assert f.store.no_workload_nodes() == frozenset()


@pytest.mark.parametrize("cmd", [
    {"v": 1, "op": "instance.report", "key": "b1", "ts": TS, "node": "n1", "reports": []},
    {"v": 1, "op": "instance.report", "key": "b2", "ts": TS, "node": "", "reports": [rep(0, 1)]},
    {"v": 1, "op": "instance.report", "key": "b3", "ts": TS, "node": "n1",
     "reports": [rep(0, 1, "Bogus")]},
    {"v": 1, "op": "instance.report", "key": "b4", "ts": TS, "node": "n1",
     "reports": [rep(0, 0)]},
    {"v": 1, "op": "instance.report", "key": "b5", "ts": TS, "node": "n1",
     "reports": [rep(0, 1), {**rep(0, 1), "pid": "x"}]},
    {"v": 1, "op": "node.meta", "key": "b6", "ts": TS, "node": "n1", "workloads": 1},
])
def test_malformed_commands_change_nothing(cmd: dict) -> None:
    f = setup()
    before = f.store.state_hash()
    st, body = f.run(cmd)
    assert st == 400 and "message" in body
    assert f.store._instances.all() == []
    assert f.store.no_workload_nodes() == frozenset()
    assert before != f.store.state_hash()  # only the dedup table remembered the refusal


def test_rows_keep_generation_and_report_time_for_the_roll() -> None:
    f = setup()
    f.run(report_command("n1", [{**rep(0, 1), "generation": 7}], key="r1",
                         ts="2023-11-14T22:13:23.000Z"))
    slots = f.store.roll_slots("default", "web")
    assert slots == {0: SlotReport(7, "Running", 1_700_000_000_000, 1_700_000_003_000),
                     1: None}
    dep = f.store.get("default", "web")
    s = f.store.with_status(dep)["status"]
    assert s["instances"][0]["generation"] == 7 and s["instances"][1]["generation"] is None
    assert s["observed_generation"] is None and s["updated_replicas"] == 0  # slot 1 unreported
    f.run(report_command("n2", [{**rep(1, 2), "generation": dep["generation"]}], key="r3",
                         ts=TS))
    s = f.store.with_status(dep)["status"]
    assert s["observed_generation"] == min(7, dep["generation"]) and s["updated_replicas"] == 1
    st, body = f.run(report_command("n1", [{**rep(0, 1), "generation": -1}], key="r2", ts=TS))
    assert st == 400


def _golden_store() -> DeploymentStore:
    f = setup()
    f.run(report_command("n1", [{**rep(0, 1), "generation": 3}], key="r1", ts=TS))
    f.run(report_command("n2", [rep(1, 2, "Exited", exit_code=-9, restarts=2)], key="r2",
                         ts=TS))
    f.run(node_meta_command("n3", False, key="m1", ts=TS))
    return f.store


def test_snapshot_format_4_tables_round_trip_and_golden_digest() -> None:
    store = _golden_store()
    blob = store.snapshot()
    snap = cbor2.loads(blob)
    assert snap["format"] == SNAPSHOT_FORMAT_TABLES
    assert set(snap["tables"]) == {"instances", "nodes", "placements"}
    other = DeploymentStore()
    other.restore(blob)
    assert other.snapshot() == blob and other.state_hash() == store.state_hash()
    # The format: a change of this digest means a change of the persisted format.
    assert hashlib.sha256(blob).hexdigest() == GOLDEN_4


@pytest.mark.parametrize("mutate", [
    lambda t: t["instances"][0].__setitem__(4, 7),  # epoch not the placement's
    lambda t: t["instances"][0].__setitem__(3, "n9"),  # node not the placement's
    lambda t: t["instances"][0].__setitem__(5, "Bogus"),
    lambda t: t.__setitem__("instances", []),
    lambda t: t["nodes"].append(["n3", True]),  # duplicate
    lambda t: t["nodes"][0].__setitem__(1, 0),
])
def test_restore_refuses_bad_rows(mutate) -> None:  # noqa: ANN001
    store = _golden_store()
    snap = cbor2.loads(store.snapshot())
    mutate(snap["tables"])
    other = DeploymentStore()
    with pytest.raises(ValueError):
        other.restore(cbor2.dumps(snap, canonical=True))


# Changed when rows gained `generation` and `at` (the rolling update): the instances table is
# new in this release, so no stored snapshot holds the old row shape.
GOLDEN_4 = "01cb79d29dea82b053aff845af25d140006c9953ca102b325fb9257a4e453e7c"
