"""The executions table inside `DeploymentStore`: apply (create, fire, miss, update, cancel)
with its refusals, exactly-once cron fires (idempotent, compare-and-set on the mark),
transitions, deterministic eviction, snapshots (format 4 section, format 3 while unused,
golden digest), restore checks, and a seeded leader-failover property of the cron plan."""

from __future__ import annotations

import hashlib
import os
import random

import cbor2
import pytest

from prisn.fsm import executions
from prisn.fsm.deployments import SNAPSHOT_FORMAT_REFS, SNAPSHOT_FORMAT_TABLES, DeploymentStore
from prisn.fsm.executions import MAX_MISSES, ExecutionTable, cron_command, fire_id
from prisn.workloads.cron import CronJob, Fire, cron_plan, parse_schedule
from tests.execfeed import T0, TS, cmd, fire, miss, reset_keys, round_id, update
from tests.execfeed import setup as jobs_store
from tests.feeder import Feeder


def setup() -> tuple[Feeder, str, str]:
    """A store with a job `j`, a cronjob `c` (ids returned) and a service `web`."""
    f, j, c = jobs_store()
    f.create(name="web", port=8080)
    return f, j, c


def test_create_by_name_and_id_and_the_json_shape() -> None:
    f, j, c = setup()
    st, e = f.run(cmd("execution.create", id="e1", ns="default", name="j",
                      env={"A": "1"}, args=["x"], timeout=30))
    assert st == 201
    assert e == {"id": "e1", "deployment_id": j, "namespace": "default", "name": "j",
                 "status": "Pending", "exit_code": None, "node": None, "scheduled_at": None,
                 "attempt": 1, "created_at": TS, "started_at": None, "completed_at": None,
                 "duration_ms": None, "error": None}
    rec = f.store.execution("e1")
    assert rec is not None and (rec.env, rec.args, rec.timeout) == ({"A": "1"}, ["x"], 30)
    assert f.run(cmd("execution.create", id="e2", ns="default", deployment_id=c))[0] == 201
    # refusals: unknown deployment, wrong namespace, a service, a duplicate id
    assert f.run(cmd("execution.create", id="e3", ns="default", name="nope"))[0] == 404
    assert f.run(cmd("execution.create", id="e3", ns="other", deployment_id=j))[0] == 404
    assert f.run(cmd("execution.create", id="e3", ns="default", name="web"))[0] == 409
    assert f.run(cmd("execution.create", id="e1", ns="default", name="j"))[0] == 409
    # malformed: 400, nothing changed
    before = f.store.state_hash()
    for bad in ({"timeout": 0}, {"env": {"1": "x"}}, {"args": "x"}, {"extra": 1},
                {"id": "a b"}, {"id": ""}):
        body = {"id": "e9", "ns": "default", "name": "j", **bad}
        st, err = f.run(cmd("execution.create", **body))
        assert st == 400 and set(err) == {"error", "message"}, bad
    assert f.run(cmd("execution.create", id="e9", ns="default"))[0] == 400  # no target
    assert f.run(cmd("execution.create", id="e9", ns="default", name="j", ts="now"))[0] == 400
    # the dedup table remembered the refusals only; executions are unchanged
    assert f.store.executions()["total"] == 2 and f.store.state_hash() != before


def test_fire_is_idempotent_and_compare_and_set() -> None:
    f, j, c = setup()
    st, e = fire(f, c, T0, None)
    assert st == 201 and e["id"] == fire_id(c, T0) and e["scheduled_at"] == TS
    # the same fire again (a resend with another key, or another leader): same execution
    again = cron_command(Fire(c, T0, None), ts="2026-06-01T12:00:05.000Z",
                         round_id="another-leader")
    assert f.run(again) == (200, e)
    assert f.run(again) == (200, e)  # and its resend
    assert f.store.executions()["total"] == 1
    # planned on a stale mark: refused, whether the time is new or old
    assert fire(f, c, T0 + 2, None)[0] == 409
    assert miss(f, c, T0 + 1, T0 + 1, None)[0] == 409
    # planned on the current mark: fine; a time at or before `after` is malformed
    assert miss(f, c, T0 + 1, T0 + 1, T0)[0] == 200
    assert fire(f, c, T0 + 1, T0 + 1)[0] == 400
    assert fire(f, c, T0 + 2, T0 + 1)[0] == 201
    assert f.store.cron_view()[1] == {c: T0 + 2}
    # only cronjobs fire
    assert fire(f, j, T0, None)[0] == 409 and fire(f, "nope", T0, None)[0] == 404


def test_miss_records_are_compact_and_bounded() -> None:
    f, _, c = setup()
    st, body = miss(f, c, T0 + 1, T0 + 86400, None, count=86400)
    assert (st, body) == (200, {"deployment_id": c, "first": "2026-06-01T12:00:01.000Z",
                                "last": "2026-06-02T12:00:00.000Z", "count": 86400,
                                "reason": "late"})
    mark = T0 + 86400
    for _ in range(MAX_MISSES + 5):
        assert miss(f, c, mark + 1, mark + 1, mark, reason="skipped")[0] == 200
        mark += 1
    total, rows = f.store._executions.misses(c)  # noqa: SLF001 - the table's own query
    assert total == 86400 + MAX_MISSES + 5 and len(rows) == MAX_MISSES
    assert rows[-1]["reason"] == "skipped"
    for bad in ({"count": 0}, {"reason": "bored"}, {"first": mark + 5, "last": mark + 4}):
        body = {"deployment_id": c, "first": mark + 1, "last": mark + 1, "count": 1,
                "reason": "late", "after": mark, **bad}
        assert f.run(cmd("cron.miss", **body))[0] == 400, bad
    # deleting the deployment forgets its mark and misses
    f.run(f.cf.delete("c"))
    assert f.store.cron_view()[1] == {}


TRANSITIONS = [
    # (from status, update, expected status code)
    ("Pending", {"status": "Running", "node": "n1"}, 200),
    ("Pending", {"status": "Pending", "node": "n1"}, 200),  # assigned to a node
    ("Pending", {"status": "Pending"}, 409),
    ("Pending", {"status": "Lost"}, 200),
    ("Running", {"status": "Completed", "exit_code": 0}, 200),
    ("Running", {"status": "Failed", "exit_code": 3, "error": "exit 3"}, 200),
    ("Running", {"status": "Running"}, 409),
    ("Running", {"status": "Pending"}, 409),
    ("Running", {"status": "Completed", "node": "n2"}, 409),  # another node's report
    ("Running", {"status": "Completed", "attempt": 2}, 409),  # another attempt
    ("Completed", {"status": "Running"}, 409),
    ("Completed", {"status": "Pending", "attempt": 2}, 409),
    ("Failed", {"status": "Pending", "attempt": 2}, 200),  # a retry
    ("Lost", {"status": "Pending", "attempt": 2, "node": "n3"}, 200),
    ("Lost", {"status": "Pending", "attempt": 3}, 409),
    ("Cancelled", {"status": "Completed"}, 409),
]


def to_status(f: Feeder, exec_id: str, status: str) -> None:
    if status == "Pending":
        return
    if status == "Cancelled":
        assert f.run(cmd("execution.cancel", id=exec_id))[0] == 200
        return
    assert update(f, exec_id, "Running", node="n1")[0] == 200
    if status != "Running":
        assert update(f, exec_id, status)[0] == 200


@pytest.mark.parametrize("start,change,code", TRANSITIONS)
def test_transitions(start: str, change: dict, code: int) -> None:
    f, _, _ = setup()
    f.run(cmd("execution.create", id="e1", ns="default", name="j"))
    to_status(f, "e1", start)
    before = f.store.execution("e1")
    st, body = update(f, "e1", **{"attempt": 1, **change})
    assert st == code, body
    if code != 200:
        assert f.store.execution("e1") == before and set(body) == {"error", "message"}
    else:
        assert body["status"] == change["status"]
        assert body["attempt"] == change.get("attempt", 1)


def test_times_duration_and_cancel() -> None:
    f, _, _ = setup()
    f.run(cmd("execution.create", id="e1", ns="default", name="j"))
    update(f, "e1", "Running", node="n1", started_at="2026-06-01T12:00:01.250Z")
    st, e = update(f, "e1", "Completed", exit_code=0, completed_at="2026-06-01T12:00:03.000Z")
    assert st == 200 and e["duration_ms"] == 1750 and e["node"] == "n1"
    assert f.run(cmd("execution.cancel", id="e1"))[0] == 409  # already finished
    f.run(cmd("execution.create", id="e2", ns="default", name="j"))
    update(f, "e2", "Running", node="n1", started_at=TS)
    st, e = f.run(cmd("execution.cancel", id="e2", ts="2026-06-01T12:00:10.000Z"))
    assert (st, e["status"], e["duration_ms"]) == (200, "Cancelled", 10_000)
    assert f.run(cmd("execution.cancel", id="zz"))[0] == 404
    for bad in ({"exit_code": 300}, {"exit_code": True}, {"node": "a b"},
                {"started_at": "yesterday"}, {"error": "x" * 2000}, {"status": "Done"},
                {"attempt": 0}):
        assert update(f, "e2", **{"status": "Completed", **bad})[0] == 400, bad


def test_replace_cancels_the_running_run_in_the_same_entry() -> None:
    f, _, c = setup()
    fire(f, c, T0, None)
    first = fire_id(c, T0)
    update(f, first, "Running", node="n1", started_at=TS)
    assert f.store.cron_view()[2] == {c: (first,)}
    st, e = fire(f, c, T0 + 1, T0, (first,))
    assert st == 201
    old = f.store.execution(first)
    assert old is not None and old.status == "Cancelled" and old.error == f"replaced by {e['id']}"
    assert f.store.cron_view()[2] == {c: (e["id"],)}


def test_list_filters_and_pages() -> None:
    f, j, c = setup()
    for i in range(5):
        f.run(cmd("execution.create", id=f"e{i}", ns="default", name="j"))
    fire(f, c, T0, None)
    update(f, "e1", "Running", node="n1")
    page = f.store.executions(limit=2, offset=1)
    assert [x["id"] for x in page["items"]] == ["e4", "e3"]  # newest first
    assert (page["count"], page["total"], page["limit"], page["offset"]) == (2, 6, 2, 1)
    assert f.store.executions(deployment_id=c)["total"] == 1
    assert [x["id"] for x in f.store.executions(status="Running")["items"]] == ["e1"]
    assert f.store.executions(namespace="other")["total"] == 0
    assert f.store.executions(namespaces=["default"])["total"] == 6
    assert f.store.execution("e1") is not None and f.store.execution("nope") is None


def small_table(history: int, total: int) -> DeploymentStore:
    store = DeploymentStore()
    store._executions = ExecutionTable(history=history, max_executions=total)  # noqa: SLF001
    return store


def test_eviction_keeps_unfinished_and_is_deterministic() -> None:
    def run(seed: int) -> tuple[dict, list[str]]:
        f = Feeder(small_table(history=4, total=6))
        f.create(name="a")
        f.create(name="b")
        rng = random.Random(seed)
        for i in range(60):
            name = rng.choice("ab")
            f.run(cmd("execution.create", id=f"e{i}", ns="default", name=name))
            if rng.random() < 0.7:
                update(f, f"e{i}", "Running", node="n1")
                update(f, f"e{i}", rng.choice(["Completed", "Failed"]))
        page = f.store.executions(limit=100)
        return f.store._executions.section(), [x["id"] for x in page["items"]]  # noqa: SLF001
    h1, ids1 = run(5)
    assert (h1, ids1) == run(5)
    assert len(ids1) <= 6
    # unfinished runs were never evicted: a deployment with `history` of them refuses more
    f = Feeder(small_table(history=2, total=10))
    f.create(name="a")
    for i in range(2):
        f.run(cmd("execution.create", id=f"p{i}", ns="default", name="a"))
    st, body = f.run(cmd("execution.create", id="p2", ns="default", name="a"))
    assert st == 409 and "unfinished" in body["message"]
    update(f, "p0", "Lost")
    assert f.run(cmd("execution.create", id="p2", ns="default", name="a"))[0] == 201
    assert [x["id"] for x in f.store.executions()["items"]] == ["p2", "p1"]  # p0 evicted


def populated() -> Feeder:
    reset_keys()  # the same keys whatever ran before (the golden digest)
    f, _, c = setup()
    f.run(cmd("execution.create", id="e1", ns="default", name="j", env={"K": "v"}))
    update(f, "e1", "Running", node="n1", started_at=TS)
    update(f, "e1", "Failed", exit_code=2, completed_at="2026-06-01T12:00:02.000Z",
           error="exit 2")
    miss(f, c, T0 - 9, T0 - 1, None, count=9)
    fire(f, c, T0, T0 - 1)
    miss(f, c, T0 + 1, T0 + 1, T0, reason="skipped")
    return f


def test_snapshot_round_trip_and_format() -> None:
    assert cbor2.loads(setup()[0].store.snapshot())["format"] == SNAPSHOT_FORMAT_REFS
    f = populated()
    snap = f.store.snapshot()
    decoded = cbor2.loads(snap)
    assert decoded["format"] == SNAPSHOT_FORMAT_TABLES
    assert set(decoded["tables"]) == {"executions"}
    again = DeploymentStore()
    again.restore(snap)
    assert again.snapshot() == snap and again.state_hash() == f.store.state_hash()
    assert again.executions() == f.store.executions()
    assert again.cron_view()[1:] == f.store.cron_view()[1:]
    # the restored store goes on exactly like the original
    for s in (f.store, again):
        g = Feeder(s)
        dep_id = decoded["deployments"][0]["id"]
        assert g.run(cron_command(Fire(dep_id, T0 + 5, T0 + 1), ts=TS, round_id="same"))[0] == 201
    assert again.state_hash() == f.store.state_hash()


def test_golden_executions_section() -> None:
    """Persisted bytes must not change by accident (see test_fsm_deployments golden)."""
    blob = populated().store.snapshot()
    section = cbor2.loads(blob)["tables"]["executions"]
    assert section["marks"][0][1:] == [T0 + 1, 10]
    assert [r[4] for r in section["rows"]] == ["Failed", "Pending"]
    assert hashlib.sha256(blob).hexdigest() == GOLDEN_EXECUTIONS


GOLDEN_EXECUTIONS = "53fd53e57cf6bbac942c8f8019c9771aa3c696809efaf8a855debde2f00aae74"  # format 4, executions under "tables"


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(extra=[]),
    lambda s: s["rows"].append(list(s["rows"][0])),  # duplicate id
    lambda s: s["rows"][0].__setitem__(4, "Done"),
    lambda s: s["rows"][0].__setitem__(8, 0),  # attempt
    lambda s: s["rows"][0].pop(),
    lambda s: s["marks"].append(["ghost", 1, 0]),  # a mark of no deployment
    lambda s: s["marks"][0].__setitem__(1, -1),
    lambda s: s["misses"].append(["ghost", 1, 1, 1, "late", TS]),
    lambda s: s["misses"][0].__setitem__(2, T0 + 99),  # beyond the mark
    lambda s: s["misses"][0].__setitem__(4, "bored"),
    lambda s: s.update(rows={}),
])
def test_restore_refuses_bad_sections(mutate) -> None:  # type: ignore[no-untyped-def]
    f = populated()
    snap = cbor2.loads(f.store.snapshot())
    mutate(snap["tables"]["executions"])
    target = DeploymentStore()
    before = target.snapshot()
    with pytest.raises(ValueError, match="invalid snapshot"):
        target.restore(cbor2.dumps(snap, canonical=True))
    assert target.snapshot() == before


# ---------------------------------------------------------------------- failover property
def test_cron_failover_property(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader clock with random outages: leaders change at random times, each new leader
    runs `cron_plan` on the log's state (through a real DeploymentStore) at its own ticks,
    with its own settings; now and then a deposed leader, whose view of the log is some
    rounds old but whose clock is current, still proposes its plan, before or after the
    leader's. Every scheduled time of an ``@every 1s`` job gets exactly one fire or one
    recorded miss, never both, never two."""
    seed = int(os.environ.get("PRISN_CRON_SEED", random.randrange(1 << 30)))
    print(f"cron failover seed={seed}")
    rng = random.Random(seed)
    monkeypatch.setattr(executions, "MAX_MISSES", 100_000)  # keep every record to count
    f = Feeder()
    _, dep = f.create(name="tick", schedule="@every 1s")
    since = T0
    sched = parse_schedule("@every 1s")
    now = since
    views: list[tuple[dict, dict]] = []  # older views of the log (marks, running)
    proposals = refused = 0

    def plan_of(view: tuple[dict, dict], at: int) -> list[dict]:
        job = CronJob(dep["id"], sched, starting_deadline=rng.choice([0, 5, 60]),
                      since=since, concurrency=rng.choice(["allow", "forbid", "replace"]))
        rnd = round_id()
        return [cron_command(c, ts=TS, round_id=rnd) for c in cron_plan([job], view[0], view[1], at,
                                                         max_commands=rng.choice([1, 2, 8]))]

    while now < since + 300:
        if rng.random() < 0.15:  # leader change: an outage of 0..120 s
            now += rng.choice([0, 1, 2, 5, 30, 61, 90, 120])
        else:
            now += rng.choice([1, 1, 1, 2])
        _, marks, running = f.store.cron_view()
        views = [*views[-9:], (marks, running)]
        plan = plan_of((marks, running), now)
        if len(views) > 1 and rng.random() < 0.3:  # a deposed leader's stale plan
            stale = plan_of(rng.choice(views[:-1]), now + rng.choice([-3, 0, 3]))
            plan = stale + plan if rng.random() < 0.5 else plan + stale
        for c in plan:
            st, _ = f.run(c)
            proposals += 1
            refused += st == 409
        for x in f.store.executions(status="Pending", limit=1000)["items"]:
            if rng.random() < 0.5:  # runs finish now and then
                update(f, x["id"], "Running", node="n1")
                update(f, x["id"], "Completed", exit_code=0)
    assert refused > 0, f"seed={seed}: no stale plan was refused"
    # liveness: with a current view, the log catches up with the clock in a few rounds
    # (a refusal remembered under a key a later plan needs would wedge the job here)
    for _ in range(10):
        _, marks, running = f.store.cron_view()
        for c in plan_of((marks, running), now):
            f.run(c)
    _, marks, running = f.store.cron_view()
    assert marks[dep["id"]] == now, f"seed={seed}: the job is stuck at {marks[dep['id']]}"
    _, marks, _ = f.store.cron_view()
    table = f.store._executions  # noqa: SLF001 - the table's own records
    fired: dict[int, int] = {}
    for x in table._rows.values():  # noqa: SLF001
        fired[x.scheduled_at] = fired.get(x.scheduled_at, 0) + 1
    missed: dict[int, int] = {}
    for first, last, count, _reason in table.miss_ranges(dep["id"]):
        assert count == last - first + 1, f"seed={seed}"
        for t in range(first, last + 1):
            missed[t] = missed.get(t, 0) + 1
    total, _ = table.misses(dep["id"])
    assert total == sum(missed.values()), f"seed={seed}: miss records were dropped"
    handled = range(since + 1, marks[dep["id"]] + 1)
    assert len(handled) >= 100, f"seed={seed}: only {len(handled)} scheduled times"
    for t in handled:
        assert fired.get(t, 0) + missed.get(t, 0) == 1, f"seed={seed}: time {t}"
    assert set(fired) | set(missed) == set(handled), f"seed={seed}"
    assert proposals > refused


def test_replace_at_the_cap_checks_room_before_cancelling() -> None:
    f = Feeder(small_table(history=1, total=10))
    _, c = f.create(name="c", schedule="@every 1s")
    dep = c["id"]
    fire(f, dep, T0, None)
    first = fire_id(dep, T0)
    # allow at the cap: refused, and nothing was cancelled
    st, body = fire(f, dep, T0 + 1, T0)
    assert st == 409 and "unfinished" in body["message"]
    running = f.store.execution(first)
    assert running is not None and running.status == "Pending"
    # replace frees its own room: the old run is cancelled (so, terminal, it is the one
    # the history of 1 evicts), the new one fires
    st, e = fire(f, dep, T0 + 1, T0, (first,))
    assert st == 201
    assert [x["id"] for x in f.store.executions(deployment_id=dep)["items"]] == [e["id"]]


def test_a_cronjob_read_shows_what_its_schedule_handled() -> None:
    """The deployment read view (`with_status`) of a cronjob carries the mark and the miss
    records, so a client can check exactly-once: every time up to ``handled_through`` has
    one fire or lies in one miss. Other types do not get it."""
    f, j, c = setup()
    dep = f.store.with_status(f.store.get("default", "c"))
    assert dep["cron"] == {"handled_through": None, "missed": 0, "misses": []}
    assert fire(f, c, T0, None)[0] == 201
    assert miss(f, c, T0 + 1, T0 + 3, T0, count=3, reason="late")[0] == 200
    assert fire(f, c, T0 + 4, T0 + 3)[0] == 201
    assert miss(f, c, T0 + 5, T0 + 5, T0 + 4, reason="skipped")[0] == 200
    cron = f.store.with_status(f.store.get("default", "c"))["cron"]
    assert cron == {"handled_through": "2026-06-01T12:00:05.000Z", "missed": 4, "misses": [
        {"first": "2026-06-01T12:00:01.000Z", "last": "2026-06-01T12:00:03.000Z",
         "count": 3, "reason": "late", "recorded_at": TS},
        {"first": "2026-06-01T12:00:05.000Z", "last": "2026-06-01T12:00:05.000Z",
         "count": 1, "reason": "skipped", "recorded_at": TS}]}
    assert "cron" not in f.store.with_status(f.store.get("default", "j"))
    assert "cron" not in f.store.with_status(f.store.get("default", "web"))
    # the list answers the same view
    listed = {d["name"]: d for d in f.store.list(namespace="default", type="cronjob",
                                                 limit=10, offset=0)[0]}
    assert f.store.with_status(listed["c"])["cron"] == cron
