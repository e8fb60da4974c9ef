"""The replicated placements table inside `DeploymentStore`: apply (with its refusals),
trimming at delete / scale down, snapshots (format 4, and format 3 unchanged while unused),
restore checks, determinism."""

from __future__ import annotations

import hashlib
import random

import cbor2
import pytest

from prisn.fsm.deployments import (
    SNAPSHOT_FORMAT_PLACEMENTS,
    SNAPSHOT_FORMAT_REFS,
    DeploymentStore,
)
from prisn.fsm.placements import MAX_BATCH, batch_command
from prisn.messages import EntryKind
from prisn.workloads.model import Placement, Service, Slot
from prisn.workloads.scheduler import Place, Unplace, schedule
from tests.feeder import Feeder

TS = "2025-01-01T00:00:00.000Z"


def sl(name: str, i: int, ns: str = "default") -> Slot:
    return Slot(ns, name, i)


def batch(f: Feeder, *commands: Place | Unplace, key: str | None = None) -> tuple[int, dict]:
    key = key or f"p{f.store.applied_index + 1}"
    return f.run(batch_command(commands, key=key, ts=TS))


def where(store: DeploymentStore) -> dict[str, tuple[str, int]]:
    return {str(p.slot): (p.node, p.epoch) for p in store.placements()}


def services(f: Feeder) -> Feeder:
    f.create(name="web", port=8080, replicas=2)
    f.create(name="api", port=8080, replicas=1)
    f.create(name="free", type="service", replicas=3)
    f.create(name="job")
    return f


def test_set_clear_and_reads() -> None:
    f = services(Feeder())
    st, body = batch(f, Place(sl("web", 0), "n1", None), Place(sl("web", 1), "n2", None),
                     Place(sl("free", 0), "n1", None))
    assert (st, body) == (200, {"placed": 3, "cleared": 0, "refused": []})
    assert where(f.store) == {"default/free/0": ("n1", 3), "default/web/0": ("n1", 1),
                              "default/web/1": ("n2", 2)}
    assert [str(p.slot) for p in f.store.placements(node="n1")] == ["default/free/0",
                                                                     "default/web/0"]
    assert [p.node for p in f.store.placements("default", "web")] == ["n1", "n2"]
    assert f.store.placements("default", "web", node="n2") == [
        Placement(sl("web", 1), "n2", 2)]
    # a move is one set with the old node; a clear needs the node too
    st, body = batch(f, Place(sl("web", 1), "n3", "n2"), Unplace(sl("free", 0), "n1"))
    assert body == {"placed": 1, "cleared": 1, "refused": []}
    assert where(f.store) == {"default/web/0": ("n1", 1), "default/web/1": ("n3", 4)}
    svcs, placed = f.store.schedule_view()
    assert svcs == [Service("default", "api", 1, 8080), Service("default", "free", 3, 0),
                    Service("default", "web", 2, 8080)]
    assert placed == f.store.placements()


def test_single_set_and_clear_ops() -> None:
    f = services(Feeder())
    st, body = f.run({"v": 1, "op": "placement.set", "key": "s1", "ts": TS, "ns": "default",
                      "name": "web", "i": 0, "node": "n1", "prev": None})
    assert body["placed"] == 1
    st, body = f.run({"v": 1, "op": "placement.clear", "key": "c1", "ts": TS, "ns": "default",
                      "name": "web", "i": 0, "prev": "n1"})
    assert body["cleared"] == 1 and f.store.placements() == []


@pytest.mark.parametrize("decision,reason", [
    (Place(sl("web", 0), "n2", None), "slot is on n1, not unplaced"),
    (Place(sl("web", 0), "n2", "n3"), "slot is on n1, not on n3"),
    (Unplace(sl("web", 1), "n1"), "slot is unplaced, not on n1"),
    (Place(sl("api", 0), "n1", None), "port 8080 is in use on n1 by default/web/0"),
    (Place(sl("web", 2), "n2", None), "replica 2 is beyond replicas 2"),
    (Place(sl("job", 0), "n2", None), "deployment default/job is not a service"),
    (Place(sl("nope", 0), "n2", None), "deployment default/nope not found"),
])
def test_stale_decisions_are_refused_deterministically(decision: Place | Unplace,
                                                       reason: str) -> None:
    f = services(Feeder())
    batch(f, Place(sl("web", 0), "n1", None))
    before = f.store.state_hash()
    st, body = batch(f, decision)
    assert st == 200
    assert body == {"placed": 0, "cleared": 0,
                    "refused": [{"slot": str(decision.slot), "reason": reason}]}
    # only the dedup table remembered the answer: the placements did not change
    assert where(f.store) == {"default/web/0": ("n1", 1)}
    assert f.store.state_hash() != before  # (the dedup row)


def test_a_batch_applies_in_order() -> None:
    """Decision 2 sees decision 1: a port freed earlier in the batch may be taken later."""
    f = services(Feeder())
    batch(f, Place(sl("web", 0), "n1", None))
    st, body = batch(f, Unplace(sl("web", 0), "n1"), Place(sl("api", 0), "n1", None),
                     Place(sl("web", 0), "n1", None))
    assert body["refused"] == [{"slot": "default/web/0",
                                "reason": "port 8080 is in use on n1 by default/api/0"}]
    assert where(f.store) == {"default/api/0": ("n1", 2)}


@pytest.mark.parametrize("cmd", [
    {"decisions": []},
    {"decisions": "x"},
    {"decisions": [{"do": "set", "ns": "default", "name": "web", "i": 0, "node": "n1"}]},
    {"decisions": [{"do": "move", "ns": "default", "name": "web", "i": 0, "prev": "n1"}]},
    {"decisions": [{"do": "set", "ns": "default", "name": "web", "i": -1, "node": "n1",
                    "prev": None}]},
    {"decisions": [{"do": "set", "ns": "default", "name": "web", "i": True, "node": "n1",
                    "prev": None}]},
    {"decisions": [{"do": "set", "ns": "default", "name": "web", "i": 0, "node": "a b",
                    "prev": None}]},
    {"decisions": [{"do": "clear", "ns": "default", "name": "web", "i": 0, "prev": None}]},
    {"decisions": [{"do": "set", "ns": "default", "name": "web", "i": 0, "node": "n1",
                    "prev": None}], "extra": 1},
    # a malformed decision after a good one: nothing of the batch applies
    {"decisions": [{"do": "set", "ns": "default", "name": "web", "i": 1, "node": "n2",
                    "prev": None}, {"do": "set"}]},
    {"decisions": [{"do": "set", "ns": "default", "name": "web", "i": 1, "node": "n2",
                    "prev": None}] * (MAX_BATCH + 1)},
])
def test_malformed_commands_are_400_and_change_nothing(cmd: dict) -> None:
    f = services(Feeder())
    full = {"v": 1, "op": "placement.batch", "key": "bad", "ts": TS, **cmd}
    st, body = f.run(full)
    assert st == 400 and body["error"] == "Bad Request", body
    assert f.store.placements() == []
    st, _ = f.run({"v": 1, "op": "placement.nope", "key": "bad2", "ts": TS})
    assert st == 400
    st, _ = f.run({"v": 1, "op": "placement.clear", "key": "bad3", "ns": "default",
                   "name": "web", "i": 0, "prev": "n1"})  # no ts
    assert st == 400


def test_delete_scale_down_and_type_change_drop_placements_at_apply() -> None:
    f = services(Feeder())
    batch(f, *(Place(sl("free", i), f"n{i}", None) for i in range(3)),
          Place(sl("web", 0), "n1", None), Place(sl("web", 1), "n2", None),
          Place(sl("api", 0), "n3", None))
    f.run(f.cf.scale("free", {"replicas": 1}))
    assert [str(p.slot) for p in f.store.placements("default", "free")] == ["default/free/0"]
    f.run(f.cf.scale("free", {"replicas": 3}))  # scaling back up does not resurrect them
    assert len(f.store.placements("default", "free")) == 1
    f.run(f.cf.delete("web"))
    assert f.store.placements("default", "web") == []
    f.run(f.cf.patch("api", {"port": 0}))  # no port: a job now
    assert f.store.get("default", "api")["type"] == "job"
    assert where(f.store) == {"default/free/0": ("n0", 1)}
    # a deployment created again under the same name starts without placements
    f.create(name="web", port=8080, replicas=2)
    assert f.store.placements("default", "web") == []


def _drive(seed: int) -> Feeder:
    """A random history of deployment changes and scheduler rounds over one store."""
    rng = random.Random(seed)
    f = Feeder()
    nodes = ["n1", "n2", "n3", "n4"]
    live = set(nodes)
    names: set[str] = set()
    for step in range(60):
        r = rng.random()
        name = f"s{rng.randrange(6)}"
        if r < 0.3 and name not in names:
            f.create(name=name, port=rng.choice([0, 8080, 9000]), type="service",
                     replicas=rng.randint(0, 4))
            names.add(name)
        elif r < 0.45 and name in names:
            f.run(f.cf.scale(name, {"replicas": rng.randint(0, 5)}))
        elif r < 0.55 and name in names:
            f.run(f.cf.delete(name))
            names.discard(name)
        elif r < 0.65:
            live.discard(rng.choice(nodes))
        elif r < 0.75:
            live.add(rng.choice(nodes))
        svcs, placed = f.store.schedule_view()
        plan = schedule(svcs, placed, live, max_commands=rng.randint(1, 6))
        if plan.commands:
            st, body = batch(f, *plan.commands, key=f"r{step}")
            assert st == 200 and body["refused"] == [], body  # a fresh view is never refused
    return f


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_same_entries_same_table_and_snapshot_round_trip(seed: int) -> None:
    print(f"seed={seed}")
    a = _drive(seed)
    b = Feeder()
    for index, kind, data in a.entries:
        b.store.apply(index, kind, data)
    assert b.store.state_hash() == a.store.state_hash()
    assert b.store.snapshot() == a.store.snapshot()
    assert b.store.placements() == a.store.placements()
    snap = a.store.snapshot()
    assert cbor2.loads(snap)["format"] == SNAPSHOT_FORMAT_PLACEMENTS
    c = DeploymentStore()
    c.restore(snap)
    assert c.snapshot() == snap and c.state_hash() == a.store.state_hash()
    assert c.placements() == a.store.placements()
    # epochs continue from the restored counter exactly as on the original
    a2, c2 = Feeder(a.store), Feeder(c)
    for g in (a2, c2):
        g.create(name="late", port=9999, replicas=1)
        batch(g, Place(sl("late", 0), "n9", None), key="late")
    assert a.store.placements("default", "late") == c.placements("default", "late")


def test_format_3_while_unused_and_older_formats_still_read() -> None:
    f = services(Feeder())
    snap = f.store.snapshot()
    assert cbor2.loads(snap)["format"] == SNAPSHOT_FORMAT_REFS  # byte-identical to before
    again = DeploymentStore()
    again.restore(snap)
    assert again.placements() == [] and again.snapshot() == snap


def test_golden_format_4() -> None:
    """Persisted bytes must not change by accident (see test_fsm_deployments golden)."""
    f = services(Feeder())
    batch(f, Place(sl("web", 0), "n1", None), Place(sl("free", 2), "n2", None), key="g1")
    blob = f.store.snapshot()
    assert cbor2.loads(blob)["tables"]["placements"] == {
        "seq": 2, "rows": [["default", "free", 2, "n2", 2], ["default", "web", 0, "n1", 1]]}
    assert hashlib.sha256(blob).hexdigest() == GOLDEN_4


GOLDEN_4 = "d9e8d793554fea9d5885a69eae28098b47fbedbfbe898fbc3551649d2257537d"  # placements under "tables" (one format 4 with the artifacts)


@pytest.mark.parametrize("mutate", [
    lambda p: p.update(seq=-1),
    lambda p: p.update(seq=1),  # an epoch above seq
    lambda p: p["rows"].append(list(p["rows"][0])),  # duplicate slot (and epoch)
    lambda p: p["rows"].append(["default", "job", 0, "n1", 1]),  # not a service
    lambda p: p["rows"].append(["default", "gone", 0, "n1", 1]),
    lambda p: p["rows"].append(["default", "web", 5, "n1", 1]),  # beyond replicas
    lambda p: p["rows"].append(["default", "web", 1, "n1"]),
    lambda p: p["rows"].append(["default", "web", 1, 7, 1]),
    lambda p: p.update(extra=1),
    lambda p: p.update(rows={}),
])
def test_restore_refuses_bad_placement_sections(mutate) -> None:  # type: ignore[no-untyped-def]
    f = services(Feeder())
    batch(f, Place(sl("web", 0), "n1", None), Place(sl("free", 2), "n2", None))
    snap = cbor2.loads(f.store.snapshot())
    mutate(snap["tables"]["placements"])
    target = DeploymentStore()
    with pytest.raises(ValueError):
        target.restore(cbor2.dumps(snap, canonical=True))
    assert target.placements() == [] and target.applied_index == 0


def test_replay_skips_and_dedup_answers_again() -> None:
    f = services(Feeder())
    first = batch(f, Place(sl("web", 0), "n1", None), key="same")
    again = batch(f, Place(sl("web", 0), "n1", None), key="same")
    assert again == first and where(f.store) == {"default/web/0": ("n1", 1)}
    index, kind, data = f.entries[-1]
    assert f.store.apply(index, kind, data) is None
    assert EntryKind.COMMAND == kind
