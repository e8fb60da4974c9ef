"""DeploymentStore: every command, status codes, generation, dedup, determinism, snapshots."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import threading

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prisn.fsm.commands import CommandFactory, decode_entry, encode_entry, format_ts
from prisn.fsm.deployments import SNAPSHOT_FORMAT, SNAPSHOT_FORMAT_REFS, DeploymentStore
from prisn.messages import EntryKind
from tests.feeder import Feeder


def test_create_defaults_and_fields() -> None:
    f = Feeder()
    status, dep = f.create(name="web")
    assert status == 201
    assert list(dep) == ["id", "name", "namespace", "type", "runtime", "source", "args", "env",
                         "port", "replicas", "schedule", "generation", "created_at",
                         "updated_at"]
    assert dep["namespace"] == "default"
    assert dep["type"] == "job"
    assert dep["replicas"] == 1 and dep["port"] == 0 and dep["args"] == [] and dep["env"] == {}
    assert dep["generation"] == 1
    assert dep["created_at"] == dep["updated_at"] == format_ts(1_700_000_000)
    assert f.store.get("default", "web") == dep
    assert f.store.get(None, dep["id"]) == dep
    assert f.store.count() == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, "job"),
        ({"port": 8080}, "service"),
        ({"schedule": "*/5 * * * *"}, "cronjob"),
        ({"schedule": "@daily", "port": 8080}, "cronjob"),
        ({"type": "service"}, "service"),
    ],
)
def test_type_inference(spec: dict, expected: str) -> None:
    status, dep = Feeder().create(name="x", **spec)
    assert status == 201
    assert dep["type"] == expected


def test_duplicate_create_is_409_and_changes_nothing() -> None:
    f = Feeder()
    f.create(name="web")
    before = f.store.state_hash()
    status, body = f.create(name="web", source="other")
    assert status == 409
    assert body["error"] == "Conflict" and "default/web" in body["message"]
    # only the dedup table grew (the 409 is remembered for its key); the deployment did not
    assert f.store.get("default", "web")["source"] == "print(1)"  # type: ignore[index]
    assert before != f.store.state_hash()
    # same name, other namespace is fine
    assert f.create(name="web", namespace="prod")[0] == 201
    assert f.store.count() == 2


def test_missing_is_404_for_every_change() -> None:
    f = Feeder()
    cf = f.cf
    for cmd in (cf.replace("ghost", {"source": "x"}), cf.patch("ghost", {"replicas": 2}),
                cf.scale("ghost", {"replicas": 2}), cf.delete("ghost")):
        status, body = f.run(cmd)
        assert status == 404, cmd["op"]
        assert body == {"error": "Not Found", "message": "deployment default/ghost not found"}
    assert f.store.count() == 0


def test_patch_replace_scale_delete_and_generation() -> None:
    f = Feeder()
    _, d1 = f.create(name="api", env={"A": "1"}, args=["--x"])
    s, d2 = f.run(f.cf.patch("api", {"replicas": 3}))
    assert s == 200 and d2["replicas"] == 3 and d2["generation"] == 2
    assert d2["env"] == {"A": "1"} and d2["args"] == ["--x"]
    assert d2["created_at"] == d1["created_at"] and d2["updated_at"] > d1["updated_at"]
    assert d2["id"] == d1["id"]
    s, d3 = f.run(f.cf.replace("api", {"source": "new", "port": 9000}))
    assert s == 200 and d3["generation"] == 3
    # PUT replaces the whole spec: env/args/replicas back to defaults, type re-inferred
    assert d3["env"] == {} and d3["args"] == [] and d3["replicas"] == 1
    assert d3["type"] == "service" and d3["source"] == "new"
    s, d4 = f.run(f.cf.scale("api", {"replicas": 7}))
    assert s == 200 and d4["replicas"] == 7 and d4["generation"] == 4
    s, body = f.run(f.cf.delete("api"))
    assert (s, body) == (204, {})
    assert f.store.get("default", "api") is None
    assert f.store.get(None, d1["id"]) is None
    assert f.store.count() == 0
    assert f.store.list() == ([], 0)


def test_no_op_change_keeps_generation() -> None:
    f = Feeder()
    _, d1 = f.create(name="a", replicas=2)
    s, d2 = f.run(f.cf.scale("a", {"replicas": 2}))
    assert s == 200 and d2 == d1


def test_patch_null_resets_and_type_reinference() -> None:
    f = Feeder()
    f.create(name="c", schedule="@hourly")
    s, d = f.run(f.cf.patch("c", {"schedule": None, "port": 8080}))
    assert s == 200 and d["schedule"] is None and d["type"] == "service"
    s, d = f.run(f.cf.patch("c", {"replicas": 4}))
    assert d["type"] == "service"  # untouched schedule/port: type kept
    s, body = f.run(f.cf.patch("c", {"type": "cronjob"}))
    assert s == 400 and "schedule" in body["message"]


def test_type_change_moves_between_type_indexes() -> None:
    f = Feeder()
    f.create(name="a")
    f.create(name="b")
    f.run(f.cf.patch("a", {"port": 2000}))
    assert [d["name"] for d in f.store.list(type="service")[0]] == ["a"]
    assert [d["name"] for d in f.store.list(type="job")[0]] == ["b"]
    assert [d["name"] for d in f.store.list(namespace="default", type="job")[0]] == ["b"]


def test_get_by_id_respects_namespace() -> None:
    f = Feeder()
    _, d = f.create(name="w", namespace="team")
    assert f.store.get(None, d["id"]) == d
    assert f.store.get("team", d["id"]) == d
    assert f.store.get("other", d["id"]) is None
    assert f.store.get(None, "w") is None  # by name: namespace defaults to "default"
    assert f.store.get("team", "w") == d


def test_list_order_filters_and_paging() -> None:
    f = Feeder()
    for name, ns in [("b", "x"), ("a", "y"), ("b", "a"), ("c", "x"), ("a", "x")]:
        f.create(name=name, namespace=ns, port=2000 if name == "c" else 0)
    items, total = f.store.list()
    assert total == 5
    assert [(d["name"], d["namespace"]) for d in items] == [
        ("a", "x"), ("a", "y"), ("b", "a"), ("b", "x"), ("c", "x")]
    items, total = f.store.list(namespace="x")
    assert total == 3 and [d["name"] for d in items] == ["a", "b", "c"]
    items, total = f.store.list(type="service")
    assert total == 1 and items[0]["name"] == "c"
    items, total = f.store.list(limit=2, offset=1)
    assert total == 5 and [(d["name"], d["namespace"]) for d in items] == [("a", "y"), ("b", "a")]
    assert f.store.list(offset=10) == ([], 5)
    assert f.store.list(namespace="nope") == ([], 0)
    with pytest.raises(ValueError):
        f.store.list(limit=-1)


def test_idempotency_key_returns_stored_result_without_change() -> None:
    f = Feeder()
    first = f.create(name="w", key="k-1")
    h = f.store.state_hash()
    again = f.create(name="w", key="k-1")  # retry: fresh ts and id, same request
    assert again == first and again[0] == 201
    assert f.store.state_hash() == h
    # patch retried after a later change still returns its own result
    p1 = f.run(f.cf.patch("w", {"replicas": 5}, key="k-2"))
    f.run(f.cf.patch("w", {"replicas": 6}, key="k-3"))
    assert f.run(f.cf.patch("w", {"replicas": 5}, key="k-2")) == p1
    assert f.store.get(None, "w")["replicas"] == 6  # type: ignore[index]


def test_idempotency_key_reused_for_other_request_is_422() -> None:
    f = Feeder()
    f.create(name="w", key="k")
    h = f.store.state_hash()
    status, body = f.create(name="other", key="k")
    assert status == 422 and body["error"] == "Unprocessable Entity"
    assert f.store.state_hash() == h and f.store.get(None, "other") is None


def test_dedup_is_bounded_fifo() -> None:
    f = Feeder(DeploymentStore(dedup_capacity=3))
    for i in range(4):
        f.create(name=f"d{i}", key=f"k{i}")
    # k0 was evicted: re-applying it is a fresh create -> 409 (name exists), not the old 201
    assert f.create(name="d0", key="k0")[0] == 409
    # k3 is still remembered
    assert f.create(name="d3", key="k3")[0] == 201
    snap = cbor2.loads(f.store.snapshot())
    assert [row[0] for row in snap["dedup"]] == ["k2", "k3", "k0"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe garbage",
        cbor2.dumps([1, 2, 3]),
        cbor2.dumps({"o": "n", "r": 1}),
        cbor2.dumps({"o": "n", "r": 1, "c": "nope"}),
        cbor2.dumps({"o": 1, "r": 1, "c": {}}),
        encode_entry("n", 1, {}),
        encode_entry("n", 1, {"key": "k"}),
        encode_entry("n", 1, {"v": 1, "key": "k", "op": "explode", "ts": "t", "ns": "default",
                              "name": "a"}),
        encode_entry("n", 1, {"v": 99, "key": "k", "op": "delete", "ts": "t", "ns": "default",
                              "name": "a"}),
        encode_entry("n", 1, {"v": 1, "key": "k", "op": "create", "ts": "t", "ns": "default",
                              "name": "a", "id": "i", "spec": {"source": "x", "port": 1}}),
        encode_entry("n", 1, {"v": 1, "key": "k", "op": "create", "ts": "t", "ns": "bad ns",
                              "name": "a", "id": "i", "spec": {"source": "x"}}),
        encode_entry("n", 1, {"v": 1, "key": "k", "op": "create", "ts": "t", "ns": "default",
                              "name": "a", "spec": {"source": "x"}}),
        encode_entry("n", 1, {"v": 1, "key": "k", "op": "patch", "ts": "t", "ns": "default",
                              "name": "a", "spec": {"name": "b"}}),
        encode_entry("n", 1, {"v": 1, "key": "k", "op": "scale", "ts": "t", "ns": "default",
                              "name": "a", "replicas": True}),
    ],
)
def test_bad_command_data_is_400_never_an_exception(data: bytes) -> None:
    f = Feeder()
    f.create(name="a")
    count = f.store.count()
    dep = f.store.get(None, "a")
    result = f.entry(EntryKind.COMMAND, data)
    assert result is not None
    status, body = result
    assert status == 400, body
    assert body["error"] == "Bad Request" and body["message"]
    assert f.store.count() == count and f.store.get(None, "a") == dep


def test_noop_and_config_only_advance_index() -> None:
    f = Feeder()
    assert f.entry(EntryKind.NOOP, b"") is None
    assert f.entry(EntryKind.CONFIG, cbor2.dumps({"cluster": "c"})) is None
    assert f.store.applied_index == 2
    assert f.create(name="a")[0] == 201
    assert f.store.applied_index == 3


def test_replayed_index_is_skipped_and_gap_raises() -> None:
    f = Feeder()
    f.create(name="a")
    index, kind, data = f.entries[0]
    assert f.store.apply(index, kind, data) is None
    assert f.store.count() == 1
    with pytest.raises(ValueError, match="gap"):
        f.store.apply(f.store.applied_index + 2, EntryKind.NOOP, b"")


def _workload(f: Feeder, rng: random.Random, n: int) -> None:
    names = [f"n{i}" for i in range(20)]
    for i in range(n):
        name = rng.choice(names)
        op = rng.choice(["create", "create", "patch", "replace", "scale", "delete", "noop"])
        key = f"key{rng.randrange(n // 2 + 1)}"
        if op == "noop":
            f.entry(EntryKind.NOOP, b"")
        elif op == "create":
            f.run(f.cf.create({"name": name, "source": f"s{i}", "port": rng.choice([0, 2000])},
                              key=key))
        elif op == "patch":
            f.run(f.cf.patch(name, {"replicas": rng.randrange(5)}, key=key))
        elif op == "replace":
            f.run(f.cf.replace(name, {"source": f"r{i}", "schedule": "@daily"}, key=key))
        elif op == "scale":
            f.run(f.cf.scale(name, {"replicas": rng.randrange(5)}, key=key))
        else:
            f.run(f.cf.delete(name, key=key))


def test_two_stores_fed_the_same_entries_agree() -> None:
    a = Feeder(DeploymentStore(dedup_capacity=50))
    _workload(a, random.Random(7), 600)
    b = DeploymentStore(dedup_capacity=50)
    results_a = []
    replay = Feeder(DeploymentStore(dedup_capacity=50))
    for index, kind, data in a.entries:
        results_a.append(replay.store.apply(index, kind, data))
        b.apply(index, kind, data)
    assert a.store.state_hash() == b.state_hash() == replay.store.state_hash()
    assert a.store.snapshot() == b.snapshot()
    assert a.store.list(limit=1000) == b.list(limit=1000)
    # and a different history gives a different hash
    c = Feeder(DeploymentStore(dedup_capacity=50))
    _workload(c, random.Random(8), 600)
    assert c.store.state_hash() != a.store.state_hash()


def test_snapshot_restore_round_trip() -> None:
    f = Feeder(DeploymentStore(dedup_capacity=40))
    _workload(f, random.Random(3), 300)
    snap = f.store.snapshot()
    assert cbor2.loads(snap)["format"] == SNAPSHOT_FORMAT_REFS
    other = DeploymentStore(dedup_capacity=40)
    other.restore(snap)
    assert other.snapshot() == snap
    assert other.state_hash() == f.store.state_hash()
    assert other.applied_index == f.store.applied_index
    for ns in (None, "default"):
        for typ in (None, "job", "service", "cronjob"):
            assert other.list(ns, typ, 1000) == f.store.list(ns, typ, 1000)
    # both continue identically, including dedup of keys remembered before the snapshot
    done = len(f.entries)
    _workload(f, random.Random(11), 100)
    for index, kind, data in f.entries[done:]:
        other.apply(index, kind, data)
    assert other.state_hash() == f.store.state_hash()


@pytest.mark.parametrize(
    "blob",
    [b"junk", cbor2.dumps({"format": 999}), cbor2.dumps({"format": SNAPSHOT_FORMAT}),
     cbor2.dumps({"format": SNAPSHOT_FORMAT, "applied": 1, "deployments": [{"id": "x"}],
                  "dedup": []})],
)
def test_restore_refuses_bad_snapshot_and_keeps_state(blob: bytes) -> None:
    f = Feeder()
    f.create(name="keep")
    h = f.store.state_hash()
    with pytest.raises(ValueError):
        f.store.restore(blob)
    assert f.store.state_hash() == h and f.store.applied_index == 1


def test_dedup_results_are_references_while_the_deployment_is_unchanged() -> None:
    cf = CommandFactory(clock=lambda: 1_700_000_000.5)
    store = DeploymentStore()
    store.apply(1, EntryKind.COMMAND, encode_entry("n1", 1, cf.create(
        {"name": "web", "source": "x"}, key="k-create")))
    store.apply(2, EntryKind.COMMAND, encode_entry("n1", 2, cf.create(
        {"name": "db", "source": "x"}, key="k-db")))
    store.apply(3, EntryKind.COMMAND, encode_entry("n1", 3, cf.scale(
        "web", {"replicas": 3}, key="k-scale")))
    rows = {r[0]: r[3] for r in cbor2.loads(store.snapshot())["dedup"]}
    # web changed since its create: that answer is written in full; the others are references
    assert rows["k-create"]["generation"] == 1 and rows["k-create"]["replicas"] == 1
    assert rows["k-scale"] == ["default", "web"] and rows["k-db"] == ["default", "db"]
    again = DeploymentStore()
    again.restore(store.snapshot())
    assert again.state_hash() == store.state_hash()
    # a retried create still gets its original answer after the restore
    retry = again.apply(4, EntryKind.COMMAND, encode_entry("n1", 4, cf.create(
        {"name": "web", "source": "x"}, key="k-create")))
    assert retry is not None and retry[0] == 201 and retry[1]["generation"] == 1


@pytest.mark.parametrize("ref", [["default", "nope"], ["default"], ["default", 5], []])
def test_a_dedup_reference_to_no_deployment_is_refused(ref: list) -> None:
    cf = CommandFactory()
    store = DeploymentStore()
    store.apply(1, EntryKind.COMMAND, encode_entry("n1", 1, cf.create(
        {"name": "web", "source": "x"}, key="k")))
    snap = cbor2.loads(store.snapshot())
    snap["dedup"][0][3] = ref
    with pytest.raises(ValueError):
        DeploymentStore().restore(cbor2.dumps(snap))


def test_golden_formats() -> None:
    """Persisted bytes (log entry payloads, snapshots) must not change by accident. If this
    fails on purpose, bump COMMAND_VERSION / SNAPSHOT_FORMAT, keep reading the old format,
    and update the digests."""
    ids = (f"id{n}" for n in itertools.count(1))
    cf = CommandFactory(clock=lambda: 1_700_000_000.5, new_id=lambda: next(ids))
    store = DeploymentStore()
    cmds = [cf.create({"name": "web", "source": "x", "port": 8080, "env": {"A": "1"}}, key="k1"),
            cf.scale("web", {"replicas": 2}, key="k2")]
    digests = []
    for i, cmd in enumerate(cmds, start=1):
        data = encode_entry("n1", i, cmd)
        digests.append(hashlib.sha256(data).hexdigest())
        store.apply(i, EntryKind.COMMAND, data)
    # Entry payloads are plain (not canonical) CBOR since the API stopped sorting keys; the
    # reader is unchanged, so entries written canonically before still decode the same.
    assert digests == ["a7f34552a68154e1b4a6c2b7cc43912b296255d862942121472320206e32b808",
                       "c7091e6bb83cdc18ace8b80e6ff9daebe33a7b6fed413e930e39da2b4cbaeb8e"]
    # snapshot format 3 (dedup answers as references) since the restore-time work of issue 5
    assert hashlib.sha256(store.snapshot()).hexdigest() == (
        "77b44233553b78e8badc888ac5c87aa20f96c6a510010be204ac40471bc613ba")


def test_entry_codec_round_trip() -> None:
    cmd = CommandFactory().delete("x")
    assert decode_entry(encode_entry("node9", 42, cmd)) == ("node9", 42, cmd)


def test_100k_deployments_list_pages() -> None:
    store = DeploymentStore()
    f = Feeder(store)
    rng = random.Random(1)
    names = [f"dep-{i:06d}" for i in range(100_000)]
    rng.shuffle(names)
    for i, name in enumerate(names):
        f.run({"v": 1, "op": "create", "key": f"k{i}", "ts": "2025-01-01T00:00:00.000Z",
               "ns": "default" if i % 2 else "other", "name": name, "id": f"id{i}",
               "spec": {"source": "x", "port": 2000 if i % 3 == 0 else 0}})
    assert store.count() == 100_000
    items, total = store.list(limit=1000, offset=50_000)
    assert total == 100_000
    assert [d["name"] for d in items] == [f"dep-{i:06d}" for i in range(50_000, 51_000)]
    items, total = store.list(namespace="other", type="service", limit=10, offset=0)
    assert total == sum(1 for i in range(100_000) if i % 2 == 0 and i % 3 == 0)
    assert [d["name"] for d in items] == sorted(d["name"] for d in items)
    # many pages in a row: each is a slice of the sorted index
    for offset in range(0, 100_000, 10_000):
        page, _ = store.list(limit=1000, offset=offset)
        assert page[0]["name"] == f"dep-{offset:06d}"


def test_queries_concurrent_with_apply() -> None:
    """Apply on one thread while another lists: every page is internally consistent."""
    f = Feeder()
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            items, total = f.store.list(limit=1000)
            if len(items) != min(total, 1000):
                problems.append(f"{len(items)} items for total {total}")
            names = [d["name"] for d in items]
            if names != sorted(names):
                problems.append("unsorted")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(2000):
            f.create(name=f"c{i}")
            if i % 3 == 0:
                f.run(f.cf.delete(f"c{i}"))
    finally:
        stop.set()
        t.join(10)
    assert not problems
    assert f.store.count() == 2000 - 667


# ---------------------------------------------------------------- property: never an exception

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2000, 70000) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8,
)
_spec = st.dictionaries(
    st.sampled_from(["name", "source", "runtime", "port", "replicas", "args", "env",
                     "schedule", "namespace", "type", "bogus"]),
    _json | st.sampled_from(["a", "x", "@daily", "* * * * *", "job", "service", "cronjob",
                             2000, 3, ["a"], {"A": "b"}]),
    max_size=6,
)
_good_spec = st.fixed_dictionaries(
    {"source": st.sampled_from(["x", "y"])},
    optional={"port": st.sampled_from([0, 2000, None]),
              "replicas": st.integers(0, 3),
              "schedule": st.sampled_from(["@daily", "*/5 * * * *", None]),
              "env": st.sampled_from([{}, {"A": "1"}]),
              "type": st.sampled_from(["job", "service", "cronjob", None])},
)
_good_command = st.fixed_dictionaries({
    "v": st.just(1),
    "op": st.sampled_from(["create", "create", "replace", "patch", "scale", "delete"]),
    "key": st.sampled_from(["k1", "k2", "k3", "k4", "k5", "k6", "k7"]),
    "ts": st.sampled_from(["t1", "t2"]),
    "ns": st.sampled_from(["default", "other"]),
    "name": st.sampled_from(["a", "b"]),
    "id": st.sampled_from(["i1", "i2", "i3"]),
    "spec": _good_spec,
    "replicas": st.integers(0, 3),
})
_bad_command = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 1, 2, "1"]),
        "op": st.sampled_from(["create", "replace", "patch", "scale", "delete", "x"]),
        "key": st.sampled_from(["k1", "k2", "", 5]) | st.text(max_size=4),
        "ts": st.sampled_from(["t1", "t2", "", None]),
        "ns": st.sampled_from(["default", "other", "bad ns", None]),
        "name": st.sampled_from(["a", "b", "-x", None]),
        "id": st.sampled_from(["i1", "i2", "", None]),
        "spec": _spec | _json,
        "replicas": _json,
    },
)
_command = _good_command | _bad_command


@settings(max_examples=300, deadline=None)
@given(st.lists(_command, min_size=1, max_size=12))
def test_arbitrary_commands_never_raise(commands: list[dict]) -> None:
    a, b = DeploymentStore(dedup_capacity=4), DeploymentStore(dedup_capacity=4)
    for i, cmd in enumerate(commands, start=1):
        data = encode_entry("n", i, cmd)
        result = a.apply(i, EntryKind.COMMAND, data)
        assert result is not None
        status, body = result
        assert status in (200, 201, 204, 400, 404, 409, 422), (status, body)
        if status >= 400:
            assert set(body) == {"error", "message"}
        assert b.apply(i, EntryKind.COMMAND, data) == result
    assert a.state_hash() == b.state_hash()
    restored = DeploymentStore(dedup_capacity=4)
    restored.restore(a.snapshot())
    assert restored.state_hash() == a.state_hash()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    status, body = DeploymentStore().apply(1, EntryKind.COMMAND, data) or (0, {})
    assert status == 400 and body["error"] == "Bad Request"


def _bad_variant(snap: dict, case: str) -> dict:
    """`snap` (one deployment, one dedup row) with one value of the wrong type or range."""
    snap = cbor2.loads(cbor2.dumps(snap))
    dep, row = snap["deployments"][0], snap["dedup"][0]
    top = {"format-bool": ("format", True), "format-float": ("format", 1.0),
           "applied-inf": ("applied", float("inf")), "applied-float": ("applied", 2.0),
           "applied-bool": ("applied", True), "applied-negative": ("applied", -1),
           "applied-huge": ("applied", 2**64), "deployments-map": ("deployments", {}),
           "dedup-str": ("dedup", "abc"), "extra-key": ("surprise", 1)}
    if case in top:
        key, value = top[case]
        snap[key] = value
        return snap
    fields = {"replicas-str": ("replicas", "2"), "replicas-float": ("replicas", 2.0),
              "port-bool": ("port", True), "name-int": ("name", 5), "name-bad": ("name", "a b"),
              "namespace-bytes": ("namespace", b"default"), "type-unknown": ("type", "vm"),
              "env-int-value": ("env", {"A": 1}), "args-nested": ("args", [["x"]]),
              "generation-zero": ("generation", 0), "generation-float": ("generation", 1.5),
              "id-int": ("id", 7), "created-empty": ("created_at", ""),
              "schedule-on-job": ("schedule", "@daily"), "source-empty": ("source", " ")}
    if case in fields:
        key, value = fields[case]
        dep[key] = value
        return snap
    if case == "row-extra-field":
        dep["extra"] = 1
    elif case == "row-missing-field":
        del dep["env"]
    elif case == "duplicate-id":
        snap["deployments"].append({**dep, "name": "other"})
    dedup = {"fp-int": (1, 1 << 34), "fp-short": (1, b"abc"), "fp-str": (1, "x" * 16),
             "status-inf": (2, float("inf")), "status-bool": (2, True), "status-float": (2, 201.0),
             "status-range": (2, 99), "key-int": (0, 5), "key-empty": (0, ""),
             "body-list": (3, []), "body-float": (3, {"x": 1.5}), "body-bytes": (3, {"x": b"y"}),
             "body-int-key": (3, {1: "x"})}
    if case in dedup:
        j, value = dedup[case]
        row[j] = value
    elif case == "row-short":
        snap["dedup"][0] = row[:3]
    elif case == "row-duplicate-key":
        snap["dedup"].append(list(row))
    elif case == "body-deep":
        body: dict = {}
        for _ in range(40):
            body = {"x": body}
        row[3] = body
    return snap


_BAD_RESTORE_CASES = [
    "format-bool", "format-float", "applied-inf", "applied-float", "applied-bool",
    "applied-negative", "applied-huge", "deployments-map", "dedup-str", "extra-key",
    "replicas-str", "replicas-float", "port-bool", "name-int", "name-bad", "namespace-bytes",
    "type-unknown", "env-int-value", "args-nested", "generation-zero", "generation-float",
    "id-int", "created-empty", "schedule-on-job", "source-empty", "row-extra-field",
    "row-missing-field", "duplicate-id", "fp-int", "fp-short", "fp-str", "status-inf",
    "status-bool", "status-float", "status-range", "key-int", "key-empty", "body-list",
    "body-float", "body-bytes", "body-int-key", "row-short", "row-duplicate-key", "body-deep",
]


@pytest.mark.parametrize("case", _BAD_RESTORE_CASES)
def test_restore_checks_every_type_strictly(case: str) -> None:
    """Fuzzing found `applied: inf` (OverflowError) and an int fingerprint n (bytes(n): n
    zero bytes). Every value of a wrong type or range is a ValueError, the state unchanged."""
    src = Feeder()
    src.create(name="web", key="k1")
    snap = cbor2.loads(src.store.snapshot())
    assert len(snap["deployments"]) == 1 and len(snap["dedup"]) == 1
    DeploymentStore().restore(cbor2.dumps(snap))  # the unchanged snapshot restores
    f = Feeder()
    f.create(name="keep")
    h = f.store.state_hash()
    with pytest.raises(ValueError):
        f.store.restore(cbor2.dumps(_bad_variant(snap, case)))
    assert f.store.state_hash() == h and f.store.applied_index == 1


def test_restore_accepts_an_empty_fingerprint() -> None:
    """`_fingerprint` gives b"" for a command it cannot encode; such a row must restore."""
    f = Feeder()
    f.create(name="web", key="k1")
    snap = cbor2.loads(f.store.snapshot())
    snap["dedup"][0][1] = b""
    other = DeploymentStore()
    other.restore(cbor2.dumps(snap, canonical=True))
    assert other.count() == 1


def test_prepare_restore_changes_nothing_until_installed() -> None:
    src = Feeder()
    src.create(name="web")
    f = Feeder()
    f.create(name="keep")
    h = f.store.state_hash()
    install = f.store.prepare_restore(src.store.snapshot())
    assert f.store.state_hash() == h
    install()
    assert f.store.state_hash() == src.store.state_hash()


# ---------------------------------------------------------------------- memory-lean restore
def test_state_hash_and_snapshot_bytes_are_pinned() -> None:
    """Computed before the memory work of the 100k-deployments RSS issue (shared index keys,
    plain dedup dict, rows converted while decoding): the same entries must keep giving the
    same hash and the same snapshot bytes, directly and after a restore."""
    f = Feeder(DeploymentStore(dedup_capacity=40))
    _workload(f, random.Random(3), 300)
    expected = "a7d336eeb6b64d135ea5c6db4868bfcf93506d144b2e0b41d913380b6d47787a"
    assert f.store.state_hash() == expected
    snap = f.store.snapshot()
    assert hashlib.sha256(snap).hexdigest() == (
        "bc89265d4eb63d8b47fbcb3dd0a40ba1b400152359ba1322348bf326c4aa4e34")
    other = DeploymentStore(dedup_capacity=40)
    other.restore(snap)
    assert other.state_hash() == expected and other.snapshot() == snap
    g = Feeder(DeploymentStore(dedup_capacity=1000))
    _workload(g, random.Random(5), 800)
    assert g.store.state_hash() == (
        "30fe2b59bd827667357080048004f77b935c1b40cadc062b7ff02a9fa59ba3d8")


def _format1(store: DeploymentStore, *, canonical: bool = True) -> bytes:
    """`store` as a format-1 snapshot: every dedup answer in full."""
    applied, deps, dedup, *_rest = store._state(refs=False)
    return cbor2.dumps({"format": SNAPSHOT_FORMAT, "applied": applied, "deployments": deps,
                        "dedup": dedup}, canonical=canonical)


def _replay(store: DeploymentStore, cmd: dict) -> tuple[int, dict]:
    """Apply a retry of `cmd` (same request, same key): the remembered answer."""
    result = store.apply(store.applied_index + 1, EntryKind.COMMAND, encode_entry("n1", 1, cmd))
    assert result is not None
    return result


@pytest.mark.parametrize("canonical", [True, False])
def test_restored_answers_keep_their_wire_key_order(canonical: bool) -> None:
    """A remembered answer read from a snapshot is served with the key order it was written
    in (canonical CBOR order for every snapshot a store writes), exactly as before the rows
    were converted while decoding; stored deployments are always in FIELDS order."""
    f = Feeder()
    create = f.cf.create({"name": "web", "source": "x"}, key="k-web")
    scale = f.cf.scale("web", {"replicas": 2}, key="k-scale")
    f.run(create)
    f.run(scale)
    restored = DeploymentStore()
    restored.restore(_format1(f.store, canonical=canonical))
    assert restored.state_hash() == f.store.state_hash()
    fields = list(f.store.get(None, "web") or {})
    wire = sorted(fields, key=lambda k: (len(k), k)) if canonical else fields
    for cmd, status, generation in ((create, 201, 1), (scale, 200, 2)):
        assert _replay(f.store, cmd)[1] == _replay(restored, cmd)[1]
        got, body = _replay(restored, cmd)
        assert got == status and list(body) == wire and body["generation"] == generation
    assert list(restored.get(None, "web") or {}) == fields
    assert list(restored.list()[0][0]) == fields


def test_restore_shares_repeated_strings_and_index_keys() -> None:
    f = Feeder()
    for i in range(3):
        f.create(name=f"d{i}", port=8080)
    store = DeploymentStore()
    store.restore(f.store.snapshot())
    deps = [store._deps[key] for key in store._index.all]
    assert len({id(d["namespace"]) for d in deps}) == 1
    assert len({id(d["type"]) for d in deps}) == 1
    assert all(d["created_at"] is d["updated_at"] for d in deps)
    for key in store._index.all:
        assert store._ids[store._deps[key]["id"]] is key
        assert store._index.by_ns["default"][store._index.by_ns["default"].index(key)] is key
    # the dedup answers of the creates are the stored deployments themselves
    assert [body for _fp, _st, body in store._dedup.values()] == deps
    assert all(a is b for a, b in zip((b for _f, _s, b in store._dedup.values()), deps,
                                      strict=True))


def test_restore_trims_dedup_to_capacity_and_keeps_evicting_in_order() -> None:
    f = Feeder(DeploymentStore(dedup_capacity=5))
    for i in range(5):
        f.create(name=f"d{i}", key=f"k{i}")
    small = DeploymentStore(dedup_capacity=3)
    small.restore(f.store.snapshot())
    assert list(small._dedup) == list(small._dedup_order) == ["k2", "k3", "k4"]
    small.apply(small.applied_index + 1, EntryKind.COMMAND,
                encode_entry("n1", 1, f.cf.create({"name": "x", "source": "y"}, key="k5")))
    assert list(small._dedup) == list(small._dedup_order) == ["k3", "k4", "k5"]
    assert [row[0] for row in cbor2.loads(small.snapshot())["dedup"]] == ["k3", "k4", "k5"]


@pytest.mark.parametrize("enabled", [True, False])
def test_restore_leaves_the_collector_as_it_found_it(enabled: bool) -> None:
    import gc
    f = Feeder()
    f.create(name="web")
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        DeploymentStore().restore(f.store.snapshot())
        assert gc.isenabled() is enabled
        with pytest.raises(ValueError):
            DeploymentStore().restore(b"junk")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_row_decoder_takes_both_cbor2_hook_signatures() -> None:
    """cbor2 < 6 calls ``object_hook(decoder, dict)``, cbor2 >= 6 ``object_hook(dict, immutable)``."""
    from prisn.fsm.deployments import FIELDS, _RowDecoder
    f = Feeder()
    f.create(name="web")
    dep = f.store.get(None, "web")
    assert dep is not None
    raw = cbor2.loads(cbor2.dumps(dep, canonical=True))
    for args in ((object(), dict(raw)), (dict(raw), False)):
        out = _RowDecoder()(*args)
        assert out == dep and list(out) == list(FIELDS)
    other = {"name": "x"}
    assert _RowDecoder()(other, False) is other


def test_golden_failure_results() -> None:
    """The dedup table remembers failures too (400, 404, 409, 422, 204, tokens): their
    status and ``{error, message}`` body are persisted in snapshots, so typed outcomes must
    leave those bytes exactly as they were (issue 13 item 2)."""
    ids = (f"id{n}" for n in itertools.count(1))
    cf = CommandFactory(clock=lambda: 1_700_000_000.5, new_id=lambda: next(ids))
    store = DeploymentStore()
    tok = {"v": 1, "op": "token.create", "key": "t1", "ts": "2023-11-14T22:13:20.500Z",
           "id": "0123456789abcdef", "name": "ci", "role": "viewer", "namespaces": ["a"],
           "ttl": None, "hash": "ab" * 32}
    cmds = [cf.create({"name": "web", "source": "x"}, key="k1"),
            cf.create({"name": "web", "source": "x"}, key="k2"),  # 409
            cf.delete("nope", key="k3"),  # 404
            cf.delete("web", key="k4"),  # 204
            {**cf.delete("web", key="k1")},  # 422: k1 was a create
            {"v": 1, "op": "create", "key": "k5"},  # 400
            tok, {**tok, "key": "t2", "id": "1123456789abcdef"},  # 201, 409 (same name)
            {"v": 1, "op": "token.revoke", "key": "t3", "ts": "2023-11-14T22:13:20.500Z",
             "id": "2223456789abcdef"}]  # 404
    statuses = []
    for i, cmd in enumerate(cmds, start=1):
        out = store.apply(i, EntryKind.COMMAND, encode_entry("n1", i, cmd))
        assert out is not None
        statuses.append(int(out[0]))
        json.dumps(out[1])  # every answer is JSON as it is
    assert statuses == [201, 409, 404, 204, 422, 400, 201, 409, 404]
    assert hashlib.sha256(store.snapshot()).hexdigest() == (
        "06a2fd58ff6d22f19339b6f853869715894b4a1f5fb260fe0a21a7cefde34564")
