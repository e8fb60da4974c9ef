"""Retries (issue 15): the deployment run settings (`retries`, `concurrency`, `timezone`,
`starting_deadline`) through the command path (validated, refused on types they mean nothing
for, stored only when not their default, snapshotted), and the executions table re-queueing
a Failed or Lost attempt while attempts are left (fixed at creation, recorded in
`attempts`), with the plan preferring a node not tried before."""

from __future__ import annotations

import cbor2
import pytest

from prisn.fsm.deployments import DeploymentStore
from prisn.fsm.executions import LOST, PENDING, Execution, cron_command
from prisn.workloads.cron import Fire, cronjob_of
from prisn.workloads.jobs import Update, assign_plan
from tests.execfeed import T0, TS, cmd, update
from tests.feeder import Feeder

T1 = "2026-06-01T12:00:01.000Z"
T2 = "2026-06-01T12:00:02.000Z"


# ---------------------------------------------------------------------- the settings
def test_settings_are_validated_and_named_in_the_error() -> None:
    f = Feeder()
    for bad, field in (({"retries": 11}, "retries"), ({"retries": True}, "retries"),
                       ({"retries": -1}, "retries"), ({"retries": "1"}, "retries"),
                       ({"concurrency": "sometimes", "schedule": "@hourly"}, "concurrency"),
                       ({"timezone": "Mars/Olympus", "schedule": "@hourly"}, "timezone"),
                       ({"timezone": "../etc", "schedule": "@hourly"}, "timezone"),
                       ({"starting_deadline": 1.5, "schedule": "@hourly"},
                        "starting_deadline"),
                       ({"starting_deadline": -1, "schedule": "@hourly"},
                        "starting_deadline")):
        with pytest.raises(ValueError, match=field):
            f.create(name="x", **bad)
    assert f.store.count() == 0


def test_settings_are_refused_on_types_they_mean_nothing_for() -> None:
    f = Feeder()
    before = f.store.state_hash()
    for spec in ({"port": 8080, "retries": 1}, {"port": 8080, "retries": 0},
                 {"concurrency": "allow"}, {"timezone": "Europe/Paris"},
                 {"starting_deadline": 5}):
        st, body = f.create(name="x", **spec)
        assert st == 400 and set(body) == {"error", "message"}, spec
        assert next(iter(k for k in spec if k != "port")) in body["message"]
    assert f.store.count() == 0 and f.store.state_hash() != before  # dedup only


def test_settings_are_stored_only_when_not_their_default_and_patched() -> None:
    f = Feeder()
    st, plain = f.create(name="p", schedule="@hourly", retries=0, concurrency="forbid",
                         timezone="UTC", starting_deadline=60)
    assert st == 201 and not {"retries", "concurrency", "timezone",
                              "starting_deadline"} & plain.keys()
    st, c = f.create(name="c", schedule="0 9 * * *", retries=2, concurrency="allow",
                     timezone="Europe/Paris", starting_deadline=5)
    assert st == 201 and list(c)[-4:] == ["retries", "concurrency", "timezone",
                                          "starting_deadline"]
    job = cronjob_of(c, since=0)
    assert (job.concurrency, job.starting_deadline, job.schedule.timezone) == (
        "allow", 5, "Europe/Paris")
    # a patch changes one, null resets one to its default (then absent)
    st, c2 = f.run(f.cf.patch("c", {"retries": None, "concurrency": "replace"}))
    assert st == 200 and "retries" not in c2 and c2["concurrency"] == "replace"
    assert c2["generation"] == c["generation"] + 1
    assert f.run(f.cf.patch("c", {"concurrency": "replace"}))[1]["generation"] == \
        c2["generation"]  # no change: no new generation
    # changing the type away from cronjob while a cron setting is set is refused
    st, body = f.run(f.cf.patch("c", {"schedule": None, "type": "job"}))
    assert st == 400 and "concurrency" in body["message"]
    # PUT replaces: absent settings go back to their defaults
    st, c3 = f.run(f.cf.replace("c", {"source": "print(2)", "schedule": "@hourly"}))
    assert st == 200 and not {"concurrency", "timezone", "starting_deadline"} & c3.keys()
    # a job keeps retries through a scale
    _, j = f.create(name="j", retries=3)
    assert f.run(f.cf.scale("j", {"replicas": 0}))[1]["retries"] == 3


def test_settings_round_trip_through_a_snapshot_and_bad_ones_are_refused() -> None:
    f = Feeder()
    f.create(name="c", schedule="@hourly", retries=1, timezone="Asia/Tokyo")
    f.create(name="j", retries=10)
    f.create(name="plain")
    snap = f.store.snapshot()
    again = DeploymentStore()
    again.restore(snap)
    assert again.snapshot() == snap and again.state_hash() == f.store.state_hash()
    assert again.get("default", "c")["timezone"] == "Asia/Tokyo"
    for field, value in (("retries", 0), ("retries", 99), ("concurrency", "forbid"),
                         ("timezone", "UTC")):
        raw = cbor2.loads(snap)
        row = next(r for r in raw["deployments"] if r["name"] == "c")
        row[field] = value  # a default stored, or out of range: apply never writes it
        with pytest.raises(ValueError, match="invalid snapshot"):
            DeploymentStore().restore(cbor2.dumps(raw, canonical=True))


# ---------------------------------------------------------------------- the table
def jobs(retries: int = 2) -> tuple[Feeder, str]:
    f = Feeder()
    _, j = f.create(name="j", retries=retries)
    assert f.run(cmd("execution.create", id="e1", ns="default", name="j"))[0] == 201
    return f, j["id"]


def test_failed_and_lost_attempts_are_queued_again_until_none_are_left() -> None:
    f, _ = jobs(retries=2)
    assert update(f, "e1", PENDING, node="n1")[0] == 200
    update(f, "e1", "Running", node="n1", started_at=TS)
    st, e = update(f, "e1", "Failed", node="n1", exit_code=3, completed_at=T1, error="exit 3")
    assert st == 200 and (e["status"], e["attempt"], e["node"]) == (PENDING, 2, None)
    assert e["retries"] == 2 and e["attempts"] == [
        {"attempt": 1, "node": "n1", "status": "Failed", "exit_code": 3, "started_at": TS,
         "completed_at": T1, "error": "exit 3"},
        {"attempt": 2, "node": None, "status": PENDING, "exit_code": None,
         "started_at": None, "completed_at": None, "error": None}]
    # a late report on attempt 1 is refused
    assert update(f, "e1", "Completed", node="n1", exit_code=0)[0] == 409
    # attempt 2 is lost with its node (the leader's record)
    update(f, "e1", PENDING, attempt=2, node="n2")
    st, e = update(f, "e1", LOST, attempt=2, error="node n2 went down")
    assert (e["status"], e["attempt"]) == (PENDING, 3)
    assert [a["status"] for a in e["attempts"]] == ["Failed", "Lost", PENDING]
    # attempt 3 is the last: its failure is final
    update(f, "e1", PENDING, attempt=3, node="n3")
    update(f, "e1", "Running", attempt=3, node="n3", started_at=T1)
    st, e = update(f, "e1", "Failed", attempt=3, exit_code=1, completed_at=T2)
    assert (e["status"], e["attempt"], e["exit_code"]) == ("Failed", 3, 1)
    assert len(e["attempts"]) == 3 and e["attempts"][-1]["status"] == "Failed"
    assert f.store.executions(status="Failed")["total"] == 1


def test_completed_and_cancelled_are_not_retried_and_no_retries_is_as_before() -> None:
    f, _ = jobs(retries=1)
    update(f, "e1", PENDING, node="n1")
    update(f, "e1", "Running", node="n1", started_at=TS)
    assert update(f, "e1", "Completed", exit_code=0)[1]["status"] == "Completed"
    f.run(cmd("execution.create", id="e2", ns="default", name="j"))
    st, e = f.run(cmd("execution.cancel", id="e2"))
    assert e["status"] == "Cancelled" and len(e["attempts"]) == 1
    # a deployment without retries: Lost is final and the JSON has no retry fields
    _, k = f.create(name="k")
    f.run(cmd("execution.create", id="e3", ns="default", name="k"))
    update(f, "e3", PENDING, node="n1")
    st, e = update(f, "e3", LOST, error="node n1 went down")
    assert e["status"] == LOST and "attempts" not in e and "retries" not in e


def test_retries_are_fixed_when_the_execution_is_created() -> None:
    f, _ = jobs(retries=1)
    f.run(f.cf.patch("j", {"retries": None}))  # later changes do not touch it
    update(f, "e1", PENDING, node="n1")
    assert update(f, "e1", "Failed", exit_code=1)[1]["status"] == PENDING
    # cron fires take the cronjob's retries
    _, c = f.create(name="c", schedule="@every 1s", retries=4)
    st, e = f.run(cron_command(Fire(c["id"], T0, None), ts=TS, round_id="r"))
    assert st == 201 and e["retries"] == 4


def test_retry_rows_round_trip_and_old_rows_load() -> None:
    f, _ = jobs(retries=2)
    update(f, "e1", PENDING, node="n1")
    update(f, "e1", "Failed", exit_code=1)
    snap = f.store.snapshot()
    again = DeploymentStore()
    again.restore(snap)
    assert again.snapshot() == snap and again.execution("e1") == f.store.execution("e1")
    rows = cbor2.loads(snap)["tables"]["executions"]["rows"]
    assert len(rows[0]) == 19
    for mutate in (lambda r: r.__setitem__(17, 0), lambda r: r.__setitem__(17, 11),
                   lambda r: r[18][0].__setitem__(2, "Completed"),
                   lambda r: r[18][0].__setitem__(0, 2), lambda r: r.pop()):
        raw = cbor2.loads(snap)
        mutate(raw["tables"]["executions"]["rows"][0])
        with pytest.raises(ValueError, match="invalid snapshot"):
            DeploymentStore().restore(cbor2.dumps(raw, canonical=True))


def ex(i: str, node: str | None = None, past: tuple = ()) -> Execution:
    return Execution(i, "d", "default", "j", PENDING, None, node, None, len(past) + 1, TS,
                     None, None, None, None, {}, [], 600, retries=2, past=past)


def test_the_plan_prefers_a_node_the_execution_has_not_failed_on() -> None:
    tried = ((1, "n1", "Lost", None, None, None, "node n1 went down"),)
    assert assign_plan([ex("a", past=tried)], {"n1", "n2"}) == [
        Update("a", 2, PENDING, node="n2")]
    both = (*tried, (2, "n2", "Failed", 1, None, None, "exit 1"))
    # every live node tried: the least loaded one all the same
    assert assign_plan([ex("b", past=both)], {"n1", "n2"}) == [
        Update("b", 3, PENDING, node="n1")]
